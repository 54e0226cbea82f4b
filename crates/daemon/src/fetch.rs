//! The fetch request: obtain and check the manifest, fetch its files from peers, pin,
//! and export if asked.
//!
//! Order matters: the manifest passes the trust policy (signature, trusted key and
//! scope, expiry, rollback, safe paths) before a single byte of file data is requested.

use std::{path::PathBuf, sync::atomic::AtomicBool};

use modeld_api::protocol::{ApiError, ErrorKind, FetchSummary, PeerContribution, Reply};
use modeld_net::{PeerAddr, fetch::FetchError};
use modeld_store::{AddManifestError, StoredManifest, TempTag, unix_now};

use crate::{
    handlers::{export_manifest, internal, summary},
    node::{Node, Progress},
};

/// What the client asked for.
#[derive(Debug)]
pub(crate) struct FetchArgs {
    pub(crate) reference: Option<String>,
    pub(crate) envelope: Option<String>,
    pub(crate) peers: Vec<String>,
    pub(crate) out: Option<PathBuf>,
    pub(crate) overwrite: bool,
    pub(crate) copy: bool,
}

/// Runs a fetch on this (blocking) thread.
pub(crate) fn fetch(
    node: &Node,
    args: FetchArgs,
    progress: &Progress,
    cancel: &AtomicBool,
) -> Result<Reply, ApiError> {
    let runtime = tokio::runtime::Handle::current();
    let mut peers = args
        .peers
        .iter()
        .map(|p| {
            p.parse::<PeerAddr>()
                .map_err(|e| ApiError::new(ErrorKind::Invalid, e))
        })
        .collect::<Result<Vec<_>, _>>()?;
    for p in &node.config.net.peers {
        if !peers.iter().any(|q| q.addr == p.addr) {
            peers.push(*p);
        }
    }
    if let Some(out) = &args.out
        && !out.is_absolute()
    {
        return Err(ApiError::new(
            ErrorKind::Invalid,
            format!("{} is not an absolute path", out.display()),
        ));
    }
    let (stored, _tag) = obtain_manifest(node, &args, &peers, &runtime)?;
    let m = &stored.signed.manifest;
    tracing::info!(
        manifest = %stored.id,
        name = %m.name(),
        version = %m.version(),
        bytes = m.total_size(),
        peers = peers.len(),
        "fetch starting"
    );
    progress.start("fetching", m.total_size());
    let report = runtime
        .block_on(modeld_net::fetch::fetch(
            &node.net,
            &stored.signed,
            &peers,
            &|done, total, live| progress.transfer(done, total, live),
            cancel,
        ))
        .map_err(|e| {
            let kind = match &e {
                FetchError::Cancelled => ErrorKind::Cancelled,
                FetchError::Store(_) => ErrorKind::Internal,
                _ => ErrorKind::NotFound,
            };
            tracing::warn!(manifest = %stored.id, error = %e, "fetch failed");
            ApiError::new(kind, format!("fetching {}:{}: {e}", m.name(), m.version()))
        })?;
    node.store.pin(stored.id, unix_now()).map_err(internal)?;
    let stored = node
        .store
        .manifest(stored.id)
        .map_err(internal)?
        .ok_or_else(|| ApiError::new(ErrorKind::Internal, "manifest vanished"))?;
    tracing::info!(
        manifest = %stored.id,
        fetched = report.bytes_fetched,
        resumed = report.bytes_present,
        duplicate = report.bytes_duplicate,
        ms = report.elapsed.as_millis() as u64,
        "fetch done; pinned"
    );
    let export = match &args.out {
        Some(out) => Some(export_manifest(
            node,
            &stored,
            out,
            args.overwrite,
            args.copy,
            progress,
        )?),
        None => None,
    };
    Ok(Reply::Fetched(FetchSummary {
        manifest: summary(node, &stored)?,
        bytes_total: report.bytes_total,
        bytes_present: report.bytes_present,
        bytes_fetched: report.bytes_fetched,
        bytes_duplicate: report.bytes_duplicate,
        elapsed_ms: report.elapsed.as_millis() as u64,
        peers: report
            .peers
            .into_iter()
            .map(|p| PeerContribution {
                id: p.id,
                addr: p.addr.to_string(),
                bytes: p.bytes,
                dropped: p.dropped,
            })
            .collect(),
        unreachable: report.unreachable,
        export,
    }))
}

/// The manifest to fetch, accepted by the trust policy, and a tag that keeps it from
/// GC until the fetch ends.
fn obtain_manifest(
    node: &Node,
    args: &FetchArgs,
    peers: &[PeerAddr],
    runtime: &tokio::runtime::Handle,
) -> Result<(StoredManifest, TempTag), ApiError> {
    let refused = |e: AddManifestError| match e {
        AddManifestError::Malformed(e) => {
            ApiError::new(ErrorKind::Invalid, format!("refusing the manifest: {e}"))
        }
        AddManifestError::Refused(e) => {
            ApiError::new(ErrorKind::Refused, format!("refusing the manifest: {e}"))
        }
        AddManifestError::Store(e) => internal(e),
        other => ApiError::new(ErrorKind::Internal, other.to_string()),
    };
    let add = |envelope: &[u8]| -> Result<(StoredManifest, TempTag), ApiError> {
        let id = modeld_core::Envelope::from_bytes(envelope)
            .map_err(|e| ApiError::new(ErrorKind::Invalid, format!("refusing the manifest: {e}")))?
            .manifest_id();
        let tag = node.store.protect(id);
        node.store
            .add_manifest(envelope, unix_now(), false)
            .map_err(refused)?;
        let stored = node
            .store
            .manifest(id)
            .map_err(internal)?
            .ok_or_else(|| ApiError::new(ErrorKind::Internal, "manifest vanished"))?;
        Ok((stored, tag))
    };
    if let Some(envelope) = &args.envelope {
        return add(envelope.as_bytes());
    }
    let reference = args.reference.as_deref().ok_or_else(|| {
        ApiError::new(
            ErrorKind::Invalid,
            "give a manifest id, a name, or a manifest file",
        )
    })?;
    match node.store.resolve(reference) {
        Ok(id) => {
            if let Some(stored) = node.store.manifest(id).map_err(internal)? {
                let tag = node.store.protect(id);
                node.store.recheck(&stored, unix_now()).map_err(|e| {
                    ApiError::new(ErrorKind::Refused, format!("refusing the manifest: {e}"))
                })?;
                return Ok((stored, tag));
            }
            // A full id the store does not have: ask the peers for it.
            let envelope = runtime
                .block_on(modeld_net::fetch::fetch_manifest(&node.net, peers, id))
                .map_err(|e| ApiError::new(ErrorKind::NotFound, format!("manifest {id}: {e}")))?;
            add(&envelope)
        }
        Err(modeld_store::ResolveError::NotFound(_)) if reference.contains('/') => {
            Err(ApiError::new(
                ErrorKind::NotFound,
                format!(
                    "{reference} is not in this store; give the manifest id (`modelctl manifest show {reference}` on a node that has it) or a signed manifest file"
                ),
            ))
        }
        Err(e) => Err(ApiError::new(ErrorKind::Invalid, e.to_string())),
    }
}
