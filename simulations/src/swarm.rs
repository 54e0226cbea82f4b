//! The swarm: hosts that arrive, discover each other and fetch with the daemon's own
//! scheduler ([`modeld_proto::scheduler::Scheduler`]), over the flow network.
//!
//! What each host does mirrors the daemon's fetch driver (`crates/net/src/fetch.rs`
//! and the discovery feed in `crates/daemon/src/fetch.rs`):
//! - it looks up providers in the DHT at once, then every 0.5 s for 6 s, then at waits
//!   that double up to `lookup_every` (each lookup returns up to `lookup_results` of them,
//!   after `dht_latency`), and with mDNS it also knows the hosts of its rack; every
//!   500 ms it connects to known peers, up to `max_peers`, those known to hold data
//!   first, then nearest first (same rack, then round-trip time), with at most half
//!   the slots for its own rack; at the cap, peers with nothing left to give, and
//!   then the slowest (one per round), make room for untried providers;
//! - on connecting, and every `have_refresh` (jittered) for incomplete peers, it learns what
//!   they hold (have-maps); and every 100 ms each fetching host pushes what it newly
//!   verified to the fetches that asked for its have-map (and once more when it is
//!   done);
//! - it announces itself as a provider once it holds a verified piece;
//! - it runs every action of the scheduler: a request becomes a flow from the peer
//!   after one round trip; cancels stop flows; a corrupt answer is detected at its
//!   first 16 KiB chunk group and bans the peer; a departed peer fails its requests;
//! - as a server, it sends up to 64 answers at once, the others waiting their turn
//!   (the askers that held least when they asked first, none overtaken for longer
//!   than `OVERTAKE_LIMIT`: `modeld_proto::turns`); with [`Serve::InOrder`] (the
//!   daemon's), one asker's answers one after another in the order asked; with
//!   [`Serve::Queue`], one at a time and more while its uplink has room.
//!
//! Seeds and the origin hold everything from the start. A host that finishes keeps
//! serving. Everything is ordered by (time, sequence number), and every random
//! choice comes from the scenario's seed, so a run is deterministic.

use std::{
    cmp::Reverse,
    collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque},
    time::Duration,
};

use modeld_core::ranges::{self, ChunkRanges};
use modeld_proto::{
    holders::{self, Holders, NOTICE_EVERY, NOTICES_PER_ROUND, POLL_PUSHING_EVERY},
    scheduler::{
        Action, BlobSpec, Failure, QUEUED_ROTATION, RequestId, Scheduler, SchedulerConfig, jittered,
    },
    turns::Turns,
    vecmap::VecMap,
};

use crate::{
    flow::{FlowId, Nanos, Network, ResourceId},
    rng::Rng,
    scenario::Serve,
};

/// What a host is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Holds the model from the start.
    Seed,
    /// Holds the model from the start, outside the racks.
    Origin,
    /// Fetches the model.
    Fetcher,
}

/// One host's description.
#[derive(Debug, Clone)]
pub struct HostSpec {
    /// What it is.
    pub kind: Kind,
    /// Its rack (`u32::MAX`: outside the racks).
    pub rack: u32,
    /// Upload capacity, bytes per second.
    pub up: f64,
    /// Download capacity, bytes per second.
    pub down: f64,
    /// When it starts.
    pub arrive: Nanos,
    /// When it leaves, if it does.
    pub leave: Option<Nanos>,
    /// It answers with corrupt data.
    pub corrupt: bool,
}

/// Everything a run needs, resolved from a scenario.
#[derive(Debug, Clone)]
pub struct Setup {
    /// Every host.
    pub hosts: Vec<HostSpec>,
    /// File sizes.
    pub files: Vec<u64>,
    /// The scheduler's settings (its seed is varied per host).
    pub scheduler: SchedulerConfig,
    /// Round trip within a rack.
    pub rtt_same_rack: Nanos,
    /// Round trip across racks.
    pub rtt_cross_rack: Nanos,
    /// Round trip to the origin.
    pub rtt_origin: Nanos,
    /// Rack uplink capacity each way (none: unconstrained).
    pub rack_uplink: Option<f64>,
    /// Number of racks.
    pub racks: u32,
    /// A CPU budget every flow shares (bytes per second).
    pub shared_cpu: Option<f64>,
    /// mDNS within racks.
    pub mdns: bool,
    /// DHT lookup interval.
    pub lookup_every: Nanos,
    /// Providers per lookup.
    pub lookup_results: u32,
    /// DHT lookup and announce latency.
    pub dht_latency: Nanos,
    /// Most peers per fetch.
    pub max_peers: usize,
    /// Have-map refresh interval.
    pub have_refresh: Nanos,
    /// Fetching hosts push their news to the fetches watching them.
    pub push_haves: bool,
    /// Least time between rate recomputations.
    pub recompute_gap: Nanos,
    /// Answers a host sends at once (the daemon's 64 MiB answer budget in pieces).
    pub serve_slots: u32,
    /// How answers share a host's uplink.
    pub serve: Serve,
    /// Stop after this much simulated time.
    pub time_limit: Nanos,
    /// Seed of all random choices.
    pub seed: u64,
    /// Threads that take in the news pushed at one instant side by side (1: on the
    /// simulation's own thread only). The result is the same, byte for byte, for any
    /// number.
    pub threads: usize,
}

/// What happened to one host.
#[derive(Debug, Clone)]
pub struct HostOutcome {
    /// Its description.
    pub spec: HostSpec,
    /// When it finished (fetchers).
    pub done: Option<Nanos>,
    /// It left before finishing.
    pub left: bool,
    /// Bytes it sent.
    pub uploaded: u64,
    /// Bytes it received (including duplicates and corrupt answers).
    pub downloaded: u64,
    /// Bytes it verified and kept: each piece once.
    pub verified: u64,
    /// It ended with every byte of the model.
    pub has_everything: bool,
    /// Peers it banned for corrupt data.
    pub banned: u32,
}

impl HostOutcome {
    /// An honest fetcher that stays: the hosts completion statistics are about.
    pub fn is_counted(&self) -> bool {
        self.spec.kind == Kind::Fetcher && !self.spec.corrupt && self.spec.leave.is_none()
    }
}

/// The result of a run.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Per host.
    pub hosts: Vec<HostOutcome>,
    /// Bytes of the model.
    pub model_bytes: u64,
    /// Bytes that crossed rack uplinks (both directions).
    pub rack_uplink_bytes: u64,
    /// When the simulation stopped.
    pub end: Nanos,
    /// Events processed.
    pub events: u64,
    /// Rate recomputations.
    pub recomputations: u64,
    /// The most flows running at once.
    pub peak_flows: usize,
    /// Requests that complete hosts pointed elsewhere (`Status::Elsewhere`).
    pub pointed_elsewhere: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    Arrive(u32),
    Leave(u32),
    Start(u32, RequestId),
    Wake(u32),
    Drive(u32),
    HaveTick(u32),
    Discover(u32),
    Lookup(u32),
    LookupDone(u32),
    Announce(u32),
    Notice(u32),
}

#[derive(Debug)]
enum ReqState {
    Pending,
    Flowing(FlowId),
}

#[derive(Debug)]
struct Req {
    peer: u32,
    blob: usize,
    ranges: ChunkRanges,
    /// What the asker held of its model when it asked (its turn in a server's queue).
    held: u64,
    state: ReqState,
}

#[derive(Debug)]
struct Fetch {
    sched: Scheduler<u32>,
    /// The connected peers, and what this fetch knows of and told each.
    peers: VecMap<u32, Link>,
    /// Providers learned from DHT lookups.
    providers: BTreeSet<u32>,
    requests: BTreeMap<RequestId, Req>,
    wake: Option<Nanos>,
    /// An [`Event::Drive`] is queued.
    drive_pending: bool,
    /// Have-map refresh rounds so far.
    refresh_round: u32,
    /// Peers that pushed news to this fetch (refreshed only every
    /// [`POLL_PUSHING_EVERY`] rounds, as the daemon does).
    pushing: BTreeSet<u32>,
    /// The wait before the next DHT lookup.
    lookup_wait: Nanos,
}

/// A fetch's connection to one peer: one table lookup finds all a push or a refresh
/// needs.
#[derive(Debug, Default)]
struct Link {
    /// The peer's have-map versions last seen, per blob (empty: never looked).
    seen: Vec<u32>,
    /// What this fetch has told the peer (once complete) it holds, per blob, with the
    /// have-map version it had then (a blob whose version did not move since it was
    /// told in full has no news). Empty: told nothing yet.
    told: Vec<Told>,
    /// It pushed news over this connection (so it is in [`Fetch::pushing`], which
    /// outlives the connection).
    pushed: bool,
}

/// What a fetch told one peer of one blob.
#[derive(Debug, Clone, Default)]
struct Told {
    ranges: ChunkRanges,
    /// The blob's have-map version when `ranges` became all it held.
    version: Option<u32>,
}

#[derive(Debug)]
struct Host {
    spec: HostSpec,
    alive: bool,
    have: Vec<ChunkRanges>,
    version: Vec<u32>,
    /// What this host verified since it last pushed its news, per blob.
    fresh: Vec<(usize, ChunkRanges)>,
    complete: bool,
    provider: bool,
    fetch: Option<Box<Fetch>>,
    /// Requests this host is serving: (receiver, request).
    serving: BTreeSet<(u32, RequestId)>,
    /// Hosts connected to this one as a peer.
    watchers: BTreeSet<u32>,
    /// What the fetches connected to this host say they hold (used once it is
    /// complete, to point requests elsewhere).
    holders: Holders<u32, usize>,
    /// Answers being sent now, and requests waiting for a turn (the daemon's answer
    /// budget: at most [`crate::ANSWER_SLOTS`] answers at once), in the daemon's order:
    /// the askers that held least when they asked first ([`Turns`]).
    sending: u32,
    waiting: Turns<(u32, RequestId)>,
    /// With [`Serve::InOrder`]: the askers an answer is flowing to now, and the
    /// requests of each that wait behind it, in the order they arrived.
    flowing_to: BTreeSet<u32>,
    behind: BTreeMap<u32, VecDeque<RequestId>>,
    uploaded: u64,
    downloaded: u64,
    verified: u64,
    done: Option<Nanos>,
    left: bool,
    banned: u32,
}

/// One watcher's share of the news pushed at one instant ([`Swarm::push_haves`]).
struct NewsFor<'a> {
    watcher: u32,
    /// Its fetch, taken out of the host table while the news is taken in.
    fetch: Box<Fetch>,
    /// (watcher, position of the pusher) pairs, in the pushers' order.
    from: &'a [(u32, u32)],
    /// The first pusher whose news gave the scheduler something to do.
    first_useful: Option<u32>,
}

/// [`Swarm::feed_haves`] for the blobs in `fresh` only (those whose have-map changed
/// since `p`'s last push, with what `p` gained), skipping what the fetch's host holds
/// (`held`); whether that changed what `p` can give.
fn feed_fresh(
    f: &mut Fetch,
    held: &[ChunkRanges],
    p: u32,
    peer: &Host,
    fresh: &[(usize, ChunkRanges)],
    now: Duration,
) -> bool {
    // Not connected to `p`, or never looked at what it has: nothing to add to.
    let Some(link) = f.peers.get_mut(&p).filter(|link| !link.seen.is_empty()) else {
        return false;
    };
    if !link.pushed {
        link.pushed = true;
        f.pushing.insert(p);
    }
    let seen = &mut link.seen;
    let mut changed = false;
    for (b, gained) in fresh {
        let (b, v) = (*b, peer.version[*b]);
        if seen[b] != v {
            seen[b] = v;
            if !gained.is_subset(&held[b]) {
                changed |= f.sched.peer_has(p, b, &peer.have[b], now);
            }
        }
    }
    changed
}

/// Runs `work` on every item, on up to `threads` threads (this one among them), each
/// taking the next few items as it is free.
fn for_each_on<T: Send>(threads: usize, items: &mut [T], work: impl Fn(&mut T) + Sync) {
    if threads <= 1 || items.len() < 2 {
        items.iter_mut().for_each(work);
        return;
    }
    let chunks = std::sync::Mutex::new(items.chunks_mut(8));
    let take = || chunks.lock().unwrap_or_else(|e| e.into_inner()).next();
    std::thread::scope(|scope| {
        for _ in 1..threads {
            scope.spawn(|| {
                while let Some(chunk) = take() {
                    chunk.iter_mut().for_each(&work);
                }
            });
        }
        while let Some(chunk) = take() {
            chunk.iter_mut().for_each(&work);
        }
    });
}

/// News at one instant is taken in on [`Setup::threads`] threads once it reaches
/// this many (watcher, pusher) pairs; less is not worth starting threads for.
const PARALLEL_PAIRS: usize = 512;

/// How often a fetch takes in newly discovered peers (the daemon's feed: 500 ms).
const DISCOVER_EVERY: Nanos = 500_000_000;
/// The wait after a fetch's first DHT lookup (the daemon's `FIRST_LOOKUP_WAIT`).
const FIRST_LOOKUP_WAIT: Nanos = 500_000_000;
/// For this long after it starts a fetch looks up providers every
/// [`FIRST_LOOKUP_WAIT`] (the daemon's `FAST_LOOKUPS_FOR`).
const FAST_LOOKUPS_FOR: Nanos = 6_000_000_000;
/// The interval of `MODELD_SIM_TRACE` lines.
const TRACE_EVERY: Nanos = 250_000_000;
/// A corrupt answer is detected at its first chunk group.
const CORRUPT_DETECT_BYTES: u64 = 16 * 1024;

/// A simulation in progress.
#[derive(Debug)]
pub struct Swarm {
    setup: Setup,
    hosts: Vec<Host>,
    net: Network,
    queue: BinaryHeap<Reverse<(Nanos, u64, Event)>>,
    seq: u64,
    now: Nanos,
    rng: Rng,
    /// Hosts that announced themselves, in order.
    provider_list: Vec<u32>,
    flows: BTreeMap<FlowId, (u32, RequestId)>,
    events: u64,
    peak_flows: usize,
    fetchers_left: usize,
    rack_resources: Vec<ResourceId>,
    /// Print a line per simulated second on stderr (`MODELD_SIM_TRACE=1`).
    trace: bool,
    /// The hosts of each rack (mDNS neighbours).
    rack_members: Vec<Vec<u32>>,
    /// Hosts with answers waiting for a turn.
    backlog: BTreeSet<u32>,
    /// Requests complete hosts pointed elsewhere.
    pointed_elsewhere: u64,
}

impl Outcome {
    /// When the first fetcher arrived.
    pub fn first_arrival(&self) -> Nanos {
        self.hosts
            .iter()
            .filter(|h| h.spec.kind == Kind::Fetcher)
            .map(|h| h.spec.arrive)
            .min()
            .unwrap_or(0)
    }
}

impl Swarm {
    /// Prepares a run.
    pub fn new(setup: Setup) -> Self {
        let n = setup.hosts.len();
        let mut capacity = Vec::with_capacity(2 * n + 2 * setup.racks as usize + 1);
        for h in &setup.hosts {
            capacity.push(h.up);
            capacity.push(h.down);
        }
        let mut rack_resources = Vec::new();
        if let Some(cap) = setup.rack_uplink {
            for _ in 0..setup.racks {
                rack_resources.push(capacity.len() as ResourceId);
                capacity.push(cap);
                rack_resources.push(capacity.len() as ResourceId);
                capacity.push(cap);
            }
        }
        if let Some(cpu) = setup.shared_cpu {
            capacity.push(cpu);
        }
        let net = Network::new(capacity, setup.recompute_gap);
        let full: Vec<ChunkRanges> = setup.files.iter().map(|&s| ranges::all(s)).collect();
        let empty = vec![ChunkRanges::empty(); setup.files.len()];
        let hosts: Vec<Host> = setup
            .hosts
            .iter()
            .map(|spec| {
                let holds = spec.kind != Kind::Fetcher;
                Host {
                    spec: spec.clone(),
                    alive: false,
                    have: if holds { full.clone() } else { empty.clone() },
                    version: vec![0; setup.files.len()],
                    fresh: Vec::new(),
                    complete: holds,
                    provider: false,
                    fetch: None,
                    serving: BTreeSet::new(),
                    watchers: BTreeSet::new(),
                    holders: Holders::default(),
                    sending: 0,
                    waiting: Turns::default(),
                    flowing_to: BTreeSet::new(),
                    behind: BTreeMap::new(),
                    uploaded: 0,
                    downloaded: 0,
                    verified: 0,
                    done: None,
                    left: false,
                    banned: 0,
                }
            })
            .collect();
        let fetchers_left = hosts
            .iter()
            .filter(|h| h.spec.kind == Kind::Fetcher)
            .count();
        let mut swarm = Self {
            rng: Rng::new(setup.seed),
            setup,
            hosts,
            net,
            queue: BinaryHeap::new(),
            seq: 0,
            now: 0,
            provider_list: Vec::new(),
            flows: BTreeMap::new(),
            events: 0,
            peak_flows: 0,
            fetchers_left,
            rack_resources,
            trace: std::env::var_os("MODELD_SIM_TRACE").is_some(),
            rack_members: Vec::new(),
            backlog: BTreeSet::new(),
            pointed_elsewhere: 0,
        };
        for (i, h) in swarm.hosts.iter().enumerate() {
            let r = h.spec.rack as usize;
            if h.spec.rack != u32::MAX {
                if swarm.rack_members.len() <= r {
                    swarm.rack_members.resize(r + 1, Vec::new());
                }
                swarm.rack_members[r].push(i as u32);
            }
        }
        for i in 0..swarm.hosts.len() as u32 {
            let spec = &swarm.hosts[i as usize].spec;
            let (arrive, leave) = (spec.arrive, spec.leave);
            swarm.at(arrive, Event::Arrive(i));
            if let Some(t) = leave {
                swarm.at(t, Event::Leave(i));
            }
        }
        swarm
    }

    fn at(&mut self, t: Nanos, e: Event) {
        self.seq += 1;
        self.queue.push(Reverse((t, self.seq, e)));
    }

    /// Runs to the end: every fetcher done or gone, or the time limit.
    pub fn run(mut self) -> Outcome {
        loop {
            let next_event = self.queue.peek().map(|Reverse((t, _, _))| *t);
            let next_flow = self.net.next_completion();
            let next = match (next_event, next_flow) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            // Rates are recomputed once everything due at this instant is done.
            if let Some(due) = self.net.recompute_due(self.now)
                && next.is_none_or(|n| n > due)
            {
                self.now = due;
                self.net.recompute(due);
                if self.setup.serve == Serve::Queue {
                    self.fill_uplinks();
                }
                continue;
            }
            let Some(t) = next else { break };
            if t > self.setup.time_limit || self.fetchers_left == 0 {
                break;
            }
            if self.trace && t / TRACE_EVERY != self.now / TRACE_EVERY {
                self.trace_line(t);
            }
            self.now = t;
            if next_flow == Some(t) {
                for f in self.net.finish_until(t) {
                    self.events += 1;
                    self.flow_finished(f.id);
                }
                continue;
            }
            let Reverse((_, _, event)) = self.queue.pop().expect("peeked");
            self.events += 1;
            if let Event::Notice(h) = event {
                // The notice rounds due next at this same instant go together.
                let mut hs = vec![h];
                while let Some(Reverse((at, _, Event::Notice(next)))) = self.queue.peek()
                    && *at == t
                {
                    hs.push(*next);
                    self.queue.pop();
                    self.events += 1;
                }
                self.notice_round(&hs);
            } else {
                self.handle(event);
            }
            self.peak_flows = self.peak_flows.max(self.net.active());
        }
        self.outcome()
    }

    /// With [`Serve::Queue`]: servers whose uplink has room start their next waiting
    /// answer (one each per rate computation).
    fn fill_uplinks(&mut self) {
        let hosts: Vec<u32> = self.backlog.iter().copied().collect();
        for h in hosts {
            let host = &self.hosts[h as usize];
            if host.sending >= self.setup.serve_slots {
                continue;
            }
            if self.net.spare(2 * h) > 0.05 * host.spec.up {
                self.start_waiting(h);
            }
        }
    }

    /// One line of `MODELD_SIM_TRACE` output.
    fn trace_line(&self, t: Nanos) {
        let fetches: Vec<&Fetch> = self
            .hosts
            .iter()
            .filter_map(|h| h.fetch.as_deref())
            .collect();
        let mean = |f: fn(&Fetch) -> usize| {
            fetches.iter().map(|x| f(x)).sum::<usize>() as f64 / fetches.len().max(1) as f64
        };
        let gb = |kind: Option<Kind>, f: fn(&Host) -> u64| {
            self.hosts
                .iter()
                .filter(|h| kind.is_none_or(|k| h.spec.kind == k))
                .map(f)
                .sum::<u64>() as f64
                / 1e9
        };
        let senders = self.hosts.iter().filter(|h| h.sending > 0).count();
        let useless = fetches
            .iter()
            .map(|f| f.sched.useless_peers().count())
            .sum::<usize>() as f64
            / fetches.len().max(1) as f64;
        // How many fetchers hold each piece: a wide spread means rarest-first is not
        // working across the swarm.
        let piece = self.setup.scheduler.piece_bytes;
        let mut holders = Vec::new();
        for (b, &size) in self.setup.files.iter().enumerate() {
            for start in (0..size).step_by(piece as usize) {
                let r = ranges::from_bytes(start..(start + piece).min(size));
                holders.push(
                    self.hosts
                        .iter()
                        .filter(|h| h.spec.kind == Kind::Fetcher && r.is_subset(&h.have[b]))
                        .count(),
                );
            }
        }
        holders.sort_unstable();
        // Requests waiting in a server's queue, and of those at seeds; how busy the
        // fetching hosts' downlinks are (at the last rate computation), and what the ones
        // under 95 % have outstanding: where a burst's time goes.
        let (mut waiting, mut at_seeds) = (0, 0);
        let (mut full, mut short, mut short_use, mut short_flowing, mut short_waiting) =
            (0, 0, 0.0, 0, 0);
        for (i, h) in self.hosts.iter().enumerate() {
            let Some(f) = h.fetch.as_deref() else {
                continue;
            };
            let used = 1.0 - self.net.spare(2 * i as ResourceId + 1) / h.spec.down;
            let is_short = used <= 0.95;
            if is_short {
                short += 1;
                short_use += used;
            } else {
                full += 1;
            }
            for r in f.requests.values() {
                if matches!(r.state, ReqState::Pending) {
                    waiting += 1;
                    if self.hosts[r.peer as usize].spec.kind != Kind::Fetcher {
                        at_seeds += 1;
                    }
                    short_waiting += usize::from(is_short);
                } else {
                    short_flowing += usize::from(is_short);
                }
            }
        }
        let per_short = |x: f64| x / f64::from(short.max(1));
        let at = |q: usize| holders.get(holders.len() * q / 100).copied().unwrap_or(0);
        eprintln!(
            "t={:.2}s verified={:.1}GB flows={} senders={senders} fetching={} peers/fetch={:.1} useless/fetch={useless:.1} requests/fetch={:.1} waiting={waiting} (at seeds {at_seeds}) seed_up={:.1}GB piece_holders(min/p10/p50)={}/{}/{} downlinks_over_95%={full} others={short} (busy {:.2}, flowing/fetch {:.1}, waiting/fetch {:.1})",
            t as f64 / 1e9,
            gb(None, |h| h.verified),
            self.net.active(),
            fetches.len(),
            mean(|f| f.peers.len()),
            mean(|f| f.requests.len()),
            gb(Some(Kind::Seed), |h| h.uploaded),
            at(0),
            at(10),
            at(50),
            per_short(short_use),
            per_short(short_flowing as f64),
            per_short(short_waiting as f64),
        );
    }

    fn handle(&mut self, event: Event) {
        let now = self.now;
        match event {
            Event::Arrive(h) => self.arrive(h),
            Event::Leave(h) => self.leave(h),
            Event::Start(h, id) => self.start_flow(h, id),
            Event::Wake(h) => {
                if let Some(f) = self.fetch_mut(h) {
                    f.wake = None;
                }
                self.drive(h);
            }
            Event::Drive(h) => {
                if let Some(f) = self.fetch_mut(h) {
                    f.drive_pending = false;
                }
                self.drive(h);
            }
            Event::HaveTick(h) => {
                if self.fetch_mut(h).is_some() {
                    self.refresh_haves(h);
                    self.drive(h);
                    self.at(now + self.have_wait(h, false), Event::HaveTick(h));
                }
            }
            Event::Discover(h) => {
                if self.fetch_mut(h).is_some() {
                    self.discover(h);
                    self.drive(h);
                    self.at(now + DISCOVER_EVERY, Event::Discover(h));
                }
            }
            Event::Lookup(h) => {
                if self.fetch_mut(h).is_some() {
                    self.at(now + self.setup.dht_latency, Event::LookupDone(h));
                    // As the daemon: every 0.5 s for the first 6 s, then the wait
                    // doubles up to `lookup_every` (in a burst the providers multiply
                    // in the first seconds; the first answers name few of them).
                    let every = self.setup.lookup_every;
                    let fast =
                        now.saturating_sub(self.hosts[h as usize].spec.arrive) < FAST_LOOKUPS_FOR;
                    let f = self.fetch_mut(h).expect("fetching");
                    let wait = f.lookup_wait.min(every);
                    if !fast {
                        f.lookup_wait = wait * 2;
                    }
                    self.at(now + wait, Event::Lookup(h));
                }
            }
            Event::LookupDone(h) => self.lookup_done(h),
            Event::Notice(h) => self.notice_round(&[h]),
            Event::Announce(h) => {
                let host = &mut self.hosts[h as usize];
                if host.alive && !host.provider {
                    host.provider = true;
                    self.provider_list.push(h);
                }
            }
        }
    }

    /// The notice rounds of hosts `hs`, due at this instant one after the other: each
    /// fetching host tells its complete peers what it verified, and pushes it to the
    /// fetches watching it. What one host tells and what another pushes touch different
    /// state, so all the telling comes first, then all the pushing at once.
    fn notice_round(&mut self, hs: &[u32]) {
        let now = self.now;
        let fetching: Vec<u32> = hs
            .iter()
            .copied()
            .filter(|&h| self.hosts[h as usize].fetch.is_some())
            .collect();
        for &h in &fetching {
            self.send_notices(h);
        }
        self.push_haves(&fetching);
        for &h in &fetching {
            self.at(now + NOTICE_EVERY.as_nanos() as Nanos, Event::Notice(h));
        }
    }

    fn fetch_mut(&mut self, h: u32) -> Option<&mut Fetch> {
        self.hosts[h as usize].fetch.as_deref_mut()
    }

    fn arrive(&mut self, h: u32) {
        let now = self.now;
        let host = &mut self.hosts[h as usize];
        host.alive = true;
        match host.spec.kind {
            Kind::Seed | Kind::Origin => {
                host.provider = true;
                self.provider_list.push(h);
            }
            Kind::Fetcher => {
                let specs: Vec<BlobSpec> = self
                    .setup
                    .files
                    .iter()
                    .map(|&size| BlobSpec {
                        size,
                        present: ChunkRanges::empty(),
                    })
                    .collect();
                let config = SchedulerConfig {
                    seed: self.setup.seed ^ (u64::from(h) + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
                    ..self.setup.scheduler.clone()
                };
                host.fetch = Some(Box::new(Fetch {
                    sched: Scheduler::new(&specs, config),
                    peers: VecMap::new(),
                    providers: BTreeSet::new(),
                    requests: BTreeMap::new(),
                    wake: None,
                    drive_pending: false,
                    refresh_round: 0,
                    pushing: BTreeSet::new(),
                    lookup_wait: FIRST_LOOKUP_WAIT,
                }));
                self.at(now + NOTICE_EVERY.as_nanos() as Nanos, Event::Notice(h));
                self.at(now, Event::Lookup(h));
                self.at(now + self.setup.dht_latency / 4, Event::Discover(h));
                self.at(now + self.have_wait(h, true), Event::HaveTick(h));
            }
        }
    }

    /// The wait before host `h`'s next have-map refresh: `have_refresh` jittered as
    /// the daemon's fetch driver does ([`jittered`]), from a random number of this
    /// host and moment (the run's other random choices are left as they were).
    fn have_wait(&self, h: u32, first: bool) -> Nanos {
        let bits = crate::rng::mix(self.setup.seed ^ (u64::from(h) << 40) ^ self.now);
        let unit = crate::rng::unit_of(bits);
        jittered(Duration::from_nanos(self.setup.have_refresh), unit, first).as_nanos() as Nanos
    }

    fn rack(&self, h: u32) -> u32 {
        self.hosts[h as usize].spec.rack
    }

    /// Whether `a` and `b` share a rack (for the daemon: a subnet).
    fn is_near(&self, a: u32, b: u32) -> bool {
        let r = self.rack(a);
        r != u32::MAX && r == self.rack(b)
    }

    fn rtt(&self, a: u32, b: u32) -> Nanos {
        let (ra, rb) = (self.rack(a), self.rack(b));
        if ra == u32::MAX || rb == u32::MAX {
            self.setup.rtt_origin
        } else if ra == rb {
            self.setup.rtt_same_rack
        } else {
            self.setup.rtt_cross_rack
        }
    }

    fn lookup_done(&mut self, h: u32) {
        if self.fetch_mut(h).is_none() {
            return;
        }
        let alive: Vec<u32> = self
            .provider_list
            .iter()
            .copied()
            .filter(|&p| p != h && self.hosts[p as usize].alive)
            .collect();
        let k = (self.setup.lookup_results as usize).min(alive.len());
        let mut picked = BTreeSet::new();
        if k == alive.len() {
            picked.extend(alive.iter().copied());
        } else {
            while picked.len() < k {
                picked.insert(alive[self.rng.below(alive.len() as u64) as usize]);
            }
        }
        if let Some(f) = self.fetch_mut(h) {
            f.providers.extend(picked);
        }
        self.discover(h);
        self.drive(h);
    }

    /// Connects to known peers up to the cap: providers first, then nearest. At the
    /// cap, a connected peer with nothing this fetch still needs makes room for a
    /// provider.
    fn discover(&mut self, h: u32) {
        let max = self.setup.max_peers;
        let Some(f) = self.hosts[h as usize].fetch.as_deref() else {
            return;
        };
        let mut candidates: Vec<u32> = f.providers.iter().copied().collect();
        if self.setup.mdns {
            let rack = self.rack(h);
            if let Some(members) = self.rack_members.get(rack as usize) {
                candidates.extend(
                    members
                        .iter()
                        .copied()
                        .filter(|&p| self.hosts[p as usize].alive),
                );
            }
        }
        let mut candidates: Vec<(bool, Nanos, u64, u32)> = candidates
            .into_iter()
            .filter(|&p| {
                p != h
                    && self.hosts[p as usize].alive
                    && !f.peers.contains_key(&p)
                    && !f.sched.is_banned(&p)
            })
            .map(|p| {
                let provider = self.hosts[p as usize].provider;
                let tiebreak =
                    crate::rng::mix(self.setup.seed ^ (u64::from(h) << 32) ^ u64::from(p));
                (!provider, self.rtt(h, p), tiebreak, p)
            })
            .collect();
        candidates.sort_unstable();
        candidates.dedup_by_key(|c| c.3);
        // Same-rack peers take at most half the slots, leaving room for providers
        // elsewhere, whose pieces differ more (the daemon caps same-subnet peers alike).
        let near_cap = max / 2;
        let mut near = f
            .peers
            .keys()
            .iter()
            .filter(|&&q| self.is_near(h, q))
            .count();
        candidates.retain(|c| {
            if !self.is_near(h, c.3) {
                return true;
            }
            near += 1;
            near <= near_cap
        });
        let mut room = max.saturating_sub(f.peers.len());
        // At the cap, peers with nothing this fetch still needs make room for known
        // providers (the daemon's fetch driver does the same).
        let waiting = candidates.iter().filter(|c| !c.0).count();
        if waiting > room {
            let useless: Vec<u32> = f.sched.useless_peers().take(waiting - room).collect();
            for p in useless {
                self.disconnect(h, p);
                room += 1;
            }
        }
        // Then the slowest peer, one per round (the daemon's fetch driver does the same).
        if waiting > room
            && let Some(p) = self.hosts[h as usize]
                .fetch
                .as_deref()
                .and_then(|f| f.sched.slow_peer())
        {
            self.disconnect(h, p);
            room += 1;
        }
        // Then peers whose queues hold this fetch's answers longest, a few per round
        // (the daemon's fetch driver does the same).
        if waiting > room {
            let queued = self.hosts[h as usize]
                .fetch
                .as_deref()
                .map(|f| f.sched.queued_peers(Duration::from_nanos(self.now)))
                .unwrap_or_default();
            for p in queued.into_iter().take(QUEUED_ROTATION.min(waiting - room)) {
                self.disconnect(h, p);
                room += 1;
            }
        }
        let now = self.now;
        for (_, _, _, p) in candidates.into_iter().take(room) {
            self.hosts[p as usize].watchers.insert(h);
            self.hosts[p as usize].holders.connected(&h);
            let f = self.fetch_mut(h).expect("fetching");
            // A peer disconnected earlier starts afresh (a banned one stays out).
            f.peers.insert(p, Link::default());
            f.sched.readmit_peer(p, Duration::from_nanos(now));
            self.feed_haves(h, p, Duration::from_nanos(now));
        }
    }

    /// Closes the connection from `h` to peer `p` (its requests fail).
    fn disconnect(&mut self, h: u32, p: u32) {
        let now = self.now;
        let ids: Vec<RequestId> = self
            .fetch_mut(h)
            .map(|f| {
                f.requests
                    .iter()
                    .filter(|(_, r)| r.peer == p)
                    .map(|(id, _)| *id)
                    .collect()
            })
            .unwrap_or_default();
        for id in ids {
            self.end_request(h, id);
        }
        if let Some(f) = self.fetch_mut(h) {
            f.sched.remove_peer(p, Duration::from_nanos(now));
        }
        self.unlink(h, p);
    }

    /// Forgets the connection from `h`'s fetch to `p`, on both sides.
    fn unlink(&mut self, h: u32, p: u32) {
        if let Some(f) = self.fetch_mut(h) {
            f.peers.remove(&p);
        }
        let now = Duration::from_nanos(self.now);
        let peer = &mut self.hosts[p as usize];
        peer.watchers.remove(&h);
        peer.holders.disconnected(&h, now);
    }

    /// Host `h`'s fetch tells each complete peer what it has verified since it last
    /// told it (the daemon's fetch driver does the same, every [`NOTICE_EVERY`]). The
    /// notices arrive at once: their latency, a fraction of a round trip, is small
    /// against the second between them.
    fn send_notices(&mut self, h: u32) {
        let peers: Vec<u32> = match self.hosts[h as usize].fetch.as_deref() {
            Some(f) => f.peers.keys().to_vec(),
            None => return,
        };
        for p in peers {
            if !self.hosts[p as usize].complete || !self.hosts[p as usize].alive {
                continue;
            }
            let [host, peer] = self
                .hosts
                .get_disjoint_mut([h as usize, p as usize])
                .expect("a host is not its own peer");
            let Some(told) = host
                .fetch
                .as_deref_mut()
                .and_then(|f| f.peers.get_mut(&p))
                .map(|link| &mut link.told)
            else {
                continue;
            };
            if told.is_empty() {
                told.resize(host.have.len(), Told::default());
            }
            let mut budget = NOTICES_PER_ROUND;
            for (b, (held, told)) in host.have.iter().zip(told.iter_mut()).enumerate() {
                let version = host.version[b];
                if told.version == Some(version) {
                    continue;
                }
                let notices = holders::news(held, &mut told.ranges, budget);
                if notices.len() < budget {
                    told.version = Some(version);
                }
                budget -= notices.len();
                for notice in &notices {
                    peer.holders.record(h, b, notice);
                }
            }
        }
    }

    /// Fetching hosts `pushers` push what each verified since its last round to the
    /// fetches watching it, as the daemon's fetch driver does every [`NOTICE_EVERY`]
    /// (`crates/net/src/fetch.rs`). A watcher that learns of a piece it still needs
    /// runs its scheduler. The news is given as the whole have-map, which the scheduler
    /// compares with what it knew: the same result as the daemon's delta notices.
    /// News of pieces the watcher holds itself is not given: it changes no decision of
    /// its scheduler (those pieces are done), and a swarm of 10,000 spends most of a
    /// run's time on such news otherwise.
    ///
    /// Taking in news changes only the watcher's own fetch, so the watchers are served
    /// side by side ([`Setup::threads`]), each hearing its pushers in their order; their
    /// scheduler runs are queued in the order one push after the other would queue
    /// them. The result does not depend on the number of threads.
    fn push_haves(&mut self, pushers: &[u32]) {
        if !self.setup.push_haves {
            return;
        }
        let now = Duration::from_nanos(self.now);
        let fresh: Vec<Vec<(usize, ChunkRanges)>> = pushers
            .iter()
            .map(|&h| std::mem::take(&mut self.hosts[h as usize].fresh))
            .collect();
        // Every (watcher, pusher's position) pair, by watcher and then pusher.
        let mut pairs: Vec<(u32, u32)> = Vec::new();
        for (i, &h) in pushers.iter().enumerate() {
            if !fresh[i].is_empty() {
                let watchers = &self.hosts[h as usize].watchers;
                pairs.extend(watchers.iter().map(|&w| (w, i as u32)));
            }
        }
        pairs.sort_unstable();
        let mut jobs = Vec::new();
        for group in pairs.chunk_by(|a, b| a.0 == b.0) {
            let w = group[0].0;
            if let Some(fetch) = self.hosts[w as usize].fetch.take() {
                jobs.push(NewsFor {
                    watcher: w,
                    fetch,
                    from: group,
                    first_useful: None,
                });
            }
        }
        let hosts = &self.hosts;
        let hear = |job: &mut NewsFor<'_>| {
            let held = &hosts[job.watcher as usize].have;
            for &(_, i) in job.from {
                let p = pushers[i as usize];
                let news = &fresh[i as usize];
                if feed_fresh(&mut job.fetch, held, p, &hosts[p as usize], news, now)
                    && job.first_useful.is_none()
                {
                    job.first_useful = Some(i);
                }
            }
        };
        let threads = if pairs.len() >= PARALLEL_PAIRS {
            self.setup.threads
        } else {
            1
        };
        for_each_on(threads, &mut jobs, hear);
        let mut drives = Vec::new();
        for job in jobs {
            if let Some(i) = job.first_useful {
                drives.push((i, job.watcher));
            }
            self.hosts[job.watcher as usize].fetch = Some(job.fetch);
        }
        drives.sort_unstable();
        for (_, w) in drives {
            self.drive_soon(w);
        }
    }

    /// Host `h` runs its scheduler once everything due at this instant is done (the
    /// news pushed by all its peers at one instant is taken in at one go).
    fn drive_soon(&mut self, h: u32) {
        let now = self.now;
        if let Some(f) = self.fetch_mut(h)
            && !f.drive_pending
        {
            f.drive_pending = true;
            self.at(now, Event::Drive(h));
        }
    }

    /// Host `h`'s fetch and its peer `p` (`None` if `h` is not fetching).
    fn fetch_and_peer(&mut self, h: u32, p: u32) -> Option<(&mut Fetch, &Host)> {
        let [host, peer] = self
            .hosts
            .get_disjoint_mut([h as usize, p as usize])
            .expect("a host is not its own peer");
        Some((host.fetch.as_deref_mut()?, peer))
    }

    /// A have-map refresh round of host `h`'s fetch: it asks its peers what they have,
    /// those that push their news only every [`POLL_PUSHING_EVERY`] rounds.
    fn refresh_haves(&mut self, h: u32) {
        let now = Duration::from_nanos(self.now);
        let peers: Vec<u32> = match self.fetch_mut(h) {
            Some(f) => {
                f.refresh_round += 1;
                let all = f.refresh_round.is_multiple_of(POLL_PUSHING_EVERY);
                f.peers
                    .keys()
                    .iter()
                    .copied()
                    .filter(|p| all || !f.pushing.contains(p))
                    .collect()
            }
            None => return,
        };
        for p in peers {
            if self.hosts[p as usize].alive {
                self.feed_haves(h, p, now);
            }
        }
    }

    /// Tells host `h`'s scheduler what peer `p` has of the blobs whose have-map
    /// changed since `h` last looked (all of them, the first time); whether that
    /// changed what `p` can give `h` (if not, `h`'s scheduler would do nothing new).
    fn feed_haves(&mut self, h: u32, p: u32, now: Duration) -> bool {
        let Some((f, peer)) = self.fetch_and_peer(h, p) else {
            return false;
        };
        let mut changed = false;
        let Some(Link { seen, .. }) = f.peers.get_mut(&p) else {
            return false;
        };
        if seen.len() != peer.version.len() {
            // Never looked: every blob counts as changed (an empty one says nothing).
            seen.clear();
            seen.extend(peer.version.iter().map(|v| v.wrapping_sub(1)));
        }
        for (b, (v, have)) in peer.version.iter().zip(&peer.have).enumerate() {
            if seen[b] != *v {
                seen[b] = *v;
                if !have.is_empty() || *v > 0 {
                    changed |= f.sched.peer_has(p, b, have, now);
                }
            }
        }
        changed
    }

    /// Runs the scheduler's actions for host `h` until it has nothing more to do.
    fn drive(&mut self, h: u32) {
        let now = self.now;
        loop {
            let Some(f) = self.fetch_mut(h) else { return };
            let Some(action) = f.sched.poll_action(Duration::from_nanos(now)) else {
                break;
            };
            match action {
                Action::Request {
                    id,
                    peer,
                    blob,
                    ranges,
                    ..
                } => {
                    let p = &self.hosts[peer as usize];
                    let failure = if !p.alive {
                        Some(Failure::Io)
                    } else if !ranges.is_subset(&p.have[blob]) {
                        Some(Failure::NotPresent)
                    } else {
                        None
                    };
                    let held = self.hosts[h as usize].verified;
                    let f = self.fetch_mut(h).expect("fetching");
                    if let Some(why) = failure {
                        f.sched.on_failed(id, why, Duration::from_nanos(now));
                        continue;
                    }
                    f.requests.insert(
                        id,
                        Req {
                            peer,
                            blob,
                            ranges,
                            held,
                            state: ReqState::Pending,
                        },
                    );
                    self.hosts[peer as usize].serving.insert((h, id));
                    let rtt = self.rtt(h, peer);
                    self.at(now + rtt, Event::Start(h, id));
                }
                Action::Cancel { id, .. } => self.end_request(h, id),
                Action::DropPeer { peer, reason } => {
                    self.unlink(h, peer);
                    if reason == modeld_proto::scheduler::DropReason::Corrupt {
                        self.hosts[h as usize].banned += 1;
                    }
                }
            }
        }
        let next = self.hosts[h as usize]
            .fetch
            .as_deref()
            .and_then(|f| f.sched.next_deadline())
            .map(|d| d.as_nanos() as Nanos);
        if let Some(t) = next {
            let f = self.fetch_mut(h).expect("fetching");
            if f.wake.is_none_or(|w| t < w) {
                f.wake = Some(t);
                self.at(t.max(now), Event::Wake(h));
            }
        }
    }

    /// Stops a request (cancelled, or its peer or fetcher is gone) and accounts for
    /// the bytes that moved.
    fn end_request(&mut self, h: u32, id: RequestId) {
        let Some(f) = self.fetch_mut(h) else { return };
        let Some(req) = f.requests.remove(&id) else {
            return;
        };
        self.hosts[req.peer as usize].serving.remove(&(h, id));
        if let ReqState::Flowing(fid) = req.state {
            self.flows.remove(&fid);
            let sent = self.net.remove(self.now, fid);
            self.hosts[req.peer as usize].uploaded += sent;
            self.hosts[h as usize].downloaded += sent;
            self.release_slot(req.peer, h);
        }
    }

    /// Request `id` of host `h`, if it is still outstanding.
    fn request(&self, h: u32, id: RequestId) -> Option<&Req> {
        self.hosts[h as usize]
            .fetch
            .as_deref()
            .and_then(|f| f.requests.get(&id))
    }

    /// The bytes the answer to `req` carries: all it asked for, or, from a corrupt
    /// peer, the first chunk group (where verification stops it).
    fn answer_bytes(&self, req: &Req) -> u64 {
        let bytes = ranges::covered_bytes(&req.ranges, self.setup.files[req.blob]);
        if self.hosts[req.peer as usize].spec.corrupt {
            bytes.min(CORRUPT_DETECT_BYTES)
        } else {
            bytes
        }
    }

    /// An answer of `peer` to `dst` ended: with [`Serve::InOrder`], `dst`'s next
    /// request to `peer` comes forward; then the next waiting request gets its turn.
    fn release_slot(&mut self, peer: u32, dst: u32) {
        let host = &mut self.hosts[peer as usize];
        host.sending -= 1;
        host.flowing_to.remove(&dst);
        if self.setup.serve == Serve::InOrder {
            self.start_next_for(peer, dst);
        }
        self.start_waiting(peer);
    }

    /// With [`Serve::InOrder`]: `peer` takes up the oldest request of `dst` that waited
    /// behind its answer to `dst` (it then flows, or waits for a slot like any other).
    fn start_next_for(&mut self, peer: u32, dst: u32) {
        if !self.hosts[peer as usize].alive {
            self.hosts[peer as usize].behind.clear();
            return;
        }
        while let Some(id) = self.hosts[peer as usize]
            .behind
            .get_mut(&dst)
            .and_then(VecDeque::pop_front)
        {
            if self.pending_at(peer, dst, id) {
                self.start_flow(dst, id);
                break;
            }
        }
        let host = &mut self.hosts[peer as usize];
        if host.behind.get(&dst).is_some_and(VecDeque::is_empty) {
            host.behind.remove(&dst);
        }
    }

    /// Whether request `id` of host `dst` still waits for an answer from `peer`.
    fn pending_at(&self, peer: u32, dst: u32, id: RequestId) -> bool {
        self.request(dst, id)
            .is_some_and(|r| matches!(r.state, ReqState::Pending) && r.peer == peer)
    }

    /// With [`Serve::InOrder`], while an answer of `peer` to `dst` flows, request `id`
    /// of `dst` waits behind it (one connection): returns whether it was put there.
    fn queue_behind(&mut self, peer: u32, dst: u32, id: RequestId) -> bool {
        let host = &mut self.hosts[peer as usize];
        if self.setup.serve != Serve::InOrder || !host.flowing_to.contains(&dst) {
            return false;
        }
        host.behind.entry(dst).or_default().push_back(id);
        true
    }

    /// `peer` starts the answer whose turn is next, if any.
    fn start_waiting(&mut self, peer: u32) {
        let now = Duration::from_nanos(self.now);
        while let Some((_, (dst, id))) = self.hosts[peer as usize].waiting.pop(now) {
            let waiting = self.pending_at(peer, dst, id);
            // Its turn may come while an earlier answer to the same asker flows.
            if waiting && self.queue_behind(peer, dst, id) {
                continue;
            }
            if waiting && !self.points_elsewhere(peer, dst, id, true) {
                self.begin_answer(dst, id);
                break;
            }
        }
        if self.hosts[peer as usize].waiting.is_empty() {
            self.backlog.remove(&peer);
        }
    }

    fn resources(&self, src: u32, dst: u32) -> Vec<ResourceId> {
        let mut r = vec![2 * src, 2 * dst + 1];
        let (rs, rd) = (self.rack(src), self.rack(dst));
        if !self.rack_resources.is_empty() && rs != rd {
            if rs != u32::MAX {
                r.push(self.rack_resources[2 * rs as usize]);
            }
            if rd != u32::MAX {
                r.push(self.rack_resources[2 * rd as usize + 1]);
            }
        }
        if self.setup.shared_cpu.is_some() {
            r.push((2 * self.hosts.len() + self.rack_resources.len()) as ResourceId);
        }
        r
    }

    fn start_flow(&mut self, h: u32, id: RequestId) {
        let now = self.now;
        let Some(peer) = self.request(h, id).map(|r| r.peer) else {
            return;
        };
        if !self.hosts[peer as usize].alive {
            self.end_request(h, id);
            if let Some(f) = self.fetch_mut(h) {
                f.sched
                    .on_failed(id, Failure::Io, Duration::from_nanos(now));
            }
            self.drive(h);
            return;
        }
        if self.queue_behind(peer, h, id) {
            return;
        }
        let limit = match self.setup.serve {
            Serve::Parallel | Serve::InOrder => self.setup.serve_slots,
            Serve::Queue => 1,
        };
        if self.hosts[peer as usize].sending >= limit {
            // The asker said what it held when it sent the request.
            let held = self.request(h, id).map_or(0, |r| r.held);
            self.hosts[peer as usize]
                .waiting
                .push(held, Duration::from_nanos(now), (h, id));
            self.backlog.insert(peer);
            return;
        }
        // Taken up at once: the server has room, so it sends anything not held by many.
        if !self.points_elsewhere(peer, h, id, false) {
            self.begin_answer(h, id);
        }
    }

    /// At the turn of request `id` of host `h` (which `waited` for it, or not): if
    /// `peer` is complete and enough of its other peers hold what is asked, the
    /// request fails with `Elsewhere` (as the daemon's server answers; see
    /// `modeld_proto::holders`).
    fn points_elsewhere(&mut self, peer: u32, h: u32, id: RequestId, waited: bool) -> bool {
        // Most answers come from fetching hosts, which never refuse: no work for them.
        if !self.hosts[peer as usize].complete {
            return false;
        }
        let Some(req) = self.request(h, id) else {
            return false;
        };
        let (blob, ranges) = (req.blob, req.ranges.clone());
        let now = Duration::from_nanos(self.now);
        let holders = &mut self.hosts[peer as usize].holders;
        if !holders.should_refuse(h, blob, &ranges, waited, now) {
            return false;
        }
        self.pointed_elsewhere += 1;
        self.end_request(h, id);
        if let Some(f) = self.fetch_mut(h) {
            f.sched.on_failed(id, Failure::Elsewhere, now);
        }
        self.drive(h);
        true
    }

    /// `peer` starts sending the answer to request `id` of host `h`.
    fn begin_answer(&mut self, h: u32, id: RequestId) {
        let Some(req) = self.request(h, id) else {
            return;
        };
        let peer = req.peer;
        let bytes = self.answer_bytes(req);
        self.hosts[peer as usize].sending += 1;
        self.hosts[peer as usize].flowing_to.insert(h);
        let resources = self.resources(peer, h);
        let fid = self.net.add(&resources, bytes, 0);
        self.flows.insert(fid, (h, id));
        let now = Duration::from_nanos(self.now);
        if let Some(f) = self.fetch_mut(h) {
            if let Some(req) = f.requests.get_mut(&id) {
                req.state = ReqState::Flowing(fid);
            }
            // As the daemon's fetch driver does at an answer's first bytes; the copies
            // of the piece still waiting in other queues are cancelled at once.
            f.sched.on_started(id, now);
            self.drive(h);
        }
    }

    fn flow_finished(&mut self, fid: FlowId) {
        let now = self.now;
        let Some((h, id)) = self.flows.remove(&fid) else {
            return;
        };
        let Some(req) = self.fetch_mut(h).and_then(|f| f.requests.remove(&id)) else {
            return;
        };
        let size = self.setup.files[req.blob];
        let peer = req.peer;
        self.hosts[peer as usize].serving.remove(&(h, id));
        let corrupt = self.hosts[peer as usize].spec.corrupt;
        let sent = self.answer_bytes(&req);
        self.hosts[peer as usize].uploaded += sent;
        self.hosts[h as usize].downloaded += sent;
        self.release_slot(peer, h);
        let t = Duration::from_nanos(now);
        if corrupt {
            self.fetch_mut(h)
                .expect("fetching")
                .sched
                .on_failed(id, Failure::Corrupt, t);
        } else {
            self.fetch_mut(h)
                .expect("fetching")
                .sched
                .on_complete(id, t);
            let host = &mut self.hosts[h as usize];
            if !req.ranges.is_subset(&host.have[req.blob]) {
                let new = &req.ranges - &host.have[req.blob];
                host.verified += ranges::covered_bytes(&new, size);
                host.have[req.blob] |= req.ranges;
                host.version[req.blob] += 1;
                match host.fresh.iter_mut().find(|(b, _)| *b == req.blob) {
                    Some((_, gained)) => *gained |= new,
                    None => host.fresh.push((req.blob, new)),
                }
                if !host.provider {
                    let at = now + self.setup.dht_latency;
                    self.at(at, Event::Announce(h));
                }
            }
        }
        let done = self.hosts[h as usize]
            .fetch
            .as_deref()
            .is_some_and(|f| f.sched.is_done());
        if done {
            self.finish(h);
        } else {
            self.drive(h);
        }
    }

    /// Ends host `h`'s fetch: its requests stop and its peers forget it.
    fn stop_fetch(&mut self, h: u32) {
        let ids: Vec<RequestId> = self
            .fetch_mut(h)
            .map(|f| f.requests.keys().copied().collect())
            .unwrap_or_default();
        for id in ids {
            self.end_request(h, id);
        }
        if let Some(f) = self.hosts[h as usize].fetch.take() {
            let now = Duration::from_nanos(self.now);
            for &p in f.peers.keys() {
                let peer = &mut self.hosts[p as usize];
                peer.watchers.remove(&h);
                peer.holders.disconnected(&h, now);
            }
        }
        self.fetchers_left -= 1;
    }

    fn finish(&mut self, h: u32) {
        // The daemon's fetch pushes its last news as it ends.
        self.push_haves(&[h]);
        self.stop_fetch(h);
        let host = &mut self.hosts[h as usize];
        host.complete = true;
        host.done = Some(self.now);
    }

    fn leave(&mut self, h: u32) {
        let now = self.now;
        if !self.hosts[h as usize].alive {
            return;
        }
        // Its own fetch stops.
        if self.hosts[h as usize].fetch.is_some() {
            self.stop_fetch(h);
            self.hosts[h as usize].left = true;
        }
        self.hosts[h as usize].alive = false;
        // Everyone it was serving sees the connection break.
        let serving: Vec<(u32, RequestId)> =
            self.hosts[h as usize].serving.iter().copied().collect();
        let watchers: Vec<u32> = std::mem::take(&mut self.hosts[h as usize].watchers)
            .into_iter()
            .collect();
        for (dst, id) in serving {
            self.end_request(dst, id);
            if let Some(f) = self.fetch_mut(dst) {
                f.sched
                    .on_failed(id, Failure::Io, Duration::from_nanos(now));
            }
        }
        for w in watchers {
            if let Some(f) = self.fetch_mut(w) {
                f.sched.remove_peer(h, Duration::from_nanos(now));
                f.peers.remove(&h);
            }
            self.drive(w);
        }
    }

    fn outcome(self) -> Outcome {
        let model_bytes: u64 = self.setup.files.iter().sum();
        let rack_uplink_bytes = self
            .rack_resources
            .iter()
            .map(|&r| self.net.carried(r) as u64)
            .sum();
        let files = &self.setup.files;
        Outcome {
            hosts: self
                .hosts
                .into_iter()
                .map(|h| HostOutcome {
                    has_everything: h
                        .have
                        .iter()
                        .zip(files)
                        .all(|(r, &s)| ranges::is_complete(r, s)),
                    spec: h.spec,
                    done: h.done,
                    left: h.left,
                    uploaded: h.uploaded,
                    downloaded: h.downloaded,
                    verified: h.verified,
                    banned: h.banned,
                })
                .collect(),
            model_bytes,
            rack_uplink_bytes,
            end: self.now,
            events: self.events,
            recomputations: self.net.recomputations(),
            peak_flows: self.peak_flows,
            pointed_elsewhere: self.pointed_elsewhere,
        }
    }
}
