//! `modelctl inspect`: what a model file is, by content, and whether modeld would
//! publish or export it. Needs no daemon.

use std::{fs::File, path::PathBuf};

use anyhow::Context as _;
use clap::Args;
use modeld_core::format::{self, FileSource, Inspection};
use serde::Serialize;

use crate::{
    Context,
    output::{self, AlreadyReported},
};

#[derive(Debug, Args)]
pub(crate) struct InspectArgs {
    /// Files to inspect.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Judge as `publish --allow-pickle` would: pickles of tensors pass.
    #[arg(long)]
    allow_pickle: bool,
}

/// One file's result, as printed with `--json`.
#[derive(Debug, Serialize)]
struct Report {
    path: PathBuf,
    /// Well-formed and allowed by the policy.
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    inspection: Option<Inspection>,
    /// Malformed, or refused by the policy: why.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

pub(crate) fn run(ctx: &Context, args: &InspectArgs) -> anyhow::Result<()> {
    let mut reports = Vec::with_capacity(args.files.len());
    for path in &args.files {
        let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let src = FileSource::new(&file).with_context(|| format!("reading {}", path.display()))?;
        let report = match format::inspect_named(&src, &path.to_string_lossy()) {
            Ok(i) => {
                let verdict = i.check(args.allow_pickle);
                Report {
                    path: path.clone(),
                    ok: verdict.is_ok(),
                    error: verdict.err().map(|e| e.to_string()),
                    inspection: Some(i),
                }
            }
            Err(e) => Report {
                path: path.clone(),
                ok: false,
                inspection: None,
                error: Some(e.to_string()),
            },
        };
        reports.push(report);
    }
    if ctx.json {
        output::json(&reports)?;
    } else {
        for r in &reports {
            print_report(r);
        }
    }
    if reports.iter().all(|r| r.ok) {
        Ok(())
    } else {
        Err(AlreadyReported.into())
    }
}

fn print_report(r: &Report) {
    let Some(i) = &r.inspection else {
        println!("{}: malformed", r.path.display());
        println!("  refused: {}", r.error.as_deref().unwrap_or_default());
        return;
    };
    println!(
        "{}: {} ({})",
        r.path.display(),
        i.format,
        output::bytes(i.size)
    );
    if let Some(st) = &i.safetensors {
        let dtypes: Vec<String> = st.dtypes.iter().map(|(d, n)| format!("{d} x{n}")).collect();
        println!(
            "  {} tensors ({}), {} of data, {}-byte header, {} metadata entries",
            st.tensors,
            dtypes.join(", "),
            output::bytes(st.data_bytes),
            st.header_len,
            st.metadata
        );
    }
    if let Some(g) = &i.gguf {
        let types: Vec<String> = g.types.iter().map(|(t, n)| format!("{t} x{n}")).collect();
        println!(
            "  GGUF v{}, {} tensors ({}), {} metadata keys, alignment {}, data at {}{}",
            g.version,
            g.tensors,
            types.join(", "),
            g.metadata,
            g.alignment,
            g.data_offset,
            g.architecture
                .as_deref()
                .map(|a| format!(", architecture {a}"))
                .unwrap_or_default()
        );
    }
    if let Some(n) = i.entries {
        println!("  zip archive, {n} members");
    }
    for a in &i.arrays {
        println!(
            "  array {}: dtype {}{}",
            a.location,
            a.header.descr,
            if a.header.object {
                " (Python objects: pickled)"
            } else {
                ""
            }
        );
    }
    for p in &i.pickles {
        println!(
            "  pickle {}: protocol {}, {} pickle(s){}",
            p.location,
            p.protocol,
            p.pickles,
            p.error
                .as_deref()
                .map(|e| format!(", scan stopped: {e}"))
                .unwrap_or_default()
        );
        for g in &p.globals {
            let mark = if g.allowed { "allowed" } else { "NOT ALLOWED" };
            println!("    imports {g} ({}, {mark})", g.opcode);
        }
        if p.globals_truncated {
            println!("    ... and more imports");
        }
    }
    match &r.error {
        None => println!("  ok"),
        Some(e) => println!("  refused: {e}"),
    }
}
