//! Have-map subscriptions: a fetching node tells the peers watching it what it newly
//! verifies, as it happens.
//!
//! A burst of fresh hosts serves itself: every host fetches from the others and
//! passes each piece on as soon as it is verified. For that, a fetch must learn quickly
//! what its peers now hold. Polling have-maps once a second leaves idle links with
//! pieces to send while nobody knows of them (the simulator's tenth round,
//! `docs/simulations/README.md`). So asking a node what it has of a blob it is fetching
//! also subscribes the asker, for as long as its connection lasts:
//!
//! - the server records the asker's connection and the have-map it answered
//!   (`Watchers::watch`);
//! - the node's fetch, every `NOTICE_EVERY`, opens a unidirectional stream to each
//!   watcher on that connection and sends what it verified since (a `Request::Holds`,
//!   the same encoding as the notices a fetch sends complete peers), cut by
//!   `modeld_proto::holders::news`;
//! - the asker's connection ([`crate::client::PeerConn::forward_notices`]) hands each
//!   notice to its fetch, which adds it to what that peer has
//!   (`Scheduler::peer_gained`).
//!
//! Notices are news only, never a retraction, and a lost one costs only time: the
//! asker still refreshes whole have-maps, less often. Bounds: [`MAX_WATCHERS`] per
//! blob, notices per round and in flight as for holder notices, and a node only
//! keeps subscriptions for blobs it is fetching right now.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use modeld_core::{Hash, PublicKey, ranges::ChunkRanges};
use modeld_proto::{holders, wire::Request};

use crate::Net;

/// Most peers watching one blob (past it, a new asker is not subscribed and learns by
/// asking again).
pub const MAX_WATCHERS: usize = crate::serve::MAX_CONNECTIONS;
/// Time allowed to open a notice's stream and send it.
pub const PUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// One peer watching one blob.
#[derive(Debug)]
struct Watcher {
    conn: quinn::Connection,
    /// What it was told this node holds (the have-map it was given, then notices).
    told: ChunkRanges,
}

#[derive(Debug, Default)]
struct Watched {
    /// Fetches of this blob running here (two manifests may share a file).
    fetches: usize,
    watchers: BTreeMap<PublicKey, Watcher>,
}

/// The subscriptions of one node: per blob it is fetching, who watches it.
#[derive(Debug, Default)]
pub(crate) struct Watchers {
    blobs: BTreeMap<Hash, Watched>,
}

impl Watchers {
    /// `peer`, on `conn`, was just told this node holds `told` of `hash`: if a fetch of
    /// `hash` runs here, `peer` hears of what it verifies from now on.
    pub(crate) fn watch(
        &mut self,
        hash: Hash,
        peer: PublicKey,
        conn: &quinn::Connection,
        told: ChunkRanges,
    ) {
        let Some(w) = self.blobs.get_mut(&hash) else {
            return;
        };
        if w.watchers.len() >= MAX_WATCHERS && !w.watchers.contains_key(&peer) {
            w.watchers.retain(|_, x| x.conn.close_reason().is_none());
            if w.watchers.len() >= MAX_WATCHERS {
                return;
            }
        }
        w.watchers.insert(
            peer,
            Watcher {
                conn: conn.clone(),
                told,
            },
        );
    }

    /// The notices each watcher of `hash` is owed now that this node holds `held`:
    /// at most `budget` in all, and `per_peer` per watcher. Watchers whose
    /// connection closed are dropped.
    fn news(
        &mut self,
        hash: Hash,
        held: &ChunkRanges,
        per_peer: usize,
        mut budget: usize,
    ) -> Vec<(quinn::Connection, ChunkRanges)> {
        let mut out = Vec::new();
        let Some(w) = self.blobs.get_mut(&hash) else {
            return out;
        };
        w.watchers.retain(|_, x| x.conn.close_reason().is_none());
        for x in w.watchers.values_mut() {
            let notices = holders::news(held, &mut x.told, per_peer.min(budget));
            budget -= notices.len();
            out.extend(notices.into_iter().map(|n| (x.conn.clone(), n)));
        }
        out
    }
}

/// While it lives, peers that ask this node about the blobs of one fetch are
/// subscribed to them (see the module doc).
#[derive(Debug)]
pub(crate) struct Subscriptions {
    net: Net,
    hashes: Vec<Hash>,
    in_flight: Arc<AtomicUsize>,
}

impl Subscriptions {
    /// Opens subscriptions to `hashes` (the blobs a fetch is about to fetch).
    pub(crate) fn open(net: &Net, hashes: Vec<Hash>) -> Self {
        let mut w = crate::lock(&net.inner.watchers);
        for h in &hashes {
            w.blobs.entry(*h).or_default().fetches += 1;
        }
        drop(w);
        Self {
            net: net.clone(),
            hashes,
            in_flight: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Sends every watcher what this node verified since it was last told: `held[i]`
    /// is what the fetch holds of the `i`th blob it opened. At most
    /// `holders::NOTICES_PER_ROUND` notices per watcher and blob, and `max_in_flight`
    /// on their way at once (the rest waits for the next round).
    pub(crate) fn push(&self, held: &[ChunkRanges], max_in_flight: usize) {
        let net = &self.net;
        for (hash, held) in self.hashes.iter().zip(held) {
            let room = max_in_flight.saturating_sub(self.in_flight.load(Ordering::Relaxed));
            if room == 0 {
                return;
            }
            let notices = crate::lock(&net.inner.watchers).news(
                *hash,
                held,
                holders::NOTICES_PER_ROUND,
                room,
            );
            for (conn, ranges) in notices {
                self.in_flight.fetch_add(1, Ordering::Relaxed);
                let (in_flight, net, hash) = (self.in_flight.clone(), net.clone(), *hash);
                tokio::spawn(async move {
                    let request = Request::Holds { hash, ranges }.encode();
                    let send = async {
                        let mut s = conn.open_uni().await.map_err(|e| e.to_string())?;
                        s.write_all(&request).await.map_err(|e| e.to_string())?;
                        s.finish().map_err(|e| e.to_string())
                    };
                    match tokio::time::timeout(PUSH_TIMEOUT, send).await {
                        Ok(Ok(())) => {
                            net.inner
                                .counters
                                .notices_pushed
                                .fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(Err(e)) => tracing::debug!(error = %e, "pushing news failed"),
                        Err(_) => tracing::debug!("pushing news timed out"),
                    }
                    in_flight.fetch_sub(1, Ordering::Relaxed);
                });
            }
        }
    }
}

impl Drop for Subscriptions {
    fn drop(&mut self) {
        let mut w = crate::lock(&self.net.inner.watchers);
        for h in &self.hashes {
            if let Some(x) = w.blobs.get_mut(h) {
                x.fetches -= 1;
                if x.fetches == 0 {
                    w.blobs.remove(h);
                }
            }
        }
    }
}
