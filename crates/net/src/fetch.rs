//! The fetch driver: `modeld_proto`'s scheduler run over real peers.
//!
//! One task owns the scheduler. It connects to the peers, learns what each has
//! (have-maps, refreshed while peers are incomplete), and turns the scheduler's actions
//! into request tasks. Each request task reads one piece (bounded by its exact encoded
//! length and a timeout), verifies it chunk group by chunk group while writing it into
//! the store ([`modeld_store::PartialBlob::write_encoded`]), and reports back. Nothing
//! unverified is ever written as present. Cancelled requests are aborted.
//!
//! Every [`NOTICE_EVERY`] it tells the peers that hold a whole blob which ranges of it
//! it has verified since it last told them (holder notices): they then point other
//! fetches' requests for those ranges here (see `modeld_proto::holders`). In the same
//! round it pushes the same news to the peers that asked it what it has (they are
//! subscribed: [`crate::watch`]), and it takes in what the peers it asked push to it.
//!
//! The manifest must already be accepted by the store's trust policy: this module
//! never sees an unverified manifest.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use modeld_core::{Hash, PublicKey, SignedManifest, ranges};
use modeld_proto::{
    holders::{self, NOTICE_EVERY, NOTICES_PER_ROUND, POLL_PUSHING_EVERY},
    scheduler::{
        Action, BlobSpec, DropReason, Failure, QUEUED_ROTATION, Scheduler, SchedulerConfig,
        jittered,
    },
    wire::{HaveMap, Status},
};
use modeld_store::{PartialBlob, TempTag, WriteError};
use tokio::{sync::mpsc, task::AbortHandle};

use crate::{
    Net, PeerAddr,
    client::{Notice, PeerConn, PeerError},
    watch::Subscriptions,
};

/// The longest the fetch loop sleeps with nothing to wake it (it then checks the
/// have-map refresh, holder notices and whether it is stuck).
const TICK: Duration = Duration::from_millis(250);
/// How often an incomplete peer is asked again what it has, on average (each wait
/// [`jittered`]: see there why).
const HAVE_REFRESH: Duration = Duration::from_secs(1);
/// A round of peer rotation: in each, at most one slow peer and
/// [`QUEUED_ROTATION`] peers with long queues make room for newly offered ones.
const ROTATE_EVERY: Duration = Duration::from_millis(500);
/// Most holder notices on their way at once, over all peers of a fetch (and as many
/// pushed to its watchers).
const MAX_NOTICES_IN_FLIGHT: usize = 64;
/// Pushed notices received and not yet taken in (past it, news is dropped: the next
/// have-map refresh brings it).
const NOTICE_QUEUE: usize = 1024;
/// How long the fetch waits, with nothing in flight and nobody holding a missing
/// piece, before giving up.
const STUCK_GRACE: Duration = Duration::from_secs(3);

/// What one peer contributed.
#[derive(Debug, Clone)]
pub struct PeerReport {
    /// Its node id.
    pub id: PublicKey,
    /// Its address.
    pub addr: std::net::SocketAddr,
    /// Verified bytes it delivered.
    pub bytes: u64,
    /// Why it was dropped, if it was.
    pub dropped: Option<String>,
}

/// What a fetch did.
#[derive(Debug, Clone, Default)]
pub struct FetchReport {
    /// Bytes of the model.
    pub bytes_total: u64,
    /// Bytes already present and verified when the fetch started.
    pub bytes_present: u64,
    /// New verified bytes written.
    pub bytes_fetched: u64,
    /// Verified bytes received that were already present (endgame duplicates).
    pub bytes_duplicate: u64,
    /// Per peer.
    pub peers: Vec<PeerReport>,
    /// Peers that could not be reached.
    pub unreachable: Vec<(String, String)>,
    /// Time taken.
    pub elapsed: Duration,
}

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// No peer could be used.
    #[error("no usable peer: {0}")]
    NoPeers(String),
    /// Some data is on no reachable peer.
    #[error("no reachable peer has {}", .missing.iter().map(|(f, r)| format!("{f} (bytes {r})")).collect::<Vec<_>>().join(", "))]
    Missing {
        /// The files and the byte ranges nobody supplied.
        missing: Vec<(String, String)>,
    },
    /// Stopped on request.
    #[error("fetch cancelled")]
    Cancelled,
    /// The store failed (disk full, IO error).
    #[error("store: {0}")]
    Store(String),
}

/// Progress callback: bytes present so far, bytes in all, live peers.
pub type ProgressFn<'a> = dyn Fn(u64, u64, usize) + Send + Sync + 'a;

/// Most peers one fetch connects to.
pub const MAX_PEERS: usize = 32;
/// With discovery running, how long a fetch waits without progress (no peer, or none
/// with what is missing) before it gives up: long enough for a cut link to come back.
pub const DISCOVERY_PATIENCE: Duration = Duration::from_secs(60);

/// Most peers on this host's own subnet one fetch connects to: the other slots stay
/// for peers elsewhere, whose pieces differ more from ours (peers in one rack or LAN
/// trade among themselves and end up holding the same pieces).
pub const MAX_NEAR_PEERS: usize = MAX_PEERS / 2;

/// A peer found by discovery while a fetch runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Discovered {
    /// Its id and data-plane address.
    pub peer: PeerAddr,
    /// On this host's own subnet (see [`MAX_NEAR_PEERS`]).
    pub near: bool,
}

/// Where a fetch finds peers and whom it tells about progress.
pub struct FetchOptions<'a> {
    /// Peers to use from the start.
    pub peers: &'a [PeerAddr],
    /// Peers found while the fetch runs (discovery); `None` for a fixed set.
    pub discovered: Option<mpsc::Receiver<Discovered>>,
    /// Called with bytes done, bytes in all, live peers.
    pub progress: &'a ProgressFn<'a>,
    /// Called once per blob when its first verified piece is stored (announce it).
    pub on_first_piece: &'a (dyn Fn(Hash) + Send + Sync),
    /// Set to stop.
    pub cancel: &'a AtomicBool,
}

impl std::fmt::Debug for FetchOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FetchOptions")
            .field("peers", &self.peers)
            .field("discovery", &self.discovered.is_some())
            .finish()
    }
}

/// What a request task reports.
enum Event {
    Connected(PeerConn),
    ConnectFailed(PeerAddr, String),
    Have {
        peer: PublicKey,
        blob: usize,
        result: Result<HaveMap, PeerError>,
    },
    /// The answer to request `id` began to arrive.
    Started(u64),
    Done {
        id: u64,
        peer: PublicKey,
        outcome: Outcome,
    },
}

enum Outcome {
    Ok { new: u64, duplicate: u64 },
    Failed(Failure, String),
    Fatal(String),
}

struct Blob {
    hash: Hash,
    size: u64,
    files: Vec<String>,
    partial: PartialBlob,
}

/// Fetches every file of `manifest` from `peers` into the store.
pub async fn fetch(
    net: &Net,
    manifest: &SignedManifest,
    options: FetchOptions<'_>,
) -> Result<FetchReport, FetchError> {
    let FetchOptions {
        peers,
        mut discovered,
        progress,
        on_first_piece,
        cancel,
    } = options;
    let started = Instant::now();
    let store = net.inner.store.clone();
    // One entry per distinct blob (identical files share one).
    let mut by_hash: BTreeMap<Hash, (u64, Vec<String>)> = BTreeMap::new();
    for f in manifest.manifest.files() {
        by_hash
            .entry(f.blake3)
            .or_insert_with(|| (f.size, Vec::new()))
            .1
            .push(f.path.to_string());
    }
    let wanted: Vec<(Hash, u64, Vec<String>)> = by_hash
        .into_iter()
        .map(|(h, (size, files))| (h, size, files))
        .collect();
    let (blobs, _tags): (Vec<Blob>, Vec<TempTag>) = {
        let store = store.clone();
        tokio::task::spawn_blocking(move || -> Result<_, FetchError> {
            let mut blobs = Vec::new();
            let mut tags = Vec::new();
            for (hash, size, files) in wanted {
                tags.push(store.protect(hash));
                let partial = store
                    .partial(hash, size)
                    .map_err(|e| FetchError::Store(e.to_string()))?;
                blobs.push(Blob {
                    hash,
                    size,
                    files,
                    partial,
                });
            }
            Ok((blobs, tags))
        })
        .await
        .map_err(|e| FetchError::Store(e.to_string()))??
    };
    let specs: Vec<BlobSpec> = blobs
        .iter()
        .map(|b| BlobSpec {
            size: b.size,
            present: b.partial.available(),
        })
        .collect();
    let config = SchedulerConfig {
        request_timeout: net.inner.config.request_timeout,
        seed: rand::random(),
        ..SchedulerConfig::default()
    };
    let slowest = config.slowest_rate;
    let mut sched: Scheduler<PublicKey> = Scheduler::new(&specs, config);
    let mut report = FetchReport {
        bytes_total: sched.progress().1,
        bytes_present: sched.present_at_start(),
        ..FetchReport::default()
    };
    net.inner
        .counters
        .bytes_resumed
        .fetch_add(report.bytes_present, Ordering::Relaxed);
    if sched.is_done() {
        return finish(blobs, report, started).await;
    }
    if peers.is_empty() && discovered.is_none() {
        return Err(FetchError::NoPeers(
            "the store does not have the whole model and no peers were given (use --peer)".into(),
        ));
    }
    // Peers that ask what this node has of these blobs hear of each verified piece.
    let subscriptions = Subscriptions::open(net, blobs.iter().map(|b| b.hash).collect());
    let blob_of: BTreeMap<Hash, usize> =
        blobs.iter().enumerate().map(|(i, b)| (b.hash, i)).collect();
    let (notice_tx, mut notice_rx) = mpsc::channel::<Notice>(NOTICE_QUEUE);

    let (tx, mut rx) = mpsc::channel::<Event>(1024);
    let connect = |peer: PeerAddr| {
        let (net, tx) = (net.clone(), tx.clone());
        tokio::spawn(async move {
            let event = match PeerConn::connect(&net, peer).await {
                Ok(c) => Event::Connected(c),
                Err(e) => Event::ConnectFailed(peer, e.to_string()),
            };
            let _ = tx.send(event).await;
        });
    };
    // Peers connected or being connected, by address: whether each is near (peers
    // given at the start count as far).
    let mut known: BTreeMap<std::net::SocketAddr, bool> = BTreeMap::new();
    for &peer in peers {
        if known.insert(peer.addr, false).is_none() {
            connect(peer);
        }
    }
    let mut pending_connects = known.len();
    let mut last_progress = Instant::now();
    let mut announced = vec![false; blobs.len()];
    let mut request_blob: BTreeMap<u64, (usize, ranges::ChunkRanges)> = BTreeMap::new();
    // What this fetch holds, verified, and what it told each complete peer of it.
    let mut held: Vec<ranges::ChunkRanges> = specs.iter().map(|s| s.present.clone()).collect();
    let mut told: BTreeMap<PublicKey, Vec<ranges::ChunkRanges>> = BTreeMap::new();
    let mut last_notice = Instant::now();
    let notices_in_flight = Arc::new(AtomicUsize::new(0));
    let mut conns: BTreeMap<PublicKey, PeerConn> = BTreeMap::new();
    let mut complete_peers: BTreeSet<(PublicKey, usize)> = BTreeSet::new();
    let mut have_inflight: BTreeSet<(PublicKey, usize)> = BTreeSet::new();
    let mut next_refresh = Instant::now() + jittered(HAVE_REFRESH, rand::random(), true);
    // Have-map refresh rounds so far, and the peers that pushed news to this fetch
    // (asked only every `POLL_PUSHING_EVERY` rounds).
    let mut refresh_round: u32 = 0;
    let mut pushing: BTreeSet<PublicKey> = BTreeSet::new();
    let mut rotation = Rotation::default();
    let mut tasks: BTreeMap<u64, AbortHandle> = BTreeMap::new();
    let mut dropped: BTreeMap<PublicKey, String> = BTreeMap::new();
    let mut stuck_since: Option<Duration> = None;
    let ask_have = |conn: &PeerConn, blob: usize, hash: Hash, tx: &mpsc::Sender<Event>| {
        let (conn, tx) = (conn.clone(), tx.clone());
        tokio::spawn(async move {
            let result = conn.have(hash).await;
            let _ = tx
                .send(Event::Have {
                    peer: conn.id(),
                    blob,
                    result,
                })
                .await;
        });
    };

    let result = loop {
        let now = started.elapsed();
        while let Some(action) = sched.poll_action(now) {
            match action {
                Action::Request {
                    id,
                    peer,
                    blob,
                    ranges,
                    bytes,
                } => {
                    let Some(conn) = conns.get(&peer).cloned() else {
                        sched.on_failed(id, Failure::Io, now);
                        continue;
                    };
                    request_blob.insert(id, (blob, ranges.clone()));
                    let b = &blobs[blob];
                    let (hash, size, partial) = (b.hash, b.size, b.partial.clone());
                    let timeout = net.inner.config.request_timeout
                        + Duration::from_secs_f64(bytes as f64 / slowest as f64);
                    let held = sched.progress().0;
                    let (tx, net) = (tx.clone(), net.clone());
                    let handle = tokio::spawn(async move {
                        let mut times = RequestTimes::new(now);
                        net.inner.download.acquire(bytes).await;
                        times.admitted = times.since();
                        let peer = conn.id();
                        // A lost signal (the channel full) only leaves the copies
                        // of this piece waiting elsewhere to be cancelled later.
                        let first_byte = std::sync::OnceLock::new();
                        let started = || {
                            let _ = first_byte.set(times.since());
                            let _ = tx.try_send(Event::Started(id));
                        };
                        match conn
                            .blob_with_start(hash, size, &ranges, held, timeout, started)
                            .await
                        {
                            // Once the data is here it is verified and written even if the
                            // request is cancelled meanwhile: the write runs in its own task.
                            Ok(encoded) => {
                                times.first_byte = first_byte.get().copied().unwrap_or_default();
                                times.received = times.since();
                                tokio::spawn(async move {
                                    let first = ranges.boundaries().first().map_or(0, |c| c.0);
                                    let outcome = write_piece(partial, ranges, encoded).await;
                                    times.log(id, &peer, blob, first, bytes);
                                    let _ = tx.send(Event::Done { id, peer, outcome }).await;
                                });
                            }
                            Err(e) => {
                                let outcome = Outcome::Failed(failure_of(&e), e.to_string());
                                let _ = tx.send(Event::Done { id, peer, outcome }).await;
                            }
                        }
                    });
                    tasks.insert(id, handle.abort_handle());
                }
                Action::Cancel { id, .. } => {
                    if let Some(h) = tasks.remove(&id) {
                        h.abort();
                    }
                }
                Action::DropPeer { peer, reason } => {
                    let why = match reason {
                        DropReason::Corrupt => {
                            net.inner
                                .counters
                                .peers_banned
                                .fetch_add(1, Ordering::Relaxed);
                            "banned: sent data that failed verification"
                        }
                        DropReason::Unresponsive => "dropped: stopped answering",
                    };
                    tracing::warn!(%peer, reason = why, "peer dropped from the fetch");
                    dropped.insert(peer, why.to_owned());
                    if let Some(c) = conns.remove(&peer) {
                        c.close(why);
                        // An unresponsive peer may come back (a cut link): let discovery
                        // offer it again. A banned one stays banned.
                        if reason == DropReason::Unresponsive {
                            known.remove(&c.addr());
                        }
                    }
                }
            }
        }
        let (done, total) = sched.progress();
        progress(done, total, sched.live_peers());
        if sched.is_done() {
            break Ok(());
        }
        if cancel.load(Ordering::Relaxed) {
            break Err(FetchError::Cancelled);
        }
        let patient = discovered.is_some() && last_progress.elapsed() < DISCOVERY_PATIENCE;
        if pending_connects == 0 && conns.is_empty() && sched.inflight() == 0 && !patient {
            let why = report
                .unreachable
                .iter()
                .map(|(p, e)| format!("{p}: {e}"))
                .chain(dropped.iter().map(|(p, e)| format!("{p}: {e}")))
                .collect::<Vec<_>>()
                .join("; ");
            break Err(FetchError::NoPeers(why));
        }
        match sched.stuck() {
            // Nothing in flight and nobody connected has what is missing: wait a little
            // for have-map refreshes (a peer may be fetching it right now), then give up.
            Some(missing) if pending_connects == 0 => {
                let since = *stuck_since.get_or_insert(now);
                let grace = if discovered.is_some() {
                    DISCOVERY_PATIENCE
                } else {
                    STUCK_GRACE
                };
                if now - since >= grace && have_inflight.is_empty() {
                    break Err(FetchError::Missing {
                        missing: missing
                            .into_iter()
                            .map(|(b, r)| {
                                let blob = &blobs[b];
                                (
                                    blob.files.join(" = "),
                                    ranges::format_byte_ranges(&ranges::byte_ranges(&r, blob.size)),
                                )
                            })
                            .collect(),
                    });
                }
            }
            Some(_) => {}
            None => stuck_since = None,
        }
        if Instant::now() >= next_refresh {
            next_refresh = Instant::now() + jittered(HAVE_REFRESH, rand::random(), false);
            refresh_round += 1;
            for (id, conn) in &conns {
                if pushing.contains(id) && !refresh_round.is_multiple_of(POLL_PUSHING_EVERY) {
                    continue;
                }
                for (i, b) in blobs.iter().enumerate() {
                    let key = (*id, i);
                    if !complete_peers.contains(&key)
                        && !have_inflight.contains(&key)
                        && !b.partial.is_complete()
                    {
                        have_inflight.insert(key);
                        ask_have(conn, i, b.hash, &tx);
                    }
                }
            }
        }
        if last_notice.elapsed() >= NOTICE_EVERY {
            last_notice = Instant::now();
            told.retain(|p, _| conns.contains_key(p));
            send_notices(
                &conns,
                &complete_peers,
                &blobs,
                &held,
                &mut told,
                &notices_in_flight,
            );
            subscriptions.push(&held, MAX_NOTICES_IN_FLIGHT);
        }
        let wake = sched
            .next_deadline()
            .map_or(TICK, |d| d.saturating_sub(started.elapsed()).min(TICK))
            .min(NOTICE_EVERY.saturating_sub(last_notice.elapsed()));
        let next_discovered = async {
            match &mut discovered {
                Some(d) => d.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            found = next_discovered => match found {
                Some(Discovered { peer, near }) => {
                    let near_full =
                        near && known.values().filter(|n| **n).count() >= MAX_NEAR_PEERS;
                    let fresh = peer.id != Some(net.node_id())
                        && !peer.id.is_some_and(|id| conns.contains_key(&id))
                        && !known.contains_key(&peer.addr)
                        && !near_full;
                    // At the limit, a connected peer with nothing this fetch still needs
                    // (its have-maps known) makes room for the newcomer, which might;
                    // failing that, a few times a round, the slowest peer or one whose
                    // queue holds our answers long (see `Scheduler::slow_peer` and
                    // `Scheduler::queued_peers`).
                    if fresh && known.len() >= MAX_PEERS {
                        let idle = |id: &PublicKey| {
                            !have_inflight.iter().any(|(p, _)| p == id) && conns.contains_key(id)
                        };
                        let victim = match sched.useless_peers().find(idle) {
                            Some(id) => Some((id, "nothing needed")),
                            None => rotation.victim(&sched, started.elapsed(), idle),
                        };
                        if let Some((id, why)) = victim
                            && let Some(c) = conns.remove(&id)
                        {
                            tracing::debug!(peer = %id, why, "making room for a new peer");
                            known.remove(&c.addr());
                            c.close(why);
                            sched.remove_peer(id, started.elapsed());
                            complete_peers.retain(|(p, _)| *p != id);
                        }
                    }
                    if fresh && known.len() < MAX_PEERS && known.insert(peer.addr, near).is_none() {
                        tracing::debug!(%peer, "discovered peer");
                        pending_connects += 1;
                        connect(peer);
                    }
                }
                None => discovered = None,
            },
            Some(Notice { peer, hash, ranges }) = notice_rx.recv() => {
                if let Some(&b) = blob_of.get(&hash)
                    && conns.contains_key(&peer)
                {
                    net.inner.counters.notices_heard.fetch_add(1, Ordering::Relaxed);
                    pushing.insert(peer);
                    sched.peer_gained(peer, b, &ranges, started.elapsed());
                    // Its news completed the blob: it is a complete peer now (no more
                    // polls; it hears what this fetch holds), not at its next poll.
                    if sched.peer_holds_all(&peer, b) {
                        complete_peers.insert((peer, b));
                    }
                }
            }
            event = rx.recv() => {
                let Some(event) = event else { break Err(FetchError::Cancelled) };
                let now = started.elapsed();
                match event {
                    Event::Connected(conn) => {
                        pending_connects -= 1;
                        let id = conn.id();
                        if id == net.node_id() || sched.is_banned(&id) || conns.contains_key(&id) {
                            conn.close("not needed");
                            continue;
                        }
                        if dropped.remove(&id).is_some() {
                            tracing::info!(peer = %id, "peer is back");
                            sched.remove_peer(id, now);
                            sched.readmit_peer(id, now);
                        }
                        tracing::debug!(peer = %id, addr = %conn.addr(), "connected to peer");
                        // A peer let go earlier (to make room) starts afresh.
                        sched.readmit_peer(id, now);
                        // Asking what it has subscribes to its news: take them in.
                        conn.forward_notices(notice_tx.clone());
                        for (i, b) in blobs.iter().enumerate() {
                            have_inflight.insert((id, i));
                            ask_have(&conn, i, b.hash, &tx);
                        }
                        conns.insert(id, conn);
                    }
                    Event::ConnectFailed(peer, e) => {
                        pending_connects -= 1;
                        tracing::warn!(%peer, error = %e, "cannot reach peer");
                        report.unreachable.push((peer.to_string(), e));
                    }
                    Event::Have { peer, blob, result } => {
                        have_inflight.remove(&(peer, blob));
                        match result {
                            Ok(have) if have.size == blobs[blob].size => {
                                if have.complete {
                                    complete_peers.insert((peer, blob));
                                }
                                sched.peer_has(peer, blob, &have.ranges, now);
                            }
                            Ok(have) => {
                                tracing::warn!(%peer, blob = %blobs[blob].hash, claimed = have.size, "peer claims a different size; ignoring it for this blob");
                                complete_peers.insert((peer, blob));
                            }
                            Err(PeerError::Status { status: Status::NotFound, .. }) => {}
                            Err(e) => {
                                tracing::warn!(%peer, error = %e, "peer did not say what it has");
                                sched.remove_peer(peer, now);
                                if let Some(c) = conns.remove(&peer) {
                                    c.close("unresponsive");
                                }
                                dropped.insert(peer, format!("dropped: {e}"));
                            }
                        }
                    }
                    Event::Started(id) => sched.on_started(id, now),
                    Event::Done { id, peer, outcome } => {
                        tasks.remove(&id);
                        match outcome {
                            Outcome::Ok { new, duplicate } => {
                                if let Some((b, ranges)) = request_blob.remove(&id) {
                                    held[b] = &held[b] | &ranges;
                                    if new > 0 && !announced[b] {
                                        announced[b] = true;
                                        on_first_piece(blobs[b].hash);
                                    }
                                }
                                last_progress = Instant::now();
                                report.bytes_fetched += new;
                                report.bytes_duplicate += duplicate;
                                net.inner.counters.bytes_fetched.fetch_add(new, Ordering::Relaxed);
                                net.inner.counters.bytes_duplicate.fetch_add(duplicate, Ordering::Relaxed);
                                // A late answer to a cancelled duplicate only adds to the counts.
                                sched.on_complete(id, now);
                            }
                            Outcome::Failed(why, message) => {
                                request_blob.remove(&id);
                                if why == Failure::Corrupt {
                                    tracing::error!(%peer, error = %message, "peer sent bad data");
                                } else {
                                    tracing::debug!(%peer, ?why, error = %message, "request failed");
                                }
                                sched.on_failed(id, why, now);
                            }
                            Outcome::Fatal(message) => break Err(FetchError::Store(message)),
                        }
                    }
                }
            }
            _ = tokio::time::sleep(wake) => {}
        }
    };
    for h in tasks.values() {
        h.abort();
    }
    for c in conns.values() {
        c.close("fetch finished");
    }
    report.peers = sched
        .delivered()
        .filter_map(|(id, bytes)| {
            let addr = conns
                .get(&id)
                .map(PeerConn::addr)
                .or_else(|| peers.iter().find(|p| p.id == Some(id)).map(|p| p.addr))?;
            Some(PeerReport {
                id,
                addr,
                bytes,
                dropped: dropped.get(&id).cloned(),
            })
        })
        .collect();
    // Peers dropped before any delivery still belong in the report.
    for (id, why) in &dropped {
        if !report.peers.iter().any(|p| p.id == *id) {
            report.peers.push(PeerReport {
                id: *id,
                addr: std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
                bytes: 0,
                dropped: Some(why.clone()),
            });
        }
    }
    match result {
        Ok(()) => {
            // The last news: watchers hear at once that this node is complete.
            subscriptions.push(&held, MAX_NOTICES_IN_FLIGHT);
            // Exact by construction once every blob is complete (a piece that failed
            // verification half way still kept its verified part).
            let counted = report.bytes_fetched;
            report.bytes_fetched = report.bytes_total - report.bytes_present;
            net.inner.counters.bytes_fetched.fetch_add(
                report.bytes_fetched.saturating_sub(counted),
                Ordering::Relaxed,
            );
            finish(blobs, report, started).await
        }
        Err(e) => {
            checkpoint_all(&blobs).await;
            Err(e)
        }
    }
}

/// Tells each complete peer what this fetch has verified since it last told it (holder
/// notices; see `modeld_proto::holders`): at most [`NOTICES_PER_ROUND`] notices per
/// peer, and [`MAX_NOTICES_IN_FLIGHT`] on their way in all (the rest waits for the
/// next round). A notice that fails is not resent: the peer then knows less, which
/// only makes it refuse less.
fn send_notices(
    conns: &BTreeMap<PublicKey, PeerConn>,
    complete_peers: &BTreeSet<(PublicKey, usize)>,
    blobs: &[Blob],
    held: &[ranges::ChunkRanges],
    told: &mut BTreeMap<PublicKey, Vec<ranges::ChunkRanges>>,
    in_flight: &Arc<AtomicUsize>,
) {
    for (&peer, conn) in conns {
        let mut budget = NOTICES_PER_ROUND;
        for b in (0..blobs.len()).filter(|&b| complete_peers.contains(&(peer, b))) {
            let told = told
                .entry(peer)
                .or_insert_with(|| vec![ranges::ChunkRanges::empty(); blobs.len()]);
            let room = MAX_NOTICES_IN_FLIGHT.saturating_sub(in_flight.load(Ordering::Relaxed));
            for notice in holders::news(&held[b], &mut told[b], budget.min(room)) {
                budget -= 1;
                in_flight.fetch_add(1, Ordering::Relaxed);
                let (conn, hash, in_flight) = (conn.clone(), blobs[b].hash, in_flight.clone());
                tokio::spawn(async move {
                    if let Err(e) = conn.holds(hash, notice).await {
                        tracing::debug!(peer = %conn.id(), error = %e, "holder notice failed");
                    }
                    in_flight.fetch_sub(1, Ordering::Relaxed);
                });
            }
        }
    }
}

/// Flushes and records what every blob has (completing those that are whole).
async fn checkpoint_all(blobs: &[Blob]) -> Vec<Result<bool, String>> {
    let partials: Vec<PartialBlob> = blobs.iter().map(|b| b.partial.clone()).collect();
    tokio::task::spawn_blocking(move || {
        partials
            .iter()
            .map(|p| {
                p.checkpoint()
                    .map(|()| p.is_complete())
                    .map_err(|e| e.to_string())
            })
            .collect()
    })
    .await
    .unwrap_or_default()
}

async fn finish(
    blobs: Vec<Blob>,
    mut report: FetchReport,
    started: Instant,
) -> Result<FetchReport, FetchError> {
    for (blob, r) in blobs.iter().zip(checkpoint_all(&blobs).await) {
        match r {
            Ok(true) => {}
            Ok(false) => {
                return Err(FetchError::Store(format!(
                    "{} ({}) did not verify end to end; its bad ranges were dropped, fetch again",
                    blob.files.join(", "),
                    blob.hash
                )));
            }
            Err(e) => return Err(FetchError::Store(e)),
        }
    }
    report.elapsed = started.elapsed();
    Ok(report)
}

/// When one request's steps happened, for the `modeld_net::trace` debug log (one line
/// per completed request: enough to rebuild who sent which piece to whom, and where
/// its time went).
struct RequestTimes {
    /// When the scheduler issued it, from the start of the fetch.
    issued: Duration,
    at: Instant,
    /// From `at`: the download budget admitted it, its first byte came, its last byte.
    admitted: Duration,
    first_byte: Duration,
    received: Duration,
}

impl RequestTimes {
    fn new(issued: Duration) -> Self {
        Self {
            issued,
            at: Instant::now(),
            admitted: Duration::ZERO,
            first_byte: Duration::ZERO,
            received: Duration::ZERO,
        }
    }

    fn since(&self) -> Duration {
        self.at.elapsed()
    }

    fn log(&self, id: u64, peer: &PublicKey, blob: usize, first_chunk: u64, bytes: u64) {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        tracing::debug!(
            target: "modeld_net::trace",
            id,
            %peer,
            blob,
            chunk = first_chunk,
            bytes,
            issued_ms = ms(self.issued) as u64,
            admitted_ms = ms(self.admitted) as u64,
            first_byte_ms = ms(self.first_byte) as u64,
            received_ms = ms(self.received) as u64,
            stored_ms = ms(self.since()) as u64,
            "piece"
        );
    }
}

async fn write_piece(
    partial: PartialBlob,
    ranges: ranges::ChunkRanges,
    answer: crate::client::BlobAnswer,
) -> Outcome {
    let written =
        tokio::task::spawn_blocking(move || partial.write_encoded(&ranges, answer.encoding()))
            .await;
    match written {
        Ok(Ok(w)) => Outcome::Ok {
            new: w.new,
            duplicate: w.duplicate,
        },
        Ok(Err(e @ WriteError::Corrupt { .. })) => Outcome::Failed(Failure::Corrupt, e.to_string()),
        Ok(Err(e @ WriteError::Stream { .. })) => Outcome::Failed(Failure::Io, e.to_string()),
        Ok(Err(e)) => Outcome::Fatal(e.to_string()),
        Err(e) => Outcome::Failed(Failure::Io, e.to_string()),
    }
}

fn failure_of(e: &PeerError) -> Failure {
    match e {
        PeerError::Timeout(_) => Failure::Timeout,
        PeerError::Status { status, .. } => match status {
            Status::NotFound | Status::NotPresent => Failure::NotPresent,
            Status::Busy | Status::TooLarge => Failure::Busy,
            Status::Elsewhere => Failure::Elsewhere,
            Status::Corrupt => Failure::Corrupt,
            _ => Failure::Io,
        },
        // A peer that sends a wrong size or a wrong-length encoding is lying.
        PeerError::Malformed(_) => Failure::Corrupt,
        _ => Failure::Io,
    }
}

/// Asks `peers` for the signed manifest `id`; returns the first envelope whose body
/// hashes to `id` (nothing else about it is trusted yet).
pub async fn fetch_manifest(
    net: &Net,
    peers: &[PeerAddr],
    id: Hash,
) -> Result<Vec<u8>, FetchError> {
    let mut errors = Vec::new();
    for &peer in peers {
        let answer = async {
            let conn = PeerConn::connect(net, peer).await?;
            let envelope = conn.manifest(id).await;
            conn.close("done");
            envelope
        }
        .await;
        match answer {
            Ok(envelope) => match modeld_core::Envelope::from_bytes(&envelope) {
                Ok(env) if env.manifest_id() == id => return Ok(envelope),
                Ok(env) => {
                    tracing::warn!(%peer, got = %env.manifest_id(), want = %id, "peer sent another manifest");
                    errors.push(format!(
                        "{peer}: sent manifest {} instead",
                        env.manifest_id()
                    ));
                }
                Err(e) => errors.push(format!("{peer}: {e}")),
            },
            Err(e) => errors.push(format!("{peer}: {e}")),
        }
    }
    Err(FetchError::NoPeers(if errors.is_empty() {
        "no peers given".into()
    } else {
        format!("no peer supplied manifest {id}: {}", errors.join("; "))
    }))
}

/// Which connected peers make room for newly offered ones at the peer limit, beyond
/// those with nothing left to give: per [`ROTATE_EVERY`] round, the slowest peer once
/// and up to [`QUEUED_ROTATION`] whose queues hold this fetch's answers longest (the
/// simulator's swarm rotates alike).
#[derive(Debug, Default)]
struct Rotation {
    /// When the current round began (fetch time).
    round: Duration,
    slow: bool,
    queued: usize,
}

impl Rotation {
    /// The peer to replace at fetch time `now`, and why, if this round has room for
    /// one more (`idle`: peers that may go now).
    fn victim(
        &mut self,
        sched: &Scheduler<PublicKey>,
        now: Duration,
        idle: impl Fn(&PublicKey) -> bool,
    ) -> Option<(PublicKey, &'static str)> {
        if now.saturating_sub(self.round) >= ROTATE_EVERY {
            *self = Self {
                round: now,
                ..Self::default()
            };
        }
        if !self.slow
            && let Some(id) = sched.slow_peer().filter(&idle)
        {
            self.slow = true;
            return Some((id, "slow"));
        }
        if self.queued < QUEUED_ROTATION
            && let Some(id) = sched.queued_peers(now).into_iter().find(|id| idle(id))
        {
            self.queued += 1;
            return Some((id, "answers wait long in its queue"));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use modeld_core::{SecretKey, ranges};

    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn a_rotation_round_replaces_at_most_its_share_of_queued_peers() {
        // Six peers with the first quarter of the blob, each sent requests at once.
        let mut sched = Scheduler::new(
            &[BlobSpec {
                size: 64 * MIB,
                present: ranges::ChunkRanges::empty(),
            }],
            SchedulerConfig::default(),
        );
        let peers: Vec<PublicKey> = (0..6).map(|_| SecretKey::generate().public()).collect();
        for p in &peers {
            sched.add_peer(*p, Duration::ZERO);
            sched.peer_has(*p, 0, &ranges::from_bytes(0..16 * MIB), Duration::ZERO);
        }
        while sched.poll_action(Duration::ZERO).is_some() {}
        let mut rotation = Rotation::default();
        let anyone = |_: &PublicKey| true;
        // Under the late horizon nobody waits too long.
        let early = Duration::from_secs(1);
        assert_eq!(rotation.victim(&sched, early, anyone), None);
        // Three seconds on, none of their answers has started: four go this round.
        let mut gone = BTreeSet::new();
        let now = Duration::from_secs(3);
        while let Some((id, why)) = rotation.victim(&sched, now, |p| !gone.contains(p)) {
            assert_eq!(why, "answers wait long in its queue");
            gone.insert(id);
            sched.remove_peer(id, now);
        }
        assert_eq!(gone.len(), QUEUED_ROTATION);
        // The next round may replace the rest; a peer not idle is not replaced.
        let next = now + ROTATE_EVERY;
        let busy = peers.iter().find(|p| !gone.contains(*p)).copied();
        let victim = rotation.victim(&sched, next, |p| Some(*p) != busy && !gone.contains(p));
        assert!(victim.is_some_and(|(id, _)| Some(id) != busy && !gone.contains(&id)));
    }
}
