//! The fetch request: obtain and check the manifest, fetch its files from peers, pin,
//! and export if asked.
//!
//! Order matters: the manifest passes the trust policy (signature, trusted key and
//! scope, expiry, rollback, safe paths) before a single byte of file data is requested.

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    path::PathBuf,
    sync::atomic::AtomicBool,
    time::{Duration, Instant},
};

use modeld_api::protocol::{ApiError, ErrorKind, FetchSummary, PeerContribution, Reply};
use modeld_core::{Hash, NameRef, SignedManifest};
use modeld_net::{
    PeerAddr,
    discovery::Discovery,
    fetch::{Discovered, FetchError, FetchOptions},
};
use modeld_store::{AddManifestError, StoredManifest, TempTag, unix_now};
use tokio::sync::mpsc;

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
    // Discovery keeps finding peers while the fetch runs: everyone nearby, and
    // whoever announced the manifest or one of its blobs in the DHT.
    // (Unless this node has no way to discover anyone: then the given peers are all.)
    let discovering = node.config.net.mdns
        || !node.config.net.bootstrap.is_empty()
        || !runtime.block_on(node.discovery.peers()).is_empty();
    let (found_tx, found_rx) = mpsc::channel(64);
    let mut keys: Vec<Hash> = m.files().iter().map(|f| f.blake3).collect();
    keys.push(stored.id);
    let feeder = runtime.spawn(feed_peers(node.discovery.clone(), keys, found_tx));
    let announce = |hash: Hash| {
        let d = node.discovery.clone();
        runtime.spawn(async move { d.provide(vec![hash]).await });
    };
    let result = runtime.block_on(modeld_net::fetch::fetch(
        &node.net,
        &stored.signed,
        FetchOptions {
            peers: &peers,
            discovered: discovering.then_some(found_rx),
            progress: &|done, total, live| progress.transfer(done, total, live),
            on_first_piece: &announce,
            cancel,
        },
    ));
    feeder.abort();
    let report = result.map_err(|e| {
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
    crate::announce::announce_manifest(node, stored.id);
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
        // The pickle policy is checked before the manifest is stored; signature and
        // trust are checked by `add_manifest` (a manifest that fails to parse here
        // gets its precise error there).
        if let Ok(signed) = SignedManifest::open(envelope) {
            pickle_policy(node, &signed.manifest)?;
        }
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
    let mut refused = Vec::new();
    if let Ok(name_ref) = reference.parse::<NameRef>() {
        // A name: the DHT may know a newer release than this store.
        let (best, why_not) = resolve_in_dht(node, &name_ref, runtime);
        if let Some(envelope) = best {
            return add(&envelope);
        }
        refused = why_not;
    }
    match node.store.resolve(reference) {
        Ok(id) => {
            if let Some(stored) = node.store.manifest(id).map_err(internal)? {
                let tag = node.store.protect(id);
                node.store.recheck(&stored, unix_now()).map_err(|e| {
                    ApiError::new(ErrorKind::Refused, format!("refusing the manifest: {e}"))
                })?;
                pickle_policy(node, &stored.signed.manifest)?;
                return Ok((stored, tag));
            }
            // A full id the store does not have: ask the given peers, then whoever
            // announced it in the DHT.
            let mut sources = peers.to_vec();
            sources.extend(runtime.block_on(providers_of(&node.discovery, id)));
            let envelope = runtime
                .block_on(modeld_net::fetch::fetch_manifest(&node.net, &sources, id))
                .map_err(|e| ApiError::new(ErrorKind::NotFound, format!("manifest {id}: {e}")))?;
            add(&envelope)
        }
        Err(modeld_store::ResolveError::NotFound(_)) if reference.contains('/') => {
            if refused.is_empty() {
                Err(ApiError::new(
                    ErrorKind::NotFound,
                    format!("no trusted manifest for {reference} in this store or the DHT"),
                ))
            } else {
                Err(ApiError::new(
                    ErrorKind::Refused,
                    format!(
                        "refusing every manifest the DHT has for {reference}: {}",
                        refused.join("; ")
                    ),
                ))
            }
        }
        Err(e) => Err(ApiError::new(ErrorKind::Invalid, e.to_string())),
    }
}

/// Refuses a manifest with pickle-based files unless this node allows pickle, before
/// any of its data moves. (The content is inspected again on export.)
fn pickle_policy(node: &Node, m: &modeld_core::Manifest) -> Result<(), ApiError> {
    let pickles: Vec<String> = m
        .pickle_files()
        .map(|f| format!("{} ({})", f.path, f.format))
        .collect();
    if pickles.is_empty() || node.config.allow_pickle {
        return Ok(());
    }
    Err(ApiError::new(
        ErrorKind::Refused,
        format!(
            "refusing {}:{}: it contains pickle-based files, which can run code when loaded: {}; \
this node does not allow pickle (set safety.allow_pickle = true in modeld's config, or start it with --allow-pickle true)",
            m.name(),
            m.version(),
            pickles.join(", ")
        ),
    ))
}

/// The highest-sequence signed manifest for `name_ref` that the DHT holds and this node
/// accepts, and why the others were refused. Forged, untrusted and rolled-back records
/// are ignored, and logged.
fn resolve_in_dht(
    node: &Node,
    name_ref: &NameRef,
    runtime: &tokio::runtime::Handle,
) -> (Option<Vec<u8>>, Vec<String>) {
    let candidates = runtime.block_on(
        node.discovery
            .resolve_name(&name_ref.name, name_ref.version.as_ref()),
    );
    let floor = node.store.name_state(&name_ref.name).ok().flatten();
    let Ok(trust) = node.store.trust() else {
        return (None, Vec::new());
    };
    let now = unix_now();
    let mut best: Option<(u64, Vec<u8>)> = None;
    let mut refused = Vec::new();
    for envelope in candidates {
        let signed = match SignedManifest::open(&envelope) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(name = %name_ref, error = %e, "ignoring a malformed name record");
                continue;
            }
        };
        let m = &signed.manifest;
        if m.name() != &name_ref.name || name_ref.version.as_ref().is_some_and(|v| v != m.version())
        {
            tracing::warn!(name = %name_ref, found = %m.name(), "ignoring a name record for another name");
            continue;
        }
        if let Err(e) = trust.accept(&signed, now, floor) {
            tracing::warn!(name = %name_ref, manifest = %signed.id, error = %e, "ignoring a name record");
            refused.push(e.to_string());
            continue;
        }
        if best.as_ref().is_none_or(|(s, _)| m.sequence() > *s) {
            best = Some((m.sequence(), envelope));
        }
    }
    if let Some((seq, _)) = &best {
        tracing::info!(name = %name_ref, sequence = seq, "resolved through the DHT");
    }
    refused.dedup();
    (best.map(|(_, e)| e), refused)
}

/// The wait after a fetch's first DHT lookup for providers: lookups follow at this
/// interval for [`FAST_LOOKUPS_FOR`], then the wait doubles after each lookup up to
/// [`LOOKUP_EVERY`]. The first answers in a burst name few providers (the seeds), and
/// in its first seconds every fresh host becomes one, so the next answers come soon
/// (measured in the swarm simulator: see `docs/simulations/README.md`).
const FIRST_LOOKUP_WAIT: Duration = Duration::from_millis(500);
/// How long after a fetch starts it keeps looking up providers every
/// [`FIRST_LOOKUP_WAIT`] (twelve lookups per key).
const FAST_LOOKUPS_FOR: Duration = Duration::from_secs(6);

/// The wait before the next lookup for providers, after one made `since_start` into a
/// fetch that waited `wait` before it.
fn next_lookup_wait(since_start: Duration, wait: Duration) -> Duration {
    if since_start < FAST_LOOKUPS_FOR {
        wait
    } else {
        (wait * 2).min(LOOKUP_EVERY)
    }
}
/// The longest wait between two lookups for providers.
const LOOKUP_EVERY: Duration = Duration::from_secs(3);

/// Data-plane addresses of peers that announced `key`, waiting briefly for connections
/// to tell their addresses.
async fn providers_of(discovery: &Discovery, key: Hash) -> Vec<PeerAddr> {
    let ids = discovery.find_providers(key).await;
    if ids.is_empty() {
        return Vec::new();
    }
    discovery.dial(ids.clone()).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let known: Vec<PeerAddr> = discovery
            .peers()
            .await
            .into_iter()
            .filter(|p| ids.contains(&p.id))
            .filter_map(|p| {
                p.data.map(|addr| PeerAddr {
                    id: Some(p.id),
                    addr,
                })
            })
            .collect();
        if known.len() == ids.len() || Instant::now() > deadline {
            return known;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Feeds the fetch with peers as they become known: every peer with a data-plane
/// address (nearest first), and the providers of the model's blobs and manifest.
async fn feed_peers(discovery: Discovery, keys: Vec<Hash>, found: mpsc::Sender<Discovered>) {
    let mut sent: BTreeSet<SocketAddr> = BTreeSet::new();
    let started = Instant::now();
    let mut next_lookup = Instant::now();
    let mut lookup_wait = FIRST_LOOKUP_WAIT;
    let mut next_resend = Instant::now() + Duration::from_secs(5);
    // Who announced the model's blobs in the DHT: offered before peers known only as
    // neighbours, so a fetch at its peer limit is not filled with hosts holding nothing.
    let mut providers = BTreeSet::new();
    loop {
        // Offer everyone again now and then: a peer dropped when its link was cut may be
        // reachable again (the fetch ignores peers it already has).
        if Instant::now() >= next_resend {
            next_resend = Instant::now() + Duration::from_secs(5);
            sent.clear();
        }
        let mut peers = discovery.peers().await;
        // Stable: nearest first within each group, as discovery sorts them.
        peers.sort_by_key(|p| !providers.contains(&p.id));
        for p in peers {
            if let Some(addr) = p.data
                && sent.insert(addr)
                && found
                    .send(Discovered {
                        peer: PeerAddr {
                            id: Some(p.id),
                            addr,
                        },
                        near: p.near,
                    })
                    .await
                    .is_err()
            {
                return;
            }
        }
        // Looked up after offering, so the first peers are offered at once; the
        // providers found order the next offers.
        if Instant::now() >= next_lookup {
            next_lookup = Instant::now() + lookup_wait;
            lookup_wait = next_lookup_wait(started.elapsed(), lookup_wait);
            let mut lookups = tokio::task::JoinSet::new();
            for k in keys.iter().copied() {
                let d = discovery.clone();
                lookups.spawn(async move { d.find_providers(k).await });
            }
            providers.clear();
            while let Some(Ok(found)) = lookups.join_next().await {
                providers.extend(found);
            }
            discovery.dial(providers.iter().copied().collect()).await;
        }
        if found.is_closed() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_come_every_half_second_for_six_seconds_then_thin_out_to_every_three() {
        let (mut at, mut wait) = (Duration::ZERO, FIRST_LOOKUP_WAIT);
        let mut times = vec![at];
        while at < Duration::from_secs(20) {
            let next = at + wait;
            wait = next_lookup_wait(at, wait);
            at = next;
            times.push(at);
        }
        let ms: Vec<u128> = times.iter().map(Duration::as_millis).collect();
        let fast: Vec<u128> = (0..=13).map(|i| i * 500).collect();
        assert_eq!(ms[..14], fast[..], "{ms:?}");
        assert_eq!(ms[14..], [7_500, 9_500, 12_500, 15_500, 18_500, 21_500]);
    }
}
