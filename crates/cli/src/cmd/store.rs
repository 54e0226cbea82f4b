//! Store commands: ls, export, pin, unpin, gc, verify, status.

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::Args;
use modeld_api::protocol::{Reply, Request};

use crate::{
    Context,
    cmd::unexpected,
    output::{self, ProgressUi},
};

#[derive(Debug, Args)]
pub(crate) struct ExportArgs {
    /// Manifest id (or 6+ hex digits of it), org/model or org/model:version.
    reference: String,
    /// Target directory (created if needed).
    dir: PathBuf,
    /// Replace existing files whose content differs.
    #[arg(long)]
    force: bool,
    /// Always copy, never hard-link or reflink to the store's files.
    #[arg(long)]
    copy: bool,
}

pub(crate) fn ls(ctx: &Context) -> anyhow::Result<()> {
    let reply = ctx.connect()?.call(Request::ListManifests, &mut |_| {})?;
    let Reply::Manifests(list) = reply else {
        return Err(unexpected(reply));
    };
    if ctx.json {
        return output::json(&list);
    }
    if list.is_empty() {
        println!("no manifests in the store (publish one with `modelctl publish`)");
        return Ok(());
    }
    let rows: Vec<_> = list
        .iter()
        .map(|m| {
            let state = if m.complete_files == m.files {
                "complete".to_owned()
            } else {
                format!("{}/{} files", m.complete_files, m.files)
            };
            vec![
                m.name.to_string(),
                m.version.clone(),
                m.sequence.to_string(),
                m.files.to_string(),
                output::bytes(m.size),
                state,
                if m.pinned { "yes" } else { "no" }.to_owned(),
                m.id.short(),
            ]
        })
        .collect();
    output::table(
        &[
            "NAME", "VERSION", "SEQ", "FILES", "SIZE", "STATE", "PINNED", "ID",
        ],
        &rows,
    );
    Ok(())
}

pub(crate) fn export(ctx: &Context, args: &ExportArgs) -> anyhow::Result<()> {
    let target = std::path::absolute(&args.dir)
        .with_context(|| format!("resolving {}", args.dir.display()))?;
    let mut ui = ProgressUi::new(ctx);
    let reply = ctx.connect()?.call(
        Request::Export {
            reference: args.reference.clone(),
            target,
            overwrite: args.force,
            copy: args.copy,
        },
        &mut |e| ui.event(e),
    )?;
    ui.finish();
    let Reply::Exported(summary) = reply else {
        return Err(unexpected(reply));
    };
    if ctx.json {
        return output::json(&summary);
    }
    let mut how: Vec<(String, usize)> = Vec::new();
    for (_, placement) in &summary.files {
        match how.iter_mut().find(|(p, _)| p == placement) {
            Some((_, n)) => *n += 1,
            None => how.push((placement.clone(), 1)),
        }
    }
    let how = how
        .iter()
        .map(|(p, n)| format!("{n} {p}"))
        .collect::<Vec<_>>()
        .join(", ");
    println!(
        "exported {} files ({}) to {} [{how}]; every byte verified",
        summary.files.len(),
        output::bytes(summary.bytes),
        summary.target.display()
    );
    Ok(())
}

pub(crate) fn pin(ctx: &Context, reference: &str, pin: bool) -> anyhow::Result<()> {
    let reference = reference.to_owned();
    let request = if pin {
        Request::Pin { reference }
    } else {
        Request::Unpin { reference }
    };
    let reply = ctx.connect()?.call(request, &mut |_| {})?;
    let Reply::Pinned { id, changed } = reply else {
        return Err(unexpected(reply));
    };
    if ctx.json {
        return output::json(&serde_json::json!({ "id": id, "pinned": pin, "changed": changed }));
    }
    let word = if pin { "pinned" } else { "unpinned" };
    if changed {
        println!("{word} {id}");
    } else {
        println!("{id} was already {word}");
    }
    Ok(())
}

pub(crate) fn gc(ctx: &Context) -> anyhow::Result<()> {
    let reply = ctx.connect()?.call(Request::Gc, &mut |_| {})?;
    let Reply::Gc(r) = reply else {
        return Err(unexpected(reply));
    };
    if ctx.json {
        return output::json(&r);
    }
    println!(
        "removed {} manifests and {} blobs, freed {}",
        r.manifests_removed,
        r.blobs_removed,
        output::bytes(r.bytes_freed)
    );
    Ok(())
}

pub(crate) fn verify(ctx: &Context, reference: Option<String>) -> anyhow::Result<()> {
    let mut ui = ProgressUi::new(ctx);
    let reply = ctx
        .connect()?
        .call(Request::Verify { reference }, &mut |e| ui.event(e))?;
    ui.finish();
    let Reply::Verified(r) = reply else {
        return Err(unexpected(reply));
    };
    if ctx.json {
        output::json(&r)?;
    } else {
        for h in &r.outboards_repaired {
            println!("repaired the outboard of {h} (its data was intact)");
        }
        for c in &r.corrupt {
            let ranges = c
                .bad
                .iter()
                .map(|(s, e)| format!("{s}..{e}"))
                .collect::<Vec<_>>()
                .join(", ");
            let files = if c.files.is_empty() {
                String::new()
            } else {
                format!(" ({})", c.files.join(", "))
            };
            println!("CORRUPT blob {}{files}: bytes {ranges}", c.hash);
        }
        println!(
            "verified {} blobs, {}: {}",
            r.blobs,
            output::bytes(r.bytes),
            if r.corrupt.is_empty() {
                "all good".to_owned()
            } else {
                format!(
                    "{} corrupt (marked missing; fetch the model again to repair)",
                    r.corrupt.len()
                )
            }
        );
    }
    if !r.corrupt.is_empty() {
        if ctx.json {
            return Err(output::AlreadyReported.into());
        }
        bail!("{} corrupt blobs found", r.corrupt.len());
    }
    Ok(())
}

pub(crate) fn status(ctx: &Context) -> anyhow::Result<()> {
    let reply = ctx.connect()?.call(Request::Status, &mut |_| {})?;
    let Reply::Status(s) = reply else {
        return Err(unexpected(reply));
    };
    if ctx.json {
        return output::json(&s);
    }
    println!(
        "modeld {} (pid {}), up {}s",
        s.version, s.pid, s.uptime_secs
    );
    println!("data dir:   {}", s.data_dir.display());
    println!(
        "blobs:      {} complete, {} partial, {}",
        s.blobs_complete,
        s.blobs_partial,
        output::bytes(s.bytes)
    );
    println!("manifests:  {} ({} pinned)", s.manifests, s.pinned);
    println!("trusted:    {} keys", s.trusted_keys);
    if let Some(id) = &s.node_id {
        println!("node id:    {id}");
    }
    for (proto, addr) in &s.listen {
        println!("listening:  {proto} {addr}");
    }
    for (k, v) in &s.counters {
        println!("{k:<22}{v}");
    }
    Ok(())
}
