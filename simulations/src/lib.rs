//! `modeld-sim`: plan a rollout before doing it. Simulates thousands of hosts fetching
//! a model with **the daemon's own piece scheduler** (`modeld_proto::scheduler`, not a
//! re-implementation), under simulated time, over a flow-level network model with
//! max-min fair sharing ([`flow`]).
//!
//! ```text
//! scenario TOML --> Setup --> Swarm::run --> Outcome --> summary, CSV, SVG
//!                   (hosts, links,  (events: arrivals,    (completion times,
//!                    racks, faults)  requests, flows,      upload shares, rack
//!                                    have-maps, lookups)   uplink bytes)
//! ```
//!
//! Usage: `cargo run --release -p modeld-sim -- simulations/scenarios/burst-10k.toml`.
//! The scenario format, the lower bounds and the calibration against the
//! network-namespace lab are in `docs/simulations/README.md`.

pub mod flow;
pub mod report;
pub mod rng;
pub mod scenario;
pub mod swarm;

use modeld_proto::scheduler::SchedulerConfig;

/// Answers a host sends at once, other requests waiting their turn: the daemon's
/// answer budget (`modeld_net::serve::ANSWER_BUDGET`, 64 MiB) in its own 1 MiB pieces.
/// A run with larger pieces keeps this as its limit; how answers start below it is the
/// scenario's `serve` ([`scenario::Serve`]).
pub const ANSWER_SLOTS: u32 = 64;

use crate::{
    flow::Nanos,
    rng::Rng,
    scenario::{Scenario, duration, rate, size},
    swarm::{HostSpec, Kind, Outcome, Setup},
};

/// Resolves a scenario into hosts and settings (`piece` overrides the model's piece
/// size; `inflight` scales with it so the number of pieces in flight stays the same).
pub fn setup(s: &Scenario, piece: Option<u64>) -> anyhow::Result<Setup> {
    let mut files = vec![size(&s.model.file_size)?; s.model.files as usize];
    if let (Some(last), Some(f)) = (&s.model.last_file_size, files.last_mut()) {
        *f = size(last)?;
    }
    let base_piece = size(&s.model.piece)?;
    let base_inflight = size(&s.model.inflight)?;
    let piece_bytes = piece.unwrap_or(base_piece);
    anyhow::ensure!(
        piece_bytes >= 16 * 1024 && piece_bytes.is_multiple_of(16 * 1024),
        "piece size must be a multiple of 16 KiB"
    );
    let scheduler = SchedulerConfig {
        piece_bytes,
        max_inflight_bytes: base_inflight / base_piece * piece_bytes,
        ..SchedulerConfig::default()
    };
    let mut rng = Rng::new(s.seed ^ 0x5eed);
    let host_up = rate(&s.network.host_up)?;
    let host_down = rate(&s.network.host_down)?;
    let seed_up = s
        .seeds
        .up
        .as_deref()
        .map(rate)
        .transpose()?
        .unwrap_or(host_up);
    let rack_size = s.network.rack_size;
    let rack_of = |i: u32| i.checked_div(rack_size).unwrap_or(0);
    let mut hosts = Vec::new();
    let dies = s.seeds.dies_at.as_deref().map(duration).transpose()?;
    for i in 0..s.seeds.count {
        hosts.push(HostSpec {
            kind: Kind::Seed,
            rack: rack_of(i),
            up: seed_up,
            down: host_down,
            arrive: 0,
            leave: if i == 0 { dies } else { None },
            corrupt: false,
        });
    }
    if let Some(o) = &s.origin {
        hosts.push(HostSpec {
            kind: Kind::Origin,
            rack: u32::MAX,
            up: rate(&o.up)?,
            down: 0.0,
            arrive: 0,
            leave: None,
            corrupt: false,
        });
    }
    let arrive_over = s.hosts.arrive_over.as_deref().map(duration).transpose()?;
    let churn = match &s.hosts.churn_window {
        Some([a, b]) => Some((duration(a)?, duration(b)?)),
        None => None,
    };
    let classes: Vec<(f64, f64, f64)> = s
        .network
        .classes
        .iter()
        .map(|c| Ok((c.fraction, rate(&c.up)?, rate(&c.down)?)))
        .collect::<anyhow::Result<_>>()?;
    for i in 0..s.hosts.count {
        let position = s.seeds.count + i;
        let arrive = arrive_over.map_or(0, |w| rng.below(w.max(1)));
        let (mut up, mut down) = (host_up, host_down);
        let mut x = rng.unit();
        for &(fraction, cup, cdown) in &classes {
            if x < fraction {
                (up, down) = (cup, cdown);
                break;
            }
            x -= fraction;
        }
        let leaves = rng.unit() < s.hosts.churn_fraction;
        let leave = match churn {
            Some((a, b)) if leaves => Some(arrive + a + rng.below((b - a).max(1))),
            _ => None,
        };
        let corrupt = rng.unit() < s.hosts.corrupt_fraction;
        hosts.push(HostSpec {
            kind: Kind::Fetcher,
            rack: rack_of(position),
            up,
            down,
            arrive,
            leave,
            corrupt,
        });
    }
    let racks = if rack_size == 0 {
        1
    } else {
        (s.seeds.count + s.hosts.count).div_ceil(rack_size)
    };
    let d = &s.discovery;
    Ok(Setup {
        hosts,
        files,
        scheduler,
        rtt_same_rack: duration(&s.network.rtt_same_rack)?,
        rtt_cross_rack: duration(&s.network.rtt_cross_rack)?,
        rtt_origin: match &s.origin {
            Some(o) => duration(&o.rtt)?,
            None => 0,
        },
        rack_uplink: s.network.rack_uplink.as_deref().map(rate).transpose()?,
        racks,
        shared_cpu: s.network.shared_cpu.as_deref().map(rate).transpose()?,
        mdns: d.mdns,
        lookup_every: duration(&d.lookup_every)?,
        lookup_results: d.lookup_results,
        dht_latency: duration(&d.dht_latency)?,
        max_peers: d.max_peers as usize,
        have_refresh: duration(&d.have_refresh)?,
        push_haves: d.push_haves,
        recompute_gap: duration(&s.sim.recompute_gap)?,
        serve_slots: ANSWER_SLOTS,
        serve: s.sim.serve,
        time_limit: duration(&s.sim.time_limit)?,
        seed: s.seed,
        threads: 1,
    })
}

/// A lower bound on when the last honest fetcher can finish, and what set it.
#[derive(Debug, Clone)]
pub struct Bound {
    /// Seconds after the first arrival.
    pub seconds: f64,
    /// Which constraint is binding, in words.
    pub reason: String,
}

/// The lower bound for a setup: the largest of
/// - each fetcher's arrival plus model size over its download rate;
/// - the model size over the seeds' and origin's total upload (every byte must leave
///   them once);
/// - all the bytes every fetcher needs over everyone's total upload;
/// - with a shared CPU budget, all those bytes over the budget;
/// - with rack uplinks, the model size over one uplink, for a rack with fetchers and
///   no seed (every byte must enter it once).
pub fn lower_bound(setup: &Setup) -> Bound {
    let f: f64 = setup.files.iter().sum::<u64>() as f64;
    let fetchers: Vec<&HostSpec> = setup
        .hosts
        .iter()
        .filter(|h| h.kind == Kind::Fetcher && h.leave.is_none() && !h.corrupt)
        .collect();
    let all_fetchers = setup
        .hosts
        .iter()
        .filter(|h| h.kind == Kind::Fetcher)
        .count() as f64;
    let mut best = Bound {
        seconds: 0.0,
        reason: String::new(),
    };
    let mut consider = |seconds: f64, reason: String| {
        if seconds > best.seconds {
            best = Bound { seconds, reason };
        }
    };
    for h in &fetchers {
        consider(
            h.arrive as f64 / 1e9 + f / h.down,
            "model size / a host's download rate (after its arrival)".into(),
        );
    }
    let source_up: f64 = setup
        .hosts
        .iter()
        .filter(|h| h.kind != Kind::Fetcher)
        .map(|h| h.up)
        .sum();
    consider(
        f / source_up,
        "model size / total upload of seeds and origin".into(),
    );
    let total_up: f64 = setup.hosts.iter().map(|h| h.up).sum();
    consider(
        all_fetchers * f / total_up,
        "all fetchers' bytes / everyone's total upload".into(),
    );
    if let Some(cpu) = setup.shared_cpu {
        consider(
            all_fetchers * f / cpu,
            "all fetchers' bytes / the shared CPU budget".into(),
        );
    }
    if let Some(uplink) = setup.rack_uplink {
        let seeded: std::collections::BTreeSet<u32> = setup
            .hosts
            .iter()
            .filter(|h| h.kind == Kind::Seed)
            .map(|h| h.rack)
            .collect();
        if fetchers.iter().any(|h| !seeded.contains(&h.rack)) {
            consider(f / uplink, "model size / a rack uplink".into());
        }
    }
    best
}

/// Summary statistics of a run.
#[derive(Debug, Clone)]
pub struct Stats {
    /// Honest fetchers that stayed.
    pub hosts: usize,
    /// Of those, how many finished.
    pub finished: usize,
    /// Completion times (seconds after arrival): 50th, 99th percentile, maximum.
    pub p50: f64,
    /// See `p50`.
    pub p99: f64,
    /// See `p50`.
    pub max: f64,
    /// When the last of them finished, seconds after the first arrival.
    pub last: f64,
    /// Bytes the seeds uploaded.
    pub seed_upload: u64,
    /// Bytes the origin uploaded.
    pub origin_upload: u64,
    /// Largest share of all uploaded bytes sent by one fetcher.
    pub max_fetcher_share: f64,
    /// Hosts that ended with anything but every byte exactly once.
    pub incomplete: usize,
}

/// Computes the summary of an outcome.
pub fn stats(o: &Outcome) -> Stats {
    let honest: Vec<_> = o.hosts.iter().filter(|h| h.is_counted()).collect();
    let first = o.first_arrival();
    let mut durations: Vec<f64> = honest
        .iter()
        .filter_map(|h| h.done.map(|d| (d - h.spec.arrive) as f64 / 1e9))
        .collect();
    durations.sort_by(f64::total_cmp);
    let pct = |p: f64| -> f64 {
        if durations.is_empty() {
            return f64::NAN;
        }
        let i = ((p * durations.len() as f64).ceil() as usize).clamp(1, durations.len()) - 1;
        durations[i]
    };
    let upload = |k: Kind| -> u64 {
        o.hosts
            .iter()
            .filter(|h| h.spec.kind == k)
            .map(|h| h.uploaded)
            .sum()
    };
    let total_up: u64 = o.hosts.iter().map(|h| h.uploaded).sum();
    Stats {
        hosts: honest.len(),
        finished: durations.len(),
        p50: pct(0.5),
        p99: pct(0.99),
        max: durations.last().copied().unwrap_or(f64::NAN),
        last: honest
            .iter()
            .filter_map(|h| h.done)
            .max()
            .map_or(f64::NAN, |d: Nanos| (d - first) as f64 / 1e9),
        seed_upload: upload(Kind::Seed),
        origin_upload: upload(Kind::Origin),
        max_fetcher_share: o
            .hosts
            .iter()
            .filter(|h| h.spec.kind == Kind::Fetcher)
            .map(|h| h.uploaded as f64 / total_up.max(1) as f64)
            .fold(0.0, f64::max),
        incomplete: honest
            .iter()
            .filter(|h| h.done.is_some() && (!h.has_everything || h.verified != o.model_bytes))
            .count(),
    }
}
