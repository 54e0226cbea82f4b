//! Scenario files (`simulations/scenarios/*.toml`): the model, the hosts, their links,
//! discovery and what goes wrong. Every field is documented in
//! `docs/simulations/README.md`; sizes are written like `2GiB`, rates like `25Gbit`
//! (bits per second) or `300MB` (bytes per second), durations like `10ms`.

use std::path::Path;

use anyhow::{Context, bail};
use serde::Deserialize;

/// A whole scenario, as read from TOML.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Name used for output files.
    pub name: String,
    /// Seed of every random choice (the same seed gives the same result).
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// What is fetched.
    pub model: ModelSection,
    /// Links and racks.
    pub network: NetworkSection,
    /// Who holds the model at the start.
    pub seeds: SeedSection,
    /// An optional origin: holds the model, with its own upload capacity.
    pub origin: Option<OriginSection>,
    /// The fetching hosts.
    pub hosts: HostSection,
    /// How hosts learn of each other.
    #[serde(default)]
    pub discovery: DiscoverySection,
    /// Simulation settings.
    #[serde(default)]
    pub sim: SimSection,
}

fn default_seed() -> u64 {
    1
}

/// The model.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// Number of files.
    pub files: u32,
    /// Size of each file (the last may be given separately).
    pub file_size: String,
    /// Size of the last file, if different.
    pub last_file_size: Option<String>,
    /// Scheduler piece size (the daemon uses 1MiB).
    #[serde(default = "default_piece")]
    pub piece: String,
    /// Scheduler in-flight cap per fetch (the daemon uses 64MiB).
    #[serde(default = "default_inflight")]
    pub inflight: String,
}

fn default_piece() -> String {
    "1MiB".into()
}

fn default_inflight() -> String {
    "64MiB".into()
}

/// Links.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkSection {
    /// Upload capacity of a host (and of a seed unless given).
    pub host_up: String,
    /// Download capacity of a host.
    pub host_down: String,
    /// Round-trip time between hosts in one rack.
    #[serde(default = "default_rtt")]
    pub rtt_same_rack: String,
    /// Round-trip time between racks.
    #[serde(default = "default_rtt")]
    pub rtt_cross_rack: String,
    /// Hosts per rack (seeds count as hosts of rack 0 onwards); 0: one big rack.
    #[serde(default)]
    pub rack_size: u32,
    /// Capacity of each rack's uplink, each way; none: not a bottleneck.
    pub rack_uplink: Option<String>,
    /// A CPU budget shared by every flow (bytes per second), for a lab whose hosts
    /// share the cores of one machine.
    pub shared_cpu: Option<String>,
    /// Other classes of hosts: a fraction of the fetching hosts with other links.
    #[serde(default)]
    pub classes: Vec<LinkClass>,
}

fn default_rtt() -> String {
    "1ms".into()
}

/// A class of hosts with different links.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkClass {
    /// Fraction of the fetching hosts.
    pub fraction: f64,
    /// Their upload capacity.
    pub up: String,
    /// Their download capacity.
    pub down: String,
}

/// Seeds.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedSection {
    /// How many.
    pub count: u32,
    /// Their upload capacity (default: `host_up`).
    pub up: Option<String>,
    /// A seed dies at this time (the first seed).
    pub dies_at: Option<String>,
}

/// The origin.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OriginSection {
    /// Its upload capacity.
    pub up: String,
    /// Round-trip time to it.
    #[serde(default = "default_rtt")]
    pub rtt: String,
}

/// The fetching hosts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostSection {
    /// How many.
    pub count: u32,
    /// Arrivals spread evenly at random over this long (default: all at 0, a burst).
    pub arrive_over: Option<String>,
    /// Fraction of hosts that leave mid-fetch.
    #[serde(default)]
    pub churn_fraction: f64,
    /// Leavers leave at a uniformly random time in this window, e.g. `["5s", "20s"]`.
    pub churn_window: Option<[String; 2]>,
    /// Fraction of hosts that send corrupt data (and must be banned).
    #[serde(default)]
    pub corrupt_fraction: f64,
}

/// Discovery.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscoverySection {
    /// mDNS: every host learns of the hosts in its rack.
    #[serde(default = "yes")]
    pub mdns: bool,
    /// The longest wait between two DHT lookups for providers (the daemon: 3s; as
    /// there, the first wait is 0.5 s and it doubles up to this).
    #[serde(default = "default_lookup")]
    pub lookup_every: String,
    /// How many providers one lookup returns (Kademlia's k: 20).
    #[serde(default = "default_lookup_results")]
    pub lookup_results: u32,
    /// How long a lookup or an announcement takes.
    #[serde(default = "default_dht_latency")]
    pub dht_latency: String,
    /// Most peers one fetch uses (the daemon: 32).
    #[serde(default = "default_max_peers")]
    pub max_peers: u32,
    /// How often a fetch refreshes the have-maps of incomplete peers, on average (the
    /// daemon: 1s, each wait jittered over half to one and a half times it).
    #[serde(default = "default_have_refresh")]
    pub have_refresh: String,
    /// Whether a fetching host pushes what it newly verified to the fetches that asked
    /// for its have-map (the daemon does, every 100 ms); off, they learn it only from
    /// their own refreshes (the daemon before the eleventh round).
    #[serde(default = "yes")]
    pub push_haves: bool,
}

fn yes() -> bool {
    true
}
fn default_lookup() -> String {
    "3s".into()
}
fn default_lookup_results() -> u32 {
    20
}
fn default_dht_latency() -> String {
    "200ms".into()
}
fn default_max_peers() -> u32 {
    32
}
fn default_have_refresh() -> String {
    "1s".into()
}

impl Default for DiscoverySection {
    fn default() -> Self {
        Self {
            mdns: true,
            lookup_every: default_lookup(),
            lookup_results: default_lookup_results(),
            dht_latency: default_dht_latency(),
            max_peers: default_max_peers(),
            have_refresh: default_have_refresh(),
            push_haves: true,
        }
    }
}

/// Simulation settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimSection {
    /// Least time between two rate recomputations (0: at every flow start and end).
    #[serde(default = "default_gap")]
    pub recompute_gap: String,
    /// Give up after this much simulated time.
    #[serde(default = "default_limit")]
    pub time_limit: String,
    /// How a host works through the answers it owes (see [`Serve`]).
    #[serde(default)]
    pub serve: Serve,
}

/// How a host works through the answers it owes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Serve {
    /// Up to 64 answers at once sharing the uplink, the rest waiting their turn (the
    /// daemon's 64 MiB answer budget in its 1 MiB pieces), one asker's answers side by
    /// side: the daemon before the seventeenth stop.
    Parallel,
    /// The daemon: as [`Serve::Parallel`], but one asker's answers go out one at a
    /// time, in the order its requests arrived (QUIC stream priorities on one
    /// connection); answers to different askers share the uplink.
    #[default]
    InOrder,
    /// First come first served: one answer at a time, and another started whenever
    /// the uplink has room (more than 5 % unused), up to 64. For runs with pieces far
    /// larger than the daemon's: the daemon's 1 MiB answers take milliseconds, so its
    /// queue drains nearly in order at the uplink's full rate, whereas 64 answers of
    /// 256 MiB sharing an uplink would each take seconds, and no piece could be passed
    /// on until they all ended.
    Queue,
}

fn default_gap() -> String {
    "0s".into()
}
fn default_limit() -> String {
    "6h".into()
}

impl Default for SimSection {
    fn default() -> Self {
        Self {
            recompute_gap: default_gap(),
            time_limit: default_limit(),
            serve: Serve::default(),
        }
    }
}

impl Scenario {
    /// Reads a scenario file.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }
}

/// Parses a size such as `2GiB`, `300MB` or `4096`.
pub fn size(text: &str) -> anyhow::Result<u64> {
    let (num, unit) = split_unit(text);
    let mult: f64 = match unit {
        "" | "B" => 1.0,
        "KB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "TB" => 1e12,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        "TiB" => 1024.0f64.powi(4),
        other => bail!("unknown size unit {other:?} in {text:?}"),
    };
    let n: f64 = num.parse().with_context(|| format!("size {text:?}"))?;
    Ok((n * mult).round() as u64)
}

/// Parses a rate in bytes per second: `25Gbit`, `200Mbit` (bits) or `300MB` (bytes).
pub fn rate(text: &str) -> anyhow::Result<f64> {
    let (num, unit) = split_unit(text);
    let n: f64 = num.parse().with_context(|| format!("rate {text:?}"))?;
    let bits = match unit {
        "bit" => 1.0,
        "Kbit" => 1e3,
        "Mbit" => 1e6,
        "Gbit" => 1e9,
        "Tbit" => 1e12,
        _ => return Ok(size(text)? as f64),
    };
    Ok(n * bits / 8.0)
}

/// Parses a duration such as `10ms`, `3s`, `5min` into nanoseconds.
pub fn duration(text: &str) -> anyhow::Result<u64> {
    if text.trim() == "0" || text.trim() == "0s" {
        return Ok(0);
    }
    Ok(humantime::parse_duration(text)
        .with_context(|| format!("duration {text:?}"))?
        .as_nanos() as u64)
}

fn split_unit(text: &str) -> (&str, &str) {
    let text = text.trim();
    let at = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    (text[..at].trim(), text[at..].trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(size("2GiB").unwrap(), 2 << 30);
        assert_eq!(size("1.5MB").unwrap(), 1_500_000);
        assert_eq!(rate("200Mbit").unwrap(), 25e6);
        assert_eq!(rate("300MB").unwrap(), 300e6);
        assert_eq!(duration("10ms").unwrap(), 10_000_000);
        assert_eq!(duration("0").unwrap(), 0);
        assert!(size("3 parsecs").is_err());
    }
}
