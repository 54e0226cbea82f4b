//! The piece scheduler: which piece to ask of which peer, and when to give up on one.
//!
//! A sans-IO state machine with time passed in. The driver tells it what happened
//! (a peer appeared or announced what it has, a request completed or failed) and asks
//! it what to do next ([`Scheduler::poll_action`]): send a request, cancel a duplicate,
//! drop a peer. The daemon drives it with real QUIC streams; the swarm simulator drives
//! the very same code under simulated time.
//!
//! Policy:
//! - Blobs are cut into pieces of [`SchedulerConfig::piece_bytes`] (aligned to 16 KiB
//!   chunk groups); only the ranges not already present are requested.
//! - **Rarest first**: among the pieces a peer can supply, the one the fewest live
//!   peers have; ties are broken by a seeded random order.
//! - **Pipelining, more to faster peers**: each peer has a window of requests in
//!   flight that grows by one whenever a request completes while the window was full,
//!   and halves on a timeout or a busy answer. Once a peer's throughput is measured,
//!   the bytes in flight to it are also kept under what it delivers in
//!   [`SchedulerConfig::queue_target`]: a peer shared by many fetchers (a seed at the
//!   start of a burst) is not handed pieces it will take long to send, which stay
//!   free for peers that can send them sooner. On a fast link that target shrinks so
//!   that all peers' budgets together stay within [`SchedulerConfig::queue_share`] of
//!   the in-flight allowance: otherwise requests waiting at busy peers use it up and
//!   the link idles (bytes in flight = rate x wait). Before its rate is measured, a
//!   peer gets [`SchedulerConfig::initial_peer_bytes`] (the same bytes whatever the
//!   piece size).
//! - **Last resorts**: a peer that needs longer than the late horizon (twice the queue
//!   target) to deliver one piece is asked only for pieces no quicker peer has, and
//!   takes over no late requests.
//! - **Peer rotation** (done by the driver, decided here): at the peer limit, peers
//!   with nothing left to give ([`Scheduler::useless_peers`]), then the slowest
//!   ([`Scheduler::slow_peer`]) and those whose answers wait in their queues past the
//!   late horizon ([`Scheduler::queued_peers`]) make room for untried ones: a burst's
//!   first providers are everyone's first peers, and their queues would otherwise
//!   hold every fetch while later holders' uploads go unused.
//! - **Late requests and the endgame**: a request that has waited twice the queue
//!   target without its answer starting is late, and a peer with nothing missing on
//!   offer may duplicate it; once every missing piece is requested, idle peers
//!   duplicate the oldest requests whose answers have not started. At most
//!   [`SchedulerConfig::max_duplicates`] requests per piece that are not late (late
//!   ones do not block a fresh copy). The first copy whose answer starts
//!   ([`Scheduler::on_started`]) cancels the copies still waiting; of copies already
//!   flowing, the first to complete wins and the others are cancelled. An answer that
//!   has started is never duplicated: it is flowing, and a copy would only split the
//!   link with it (a stalled one ends at its timeout).
//! - **Bad peers**: corrupt data bans the peer for the rest of the fetch; a timeout
//!   returns the piece to others and counts against the peer, which is dropped after
//!   [`SchedulerConfig::max_timeouts`].

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Debug,
    time::Duration,
};

use modeld_core::ranges::{self, CHUNK_BYTES, CHUNK_GROUP_BYTES, ChunkNum, ChunkRanges};

use crate::vecmap::VecMap;

/// [`Scheduler::rarest_offered`] scans a peer's own pieces when it offers fewer than
/// one in this many of the missing pieces.
const FEW_OFFERED: usize = 8;

/// A peer delivering under this fraction of the median rate is
/// [`Scheduler::slow_peer`].
pub const SLOW_PEER_FRACTION: f64 = 0.9;

/// How many of the [`Scheduler::queued_peers`] one round of a driver's peer rotation
/// replaces (the drivers' rounds are half a second apart).
pub const QUEUED_ROTATION: usize = 4;

/// A request outstanding for this many queue targets is late: a peer with nothing
/// else to send may duplicate it (see [`Scheduler`]'s endgame).
pub const LATE_FACTOR: f64 = 2.0;

/// A peer with nothing in flight may take over a request whose answer has not begun
/// once the request has waited this fraction of the configured late horizon
/// ([`LATE_FACTOR`] queue targets: 0.5 s by default), or the fetch's own horizon if
/// that is shorter. At the start of a burst every fetch's first requests wait in the
/// queues of the few hosts that hold anything, while the hosts that have just
/// verified a piece sit idle: the piece is "requested", so nobody asks them for it
/// until the request is late. A copy costs little (the first copy whose answer begins
/// cancels the others, see [`Scheduler::on_started`]), and an idle peer's upload is
/// otherwise lost.
pub const IDLE_TAKEOVER: f64 = 0.25;

/// The wait before a driver's next periodic round (have-map refreshes), from `unit`, a
/// random number in `[0, 1)`: the first round comes at a random point of the first
/// `period`, each later one after half to one and a half periods. Fetches started at
/// the same moment (a burst) would otherwise poll their peers in step, and all learn
/// of new pieces at the same instant; spread out, some fetch learns of a new holder
/// soon after it has verified a piece, and the phases do not drift back together.
pub fn jittered(period: Duration, unit: f64, first: bool) -> Duration {
    let unit = unit.clamp(0.0, 1.0);
    period.mul_f64(if first { unit } else { 0.5 + unit })
}

/// A peer is a last resort only if it is also this many times slower than the median
/// measured rate: a seed swamped by a burst is hundreds of times slower than the
/// fetch's other peers, while a peer measured a few times slower once (a busy
/// moment) must not be shut out for good, as it would never be measured again.
pub const LAST_RESORT_RATIO: f64 = 8.0;

/// A last resort left idle for this many late horizons is asked once more (a probe),
/// so that its rate is measured again: one slow moment must not shut a peer out for
/// the rest of the fetch.
pub const LAST_RESORT_PROBE: f64 = 4.0;

/// Identifies a request issued by the scheduler.
pub type RequestId = u64;

/// Tunables of the scheduler.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Piece size in bytes (a multiple of 16 KiB).
    pub piece_bytes: u64,
    /// Requests in flight per peer at first, and the floor after a timeout.
    pub min_window: usize,
    /// Most requests in flight per peer.
    pub max_window: usize,
    /// Most bytes in flight across all peers (bounds the driver's buffers).
    pub max_inflight_bytes: u64,
    /// A request times out after `request_timeout + bytes / slowest_rate`.
    pub request_timeout: Duration,
    /// The slowest transfer rate tolerated (bytes per second) when sizing timeouts.
    pub slowest_rate: u64,
    /// Most requests outstanding for one piece that are not yet late (duplicates of
    /// late requests and in the endgame).
    pub max_duplicates: usize,
    /// Timeouts after which a peer is dropped.
    pub max_timeouts: u32,
    /// How long a peer that answered "busy" is left alone.
    pub busy_backoff: Duration,
    /// Seed of the random tie-breaks (the same seed gives the same decisions).
    pub seed: u64,
    /// A peer gets no more bytes in flight than it delivers in this long (at least one
    /// piece), once its rate is measured.
    pub queue_target: Duration,
    /// Bytes in flight to a peer whose rate is not yet measured (at least one piece).
    pub initial_peer_bytes: u64,
    /// The share of [`SchedulerConfig::max_inflight_bytes`] that the rate-based
    /// budgets of all peers together aim at (the queue target is shortened to fit).
    pub queue_share: f64,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            piece_bytes: 1 << 20,
            min_window: 4,
            max_window: 16,
            max_inflight_bytes: 64 << 20,
            request_timeout: Duration::from_secs(10),
            slowest_rate: 256 << 10,
            max_duplicates: 2,
            max_timeouts: 3,
            busy_backoff: Duration::from_millis(500),
            seed: 0x6d6f_6465_6c64,
            queue_target: Duration::from_secs(1),
            initial_peer_bytes: 4 << 20,
            queue_share: 0.5,
        }
    }
}

/// What the driver knows of one blob at the start.
#[derive(Debug, Clone)]
pub struct BlobSpec {
    /// Its size in bytes.
    pub size: u64,
    /// Ranges already present and verified (not requested again).
    pub present: ChunkRanges,
}

/// Why a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No answer in time.
    Timeout,
    /// The peer does not have what it said it had.
    NotPresent,
    /// The peer is throttling us.
    Busy,
    /// The data failed verification (or the peer reported its data corrupt).
    Corrupt,
    /// The connection or stream broke.
    Io,
    /// The peer has the piece but points elsewhere: enough of its other peers hold it
    /// (`Status::Elsewhere`). The piece goes to other holders first, and the peer is
    /// left alone for [`SchedulerConfig::busy_backoff`] (asked again at once, it would
    /// only refuse again), its window kept: it is choosy, not overloaded.
    Elsewhere,
}

/// Why a peer is dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// It sent data that failed verification: banned for this fetch.
    Corrupt,
    /// It timed out too often.
    Unresponsive,
}

/// What the driver should do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action<P> {
    /// Ask `peer` for `ranges` of blob number `blob` (`bytes` of data).
    Request {
        /// The request's id, to report its outcome.
        id: RequestId,
        /// Who to ask.
        peer: P,
        /// Which blob (index into the specs given to [`Scheduler::new`]).
        blob: usize,
        /// The chunk ranges.
        ranges: ChunkRanges,
        /// Data bytes asked for.
        bytes: u64,
    },
    /// Abandon a request (another peer delivered the piece first).
    Cancel {
        /// The request.
        id: RequestId,
        /// Its peer.
        peer: P,
    },
    /// Stop using a peer (and close its connection).
    DropPeer {
        /// The peer.
        peer: P,
        /// Why.
        reason: DropReason,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PieceState {
    Missing,
    Requested,
    Done,
}

#[derive(Debug)]
struct Piece {
    blob: usize,
    /// The ranges still to fetch (piece range minus what was present).
    need: ChunkRanges,
    bytes: u64,
    state: PieceState,
    /// Live peers that have all of `need`.
    avail: u32,
    tiebreak: u64,
    /// Outstanding requests for this piece.
    requests: Vec<RequestId>,
    /// Peers at which a request for this piece failed.
    failed_peers: u32,
}

/// A connected peer. One that disconnects, or is banned, leaves the table for
/// [`Retired`]: what every assignment scans stays the peers it can ask, and what a
/// long fetch with many short-lived peers keeps stays small.
#[derive(Debug)]
struct Peer {
    /// Per blob, what the peer has.
    has: Vec<ChunkRanges>,
    /// Per piece, whether the peer has all of its need.
    has_piece: Vec<bool>,
    /// Its outstanding requests, with when each was sent.
    inflight: BTreeMap<RequestId, Duration>,
    inflight_bytes: u64,
    /// Measured delivery rate (bytes per second), once a request has completed.
    rate: Option<f64>,
    /// When the oldest of `inflight` was sent (kept here: every assignment looks at
    /// it for every peer, and a swarm simulator runs thousands of schedulers).
    oldest_sent: Option<Duration>,
    meter: Meter,
    /// When its last request ended (or when it was added): the age of what is known
    /// of its rate while it is idle.
    idle_since: Duration,
    /// Pieces it has that are not yet done here.
    useful: u32,
    /// Pieces it has that are missing here (not requested from anyone).
    offer: u32,
    window: usize,
    timeouts: u32,
    backoff_until: Duration,
    delivered: u64,
    /// How long its answers waited before their first bytes came (seconds, a moving
    /// average over the answers that started).
    wait: Option<f64>,
    /// Pieces whose request to this peer failed; others are asked first.
    failed: BTreeSet<usize>,
}

/// What is kept of a peer that is gone: whether it was banned (then it is never
/// admitted again) and what it delivered (for the fetch's report).
#[derive(Debug, Clone, Copy)]
struct Retired {
    banned: bool,
    delivered: u64,
}

/// Measures a peer's delivery rate while it has requests in flight: bytes completed
/// over the time they took, sampled once the completions at one instant are all in
/// (several requests often complete together; counting each alone would err low).
#[derive(Debug, Clone, Copy, Default)]
struct Meter {
    /// Start of the interval being measured.
    start: Duration,
    /// The latest completion.
    last: Duration,
    /// Bytes completed after `start`, up to and including `last`.
    bytes: u64,
}

impl Meter {
    fn start(now: Duration) -> Self {
        Self {
            start: now,
            last: now,
            bytes: 0,
        }
    }

    /// `bytes` completed at `now` (`idle`: nothing else is in flight). Returns a rate
    /// sample when an interval closes: at the first completion of a later instant, or
    /// when the peer falls idle.
    fn delivered(&mut self, bytes: u64, now: Duration, idle: bool) -> Option<f64> {
        let mut sample = None;
        if now > self.last && self.last > self.start {
            sample = Some(self.bytes as f64 / (self.last - self.start).as_secs_f64());
            *self = Self::start(self.last);
        }
        self.bytes += bytes;
        self.last = self.last.max(now);
        if idle && self.last > self.start {
            sample = Some(self.bytes as f64 / (self.last - self.start).as_secs_f64());
            *self = Self::start(self.last);
        }
        sample
    }
}

#[derive(Debug, Clone)]
struct Outstanding<P> {
    peer: P,
    piece: usize,
    bytes: u64,
    sent: Duration,
    deadline: Duration,
    /// Sent to a last resort whose judgement had expired: its answer measures the peer
    /// again, so it is not withdrawn for a quicker holder.
    probe: bool,
    /// Its answer has begun to arrive ([`Scheduler::on_started`]).
    started: bool,
}

/// How a peer stands under the last-resort rule (see [`Scheduler::standing`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Standing {
    /// Asked like any peer.
    Quick,
    /// Asked only for pieces no quicker peer has.
    LastResort,
    /// A last resort idle long enough to be asked once more, to measure it again.
    Probe,
}

/// The scheduler for one fetch. `P` identifies a peer.
#[derive(Debug)]
pub struct Scheduler<P: Ord + Copy + Debug> {
    config: SchedulerConfig,
    sizes: Vec<u64>,
    pieces: Vec<Piece>,
    /// Per blob, the range of its pieces in `pieces` (they are created in blob order).
    blob_pieces: Vec<std::ops::Range<usize>>,
    /// Per piece, the first and last boundary of its need: what
    /// [`Scheduler::peer_has`] searches, kept apart from `pieces` so the search reads a
    /// few dense cache lines (a simulated swarm runs thousands of schedulers).
    need_spans: Vec<[ChunkNum; 2]>,
    /// Missing pieces ordered by (availability, tie-break, index): rarest first.
    missing: BTreeSet<(u32, u64, usize)>,
    /// The most peers at which one piece has failed.
    most_failed: u32,
    /// The connected peers. Between changes to it, a peer's position in the table is
    /// its index in the peer lists an assignment walks.
    peers: VecMap<P, Peer>,
    /// Peers that were connected once.
    retired: BTreeMap<P, Retired>,
    requests: BTreeMap<RequestId, Outstanding<P>>,
    /// The requests whose answers have not started. Ids grow with time, so the first
    /// is the one waiting longest.
    unstarted: BTreeSet<RequestId>,
    /// The requests by deadline, earliest first.
    deadlines: BTreeSet<(Duration, RequestId)>,
    queued: Vec<Action<P>>,
    next_id: RequestId,
    cursor: usize,
    inflight_bytes: u64,
    present_bytes: u64,
    done_bytes: u64,
    total_bytes: u64,
    /// Reused by [`Scheduler::peer_has`]: what changed, and the pieces it meets.
    scratch_bounds: Vec<ChunkNum>,
    scratch_pieces: Vec<usize>,
    /// Reused by [`Scheduler::assign`]: the peers' standings, in table order.
    scratch_standing: Vec<Standing>,
    scratch_last_resort: Vec<bool>,
}

/// The boundaries of the symmetric difference of two range sets, given theirs (a
/// set's boundaries toggle membership, so a point in both cancels out).
fn toggled(a: &[ChunkNum], b: &[ChunkNum], out: &mut Vec<ChunkNum>) {
    out.clear();
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => {
                out.push(a[i]);
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                out.push(b[j]);
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                i += 1;
                j += 1;
            }
        }
    }
    out.extend_from_slice(&a[i..]);
    out.extend_from_slice(&b[j..]);
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

impl<P: Ord + Copy + Debug> Scheduler<P> {
    /// A scheduler for fetching `blobs`.
    pub fn new(blobs: &[BlobSpec], config: SchedulerConfig) -> Self {
        assert!(
            config.piece_bytes >= CHUNK_GROUP_BYTES
                && config.piece_bytes.is_multiple_of(CHUNK_GROUP_BYTES),
            "piece size must be a multiple of 16 KiB"
        );
        let piece_chunks = config.piece_bytes / CHUNK_BYTES;
        let mut pieces = Vec::new();
        let mut blob_pieces = Vec::with_capacity(blobs.len());
        let mut present_bytes = 0;
        let mut total_bytes = 0;
        for (b, spec) in blobs.iter().enumerate() {
            let first = pieces.len();
            total_bytes += spec.size;
            present_bytes += ranges::covered_bytes(&spec.present, spec.size);
            let chunks = ranges::chunks(spec.size);
            let mut start = 0;
            while start < chunks {
                let end = (start + piece_chunks).min(chunks);
                let range = ChunkRanges::from(ChunkNum(start)..ChunkNum(end));
                let need = &range - &spec.present;
                if !need.is_empty() {
                    let index = pieces.len();
                    pieces.push(Piece {
                        blob: b,
                        bytes: ranges::covered_bytes(&need, spec.size),
                        need,
                        state: PieceState::Missing,
                        avail: 0,
                        tiebreak: splitmix(config.seed ^ (index as u64).wrapping_mul(0x2545_F491)),
                        requests: Vec::new(),
                        failed_peers: 0,
                    });
                }
                start = end;
            }
            blob_pieces.push(first..pieces.len());
        }
        let missing = pieces
            .iter()
            .enumerate()
            .map(|(i, p)| (0, p.tiebreak, i))
            .collect();
        let need_spans = pieces
            .iter()
            .map(|p| {
                let b = p.need.boundaries();
                [b[0], *b.last().expect("a piece needs something")]
            })
            .collect();
        Self {
            config,
            sizes: blobs.iter().map(|b| b.size).collect(),
            need_spans,
            pieces,
            blob_pieces,
            missing,
            most_failed: 0,
            peers: VecMap::new(),
            retired: BTreeMap::new(),
            requests: BTreeMap::new(),
            unstarted: BTreeSet::new(),
            deadlines: BTreeSet::new(),
            queued: Vec::new(),
            next_id: 1,
            cursor: 0,
            inflight_bytes: 0,
            present_bytes,
            done_bytes: 0,
            total_bytes,
            scratch_bounds: Vec::new(),
            scratch_pieces: Vec::new(),
            scratch_standing: Vec::new(),
            scratch_last_resort: Vec::new(),
        }
    }

    /// Bytes present or fetched, and the total.
    pub fn progress(&self) -> (u64, u64) {
        (self.present_bytes + self.done_bytes, self.total_bytes)
    }

    /// Bytes that were already present when the fetch started.
    pub fn present_at_start(&self) -> u64 {
        self.present_bytes
    }

    /// Whether every piece is fetched.
    pub fn is_done(&self) -> bool {
        self.done_bytes + self.present_bytes >= self.total_bytes
            && self.pieces.iter().all(|p| p.state == PieceState::Done)
    }

    /// Connected peers (not gone, not banned).
    pub fn live_peers(&self) -> usize {
        self.peers.len()
    }

    /// Requests in flight.
    pub fn inflight(&self) -> usize {
        self.requests.len()
    }

    /// Whether `peer` is banned.
    pub fn is_banned(&self, peer: &P) -> bool {
        self.retired.get(peer).is_some_and(|r| r.banned)
    }

    /// Bytes delivered by each peer.
    pub fn delivered(&self) -> impl Iterator<Item = (P, u64)> + '_ {
        let connected = self.peers.iter().map(|(k, p)| (*k, p.delivered));
        let retired = self.retired.iter().map(|(k, r)| (*k, r.delivered));
        // In the order of the peers' names, as one table.
        connected
            .chain(retired)
            .collect::<BTreeMap<P, u64>>()
            .into_iter()
    }

    /// Live peers that have nothing this fetch still needs and nothing in flight: a
    /// driver at its peer limit can replace them with peers that might.
    pub fn useless_peers(&self) -> impl Iterator<Item = P> + '_ {
        self.peers
            .iter()
            .filter(|(_, p)| p.useful == 0 && p.inflight.is_empty())
            .map(|(k, _)| *k)
    }

    /// The live peer that delivers slowest, if its measured rate is under
    /// [`SLOW_PEER_FRACTION`] of the median measured rate. A driver at its peer limit
    /// with untried peers waiting replaces it (one at a time): a peer shared by many
    /// fetchers, or behind a slow link, makes room for one that may serve this fetch
    /// better. Without it, the first providers a burst finds keep every fetcher's
    /// slots while later hosts' uploads go unused.
    pub fn slow_peer(&self) -> Option<P> {
        let rates = self.measured_rates();
        if rates.len() < 2 {
            return None;
        }
        let median = rates[rates.len() / 2].0;
        (rates[0].0 < SLOW_PEER_FRACTION * median).then_some(rates[0].1)
    }

    /// Live peers whose answers start later than the late horizon ([`LATE_FACTOR`]
    /// queue targets), longest wait first: a driver at its peer limit with untried
    /// peers waiting replaces up to [`QUEUED_ROTATION`] of them a round. A peer's wait
    /// is the moving average of its answers' waits, or the age of its oldest request
    /// not yet started if that is longer. Peers with every piece this fetch still
    /// lacks (seeds, mostly) are kept: they are its sources of last resort.
    ///
    /// This is what spreads a burst over its hosts. Every fetch learns of the first
    /// providers first and fills its slots with them; their queues then hold hundreds
    /// of requests each while later holders' uploads go unused. The peers are all
    /// equally loaded, so none is slow against the median ([`Scheduler::slow_peer`]);
    /// but their answers wait seconds to start, where a fresh provider's start at once.
    pub fn queued_peers(&self, now: Duration) -> Vec<P> {
        let horizon = LATE_FACTOR * self.config.queue_target.as_secs_f64();
        let lacking = self
            .pieces
            .iter()
            .filter(|p| p.state != PieceState::Done)
            .count();
        let mut queued: Vec<(f64, P)> = self
            .peers
            .iter()
            .filter(|(_, p)| (p.useful as usize) < lacking)
            .filter_map(|(k, p)| {
                // Request ids grow with time: the first not started is the oldest.
                let oldest = p
                    .inflight
                    .iter()
                    .find(|(id, _)| self.requests.get(id).is_some_and(|o| !o.started))
                    .map_or(0.0, |(_, &sent)| now.saturating_sub(sent).as_secs_f64());
                let wait = p.wait.unwrap_or(0.0).max(oldest);
                (wait > horizon).then_some((wait, *k))
            })
            .collect();
        queued.sort_by(|a, b| b.0.total_cmp(&a.0));
        queued.into_iter().map(|(_, k)| k).collect()
    }

    /// The measured rates of the live peers, slowest first.
    fn measured_rates(&self) -> Vec<(f64, P)> {
        let mut rates: Vec<(f64, P)> = self
            .peers
            .iter()
            .filter_map(|(k, p)| p.rate.map(|r| (r, *k)))
            .collect();
        rates.sort_by(|a, b| a.0.total_cmp(&b.0));
        rates
    }

    /// If nothing is in flight and no live peer has any missing piece, the missing
    /// ranges per blob; otherwise `None`.
    pub fn stuck(&self) -> Option<Vec<(usize, ChunkRanges)>> {
        if self.is_done() || !self.requests.is_empty() {
            return None;
        }
        if self.missing.iter().any(|(avail, _, _)| *avail > 0) {
            return None;
        }
        let mut per_blob: BTreeMap<usize, ChunkRanges> = BTreeMap::new();
        for p in self.pieces.iter().filter(|p| p.state != PieceState::Done) {
            *per_blob.entry(p.blob).or_insert_with(ChunkRanges::empty) |= p.need.clone();
        }
        Some(per_blob.into_iter().collect())
    }

    /// A new peer (it has nothing until [`Scheduler::peer_has`]).
    pub fn add_peer(&mut self, peer: P, now: Duration) {
        if self.peers.contains_key(&peer) || self.retired.contains_key(&peer) {
            return;
        }
        self.peers.insert(
            peer,
            Peer {
                has: vec![ChunkRanges::empty(); self.sizes.len()],
                has_piece: vec![false; self.pieces.len()],
                inflight: BTreeMap::new(),
                inflight_bytes: 0,
                rate: None,
                oldest_sent: None,
                meter: Meter::default(),
                idle_since: now,
                useful: 0,
                offer: 0,
                window: self.config.min_window,
                timeouts: 0,
                backoff_until: Duration::ZERO,
                delivered: 0,
                wait: None,
                failed: BTreeSet::new(),
            },
        );
    }

    /// What `peer` has of blob `blob` (replacing what it said before). Returns whether
    /// that changed what the peer can give this fetch (a piece not yet done): if not,
    /// no decision of the scheduler changes either.
    ///
    /// Only the pieces whose ranges meet what changed are looked at: a growing
    /// have-map updates a few pieces of a blob that may have thousands.
    pub fn peer_has(&mut self, peer: P, blob: usize, has: &ChunkRanges, _now: Duration) -> bool {
        let Some(at) = self.peers.position(&peer) else {
            return false;
        };
        if blob >= self.sizes.len() {
            return false;
        }
        let p = &mut self.peers.values_mut()[at];
        let has = ranges::clip(has, self.sizes[blob]);
        let mut changed = std::mem::take(&mut self.scratch_bounds);
        toggled(p.has[blob].boundaries(), has.boundaries(), &mut changed);
        p.has[blob] = has;
        let pieces = self.blob_pieces[blob].clone();
        // A piece's need lies within its own range, so within a blob both ends of
        // the needs grow with the piece index.
        let of_blob = &self.need_spans[pieces.clone()];
        let mut affected = std::mem::take(&mut self.scratch_pieces);
        affected.clear();
        for span in changed.chunks(2) {
            let lo = of_blob.partition_point(|[_, end]| *end <= span[0]);
            let hi = match span.get(1) {
                Some(&stop) => of_blob.partition_point(|[first, _]| *first < stop),
                None => of_blob.len(),
            };
            // Spans are sorted, so pieces come in order; one may meet two spans.
            let from = (pieces.start + lo).max(affected.last().map_or(0, |&i: &usize| i + 1));
            affected.extend(from..pieces.start + hi);
        }
        self.scratch_bounds = changed;
        let mut useful_changed = false;
        for &i in &affected {
            let p = &mut self.peers.values_mut()[at];
            let now_has = self.pieces[i].need.is_subset(&p.has[blob]);
            if now_has != p.has_piece[i] {
                p.has_piece[i] = now_has;
                if self.pieces[i].state != PieceState::Done {
                    useful_changed = true;
                    if now_has {
                        p.useful += 1;
                    } else {
                        p.useful -= 1;
                    }
                }
                if self.pieces[i].state == PieceState::Missing {
                    if now_has {
                        p.offer += 1;
                    } else {
                        p.offer -= 1;
                    }
                }
                self.set_avail(i, if now_has { 1 } else { -1 });
            }
        }
        self.scratch_pieces = affected;
        useful_changed
    }

    /// Whether `peer` (connected) has said it holds every chunk of blob `blob`: a peer
    /// whose pushed news completed a blob is complete there as surely as one whose
    /// have-map said so.
    pub fn peer_holds_all(&self, peer: &P, blob: usize) -> bool {
        self.peers
            .get(peer)
            .and_then(|p| p.has.get(blob))
            .is_some_and(|has| ranges::is_complete(has, self.sizes[blob]))
    }

    /// `peer` now holds `gained` of blob `blob` too (a pushed notice: news only, on top
    /// of what it said before). Nothing it said before is taken back: only a whole
    /// have-map ([`Scheduler::peer_has`]) does that.
    /// Returns what [`Scheduler::peer_has`] does.
    pub fn peer_gained(
        &mut self,
        peer: P,
        blob: usize,
        gained: &ChunkRanges,
        now: Duration,
    ) -> bool {
        let Some(p) = self.peers.get(&peer) else {
            return false;
        };
        let Some(had) = p.has.get(blob) else {
            return false;
        };
        if gained.is_subset(had) {
            return false;
        }
        let has = had | gained;
        self.peer_has(peer, blob, &has, now)
    }

    fn set_avail(&mut self, piece: usize, delta: i32) {
        let p = &mut self.pieces[piece];
        let missing = p.state == PieceState::Missing;
        if missing {
            self.missing.remove(&(p.avail, p.tiebreak, piece));
        }
        p.avail = p.avail.saturating_add_signed(delta);
        if missing {
            self.missing.insert((p.avail, p.tiebreak, piece));
        }
    }

    fn set_state(&mut self, piece: usize, state: PieceState) {
        let p = &mut self.pieces[piece];
        let was_missing = p.state == PieceState::Missing;
        let is_missing = state == PieceState::Missing;
        if was_missing {
            self.missing.remove(&(p.avail, p.tiebreak, piece));
        }
        if was_missing != is_missing {
            for peer in self.peers.values_mut() {
                if peer.has_piece[piece] {
                    if is_missing {
                        peer.offer += 1;
                    } else {
                        peer.offer -= 1;
                    }
                }
            }
        }
        let p = &mut self.pieces[piece];
        p.state = state;
        if state == PieceState::Missing {
            self.missing.insert((p.avail, p.tiebreak, piece));
        }
    }

    /// A peer that was removed or dropped (not banned) is back: it starts afresh, and
    /// has nothing until it says what it has.
    pub fn readmit_peer(&mut self, peer: P, now: Duration) {
        if self.is_banned(&peer) {
            return;
        }
        self.retire_peer(peer, false, now);
        let before = self.retired.remove(&peer).map_or(0, |r| r.delivered);
        self.add_peer(peer, now);
        if let Some(p) = self.peers.get_mut(&peer) {
            p.delivered = before;
        }
    }

    /// The peer disconnected: its requests fail and its pieces count no more.
    pub fn remove_peer(&mut self, peer: P, now: Duration) {
        self.retire_peer(peer, false, now);
    }

    fn retire_peer(&mut self, peer: P, ban: bool, now: Duration) {
        if let Some(r) = self.retired.get_mut(&peer) {
            r.banned |= ban;
            return;
        }
        let Some(p) = self.peers.remove(&peer) else {
            return;
        };
        self.retired.insert(
            peer,
            Retired {
                banned: ban,
                delivered: p.delivered,
            },
        );
        for (i, _) in p.has_piece.iter().enumerate().filter(|(_, h)| **h) {
            self.set_avail(i, -1);
        }
        for id in p.inflight.into_keys() {
            self.forget_request(id, now);
        }
    }

    /// Removes a request; its piece goes back to missing if nothing else fetches it.
    fn forget_request(&mut self, id: RequestId, now: Duration) -> Option<Outstanding<P>> {
        let r = self.requests.remove(&id)?;
        self.unstarted.remove(&id);
        self.deadlines.remove(&(r.deadline, id));
        self.inflight_bytes -= r.bytes;
        if let Some(p) = self.peers.get_mut(&r.peer) {
            p.inflight.remove(&id);
            // Request ids grow with time: the first is the oldest.
            p.oldest_sent = p.inflight.first_key_value().map(|(_, &sent)| sent);
            p.inflight_bytes -= r.bytes;
            if p.inflight.is_empty() {
                p.idle_since = now;
            }
        }
        let piece = &mut self.pieces[r.piece];
        piece.requests.retain(|x| *x != id);
        if piece.requests.is_empty() && piece.state == PieceState::Requested {
            self.set_state(r.piece, PieceState::Missing);
        }
        Some(r)
    }

    /// The answer to request `id` has begun to arrive: the peer took it up and is
    /// sending. Other requests for the same piece whose answers have not started are
    /// cancelled (the cancels are queued): whichever copy a peer takes up first wins,
    /// before two of them can share the link and one be thrown away.
    pub fn on_started(&mut self, id: RequestId, now: Duration) {
        let Some(o) = self.requests.get_mut(&id) else {
            return;
        };
        o.started = true;
        let (piece, peer, sent) = (o.piece, o.peer, o.sent);
        self.unstarted.remove(&id);
        if let Some(p) = self.peers.get_mut(&peer) {
            let wait = now.saturating_sub(sent).as_secs_f64();
            p.wait = Some(p.wait.map_or(wait, |old| 0.5 * old + 0.5 * wait));
        }
        let waiting: Vec<RequestId> = self.pieces[piece]
            .requests
            .iter()
            .copied()
            .filter(|r| *r != id && self.requests.get(r).is_some_and(|o| !o.started))
            .collect();
        for r in waiting {
            if let Some(o) = self.forget_request(r, now) {
                self.queued.push(Action::Cancel {
                    id: r,
                    peer: o.peer,
                });
            }
        }
    }

    /// The request's data arrived and verified.
    pub fn on_complete(&mut self, id: RequestId, now: Duration) {
        let Some(r) = self.requests.get(&id).cloned() else {
            return;
        };
        let full = self
            .peers
            .get(&r.peer)
            .is_some_and(|p| p.inflight.len() >= p.window);
        self.forget_request(id, now);
        if let Some(p) = self.peers.get_mut(&r.peer) {
            let idle = p.inflight.is_empty();
            if let Some(sample) = p.meter.delivered(r.bytes, now, idle) {
                p.rate = Some(p.rate.map_or(sample, |old| 0.75 * old + 0.25 * sample));
            }
            p.delivered += r.bytes;
            p.timeouts = 0;
            if full && p.window < self.config.max_window {
                p.window += 1;
            }
        }
        let piece = r.piece;
        if self.pieces[piece].state != PieceState::Done {
            self.set_state(piece, PieceState::Done);
            self.done_bytes += self.pieces[piece].bytes;
            for p in self.peers.values_mut() {
                if p.has_piece[piece] {
                    p.useful -= 1;
                }
            }
        }
        // Cancel the duplicates that lost the race.
        for other in std::mem::take(&mut self.pieces[piece].requests) {
            if let Some(o) = self.forget_request(other, now) {
                self.queued.push(Action::Cancel {
                    id: other,
                    peer: o.peer,
                });
            }
        }
    }

    /// The request failed.
    pub fn on_failed(&mut self, id: RequestId, why: Failure, now: Duration) {
        let Some(r) = self.forget_request(id, now) else {
            return;
        };
        if let Some(p) = self.peers.get_mut(&r.peer)
            && p.failed.insert(r.piece)
        {
            self.pieces[r.piece].failed_peers += 1;
            self.most_failed = self.most_failed.max(self.pieces[r.piece].failed_peers);
        }
        match why {
            Failure::Corrupt => {
                self.retire_peer(r.peer, true, now);
                self.queued.push(Action::DropPeer {
                    peer: r.peer,
                    reason: DropReason::Corrupt,
                });
            }
            Failure::NotPresent => {
                // Its have-map was wrong for this piece: stop counting it there.
                if let Some(p) = self.peers.get_mut(&r.peer)
                    && p.has_piece[r.piece]
                {
                    p.has_piece[r.piece] = false;
                    if self.pieces[r.piece].state != PieceState::Done {
                        p.useful -= 1;
                    }
                    if self.pieces[r.piece].state == PieceState::Missing {
                        p.offer -= 1;
                    }
                    let blob = self.pieces[r.piece].blob;
                    p.has[blob] = &p.has[blob] - &self.pieces[r.piece].need;
                    self.set_avail(r.piece, -1);
                }
            }
            // Recorded as failed at this peer above: the piece goes to others first.
            Failure::Elsewhere => {
                if let Some(p) = self.peers.get_mut(&r.peer) {
                    p.backoff_until = now + self.config.busy_backoff;
                }
            }
            Failure::Busy => {
                if let Some(p) = self.peers.get_mut(&r.peer) {
                    p.window = (p.window / 2).max(1);
                    p.backoff_until = now + self.config.busy_backoff;
                }
            }
            Failure::Timeout | Failure::Io => {
                let drop = self.peers.get_mut(&r.peer).is_some_and(|p| {
                    p.window = (p.window / 2).max(self.config.min_window.min(2));
                    p.timeouts += 1;
                    p.timeouts >= self.config.max_timeouts
                });
                if drop {
                    self.retire_peer(r.peer, false, now);
                    self.queued.push(Action::DropPeer {
                        peer: r.peer,
                        reason: DropReason::Unresponsive,
                    });
                }
            }
        }
    }

    /// The earliest time at which a request times out.
    pub fn next_deadline(&self) -> Option<Duration> {
        self.deadlines.first().map(|(d, _)| *d)
    }

    /// The next thing to do at time `now`, or `None` until something happens.
    pub fn poll_action(&mut self, now: Duration) -> Option<Action<P>> {
        if let Some(a) = self.queued.pop() {
            return Some(a);
        }
        // Time out overdue requests, oldest first.
        if let Some(&(deadline, id)) = self.deadlines.first()
            && deadline <= now
        {
            let peer = self.requests[&id].peer;
            self.on_failed(id, Failure::Timeout, now);
            self.queued.push(Action::Cancel { id, peer });
            return self.queued.pop();
        }
        self.assign(now)
    }

    fn assign(&mut self, now: Duration) -> Option<Action<P>> {
        if self.inflight_bytes >= self.config.max_inflight_bytes || self.peers.is_empty() {
            return None;
        }
        let target = self.queue_target();
        // A peer that needs longer than the late horizon to deliver one piece is a last
        // resort: a request to it would be late anyway.
        let horizon = LATE_FACTOR * target;
        // Scratch vectors reused across calls (this runs for every action).
        let mut standing = std::mem::take(&mut self.scratch_standing);
        let mut last_resort = std::mem::take(&mut self.scratch_last_resort);
        standing.clear();
        last_resort.clear();
        // The median is needed only once some peer is past the horizon (rarely).
        let median = std::cell::OnceCell::new();
        for p in self.peers.values() {
            let s = self.standing(p, now, horizon, || {
                *median.get_or_init(|| self.median_rate())
            });
            standing.push(s);
            last_resort.push(s == Standing::LastResort);
        }
        let action = self.pick(now, target, &standing, &last_resort);
        self.scratch_standing = standing;
        self.scratch_last_resort = last_resort;
        action
    }

    /// [`Scheduler::assign`] once every peer's standing is known (`standing` and
    /// `last_resort` are in the order of the peer table).
    fn pick(
        &mut self,
        now: Duration,
        target: f64,
        standing: &[Standing],
        last_resort: &[bool],
    ) -> Option<Action<P>> {
        let endgame = self.missing.is_empty();
        let horizon = LATE_FACTOR * target;
        let late = now.saturating_sub(Duration::from_secs_f64(horizon));
        // The request waiting longest comes first.
        let none_waiting_since = |t: Duration| {
            self.unstarted
                .first()
                .is_none_or(|id| self.requests[id].sent >= t)
        };
        let none_late = none_waiting_since(late);
        // An idle peer may take over sooner (`IDLE_TAKEOVER`), but not at once where
        // a fast fetch has shortened its horizon to a fraction of a second.
        let configured = LATE_FACTOR * self.config.queue_target.as_secs_f64();
        let late_for_idle = now.saturating_sub(Duration::from_secs_f64(
            horizon.min(IDLE_TAKEOVER * configured),
        ));
        let none_late_for_idle = none_waiting_since(late_for_idle);
        let n_last_resort = last_resort.iter().filter(|&&x| x).count() as u32;
        if n_last_resort > 0 && self.withdraw_from_last_resorts(last_resort, horizon, now) {
            return self.queued.pop();
        }
        // The requests waiting since before `late_for_idle` (the later threshold), oldest
        // first, by when each was sent and its piece: gathered once, for every peer
        // with nothing missing on offer to look through.
        let waiting = std::cell::OnceCell::new();
        let waiting = || {
            waiting.get_or_init(|| {
                self.unstarted
                    .iter()
                    .map(|id| &self.requests[id])
                    .take_while(|o| o.sent < late_for_idle)
                    .map(|o| (o.sent, o.piece))
                    .collect::<Vec<_>>()
            })
        };
        // In the endgame, the requested pieces that have a request not yet started,
        // by their oldest request: gathered once, for every peer to look through.
        let candidates = std::cell::OnceCell::new();
        let candidates = || candidates.get_or_init(|| self.endgame_candidates());
        let n_peers = self.peers.len();
        for k in 0..n_peers {
            let idx = (self.cursor + k) % n_peers;
            let p = &self.peers.values()[idx];
            if p.inflight.len() >= p.window || p.backoff_until > now {
                continue;
            }
            // With nothing missing on offer, a peer may still take over a late request
            // (a last resort would only be late in its turn); an idle one, sooner.
            let (late, none_late) = if p.inflight.is_empty() {
                (late_for_idle, none_late_for_idle)
            } else {
                (late, none_late)
            };
            if !endgame && p.offer == 0 && (none_late || last_resort[idx]) {
                continue;
            }
            let budget = match p.rate {
                Some(rate) => rate * target,
                None => self.config.initial_peer_bytes as f64,
            };
            if !p.inflight.is_empty()
                && p.inflight_bytes as f64 >= budget.max(self.config.piece_bytes as f64)
            {
                continue;
            }
            // A last resort duplicates nothing a quicker peer could send.
            let allowed =
                |i: usize| !last_resort[idx] || !self.quicker_holder(i, last_resort, n_last_resort);
            let piece = if endgame {
                self.endgame_piece(p, late, candidates(), allowed)
            } else if p.offer == 0 {
                self.late_piece(p, late, waiting())
            } else {
                // A piece that failed at this peer goes to others first, unless every
                // peer that has it failed it too.
                // A last resort looks only at pieces so rare that a quicker holder
                // may be missing: more live holders than there are last resorts and
                // peers that failed the piece means a quicker one has it.
                let rare = if last_resort[idx] {
                    n_last_resort + self.most_failed
                } else {
                    u32::MAX
                };
                self.rarest_offered(p, rare, allowed)
            };
            if let Some(piece) = piece {
                self.cursor = (self.cursor + k + 1) % n_peers;
                let peer = self.peers.keys()[idx];
                let probe = standing[idx] == Standing::Probe;
                return Some(self.issue(peer, piece, probe, now));
            }
        }
        None
    }

    /// A peer is a last resort if it needs longer than `horizon` seconds to deliver one
    /// piece and is [`LAST_RESORT_RATIO`] times slower than the `median` measured rate
    /// (computed only then). Its rate is the measured one; before its first answer, what
    /// its oldest request shows once that has waited longer than `horizon`: a seed
    /// swamped by a burst may not answer a fetch's first request for a minute, and
    /// must not count as unmeasured all that time (a measured peer's answers keep its
    /// rate current, and its queue is sized to that rate). A last resort is asked only for pieces no quicker peer has: otherwise
    /// every fetch keeps a request in its long queue for a piece others could send
    /// now, and the pieces only it has wait behind them. The judgement expires: a peer
    /// idle for [`LAST_RESORT_PROBE`] horizons is asked once more (a probe), and its
    /// answer measures it again.
    fn standing(
        &self,
        p: &Peer,
        now: Duration,
        horizon: f64,
        median: impl FnOnce() -> f64,
    ) -> Standing {
        let rate = p.rate.or_else(|| self.overdue_rate(p, now, horizon));
        let piece = self.config.piece_bytes as f64;
        if !rate.is_some_and(|r| piece > r * horizon && r * LAST_RESORT_RATIO < median()) {
            Standing::Quick
        } else if p.inflight.is_empty()
            && now.saturating_sub(p.idle_since).as_secs_f64() >= LAST_RESORT_PROBE * horizon
        {
            Standing::Probe
        } else {
            Standing::LastResort
        }
    }

    /// The rate a peer's oldest request shows, if it has waited longer than `horizon`
    /// and than the configured late horizon ([`LATE_FACTOR`] configured queue
    /// targets, however short a fast fetch makes its own): one piece over its age (at
    /// least as fast as the peer delivers). A new peer's first answer takes a few
    /// round trips; on a fast link the shortened horizon is a fraction of a second.
    fn overdue_rate(&self, p: &Peer, now: Duration, horizon: f64) -> Option<f64> {
        let sent = p.oldest_sent?;
        let age = now.saturating_sub(sent).as_secs_f64();
        let floor = LATE_FACTOR * self.config.queue_target.as_secs_f64();
        (age > horizon.max(floor)).then(|| self.config.piece_bytes as f64 / age)
    }

    /// Withdraws the requests waiting at last resorts (probes, and answers already
    /// flowing, aside) whose pieces a quicker peer now has: the piece goes back to the missing ones, the quicker peer
    /// sends it, and the last resort's queue is left to the pieces only it has. A peer
    /// not yet measured keeps the rate its overdue request showed as its measured
    /// rate, so it stays a last resort until probed. Returns whether
    /// anything was withdrawn (the cancels are queued).
    fn withdraw_from_last_resorts(
        &mut self,
        last_resort: &[bool],
        horizon: f64,
        now: Duration,
    ) -> bool {
        let mut stale = Vec::new();
        let mut shown = Vec::new();
        let n_last_resort = last_resort.iter().filter(|&&x| x).count() as u32;
        for ((k, p), _) in self
            .peers
            .iter()
            .zip(last_resort)
            .filter(|(_, slow)| **slow)
        {
            let before = stale.len();
            stale.extend(p.inflight.keys().copied().filter(|id| {
                let o = &self.requests[id];
                !o.probe && !o.started && self.quicker_holder(o.piece, last_resort, n_last_resort)
            }));
            if stale.len() > before
                && p.rate.is_none()
                && let Some(bound) = self.overdue_rate(p, now, horizon)
            {
                shown.push((*k, bound));
            }
        }
        for (k, bound) in shown {
            if let Some(p) = self.peers.get_mut(&k) {
                p.rate = Some(bound);
            }
        }
        for &id in &stale {
            if let Some(o) = self.forget_request(id, now) {
                self.queued.push(Action::Cancel { id, peer: o.peer });
            }
        }
        !stale.is_empty()
    }

    /// The median measured rate of the live peers (0 if none is measured).
    fn median_rate(&self) -> f64 {
        let rates = self.measured_rates();
        rates.get(rates.len() / 2).map_or(0.0, |r| r.0)
    }

    /// Whether a live peer that is not a last resort has piece `i` and has not failed
    /// it (one that failed it is asked again only after every other holder).
    /// `n_last_resort` counts the `true`s of `last_resort`.
    fn quicker_holder(&self, i: usize, last_resort: &[bool], n_last_resort: u32) -> bool {
        // More live holders than last resorts and peers that failed the piece: one of
        // them is neither.
        let piece = &self.pieces[i];
        if piece.avail > n_last_resort.saturating_add(piece.failed_peers) {
            return true;
        }
        self.peers
            .values()
            .iter()
            .zip(last_resort)
            .any(|(q, &slow)| !slow && q.has_piece[i] && !q.failed.contains(&i))
    }

    /// Seconds of a peer's measured delivery that may be in flight to it: the
    /// configured [`SchedulerConfig::queue_target`], shortened so that the whole
    /// swarm's share stays within a fraction of [`SchedulerConfig::max_inflight_bytes`]
    /// (Little's law: on a fast link a long wait at busy peers would otherwise use up
    /// the in-flight allowance and leave the link idle).
    fn queue_target(&self) -> f64 {
        let total: f64 = self.peers.values().iter().filter_map(|p| p.rate).sum();
        let configured = self.config.queue_target.as_secs_f64();
        if total <= 0.0 {
            return configured;
        }
        configured.min(self.config.queue_share * self.config.max_inflight_bytes as f64 / total)
    }

    /// The rarest missing piece `p` has that is at most `rare` rare and `allowed`, one
    /// that failed at `p` only if every holder failed it. A peer that offers few of
    /// the missing pieces has its pieces looked through (a dense scan); one that offers
    /// many, the missing pieces in order of rarity (it soon meets one it has). Both
    /// give the same piece.
    fn rarest_offered(
        &self,
        p: &Peer,
        rare: u32,
        allowed: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        let eligible = |avail: u32, i: usize| {
            avail <= rare && (!p.failed.contains(&i) || avail <= self.pieces[i].failed_peers)
        };
        if (p.offer as usize).saturating_mul(FEW_OFFERED) >= self.missing.len() {
            return self
                .missing
                .iter()
                .take_while(|(avail, _, _)| *avail <= rare)
                .find(|&&(avail, _, i)| p.has_piece[i] && eligible(avail, i) && allowed(i))
                .map(|(_, _, i)| *i);
        }
        let mut offered: Vec<(u32, u64, usize)> = p
            .has_piece
            .iter()
            .enumerate()
            .filter(|(_, has)| **has)
            .map(|(i, _)| (i, &self.pieces[i]))
            .filter(|(i, piece)| piece.state == PieceState::Missing && eligible(piece.avail, *i))
            .map(|(i, piece)| (piece.avail, piece.tiebreak, i))
            .collect();
        offered.sort_unstable();
        offered.into_iter().map(|(_, _, i)| i).find(|&i| allowed(i))
    }

    /// Before the endgame, for a peer with nothing missing on offer: the piece of the
    /// oldest request sent before `late` whose answer has not started that this peer
    /// has, if it has room for a duplicate and the peer is not already on it. A request
    /// stuck in a busy peer's queue would otherwise hold its piece while others could
    /// send it now. `waiting`: the requests whose answers have not started, oldest
    /// first, by when each was sent and its piece (at least those sent before `late`).
    fn late_piece(&self, p: &Peer, late: Duration, waiting: &[(Duration, usize)]) -> Option<usize> {
        waiting
            .iter()
            .take_while(|(sent, _)| *sent < late)
            .map(|&(_, i)| i)
            .find(|&i| {
                let piece = &self.pieces[i];
                p.has_piece[i]
                    && piece.state == PieceState::Requested
                    && self.timely_requests(i, late) < self.config.max_duplicates
                    && !piece.requests.iter().any(|r| p.inflight.contains_key(r))
            })
    }

    /// Outstanding requests for piece `i` that are not late: sent at or after `late`,
    /// or with their answers started. Late ones do not count against
    /// [`SchedulerConfig::max_duplicates`]: a piece whose requests all wait in long
    /// queues may be taken over again (each peer at most once).
    fn timely_requests(&self, i: usize, late: Duration) -> usize {
        self.pieces[i]
            .requests
            .iter()
            .filter(|r| {
                self.requests
                    .get(r)
                    .is_some_and(|o| o.started || o.sent >= late)
            })
            .count()
    }

    /// In the endgame: the first of `candidates` ([`Scheduler::endgame_candidates`])
    /// this peer has and is `allowed`, if it has room for another duplicate and the
    /// peer is not already on it.
    fn endgame_piece(
        &self,
        p: &Peer,
        late: Duration,
        candidates: &[usize],
        allowed: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        candidates.iter().copied().find(|&i| {
            p.has_piece[i]
                && allowed(i)
                && self.timely_requests(i, late) < self.config.max_duplicates
                && !self.pieces[i]
                    .requests
                    .iter()
                    .any(|r| p.inflight.contains_key(r))
        })
    }

    /// The requested pieces some request for which has not started, by when their
    /// oldest request was sent (then by index): the order in which the endgame
    /// duplicates them.
    fn endgame_candidates(&self) -> Vec<usize> {
        let mut order: Vec<(Duration, usize)> = self
            .pieces
            .iter()
            .enumerate()
            .filter(|(_, piece)| {
                piece.state == PieceState::Requested
                    && piece
                        .requests
                        .iter()
                        .any(|r| self.requests.get(r).is_some_and(|o| !o.started))
            })
            .filter_map(|(i, piece)| {
                let oldest = piece
                    .requests
                    .iter()
                    .filter_map(|r| self.requests.get(r).map(|o| o.sent))
                    .min()?;
                Some((oldest, i))
            })
            .collect();
        order.sort_unstable();
        order.into_iter().map(|(_, i)| i).collect()
    }

    fn issue(&mut self, peer: P, piece: usize, probe: bool, now: Duration) -> Action<P> {
        let id = self.next_id;
        self.next_id += 1;
        let (blob, need, bytes) = {
            let p = &self.pieces[piece];
            (p.blob, p.need.clone(), p.bytes)
        };
        if self.pieces[piece].state == PieceState::Missing {
            self.set_state(piece, PieceState::Requested);
        }
        self.pieces[piece].requests.push(id);
        let timeout = self.config.request_timeout
            + Duration::from_secs_f64(bytes as f64 / self.config.slowest_rate.max(1) as f64);
        self.deadlines.insert((now + timeout, id));
        self.requests.insert(
            id,
            Outstanding {
                peer,
                piece,
                bytes,
                sent: now,
                deadline: now + timeout,
                probe,
                started: false,
            },
        );
        self.unstarted.insert(id);
        self.inflight_bytes += bytes;
        let p = self.peers.get_mut(&peer).expect("issuing to a known peer");
        if p.inflight.is_empty() {
            p.meter = Meter::start(now);
            p.oldest_sent = Some(now);
        }
        p.inflight.insert(id, now);
        p.inflight_bytes += bytes;
        Action::Request {
            id,
            peer,
            blob,
            ranges: need,
            bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const MIB: u64 = 1 << 20;
    const T0: Duration = Duration::ZERO;

    fn spec(size: u64) -> BlobSpec {
        BlobSpec {
            size,
            present: ChunkRanges::empty(),
        }
    }

    fn all_requests(s: &mut Scheduler<u32>, now: Duration) -> Vec<Action<u32>> {
        std::iter::from_fn(|| s.poll_action(now)).collect()
    }

    fn req(a: &Action<u32>) -> (RequestId, u32, usize, ChunkRanges) {
        match a {
            Action::Request {
                id,
                peer,
                blob,
                ranges,
                ..
            } => (*id, *peer, *blob, ranges.clone()),
            other => panic!("expected a request, got {other:?}"),
        }
    }

    #[test]
    fn one_seed_gets_every_piece_exactly_once() {
        let mut s = Scheduler::new(&[spec(10 * MIB + 5)], SchedulerConfig::default());
        s.add_peer(7, T0);
        s.peer_has(7, 0, &ChunkRanges::all(), T0);
        let mut seen = ChunkRanges::empty();
        let mut count = 0;
        while !s.is_done() {
            let actions = all_requests(&mut s, T0);
            assert!(!actions.is_empty(), "nothing to do but not done");
            assert!(actions.len() <= 16, "window exceeded");
            for a in actions {
                let (id, peer, _, r) = req(&a);
                assert_eq!(peer, 7);
                assert!((&seen & &r).is_empty(), "piece requested twice");
                seen |= r;
                s.on_complete(id, T0);
                count += 1;
            }
        }
        assert_eq!(count, 11);
        assert!(ranges::is_complete(&seen, 10 * MIB + 5));
        assert_eq!(s.progress(), (10 * MIB + 5, 10 * MIB + 5));
    }

    #[test]
    fn a_pushed_notice_adds_to_what_a_peer_has_and_takes_nothing_back() {
        let mut s = Scheduler::new(&[spec(4 * MIB)], SchedulerConfig::default());
        s.add_peer(2, T0);
        s.peer_has(2, 0, &ranges::from_bytes(0..MIB), T0);
        s.peer_gained(2, 0, &ranges::from_bytes(2 * MIB..3 * MIB), T0);
        // Already known: changes nothing.
        s.peer_gained(2, 0, &ranges::from_bytes(0..MIB), T0);
        // An unknown peer or blob is ignored.
        s.peer_gained(9, 0, &ChunkRanges::all(), T0);
        s.peer_gained(2, 5, &ChunkRanges::all(), T0);
        let asked = all_requests(&mut s, T0)
            .iter()
            .map(|a| req(a).3)
            .fold(ChunkRanges::empty(), |acc, r| &acc | &r);
        let both = &ranges::from_bytes(0..MIB) | &ranges::from_bytes(2 * MIB..3 * MIB);
        assert_eq!(asked, both);
        // News that fills the gaps makes the peer hold all of the blob.
        assert!(!s.peer_holds_all(&2, 0));
        let gaps = &ranges::from_bytes(MIB..2 * MIB) | &ranges::from_bytes(3 * MIB..4 * MIB);
        s.peer_gained(2, 0, &gaps, T0);
        assert!(s.peer_holds_all(&2, 0));
        assert!(!s.peer_holds_all(&9, 0));
        assert!(!s.peer_holds_all(&2, 5));
    }

    #[test]
    fn rarest_piece_first() {
        let mut s = Scheduler::new(&[spec(4 * MIB)], SchedulerConfig::default());
        for p in [1, 2, 3] {
            s.add_peer(p, T0);
        }
        // Piece 3 is held by one peer only, pieces 0-2 by all three.
        s.peer_has(1, 0, &ChunkRanges::all(), T0);
        s.peer_has(2, 0, &ranges::from_bytes(0..3 * MIB), T0);
        s.peer_has(3, 0, &ranges::from_bytes(0..3 * MIB), T0);
        let a = s.poll_action(T0).unwrap();
        let (_, peer, _, r) = req(&a);
        if peer == 1 {
            assert_eq!(r, ranges::from_bytes(3 * MIB..4 * MIB));
        }
        // Whoever asked first, peer 1 is asked for the rare piece before any other.
        let actions = all_requests(&mut s, T0);
        let rare = std::iter::once(a)
            .chain(actions)
            .find(|a| req(a).1 == 1)
            .unwrap();
        assert_eq!(req(&rare).3, ranges::from_bytes(3 * MIB..4 * MIB));
    }

    #[test]
    fn already_present_ranges_are_not_requested() {
        let present = ranges::from_bytes(0..MIB) | ranges::from_bytes(MIB + 512 * 1024..2 * MIB);
        let mut s = Scheduler::new(
            &[BlobSpec {
                size: 3 * MIB,
                present,
            }],
            SchedulerConfig::default(),
        );
        assert_eq!(s.present_at_start(), MIB + 512 * 1024);
        s.add_peer(1, T0);
        s.peer_has(1, 0, &ChunkRanges::all(), T0);
        let got: Vec<_> = all_requests(&mut s, T0).iter().map(|a| req(a).3).collect();
        assert_eq!(
            got.iter().fold(ChunkRanges::empty(), |a, b| a | b.clone()),
            ranges::from_bytes(MIB..MIB + 512 * 1024) | ranges::from_bytes(2 * MIB..3 * MIB)
        );
    }

    #[test]
    fn a_stalled_request_times_out_and_goes_to_another_peer() {
        let cfg = SchedulerConfig {
            min_window: 1,
            max_window: 1,
            ..SchedulerConfig::default()
        };
        let mut s = Scheduler::new(&[spec(MIB)], cfg);
        s.add_peer(1, T0);
        s.peer_has(1, 0, &ChunkRanges::all(), T0);
        let (id, peer, _, _) = req(&s.poll_action(T0).unwrap());
        assert_eq!(peer, 1);
        s.add_peer(2, T0);
        s.peer_has(2, 0, &ChunkRanges::all(), T0);
        // Endgame would duplicate to peer 2; with max_duplicates 1 it must wait.
        s.config.max_duplicates = 1;
        assert!(s.poll_action(T0).is_none());
        let deadline = s.next_deadline().unwrap();
        assert!(deadline > Duration::from_secs(10));
        assert_eq!(
            s.poll_action(deadline),
            Some(Action::Cancel { id, peer: 1 })
        );
        let (_, peer, _, _) = req(&s.poll_action(deadline).unwrap());
        assert_eq!(peer, 2);
    }

    #[test]
    fn a_piece_pointed_elsewhere_goes_to_another_holder_and_the_peer_rests_a_moment() {
        let cfg = SchedulerConfig {
            min_window: 1,
            max_window: 1,
            ..SchedulerConfig::default()
        };
        let backoff = cfg.busy_backoff;
        let mut s = Scheduler::new(&[spec(4 * MIB)], cfg);
        s.add_peer(1, T0);
        s.peer_has(1, 0, &ChunkRanges::all(), T0);
        let (id, peer, _, piece) = req(&s.poll_action(T0).unwrap());
        assert_eq!(peer, 1);
        // A fetching peer holding just that piece turns up; the seed points elsewhere.
        s.add_peer(2, T0);
        s.peer_has(2, 0, &piece, T0);
        s.on_failed(id, Failure::Elsewhere, T0);
        let now = T0 + Duration::from_millis(1);
        let actions = all_requests(&mut s, now);
        assert_eq!(actions.len(), 1, "{actions:?}");
        let (_, peer, _, r) = req(&actions[0]);
        assert_eq!((peer, &r), (2, &piece));
        // After its back-off the seed is asked for another piece.
        let (_, peer, _, r) = req(&s.poll_action(T0 + backoff).unwrap());
        assert_eq!(peer, 1);
        assert_ne!(r, piece);
    }

    #[test]
    fn a_piece_pointed_elsewhere_with_no_other_holder_is_asked_again() {
        let mut s = Scheduler::new(&[spec(MIB)], SchedulerConfig::default());
        s.add_peer(1, T0);
        s.peer_has(1, 0, &ChunkRanges::all(), T0);
        let (id, _, _, piece) = req(&s.poll_action(T0).unwrap());
        s.on_failed(id, Failure::Elsewhere, T0);
        assert!(
            s.poll_action(T0).is_none(),
            "asked again during the back-off"
        );
        let later = T0 + SchedulerConfig::default().busy_backoff;
        let (_, peer, _, r) = req(&s.poll_action(later).unwrap());
        assert_eq!((peer, r), (1, piece));
    }

    #[test]
    fn a_corrupt_peer_is_banned_and_never_asked_again() {
        let mut s = Scheduler::new(&[spec(8 * MIB)], SchedulerConfig::default());
        for p in [1, 2] {
            s.add_peer(p, T0);
            s.peer_has(p, 0, &ChunkRanges::all(), T0);
        }
        let actions = all_requests(&mut s, T0);
        let bad = actions.iter().find(|a| req(a).1 == 1).map(req).unwrap();
        s.on_failed(bad.0, Failure::Corrupt, T0);
        assert!(s.is_banned(&1));
        let mut dropped = false;
        for _ in 0..100 {
            let Some(a) = s.poll_action(T0) else { break };
            match a {
                Action::DropPeer { peer: 1, reason } => {
                    assert_eq!(reason, DropReason::Corrupt);
                    dropped = true;
                }
                Action::Request { peer, id, .. } => {
                    assert_eq!(peer, 2, "banned peer asked again");
                    s.on_complete(id, T0);
                }
                Action::Cancel { .. } => {}
                other => panic!("{other:?}"),
            }
        }
        assert!(dropped);
        // Peer 1's other requests were abandoned; peer 2 finishes the job.
        for a in actions.iter().filter(|a| req(a).1 == 2) {
            s.on_complete(req(a).0, T0);
        }
        while let Some(a) = s.poll_action(T0) {
            if let Action::Request { id, .. } = a {
                s.on_complete(id, T0);
            }
        }
        assert!(s.is_done());
    }

    #[test]
    fn endgame_duplicates_and_cancels_the_loser() {
        let cfg = SchedulerConfig {
            min_window: 1,
            max_window: 1,
            ..SchedulerConfig::default()
        };
        let mut s = Scheduler::new(&[spec(MIB)], cfg);
        s.add_peer(1, T0);
        s.peer_has(1, 0, &ChunkRanges::all(), T0);
        let (slow, ..) = req(&s.poll_action(T0).unwrap());
        s.add_peer(2, T0);
        s.peer_has(2, 0, &ChunkRanges::all(), T0);
        let (fast, peer, ..) = req(&s.poll_action(T0).unwrap());
        assert_eq!(peer, 2, "idle peer duplicates the outstanding piece");
        assert!(
            s.poll_action(T0).is_none(),
            "at most two requests per piece"
        );
        s.on_complete(fast, T0);
        assert_eq!(
            s.poll_action(T0),
            Some(Action::Cancel { id: slow, peer: 1 })
        );
        assert!(s.is_done());
        // A late answer from the loser is ignored.
        s.on_complete(slow, T0);
        assert!(s.is_done());
    }

    #[test]
    fn a_readmitted_peer_starts_afresh_and_a_banned_one_stays_out() {
        let mut s = Scheduler::new(&[spec(4 * MIB)], SchedulerConfig::default());
        s.add_peer(1, T0);
        s.peer_has(1, 0, &ChunkRanges::all(), T0);
        s.remove_peer(1, T0);
        assert!(s.poll_action(T0).is_none());
        s.readmit_peer(1, T0);
        assert!(s.poll_action(T0).is_none(), "nothing known of it yet");
        s.peer_has(1, 0, &ChunkRanges::all(), T0);
        let (id, ..) = req(&s.poll_action(T0).unwrap());
        s.on_failed(id, Failure::Corrupt, T0);
        s.readmit_peer(1, T0);
        s.peer_has(1, 0, &ChunkRanges::all(), T0);
        while let Some(a) = s.poll_action(T0) {
            assert!(
                !matches!(a, Action::Request { .. }),
                "banned peer asked: {a:?}"
            );
        }
    }

    #[test]
    fn a_peer_that_leaves_keeps_only_its_delivered_bytes_and_its_ban() {
        let mut s = Scheduler::new(&[spec(4 * MIB)], SchedulerConfig::default());
        s.add_peer(1, T0);
        s.peer_has(1, 0, &ChunkRanges::all(), T0);
        let (id, ..) = req(&s.poll_action(T0).unwrap());
        let t = T0 + Duration::from_millis(10);
        s.on_complete(id, t);
        s.remove_peer(1, t);
        assert_eq!(s.live_peers(), 0);
        assert_eq!(s.delivered().collect::<Vec<_>>(), vec![(1, MIB)]);
        // Adding it does not bring it back; readmitting does, with what it delivered.
        s.add_peer(1, t);
        assert_eq!(s.live_peers(), 0);
        s.readmit_peer(1, t);
        assert_eq!(s.live_peers(), 1);
        assert_eq!(s.delivered().collect::<Vec<_>>(), vec![(1, MIB)]);
        s.peer_has(1, 0, &ChunkRanges::all(), t);
        // Short-lived peers leave nothing behind but a line of the report.
        for p in 2..1000 {
            s.add_peer(p, t);
            s.peer_has(p, 0, &ChunkRanges::all(), t);
            s.remove_peer(p, t);
        }
        assert_eq!(s.live_peers(), 1);
        assert_eq!(s.delivered().count(), 999);
        assert_eq!(s.delivered().next(), Some((1, MIB)));
        // A banned peer stays banned when it goes, and stays out.
        while s.poll_action(t).is_some() {}
        let id = *s.requests.keys().next().expect("a request to peer 1");
        s.on_failed(id, Failure::Corrupt, t);
        s.remove_peer(1, t);
        s.readmit_peer(1, t);
        assert!(s.is_banned(&1));
        assert_eq!(s.live_peers(), 0);
    }

    #[test]
    fn stuck_names_what_nobody_has() {
        let mut s = Scheduler::new(&[spec(2 * MIB), spec(MIB)], SchedulerConfig::default());
        s.add_peer(1, T0);
        s.peer_has(1, 0, &ranges::from_bytes(0..MIB), T0);
        assert!(s.stuck().is_none());
        let (id, ..) = req(&s.poll_action(T0).unwrap());
        s.on_complete(id, T0);
        let stuck = s.stuck().unwrap();
        assert_eq!(
            stuck,
            vec![
                (0, ranges::from_bytes(MIB..2 * MIB)),
                (1, ranges::from_bytes(0..MIB))
            ]
        );
    }

    #[test]
    fn faster_peers_get_bigger_windows() {
        let mut s = Scheduler::new(&[spec(512 * MIB)], SchedulerConfig::default());
        for p in [1, 2] {
            s.add_peer(p, T0);
            s.peer_has(p, 0, &ChunkRanges::all(), T0);
        }
        // Peer 1 answers each batch by the next step; peer 2 never answers.
        let mut pending = Vec::new();
        for step in 0..200 {
            let now = Duration::from_millis(step);
            for id in pending.drain(..) {
                s.on_complete(id, now);
            }
            while let Some(a) = s.poll_action(now) {
                if let Action::Request { id, peer: 1, .. } = a {
                    pending.push(id);
                }
            }
        }
        let w1 = s.peers[&1].window;
        let w2 = s.peers[&2].window;
        assert!(w1 > w2, "fast peer window {w1}, slow peer window {w2}");
        assert_eq!(w1, 16);
    }

    #[test]
    fn a_peer_with_nothing_left_to_give_is_useless() {
        let mut s = Scheduler::new(&[spec(2 * MIB)], SchedulerConfig::default());
        for p in [1, 2, 3] {
            s.add_peer(p, T0);
        }
        // Peer 1 has everything, peer 2 only the first piece, peer 3 nothing.
        s.peer_has(1, 0, &ChunkRanges::all(), T0);
        s.peer_has(2, 0, &ranges::from_bytes(0..MIB), T0);
        let useless: Vec<u32> = s.useless_peers().collect();
        assert_eq!(useless, [3]);
        // Once the first piece is done (from whoever), peer 2 has nothing left to give.
        let first = all_requests(&mut s, T0)
            .into_iter()
            .map(|a| req(&a))
            .find(|r| r.3 == ranges::from_bytes(0..MIB))
            .unwrap();
        s.on_complete(first.0, Duration::from_millis(10));
        let useless: Vec<u32> = s.useless_peers().collect();
        assert!(useless.contains(&2) && useless.contains(&3), "{useless:?}");
        assert!(!useless.contains(&1));
    }

    #[test]
    fn a_peer_gets_no_more_than_its_byte_budget() {
        // Before its rate is known: 4 MiB, here two 2 MiB pieces though the window is 4.
        let big = SchedulerConfig {
            piece_bytes: 2 * MIB,
            ..SchedulerConfig::default()
        };
        let mut s = Scheduler::new(&[spec(64 * MIB)], big);
        s.add_peer(1, T0);
        s.peer_has(1, 0, &ChunkRanges::all(), T0);
        assert_eq!(all_requests(&mut s, T0).len(), 2);

        // Measured: four 64 KiB requests served together in one second = 256 KiB/s, so
        // a second's worth is four requests, though the window has grown to five.
        let small = SchedulerConfig {
            piece_bytes: 64 * 1024,
            ..SchedulerConfig::default()
        };
        let mut s = Scheduler::new(&[spec(64 * MIB)], small);
        s.add_peer(1, T0);
        s.peer_has(1, 0, &ChunkRanges::all(), T0);
        let first = all_requests(&mut s, T0);
        assert_eq!(first.len(), 4, "the initial window");
        let now = Duration::from_secs(1);
        for a in &first {
            s.on_complete(req(a).0, now);
        }
        assert_eq!(s.peers[&1].window, 5);
        assert_eq!(s.peers[&1].rate, Some(256.0 * 1024.0));
        assert_eq!(all_requests(&mut s, now).len(), 4, "a second of work");
    }

    /// Serves every request outstanding at `peer` at once, `secs` after `now`.
    fn serve_all(s: &mut Scheduler<u32>, peer: u32, now: Duration, secs: f64) -> Duration {
        let later = now + Duration::from_secs_f64(secs);
        let ids: Vec<RequestId> = s.peers[&peer].inflight.keys().copied().collect();
        for id in ids {
            s.on_complete(id, later);
        }
        later
    }

    #[test]
    fn the_slowest_peer_is_named_only_when_far_below_the_median() {
        let mut s = Scheduler::new(&[spec(256 * MIB)], SchedulerConfig::default());
        for p in [1, 2, 3] {
            s.add_peer(p, T0);
            s.peer_has(p, 0, &ChunkRanges::all(), T0);
        }
        assert_eq!(s.slow_peer(), None, "no rates measured yet");
        all_requests(&mut s, T0);
        // Peers 1 and 2 deliver their first requests in 0.1 s, peer 3 in 0.105 s: close
        // enough to the median to keep.
        serve_all(&mut s, 1, T0, 0.1);
        serve_all(&mut s, 2, T0, 0.1);
        serve_all(&mut s, 3, T0, 0.105);
        assert_eq!(s.slow_peer(), None);
        // Peer 3 then takes ten times as long.
        let now = Duration::from_secs(1);
        all_requests(&mut s, now);
        serve_all(&mut s, 3, now, 2.0);
        assert_eq!(s.slow_peer(), Some(3));
        // A peer that is gone is not named.
        s.remove_peer(3, now);
        assert_eq!(s.slow_peer(), None);
    }

    #[test]
    fn peers_whose_answers_wait_past_the_late_horizon_are_named_longest_wait_first() {
        // Peer 1 has every piece (a seed); peers 2, 3 and 4 have the first quarter.
        let mut s = Scheduler::new(&[spec(64 * MIB)], SchedulerConfig::default());
        s.add_peer(1, T0);
        s.peer_has(1, 0, &ChunkRanges::all(), T0);
        for p in [2, 3, 4] {
            s.add_peer(p, T0);
            s.peer_has(p, 0, &ranges::from_bytes(0..16 * MIB), T0);
        }
        let sent: Vec<_> = all_requests(&mut s, T0).iter().map(req).collect();
        let at = |p: u32| {
            sent.iter()
                .filter(|r| r.1 == p)
                .map(|r| r.0)
                .collect::<Vec<_>>()
        };
        for p in [1, 2, 3, 4] {
            assert!(!at(p).is_empty(), "peer {p} has a request: {sent:?}");
        }
        // Peer 2's answers start at once, peer 3's after 3.2 s, peer 4's not yet.
        for id in at(2) {
            s.on_started(id, Duration::from_millis(100));
        }
        assert_eq!(
            s.queued_peers(Duration::from_millis(1900)),
            Vec::<u32>::new()
        );
        for id in at(3) {
            s.on_started(id, Duration::from_millis(3200));
        }
        let now = Duration::from_millis(3500);
        // Peer 4 has waited 3.5 s, peer 3 3.2 s; the seed waits as long but is kept.
        assert_eq!(s.queued_peers(now), vec![4, 3]);
        // A peer that is gone is not named.
        s.remove_peer(4, now);
        assert!(!s.queued_peers(now).contains(&4));
    }

    #[test]
    fn on_a_fast_link_the_queue_target_shrinks_to_the_inflight_allowance() {
        // 64 MiB in flight at most; peers measured at 1 GB/s each: a second of their
        // rate (the configured target) would be 16 times the allowance.
        let mut s = Scheduler::new(&[spec(1024 * MIB)], SchedulerConfig::default());
        for p in [1, 2] {
            s.add_peer(p, T0);
            s.peer_has(p, 0, &ChunkRanges::all(), T0);
        }
        assert_eq!(s.queue_target(), 1.0);
        let mut now = T0;
        for _ in 0..20 {
            all_requests(&mut s, now);
            let secs = s.peers[&1].inflight_bytes as f64 / 1e9;
            serve_all(&mut s, 1, now, secs);
            now = serve_all(&mut s, 2, now, secs);
        }
        // (Completions that arrive together make the estimate err low.)
        let rate = s.peers[&1].rate.unwrap();
        assert!((0.3e9..=1.5e9).contains(&rate), "rate {rate}");
        let target = s.queue_target();
        let expect = 0.5 * (64 * MIB) as f64 / (rate + s.peers[&2].rate.unwrap());
        assert!(
            (target - expect).abs() < 1e-9 && target < 0.05,
            "target {target} s"
        );
        all_requests(&mut s, now);
        assert!(
            s.peers[&1].inflight_bytes as f64 <= (rate * target).max(MIB as f64) + MIB as f64,
            "{} bytes in flight to a peer of {rate} B/s",
            s.peers[&1].inflight_bytes
        );
    }

    #[test]
    fn a_waiting_request_is_taken_over_by_an_idle_peer_with_nothing_else_to_give() {
        // Eight pieces; peer 1 has them all and gets four (its initial byte budget), so
        // this is not yet the endgame.
        let mut s = Scheduler::new(&[spec(8 * MIB)], SchedulerConfig::default());
        s.add_peer(1, T0);
        s.peer_has(1, 0, &ChunkRanges::all(), T0);
        let at_1: Vec<_> = all_requests(&mut s, T0).iter().map(req).collect();
        assert_eq!(at_1.len(), 4);
        assert!(at_1.iter().any(|r| r.3 == ranges::from_bytes(0..MIB)));
        // Peer 2 turns up with the first piece, which is already requested.
        s.add_peer(2, T0);
        s.peer_has(2, 0, &ranges::from_bytes(0..MIB), T0);
        assert!(all_requests(&mut s, Duration::from_millis(400)).is_empty());
        // Peer 2 is idle: once peer 1's request has waited a quarter of the late horizon
        // (2 s: twice the 1 s queue target), peer 2 takes it on.
        let now = Duration::from_millis(600);
        let dup: Vec<_> = all_requests(&mut s, now).iter().map(req).collect();
        assert_eq!(dup.len(), 1);
        assert_eq!((dup[0].1, &dup[0].3), (2, &ranges::from_bytes(0..MIB)));
        // Peer 2 wins; peer 1's copy is cancelled.
        s.on_complete(dup[0].0, now + Duration::from_millis(50));
        let first = at_1.iter().find(|r| r.3 == dup[0].3).unwrap().0;
        assert_eq!(
            s.poll_action(now),
            Some(Action::Cancel { id: first, peer: 1 })
        );
    }

    #[test]
    fn refresh_rounds_are_spread_over_the_period() {
        let second = Duration::from_secs(1);
        assert_eq!(jittered(second, 0.0, true), Duration::ZERO);
        assert_eq!(jittered(second, 0.25, true), Duration::from_millis(250));
        assert_eq!(jittered(second, 0.0, false), Duration::from_millis(500));
        assert_eq!(jittered(second, 0.75, false), Duration::from_millis(1250));
        // Out-of-range randomness stays within the bounds.
        assert_eq!(jittered(second, 7.0, false), Duration::from_millis(1500));
        assert_eq!(jittered(second, -1.0, true), Duration::ZERO);
    }

    #[test]
    fn a_busy_peer_takes_over_only_late_requests() {
        // Nine pieces; peer 1 has the first eight and gets four of them.
        let mut s = Scheduler::new(&[spec(9 * MIB)], SchedulerConfig::default());
        s.add_peer(1, T0);
        s.peer_has(1, 0, &ranges::from_bytes(0..8 * MIB), T0);
        let at_1: Vec<_> = all_requests(&mut s, T0).iter().map(req).collect();
        assert_eq!(at_1.len(), 4);
        assert!(at_1.iter().any(|r| r.3 == ranges::from_bytes(0..MIB)));
        // Peer 2 has the first piece and the last, which only it has: it is asked
        // for the last and is busy with it.
        s.add_peer(2, T0);
        s.peer_has(
            2,
            0,
            &(ranges::from_bytes(0..MIB) | ranges::from_bytes(8 * MIB..9 * MIB)),
            T0,
        );
        let at_2: Vec<_> = all_requests(&mut s, T0).iter().map(req).collect();
        assert_eq!(at_2.len(), 1);
        assert_eq!(
            (at_2[0].1, &at_2[0].3),
            (2, &ranges::from_bytes(8 * MIB..9 * MIB))
        );
        // Past the idle peer's wait but short of the late horizon: nothing.
        assert!(all_requests(&mut s, Duration::from_secs(1)).is_empty());
        // Late: peer 2 takes on the first piece.
        let dup: Vec<_> = all_requests(&mut s, Duration::from_millis(2500))
            .iter()
            .map(req)
            .collect();
        assert_eq!(dup.len(), 1);
        assert_eq!((dup[0].1, &dup[0].3), (2, &ranges::from_bytes(0..MIB)));
    }

    #[test]
    fn a_flowing_answer_is_not_duplicated_and_the_first_copy_to_start_wins() {
        // Eight pieces at peer 1, which gets four; peer 2 has two of those four.
        let mut s = Scheduler::new(&[spec(8 * MIB)], SchedulerConfig::default());
        s.add_peer(1, T0);
        s.peer_has(1, 0, &ChunkRanges::all(), T0);
        let at_1: Vec<_> = all_requests(&mut s, T0).iter().map(req).collect();
        assert_eq!(at_1.len(), 4);
        let (first, second) = (at_1[0].0, at_1[1].0);
        s.add_peer(2, T0);
        s.peer_has(2, 0, &(&at_1[0].3 | &at_1[1].3), T0);
        // The first one's answer is flowing; the second waits in peer 1's queue.
        s.on_started(first, Duration::from_millis(100));
        // Past the late horizon only the waiting one is taken over.
        let now = Duration::from_millis(2500);
        let dup: Vec<_> = all_requests(&mut s, now).iter().map(req).collect();
        assert_eq!(dup.len(), 1, "{dup:?}");
        assert_eq!((dup[0].1, &dup[0].3), (2, &at_1[1].3));
        // Peer 2 takes the copy up first: the copy still waiting at peer 1 goes (and
        // peer 1, with room again, is asked for another piece).
        s.on_started(dup[0].0, now + Duration::from_millis(10));
        let after = all_requests(&mut s, now + Duration::from_millis(10));
        assert_eq!(
            after[0],
            Action::Cancel {
                id: second,
                peer: 1
            }
        );
        assert!(
            after[1..]
                .iter()
                .all(|a| matches!(a, Action::Request { peer: 1, .. }))
        );
    }

    #[test]
    fn in_the_endgame_only_answers_not_yet_started_are_duplicated() {
        // Two pieces, both requested of peer 1 (the endgame at once).
        let mut s = Scheduler::new(&[spec(2 * MIB)], SchedulerConfig::default());
        s.add_peer(1, T0);
        s.peer_has(1, 0, &ChunkRanges::all(), T0);
        let at_1: Vec<_> = all_requests(&mut s, T0).iter().map(req).collect();
        assert_eq!(at_1.len(), 2);
        s.on_started(at_1[0].0, T0);
        // Peer 2 has both: it copies only the one whose answer has not started.
        s.add_peer(2, T0);
        s.peer_has(2, 0, &ChunkRanges::all(), T0);
        let dup: Vec<_> = all_requests(&mut s, T0).iter().map(req).collect();
        assert_eq!(dup.len(), 1, "{dup:?}");
        assert_eq!((dup[0].1, &dup[0].3), (2, &at_1[1].3));
    }

    #[test]
    fn late_copies_do_not_block_a_fresh_one() {
        // Two pieces; the second is nowhere, so this never becomes the endgame.
        let mut s = Scheduler::new(&[spec(2 * MIB)], SchedulerConfig::default());
        for p in [1, 2] {
            s.add_peer(p, T0);
            s.peer_has(p, 0, &ranges::from_bytes(0..MIB), T0);
        }
        let first: Vec<_> = all_requests(&mut s, T0).iter().map(req).collect();
        assert_eq!(first.len(), 1);
        // Late (past twice the 1 s queue target): the other peer takes a copy.
        let t3 = Duration::from_secs(3);
        let second: Vec<_> = all_requests(&mut s, t3).iter().map(req).collect();
        assert_eq!(second.len(), 1);
        assert_ne!(second[0].1, first[0].1);
        // Both wait in long queues. Peer 3 appears with the piece: with one copy late,
        // only one counts against the two allowed, so peer 3 gets a third.
        let t6 = Duration::from_secs(6);
        s.add_peer(3, t6);
        s.peer_has(3, 0, &ranges::from_bytes(0..MIB), t6);
        let third: Vec<_> = all_requests(&mut s, t6).iter().map(req).collect();
        assert_eq!(third.len(), 1);
        assert_eq!((third[0].1, &third[0].3), (3, &ranges::from_bytes(0..MIB)));
        // Peer 3 delivers: both stuck copies are cancelled.
        s.on_complete(third[0].0, t6 + Duration::from_millis(10));
        let mut cancelled: Vec<_> = all_requests(&mut s, t6)
            .into_iter()
            .map(|a| match a {
                Action::Cancel { id, .. } => id,
                other => panic!("expected a cancel, got {other:?}"),
            })
            .collect();
        cancelled.sort_unstable();
        assert_eq!(cancelled, vec![first[0].0, second[0].0]);
    }

    #[test]
    fn a_last_resort_peer_is_asked_only_for_what_no_quicker_peer_has() {
        // Forty pieces. Peer 1 (quick) has all but the last; peer 2 (a swamped seed)
        // has them all.
        let mut s = Scheduler::new(&[spec(40 * MIB)], SchedulerConfig::default());
        s.add_peer(1, T0);
        s.peer_has(1, 0, &ranges::from_bytes(0..39 * MIB), T0);
        s.add_peer(2, T0);
        s.peer_has(2, 0, &ChunkRanges::all(), T0);
        // Measure both: peer 1 delivers its first requests in 10 ms, peer 2 its first
        // in 10 s (100 KiB/s: ten times the 2 s late horizon per piece).
        let first: Vec<_> = all_requests(&mut s, T0).iter().map(req).collect();
        let ten_ms = Duration::from_millis(10);
        let ten_s = Duration::from_secs(10);
        for r in first.iter().filter(|r| r.1 == 1) {
            s.on_complete(r.0, ten_ms);
        }
        for r in first.iter().filter(|r| r.1 == 2) {
            s.on_complete(r.0, ten_s);
        }
        // From now on peer 2 is asked only for the last piece, which peer 1 lacks.
        let mut now = ten_s;
        let mut asked_2 = Vec::new();
        while !s.is_done() {
            let actions = all_requests(&mut s, now);
            assert!(!actions.is_empty(), "stuck");
            for a in actions.iter().map(req) {
                if a.1 == 2 {
                    asked_2.push(a.3.clone());
                }
                s.on_complete(a.0, now);
            }
            now += ten_ms;
        }
        let last = ranges::from_bytes(39 * MIB..40 * MIB);
        if first.iter().any(|r| r.1 == 2 && r.3 == last) {
            assert!(asked_2.is_empty(), "{asked_2:?}");
        } else {
            assert_eq!(asked_2, vec![last]);
        }
    }

    #[test]
    fn a_peer_measured_slow_once_is_asked_again() {
        // Two peers with everything, each delivering 1 MiB in 10 ms, except that peer
        // 2's first requests stall for 10 s (a starved process, say): it is then a
        // last resort. The judgement must not last: its rate is never measured again
        // unless it is asked again.
        let mut s = Scheduler::new(&[spec(2000 * MIB)], SchedulerConfig::default());
        for p in [1, 2] {
            s.add_peer(p, T0);
            s.peer_has(p, 0, &ChunkRanges::all(), T0);
        }
        let per_piece = Duration::from_millis(10);
        let stall = Duration::from_secs(10);
        // Outstanding requests: (finish time, id, peer).
        let mut outstanding: Vec<(Duration, RequestId, u32)> = Vec::new();
        let mut busy_until = [T0; 3];
        let mut served = [0u64; 3];
        let mut now = T0;
        while !s.is_done() {
            for a in all_requests(&mut s, now) {
                match a {
                    Action::Request { id, peer, .. } => {
                        let start = busy_until[peer as usize].max(now);
                        let mut finish = start + per_piece;
                        if peer == 2 && now == T0 {
                            finish = stall;
                        }
                        busy_until[peer as usize] = finish;
                        outstanding.push((finish, id, peer));
                    }
                    Action::Cancel { id, .. } => outstanding.retain(|o| o.1 != id),
                    Action::DropPeer { .. } => panic!("no peer misbehaves"),
                }
            }
            now = outstanding.iter().map(|o| o.0).min().expect("stuck");
            let (due, rest): (Vec<_>, Vec<_>) = outstanding.into_iter().partition(|o| o.0 <= now);
            outstanding = rest;
            for (_, id, peer) in due {
                served[peer as usize] += 1;
                s.on_complete(id, now);
            }
        }
        // Once asked again, peer 2 is quick and takes its share of what is left.
        assert!(served[2] > 200, "peer 2 served {served:?} pieces");
    }

    #[test]
    fn requests_waiting_at_a_last_resort_are_withdrawn_once_a_quicker_peer_has_the_piece() {
        // Peer 1 is quick and has the first half; peer 2, a seed swamped by a burst,
        // has everything and never answers. At 3 s (past the 2 s late horizon) peer 1 has
        // everything too.
        let mut s = Scheduler::new(&[spec(40 * MIB)], SchedulerConfig::default());
        s.add_peer(1, T0);
        s.peer_has(1, 0, &ranges::from_bytes(0..20 * MIB), T0);
        s.add_peer(2, T0);
        s.peer_has(2, 0, &ChunkRanges::all(), T0);
        let step = Duration::from_millis(10);
        let mut now = T0;
        // Requests waiting at peer 2, and when each was sent.
        let mut at_2: BTreeMap<RequestId, (ChunkRanges, Duration)> = BTreeMap::new();
        let mut withdrawn = 0;
        // Peer 1 answers within a step.
        let mut at_1 = Vec::new();
        while !s.is_done() {
            assert!(now < Duration::from_secs(30), "stuck");
            for id in std::mem::take(&mut at_1) {
                s.on_complete(id, now);
            }
            if now == Duration::from_secs(3) {
                s.peer_has(1, 0, &ChunkRanges::all(), now);
            }
            for a in all_requests(&mut s, now) {
                match a {
                    Action::Request {
                        id,
                        peer: 2,
                        ranges,
                        ..
                    } => {
                        at_2.insert(id, (ranges, now));
                    }
                    Action::Request {
                        id,
                        peer: 1,
                        ranges,
                        ..
                    } => {
                        // Requests sent later are probes (peer 2 left idle long enough
                        // is asked again), which a quicker peer may duplicate when late.
                        assert!(
                            !at_2
                                .values()
                                .any(|(r, sent)| *r == ranges && *sent < Duration::from_secs(3)),
                            "peer 1 asked for {ranges:?} while peer 2 still holds it"
                        );
                        at_1.push(id);
                    }
                    Action::Cancel { id, peer: 2 } => {
                        at_2.remove(&id).expect("a request to peer 2");
                        withdrawn += 1;
                    }
                    Action::Cancel { id, peer: 1 } => at_1.retain(|x| *x != id),
                    other => panic!("unexpected {other:?}"),
                }
            }
            now += step;
        }
        assert!(withdrawn > 0, "nothing withdrawn from peer 2");
        assert!(
            at_2.values()
                .all(|(_, sent)| *sent > Duration::from_secs(1)),
            "still waiting at peer 2: {at_2:?}"
        );
    }

    #[test]
    fn same_seed_same_decisions() {
        let run = |seed| {
            let cfg = SchedulerConfig {
                seed,
                ..SchedulerConfig::default()
            };
            let mut s = Scheduler::new(&[spec(64 * MIB)], cfg);
            for p in 0..4u32 {
                s.add_peer(p, T0);
                s.peer_has(p, 0, &ChunkRanges::all(), T0);
            }
            all_requests(&mut s, T0)
        };
        assert_eq!(run(1), run(1));
        assert_ne!(run(1), run(2));
    }

    proptest! {
        /// However a peer's have-maps change (growing, shrinking, in pieces, past the
        /// end), what the scheduler believes it has equals what a full recount gives.
        #[test]
        fn have_map_updates_match_a_full_recount(
            present in proptest::collection::vec((0u64..40, 1u64..8), 0..4),
            updates in proptest::collection::vec(
                (0u32..3, 0usize..2, proptest::collection::vec((0u64..800, 1u64..300), 0..4)),
                1..30),
        ) {
            let sizes = [4 * MIB + 100, 2 * MIB];
            let mut done = ChunkRanges::empty();
            for (start, len) in present {
                done |= ChunkRanges::from(ChunkNum(start * 16)..ChunkNum((start + len) * 16));
            }
            let blobs: Vec<BlobSpec> = sizes
                .iter()
                .map(|&size| BlobSpec { size, present: ranges::clip(&done, size) })
                .collect();
            let cfg = SchedulerConfig { piece_bytes: 256 * 1024, ..SchedulerConfig::default() };
            let mut s = Scheduler::new(&blobs, cfg);
            for p in 0..3 {
                s.add_peer(p, T0);
            }
            for (peer, blob, spans) in updates {
                let mut has = ChunkRanges::empty();
                for (start, len) in spans {
                    has |= ChunkRanges::from(ChunkNum(start)..ChunkNum(start + len));
                }
                s.peer_has(peer, blob, &has, T0);
                prop_assert_eq!(&s.peers[&peer].has[blob], &ranges::clip(&has, sizes[blob]));
            }
            for (i, piece) in s.pieces.iter().enumerate() {
                let mut holders = 0;
                for p in s.peers.values() {
                    let has = piece.need.is_subset(&p.has[piece.blob]);
                    prop_assert_eq!(p.has_piece[i], has, "piece {} misjudged", i);
                    holders += u32::from(has);
                }
                prop_assert_eq!(piece.avail, holders, "availability of piece {}", i);
            }
            for p in s.peers.values() {
                let held = p.has_piece.iter().filter(|&&h| h).count() as u32;
                prop_assert_eq!(p.offer, held);
                prop_assert_eq!(p.useful, held);
            }
        }
    }

    proptest! {
        /// Random have-maps and outcomes: no request ever goes to a peer lacking the
        /// piece, no piece has more than the allowed requests, and the fetch finishes
        /// whenever the peers together have everything.
        #[test]
        fn invariants_hold(
            haves in proptest::collection::vec(proptest::collection::vec(any::<bool>(), 12), 1..5),
            outcomes in proptest::collection::vec(0u8..7, 1..400),
            seed in any::<u64>(),
        ) {
            let size = 12 * MIB - 100;
            // Timeouts never drop a peer here: with every outcome a timeout (as proptest
            // once found), dropping all peers would leave the fetch rightly stuck.
            let cfg = SchedulerConfig { seed, max_timeouts: u32::MAX, ..SchedulerConfig::default() };
            let mut s = Scheduler::new(&[spec(size)], cfg);
            let mut has = Vec::new();
            for (p, h) in haves.iter().enumerate() {
                let mut r = ChunkRanges::empty();
                for (i, yes) in h.iter().enumerate() {
                    if *yes {
                        r |= ranges::from_bytes(i as u64 * MIB..(i as u64 + 1) * MIB);
                    }
                }
                s.add_peer(p as u32, T0);
                s.peer_has(p as u32, 0, &r, T0);
                has.push(r);
            }
            let covered = has.iter().fold(ChunkRanges::empty(), |a, b| a | b.clone());
            let mut outstanding: Vec<(RequestId, u32)> = Vec::new();
            let mut now = T0;
            let mut outcomes = outcomes.into_iter().cycle().take(5000);
            loop {
                while let Some(a) = s.poll_action(now) {
                    if let Action::Request { id, peer, ranges: r, .. } = &a {
                        prop_assert!(r.is_subset(&has[*peer as usize]), "asked {peer} for what it lacks");
                        outstanding.push((*id, *peer));
                    }
                    if let Action::Cancel { id, .. } = a {
                        outstanding.retain(|(x, _)| *x != id);
                    }
                }
                for piece in &s.pieces {
                    // Late copies may pile up, but never two at one peer.
                    let mut at: Vec<u32> = piece.requests.iter().map(|r| s.requests[r].peer).collect();
                    at.sort_unstable();
                    at.dedup();
                    prop_assert_eq!(at.len(), piece.requests.len(), "two requests for one piece at one peer");
                }
                for p in s.peers.values() {
                    let useful = (0..s.pieces.len())
                        .filter(|&i| p.has_piece[i] && s.pieces[i].state != PieceState::Done)
                        .count();
                    prop_assert_eq!(p.useful as usize, useful, "useful count drifted");
                    let offer = (0..s.pieces.len())
                        .filter(|&i| p.has_piece[i] && s.pieces[i].state == PieceState::Missing)
                        .count();
                    prop_assert_eq!(p.offer as usize, offer, "offer count drifted");
                }
                if s.is_done() {
                    break;
                }
                if outstanding.is_empty() {
                    // Peers may be backing off after a busy answer: let time pass once.
                    now += Duration::from_secs(1);
                    let mut any = false;
                    while let Some(a) = s.poll_action(now) {
                        if let Action::Request { id, peer, ranges: r, .. } = &a {
                            prop_assert!(r.is_subset(&has[*peer as usize]));
                            outstanding.push((*id, *peer));
                            any = true;
                        }
                    }
                    if !any {
                        break;
                    }
                }
                let (id, _) = outstanding.remove(0);
                // Mostly successes, some timeouts, busy answers and pointers elsewhere;
                // no corruption, so nobody is banned and everything stays fetchable.
                match outcomes.next().unwrap_or(0) {
                    4 => s.on_failed(id, Failure::Timeout, now),
                    5 => s.on_failed(id, Failure::Busy, now),
                    6 => s.on_failed(id, Failure::Elsewhere, now),
                    _ => s.on_complete(id, now),
                }
                now += Duration::from_millis(600);
            }
            if ranges::is_complete(&covered, size) {
                prop_assert!(s.is_done(), "not done though peers have everything");
            } else {
                prop_assert!(s.stuck().is_some());
            }
        }
    }
}
