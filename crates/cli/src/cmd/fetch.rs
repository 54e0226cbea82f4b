//! `modelctl fetch`: get a model from peers into the store, verified, and optionally
//! export it.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Args;
use modeld_api::protocol::{FetchSummary, Reply, Request};

use crate::{
    Context,
    cmd::unexpected,
    output::{self, ProgressUi},
};

#[derive(Debug, Args)]
pub(crate) struct FetchArgs {
    /// A signed manifest file, a manifest id (or 6+ hex digits of one), or org/model or org/model:version known to the store.
    reference: String,
    /// A peer to fetch from (repeatable): IP:PORT or NODE_ID@IP:PORT. Added to the daemon's configured peers.
    #[arg(long = "peer", value_name = "ADDR")]
    peers: Vec<String>,
    /// Export the model into this directory when done.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// When exporting, replace existing files whose content differs.
    #[arg(long)]
    force: bool,
    /// When exporting, always copy (never link to the store's files).
    #[arg(long)]
    copy: bool,
}

pub(crate) fn run(ctx: &Context, args: &FetchArgs) -> anyhow::Result<()> {
    let (reference, envelope) = if Path::new(&args.reference).is_file() {
        let text = std::fs::read_to_string(&args.reference)
            .with_context(|| format!("reading signed manifest {}", args.reference))?;
        (None, Some(text.trim_end().to_owned()))
    } else {
        (Some(args.reference.clone()), None)
    };
    let out = args
        .out
        .as_deref()
        .map(std::path::absolute)
        .transpose()
        .context("resolving --out")?;
    let mut ui = ProgressUi::new(ctx);
    let reply = ctx.connect()?.call(
        Request::Fetch {
            reference,
            envelope,
            peers: args.peers.clone(),
            out,
            overwrite: args.force,
            copy: args.copy,
        },
        &mut |e| ui.event(e),
    )?;
    ui.finish();
    let Reply::Fetched(s) = reply else {
        return Err(unexpected(reply));
    };
    if ctx.json {
        return output::json(&s);
    }
    print_summary(&s);
    Ok(())
}

fn print_summary(s: &FetchSummary) {
    let m = &s.manifest;
    let secs = s.elapsed_ms as f64 / 1000.0;
    let rate = if secs > 0.0 {
        format!(
            ", {}/s",
            output::bytes((s.bytes_fetched as f64 / secs) as u64)
        )
    } else {
        String::new()
    };
    eprintln!(
        "fetched {}:{} ({} files, {}) in {secs:.1} s{rate}; pinned",
        m.name,
        m.version,
        m.files,
        output::bytes(s.bytes_total)
    );
    eprintln!(
        "  downloaded {} (verified){}{}",
        output::bytes(s.bytes_fetched),
        if s.bytes_present > 0 {
            format!(
                ", resumed {} already present",
                output::bytes(s.bytes_present)
            )
        } else {
            String::new()
        },
        if s.bytes_duplicate > 0 {
            format!(
                ", {} received twice (endgame)",
                output::bytes(s.bytes_duplicate)
            )
        } else {
            String::new()
        }
    );
    let total: u64 = s.peers.iter().map(|p| p.bytes).sum::<u64>().max(1);
    let idle = s
        .peers
        .iter()
        .filter(|p| p.bytes == 0 && p.dropped.is_none())
        .count();
    for p in s
        .peers
        .iter()
        .filter(|p| p.bytes > 0 || p.dropped.is_some())
    {
        let share = p.bytes as f64 * 100.0 / total as f64;
        let note = p
            .dropped
            .as_deref()
            .map(|d| format!("  [{d}]"))
            .unwrap_or_default();
        eprintln!(
            "  from {} at {}: {} ({share:.0}%){note}",
            p.id,
            p.addr,
            output::bytes(p.bytes)
        );
    }
    match idle {
        0 => {}
        1 => eprintln!("  and 1 more peer, which had nothing this node needed"),
        n => eprintln!("  and {n} more peers, which had nothing this node needed"),
    }
    for (peer, why) in &s.unreachable {
        eprintln!("  unreachable {peer}: {why}");
    }
    if let Some(e) = &s.export {
        eprintln!("exported {} files to {}", e.files.len(), e.target.display());
    }
    println!("{}", m.id);
}
