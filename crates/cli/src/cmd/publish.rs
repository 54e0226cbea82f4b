//! `modelctl publish`: hash a directory into the store, sign a manifest, pin it.
//!
//! One API session: check the key is trusted for the name (before hashing anything),
//! import the files (the daemon hashes them on all cores and keeps them safe from GC
//! for the session), sign the manifest here (the secret key never leaves this
//! process), and add it pinned.

use std::{
    path::PathBuf,
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, bail};
use clap::Args;
use modeld_api::protocol::{Reply, Request};
use modeld_core::{Envelope, Manifest, ManifestFile, ManifestHeader, ModelName, Version};

use crate::{
    Context,
    cmd::{keys, parse_duration, unexpected},
    output::{self, ProgressUi},
    walk,
};

#[derive(Debug, Args)]
pub(crate) struct PublishArgs {
    /// The model directory.
    dir: PathBuf,
    /// Model name, `org/model`.
    #[arg(long)]
    name: ModelName,
    /// Version label, e.g. `3` or `1.2.0`.
    #[arg(long)]
    version: Version,
    /// Secret key file that signs the manifest.
    #[arg(long, value_name = "FILE")]
    key: PathBuf,
    /// Sequence number (default: one more than the highest this node has seen for the name).
    #[arg(long)]
    sequence: Option<u64>,
    /// Make the manifest expire after this long (e.g. `90d`); nodes refuse it afterwards.
    #[arg(long, value_name = "DURATION")]
    expires_in: Option<String>,
    /// Publish pickle-based files (PyTorch `.bin`/`.pt`, pickles, object arrays) whose
    /// imports are all tensor-rebuilding callables. Loading a pickle can run code; the
    /// manifest records that you allowed it, and consuming nodes refuse it unless their
    /// config allows pickle too. Files importing anything else are refused regardless.
    #[arg(long)]
    allow_pickle: bool,
}

pub(crate) fn run(ctx: &Context, args: &PublishArgs) -> anyhow::Result<()> {
    let key = keys::load(&args.key)?;
    let expires_in = args.expires_in.as_deref().map(parse_duration).transpose()?;
    let files = walk::model_files(&args.dir)?;
    let mut client = ctx.connect()?;

    let reply = client.call(
        Request::PreparePublish {
            name: args.name.clone(),
            publisher: key.public(),
        },
        &mut |_| {},
    )?;
    let Reply::PublishPlan(plan) = reply else {
        return Err(unexpected(reply));
    };
    if !plan.trusted {
        bail!(
            "this node does not trust {} to sign for {}; if it should, run:\n  modelctl trust add {} --scope {}/",
            key.public(),
            args.name,
            key.public(),
            args.name.org()
        );
    }
    let sequence = args.sequence.unwrap_or(plan.next_sequence);
    if sequence < plan.next_sequence.saturating_sub(1) {
        bail!(
            "sequence {sequence} is lower than {} already published for {}; nodes would refuse it as a rollback",
            plan.next_sequence - 1,
            args.name
        );
    }

    let total: u64 = files.iter().map(|f| f.size).sum();
    if !ctx.json {
        eprintln!(
            "publishing {} files ({}) from {} as {}:{}",
            files.len(),
            output::bytes(total),
            args.dir.display(),
            args.name,
            args.version
        );
    }
    let mut ui = ProgressUi::new(ctx);
    let reply = client.call(
        Request::Import {
            paths: files.iter().map(|f| f.source.clone()).collect(),
            allow_pickle: args.allow_pickle,
        },
        &mut |e| ui.event(e),
    )?;
    ui.finish();
    let Reply::Imported(imported) = reply else {
        return Err(unexpected(reply));
    };
    if imported.len() != files.len() {
        bail!(
            "modeld imported {} files, expected {}",
            imported.len(),
            files.len()
        );
    }

    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let manifest = Manifest::new(
        ManifestHeader {
            name: args.name.clone(),
            version: args.version.clone(),
            sequence,
            created: now,
            expires: expires_in.map(|d| now + d.as_secs()),
            publisher: key.public(),
            allow_pickle: args.allow_pickle && imported.iter().any(|i| i.format.is_pickle()),
        },
        files
            .iter()
            .zip(&imported)
            .map(|(f, i)| ManifestFile {
                path: f.path.clone(),
                size: i.size,
                blake3: i.hash,
                format: i.format,
            })
            .collect(),
    )
    .context("building the manifest")?;
    let envelope = Envelope::sign(manifest.to_bytes(), &key);
    let envelope_text = String::from_utf8(envelope.to_bytes())?;
    let reply = client.call(
        Request::AddManifest {
            envelope: envelope_text,
            pin: true,
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
        "published {}:{} (sequence {}), {} files, {}; pinned",
        summary.name,
        summary.version,
        summary.sequence,
        summary.files,
        output::bytes(summary.size)
    );
    println!("{}", summary.id);
    Ok(())
}
