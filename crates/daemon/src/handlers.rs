//! One function per API request. They run on blocking threads (the store is
//! synchronous) and turn store errors into [`ApiError`]s a person can act on.

use std::{
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
};

use modeld_api::protocol::{
    ApiError, CorruptBlob, ErrorKind, ExportSummary, GcSummary, ImportedFile, ManifestDetail,
    ManifestSummary, PeerSummary, PublishPlan, Reply, Request, Status, TrustedKey, VerifySummary,
};
use modeld_core::{
    Hash, TrustScope,
    format::{self, FileSource, Inspection, SafetyError},
};
use modeld_store::{
    AddManifestError, ExportError, ExportOptions, ImportError, ResolveError, StoreError,
    StoredManifest, TempTag, unix_now,
};

use crate::node::{Node, Progress};

/// Per-session state that outlives single requests.
#[derive(Debug, Default)]
pub(crate) struct SessionState {
    /// Blobs imported in this session, protected from GC until it ends.
    pub(crate) tags: Vec<TempTag>,
}

/// Runs one request to completion.
pub(crate) fn handle(
    node: &Node,
    request: Request,
    session: &mut SessionState,
    progress: &Progress,
    cancel: &AtomicBool,
) -> Result<Reply, ApiError> {
    match request {
        Request::Status => status(node),
        Request::Import {
            paths,
            allow_pickle,
        } => import(node, &paths, allow_pickle, session, progress, cancel),
        Request::PreparePublish { name, publisher } => {
            let next_sequence = node
                .store
                .name_state(&name)
                .map_err(internal)?
                .map_or(1, |s| s.sequence + 1);
            let trusted = node
                .store
                .trust()
                .map_err(internal)?
                .allows(&publisher, &name);
            Ok(Reply::PublishPlan(PublishPlan {
                next_sequence,
                trusted,
            }))
        }
        Request::AddManifest { envelope, pin } => {
            let added = node
                .store
                .add_manifest(envelope.as_bytes(), unix_now(), pin)
                .map_err(|e| match e {
                    AddManifestError::Malformed(e) => {
                        ApiError::new(ErrorKind::Invalid, e.to_string())
                    }
                    AddManifestError::Refused(e) => {
                        ApiError::new(ErrorKind::Refused, e.to_string())
                    }
                    AddManifestError::Store(e) => internal(e),
                    other => ApiError::new(ErrorKind::Internal, other.to_string()),
                })?;
            if added.existed {
                tracing::info!(manifest = %added.id, "manifest already present");
            } else {
                tracing::info!(manifest = %added.id, name = %added.signed.manifest.name(), "manifest added");
            }
            crate::announce::announce_manifest(node, added.id);
            let stored = node
                .store
                .manifest(added.id)
                .map_err(internal)?
                .ok_or_else(|| {
                    ApiError::new(ErrorKind::Internal, "manifest vanished after adding")
                })?;
            Ok(Reply::Added(summary(node, &stored)?))
        }
        Request::GetManifest { reference } => {
            let stored = lookup(node, &reference)?;
            Ok(Reply::Manifest(ManifestDetail {
                summary: summary(node, &stored)?,
                envelope: String::from_utf8_lossy(&stored.envelope).into_owned(),
            }))
        }
        Request::ListManifests => {
            let all = node.store.manifests().map_err(internal)?;
            let list = all
                .iter()
                .map(|m| summary(node, m))
                .collect::<Result<_, _>>()?;
            Ok(Reply::Manifests(list))
        }
        Request::Export {
            reference,
            target,
            overwrite,
            copy,
        } => export(node, &reference, &target, overwrite, copy, progress),
        Request::Pin { reference } => {
            let id = resolve(node, &reference)?;
            let changed = node
                .store
                .manifest(id)
                .map_err(internal)?
                .is_some_and(|m| m.pinned.is_none());
            if !node.store.pin(id, unix_now()).map_err(internal)? {
                return Err(not_found_manifest(&reference));
            }
            crate::announce::announce_manifest(node, id);
            Ok(Reply::Pinned { id, changed })
        }
        Request::Unpin { reference } => {
            let id = resolve(node, &reference)?;
            let changed = node.store.unpin(id).map_err(internal)?;
            Ok(Reply::Pinned { id, changed })
        }
        Request::Gc => {
            let r = node.store.gc().map_err(internal)?;
            let withdrawn: Vec<Hash> = r
                .removed_blobs
                .iter()
                .chain(&r.removed_manifests)
                .copied()
                .collect();
            if !withdrawn.is_empty() {
                let d = node.discovery.clone();
                tokio::runtime::Handle::current()
                    .spawn(async move { d.unprovide(withdrawn).await });
            }
            tracing::info!(
                manifests = r.manifests_removed,
                blobs = r.blobs_removed,
                bytes = r.bytes_freed,
                "gc done"
            );
            Ok(Reply::Gc(GcSummary {
                manifests_removed: r.manifests_removed,
                blobs_removed: r.blobs_removed,
                bytes_freed: r.bytes_freed,
            }))
        }
        Request::Verify { reference } => verify(node, reference.as_deref(), progress),
        Request::TrustAdd { key, scope } => {
            let scope: TrustScope = scope
                .parse()
                .map_err(|e| ApiError::new(ErrorKind::Invalid, format!("scope {scope:?}: {e}")))?;
            node.store.trust_add(key, scope.clone()).map_err(internal)?;
            tracing::info!(%key, %scope, "key trusted");
            trust_list(node)
        }
        Request::TrustRemove { key, scope } => {
            let scope = scope
                .map(|s| {
                    s.parse::<TrustScope>()
                        .map_err(|e| ApiError::new(ErrorKind::Invalid, format!("scope {s:?}: {e}")))
                })
                .transpose()?;
            if !node
                .store
                .trust_remove(key, scope.as_ref())
                .map_err(internal)?
            {
                return Err(ApiError::new(
                    ErrorKind::NotFound,
                    format!(
                        "{key} is not trusted{}",
                        scope.map(|s| format!(" for {s}")).unwrap_or_default()
                    ),
                ));
            }
            tracing::info!(%key, "trust removed");
            trust_list(node)
        }
        Request::TrustList => trust_list(node),
        Request::Peers => {
            let peers = tokio::runtime::Handle::current().block_on(node.discovery.peers());
            Ok(Reply::Peers(
                peers
                    .into_iter()
                    .map(|p| PeerSummary {
                        id: p.id,
                        addrs: p.addrs,
                        data: p.data.map(|a| a.to_string()),
                        sources: p.sources.iter().map(|s| s.as_str().to_owned()).collect(),
                        connected: p.connected,
                        rtt_us: p.rtt.map(|d| d.as_micros() as u64),
                    })
                    .collect(),
            ))
        }
        Request::Fetch {
            reference,
            envelope,
            peers,
            out,
            overwrite,
            copy,
        } => crate::fetch::fetch(
            node,
            crate::fetch::FetchArgs {
                reference,
                envelope,
                peers,
                out,
                overwrite,
                copy,
            },
            progress,
            cancel,
        ),
    }
}

pub(crate) fn internal(e: StoreError) -> ApiError {
    tracing::error!(error = %e, "store failure");
    ApiError::new(ErrorKind::Internal, e.to_string())
}

fn not_found_manifest(reference: &str) -> ApiError {
    ApiError::new(
        ErrorKind::NotFound,
        format!("no manifest matches {reference:?} in this store (see `modelctl ls`)"),
    )
}

pub(crate) fn resolve(node: &Node, reference: &str) -> Result<Hash, ApiError> {
    node.store.resolve(reference).map_err(|e| match e {
        ResolveError::NotFound(_) => ApiError::new(ErrorKind::NotFound, e.to_string()),
        ResolveError::Store(e) => internal(e),
        other => ApiError::new(ErrorKind::Invalid, other.to_string()),
    })
}

pub(crate) fn lookup(node: &Node, reference: &str) -> Result<StoredManifest, ApiError> {
    let id = resolve(node, reference)?;
    node.store
        .manifest(id)
        .map_err(internal)?
        .ok_or_else(|| not_found_manifest(reference))
}

pub(crate) fn summary(node: &Node, m: &StoredManifest) -> Result<ManifestSummary, ApiError> {
    let manifest = &m.signed.manifest;
    let mut complete_files = 0;
    for f in manifest.files() {
        if node
            .store
            .blob(f.blake3)
            .map_err(internal)?
            .is_some_and(|b| b.complete && b.size == f.size)
        {
            complete_files += 1;
        }
    }
    Ok(ManifestSummary {
        id: m.id,
        name: manifest.name().clone(),
        version: manifest.version().to_string(),
        sequence: manifest.sequence(),
        files: manifest.files().len(),
        size: manifest.total_size(),
        complete_files,
        pinned: m.pinned.is_some(),
        created: manifest.created(),
        expires: manifest.expires(),
        publisher: *manifest.publisher(),
    })
}

fn status(node: &Node) -> Result<Reply, ApiError> {
    let blobs = node.store.blobs().map_err(internal)?;
    let manifests = node.store.manifests().map_err(internal)?;
    let trust = node.store.trust().map_err(internal)?;
    Ok(Reply::Status(Status {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        pid: std::process::id(),
        data_dir: node.config.data_dir.clone(),
        uptime_secs: node.started.elapsed().as_secs(),
        blobs_complete: blobs.iter().filter(|b| b.complete).count() as u64,
        blobs_partial: blobs.iter().filter(|b| !b.complete).count() as u64,
        bytes: blobs
            .iter()
            .map(|b| modeld_core::ranges::covered_bytes(&b.ranges, b.size))
            .sum(),
        manifests: manifests.len() as u64,
        pinned: manifests.iter().filter(|m| m.pinned.is_some()).count() as u64,
        trusted_keys: trust.iter().count() as u64,
        counters: node
            .counters
            .snapshot()
            .into_iter()
            .chain(
                node.net
                    .counters()
                    .snapshot()
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), v)),
            )
            .collect(),
        node_id: Some(node.net.node_id()),
        listen: {
            let mut l = std::collections::BTreeMap::new();
            if let Ok(a) = node.net.local_addr() {
                l.insert("quic".to_owned(), a.to_string());
            }
            if let Some(a) = node.discovery.listen_addrs().into_iter().next() {
                l.insert("p2p".to_owned(), a);
            }
            l
        },
    }))
}

/// Inspects a local file by content.
fn inspect_file(p: &Path) -> Result<Inspection, String> {
    let file = std::fs::File::open(p).map_err(|e| format!("cannot read: {e}"))?;
    let src = FileSource::new(&file).map_err(|e| format!("cannot read: {e}"))?;
    format::inspect_named(&src, &p.to_string_lossy()).map_err(|e| e.to_string())
}

fn import(
    node: &Node,
    paths: &[std::path::PathBuf],
    allow_pickle: bool,
    session: &mut SessionState,
    progress: &Progress,
    cancel: &AtomicBool,
) -> Result<Reply, ApiError> {
    let mut total = 0;
    for p in paths {
        if !p.is_absolute() {
            return Err(ApiError::new(
                ErrorKind::Invalid,
                format!("{} is not an absolute path", p.display()),
            ));
        }
        total += std::fs::metadata(p)
            .map_err(|e| {
                ApiError::new(
                    ErrorKind::Invalid,
                    format!("cannot read {}: {e}", p.display()),
                )
            })?
            .len();
    }
    // Every file is inspected before any is stored, so a refusal leaves the store as
    // it was.
    progress.start("inspecting", total);
    let mut formats = Vec::with_capacity(paths.len());
    let mut refusals = Vec::new();
    for p in paths {
        progress.item(p.display().to_string());
        match inspect_file(p) {
            Ok(i) => {
                if let Err(e) = i.check(allow_pickle) {
                    let hint = match e {
                        SafetyError::PickleNotAllowed { .. } => {
                            " (convert it to safetensors, or pass --allow-pickle to publish it and record that in the manifest)"
                        }
                        _ => "",
                    };
                    refusals.push(format!("{}: {e}{hint}", p.display()));
                }
                formats.push(i.format);
            }
            Err(e) => refusals.push(format!("{}: {e}", p.display())),
        }
        progress.add(std::fs::metadata(p).map_or(0, |m| m.len()));
    }
    if !refusals.is_empty() {
        return Err(ApiError::new(
            ErrorKind::Refused,
            format!(
                "refusing to import {} of {} files; nothing was stored:\n  {}",
                refusals.len(),
                paths.len(),
                refusals.join("\n  ")
            ),
        ));
    }
    progress.start("hashing", total);
    let mut out = Vec::with_capacity(paths.len());
    for (p, format) in paths.iter().zip(formats) {
        progress.item(p.display().to_string());
        let imported = node
            .store
            .import_file(p, &|n| progress.add(n), cancel)
            .map_err(|e| match e {
                ImportError::Cancelled => ApiError::new(ErrorKind::Cancelled, "import cancelled"),
                ImportError::Store(e) => internal(e),
                other => ApiError::new(ErrorKind::Invalid, other.to_string()),
            })?;
        if imported.deduplicated {
            tracing::debug!(path = %p.display(), blob = %imported.hash, "already stored");
        } else {
            node.counters
                .bytes_imported
                .fetch_add(imported.size, Ordering::Relaxed);
            tracing::info!(path = %p.display(), blob = %imported.hash, size = imported.size, reflink = imported.reflinked, "imported");
        }
        out.push(ImportedFile {
            path: p.clone(),
            hash: imported.hash,
            size: imported.size,
            format,
            deduplicated: imported.deduplicated,
        });
        session.tags.push(imported.tag);
    }
    Ok(Reply::Imported(out))
}

fn export(
    node: &Node,
    reference: &str,
    target: &Path,
    overwrite: bool,
    copy: bool,
    progress: &Progress,
) -> Result<Reply, ApiError> {
    let stored = lookup(node, reference)?;
    export_manifest(node, &stored, target, overwrite, copy, progress).map(Reply::Exported)
}

/// Exports a stored manifest to `target` (absolute), reporting progress.
pub(crate) fn export_manifest(
    node: &Node,
    stored: &StoredManifest,
    target: &Path,
    overwrite: bool,
    copy: bool,
    progress: &Progress,
) -> Result<ExportSummary, ApiError> {
    if !target.is_absolute() {
        return Err(ApiError::new(
            ErrorKind::Invalid,
            format!("{} is not an absolute path", target.display()),
        ));
    }
    progress.start("exporting", stored.signed.manifest.total_size());
    let options = ExportOptions {
        overwrite,
        copy,
        now: unix_now(),
        allow_pickle: node.config.allow_pickle,
    };
    let report = node
        .store
        .export(stored.id, target, &options, &|n| progress.add(n))
        .map_err(|e| {
            let kind = match &e {
                ExportError::Refused(_) => ErrorKind::Refused,
                ExportError::Incomplete { .. } | ExportError::UnknownManifest(_) => {
                    ErrorKind::NotFound
                }
                ExportError::Exists(_)
                | ExportError::NotADirectory(_)
                | ExportError::IsADirectory(_) => ErrorKind::Conflict,
                ExportError::CorruptBlob { .. } | ExportError::SizeMismatch { .. } => {
                    ErrorKind::Corrupt
                }
                ExportError::Malformed { .. } | ExportError::Unsafe { .. } => ErrorKind::Refused,
                _ => ErrorKind::Internal,
            };
            ApiError::new(kind, e.to_string())
        })?;
    node.counters
        .bytes_exported
        .fetch_add(report.bytes, Ordering::Relaxed);
    tracing::info!(manifest = %stored.id, target = %report.target.display(), bytes = report.bytes, "exported");
    Ok(ExportSummary {
        id: stored.id,
        target: report.target,
        files: report
            .files
            .into_iter()
            .map(|(p, how)| (p, how.as_str().to_owned()))
            .collect(),
        bytes: report.bytes,
    })
}

fn verify(node: &Node, reference: Option<&str>, progress: &Progress) -> Result<Reply, ApiError> {
    let manifests = node.store.manifests().map_err(internal)?;
    let only: Option<Vec<Hash>> = match reference {
        Some(r) => Some(
            lookup(node, r)?
                .signed
                .manifest
                .files()
                .iter()
                .map(|f| f.blake3)
                .collect(),
        ),
        None => None,
    };
    let blobs = node.store.blobs().map_err(internal)?;
    let total = blobs
        .iter()
        .filter(|b| only.as_ref().is_none_or(|o| o.contains(&b.hash)))
        .map(|b| modeld_core::ranges::covered_bytes(&b.ranges, b.size))
        .sum();
    progress.start("verifying", total);
    let report = node
        .store
        .verify(only.as_deref(), &|n| progress.add(n))
        .map_err(internal)?;
    node.counters
        .bytes_verified
        .fetch_add(report.bytes, Ordering::Relaxed);
    let names = |hash: Hash| -> Vec<String> {
        manifests
            .iter()
            .flat_map(|m| {
                let man = &m.signed.manifest;
                man.files()
                    .iter()
                    .filter(move |f| f.blake3 == hash)
                    .map(move |f| format!("{}:{}/{}", man.name(), man.version(), f.path))
            })
            .collect()
    };
    Ok(Reply::Verified(VerifySummary {
        blobs: report.blobs,
        bytes: report.bytes,
        outboards_repaired: report.outboards_repaired,
        corrupt: report
            .corrupt
            .into_iter()
            .map(|c| CorruptBlob {
                hash: c.hash,
                files: names(c.hash),
                bad: c.bad.into_iter().map(|r| (r.start, r.end)).collect(),
            })
            .collect(),
    }))
}

fn trust_list(node: &Node) -> Result<Reply, ApiError> {
    let set = node.store.trust().map_err(internal)?;
    Ok(Reply::Trust(
        set.iter()
            .map(|(k, scopes)| TrustedKey {
                key: *k,
                scopes: scopes.iter().map(ToString::to_string).collect(),
            })
            .collect(),
    ))
}
