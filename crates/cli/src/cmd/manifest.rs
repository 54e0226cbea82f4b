//! `modelctl manifest show`: a manifest from a file (no daemon needed) or the store.

use std::path::Path;

use anyhow::Context as _;
use clap::Subcommand;
use modeld_api::protocol::{Reply, Request};
use modeld_core::SignedManifest;

use crate::{Context, cmd::unexpected, output};

#[derive(Debug, Subcommand)]
pub(crate) enum ManifestCommand {
    /// Show a manifest: a signed-manifest file, or a reference into the store.
    Show {
        /// A file path, a manifest id (or 6+ hex digits), org/model or org/model:version.
        reference: String,
        /// Print the signed envelope exactly as stored (to copy to other nodes).
        #[arg(long)]
        raw: bool,
    },
    /// Verify a signed manifest file against this node's trust and add it to the store
    /// (its files are fetched or published separately).
    Add {
        /// The signed manifest file.
        file: std::path::PathBuf,
        /// Pin it (GC keeps it and its files).
        #[arg(long)]
        pin: bool,
    },
}

pub(crate) fn run(ctx: &Context, command: ManifestCommand) -> anyhow::Result<()> {
    match command {
        ManifestCommand::Show { reference, raw } => show(ctx, &reference, raw),
        ManifestCommand::Add { file, pin } => add(ctx, &file, pin),
    }
}

fn add(ctx: &Context, file: &Path, pin: bool) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("reading signed manifest {}", file.display()))?;
    let reply = ctx.connect()?.call(
        Request::AddManifest {
            envelope: text.trim_end().to_owned(),
            pin,
        },
        &mut |_| {},
    )?;
    let Reply::Added(summary) = reply else {
        return Err(unexpected(reply));
    };
    if ctx.json {
        return output::json(&summary);
    }
    eprintln!(
        "added {}:{} (sequence {}){}",
        summary.name,
        summary.version,
        summary.sequence,
        if pin { ", pinned" } else { "" }
    );
    println!("{}", summary.id);
    Ok(())
}

fn show(ctx: &Context, reference: &str, raw: bool) -> anyhow::Result<()> {
    let reference = reference.to_owned();
    let (envelope, pinned) = if Path::new(&reference).is_file() {
        let bytes = std::fs::read(&reference).with_context(|| format!("reading {reference}"))?;
        (bytes, None)
    } else {
        let reply = ctx.connect()?.call(
            Request::GetManifest {
                reference: reference.clone(),
            },
            &mut |_| {},
        )?;
        let Reply::Manifest(detail) = reply else {
            return Err(unexpected(reply));
        };
        (detail.envelope.into_bytes(), Some(detail.summary.pinned))
    };
    if raw {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        out.write_all(&envelope)?;
        writeln!(out)?;
        return Ok(());
    }
    let signed = SignedManifest::open(&envelope)
        .with_context(|| format!("{reference} is not a valid signed manifest"))?;
    let m = &signed.manifest;
    if ctx.json {
        let body: serde_json::Value = serde_json::from_slice(signed.envelope.payload())?;
        return output::json(&serde_json::json!({
            "id": signed.id,
            "manifest": body,
            "valid_signatures": signed.signatures.valid,
            "invalid_signatures": signed.signatures.invalid,
            "pinned": pinned,
        }));
    }
    println!("id:         {}", signed.id);
    println!("name:       {}:{}", m.name(), m.version());
    println!("sequence:   {}", m.sequence());
    println!("created:    {}", output::time(m.created()));
    if let Some(e) = m.expires() {
        println!("expires:    {}", output::time(e));
    }
    println!("publisher:  {}", m.publisher());
    for k in &signed.signatures.valid {
        println!("signature:  {k} (valid)");
    }
    for k in &signed.signatures.invalid {
        println!("signature:  {k} (INVALID)");
    }
    if let Some(p) = pinned {
        println!("pinned:     {}", if p { "yes" } else { "no" });
    }
    println!(
        "size:       {} in {} files",
        output::bytes(m.total_size()),
        m.files().len()
    );
    println!();
    let rows: Vec<_> = m
        .files()
        .iter()
        .map(|f| {
            vec![
                f.path.to_string(),
                f.size.to_string(),
                f.format.to_string(),
                f.blake3.to_string(),
            ]
        })
        .collect();
    output::table(&["PATH", "SIZE", "FORMAT", "BLAKE3"], &rows);
    Ok(())
}
