//! Everything modelctl prints: results, tables, progress, errors.
//!
//! Results go to stdout (JSON with `--json`), progress and errors to stderr, so
//! `modelctl --json ... | jq` always sees exactly one JSON document.

use std::{
    io::{IsTerminal, Write},
    time::{Duration, UNIX_EPOCH},
};

use indicatif::{HumanBytes, ProgressBar, ProgressStyle};
use modeld_api::protocol::Event;
use serde::Serialize;

use crate::Context;

/// Prints `value` as JSON on stdout.
pub(crate) fn json(value: &impl Serialize) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}

/// An error whose details were already printed (as the JSON result); the process
/// only has to exit with failure.
#[derive(Debug)]
pub(crate) struct AlreadyReported;

impl std::fmt::Display for AlreadyReported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("failure already reported")
    }
}

impl std::error::Error for AlreadyReported {}

/// Prints the error chain on stderr (and a JSON error object on stdout with `--json`).
pub(crate) fn error(ctx: &Context, e: &anyhow::Error) {
    if ctx.json {
        let _ = json(&serde_json::json!({ "error": format!("{e:#}") }));
    }
    eprintln!("modelctl: error: {e:#}");
}

/// Human size: `1.50 GiB`.
pub(crate) fn bytes(n: u64) -> String {
    HumanBytes(n).to_string()
}

/// A Unix time as RFC 3339 (UTC, seconds).
pub(crate) fn time(unix: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(unix)).to_string()
}

/// Prints rows as left-aligned columns under a header.
pub(crate) fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}  "));
            }
        }
        println!("{}", s.trim_end());
    };
    line(header.iter().map(|h| (*h).to_owned()).collect());
    for row in rows {
        line(row.clone());
    }
}

/// Shows progress events: a bar on a terminal, JSON lines on stderr with `--json`,
/// nothing otherwise.
pub(crate) struct ProgressUi {
    bar: Option<ProgressBar>,
    json: bool,
    phase: String,
}

impl ProgressUi {
    pub(crate) fn new(ctx: &Context) -> Self {
        Self {
            bar: None,
            json: ctx.json,
            phase: String::new(),
        }
    }

    /// Handles one event from the daemon.
    pub(crate) fn event(&mut self, event: &Event) {
        if self.json {
            if let Ok(line) = serde_json::to_string(&serde_json::json!({ "event": event })) {
                eprintln!("{line}");
            }
            return;
        }
        if !std::io::stderr().is_terminal() {
            return;
        }
        let Event::Progress {
            phase,
            done,
            total,
            item,
            peers,
        } = event;
        if self.bar.is_none() || *phase != self.phase {
            if let Some(b) = self.bar.take() {
                b.finish_and_clear();
            }
            let bar = ProgressBar::new(*total);
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix:>10} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta} {wide_msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar.set_prefix(phase.clone());
            bar.enable_steady_tick(Duration::from_millis(200));
            self.phase = phase.clone();
            self.bar = Some(bar);
        }
        if let Some(bar) = &self.bar {
            bar.set_length(*total);
            bar.set_position(*done);
            if let Some(item) = item {
                bar.set_message(shorten(item, 60));
            }
            if let Some(peers) = peers {
                bar.set_message(format!("{peers} peers"));
            }
        }
    }

    /// Removes the bar.
    pub(crate) fn finish(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}

impl Drop for ProgressUi {
    fn drop(&mut self) {
        self.finish();
    }
}

fn shorten(s: &str, max: usize) -> String {
    let n = s.chars().count();
    if n <= max {
        return s.to_owned();
    }
    let tail: String = s.chars().skip(n - (max - 1)).collect();
    format!("…{tail}")
}
