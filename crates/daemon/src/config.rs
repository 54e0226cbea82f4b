//! Configuration: defaults, then the TOML file, then flags (every key has a flag).
//!
//! The file is `--config FILE`, else `<data dir>/config.toml` if it exists. Unknown
//! keys are an error naming the key, so a typo never silently falls back to a default.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, bail};
use clap::Parser;
use modeld_core::PublicKey;
use modeld_net::PeerAddr;
use serde::{Deserialize, Serialize};

/// Command-line flags of `modeld`.
#[derive(Debug, Parser)]
#[command(
    name = "modeld",
    version,
    about = "Keeps a verified store of model files and serves them to modelctl and peers.",
    long_about = "modeld runs on every host. It owns the store in its data dir (a redb index of \
BLAKE3-verified blobs), listens for modelctl on a local API, and shuts down cleanly on SIGINT or SIGTERM.\n\n\
Settings come from defaults, then the config file, then these flags."
)]
pub(crate) struct Args {
    /// Data dir (store, keys, socket). Default: $MODELD_DATA_DIR, else $XDG_DATA_HOME/modeld, else ~/.local/share/modeld.
    #[arg(long, value_name = "DIR")]
    pub(crate) data_dir: Option<PathBuf>,

    /// Config file (TOML). Default: config.toml in the data dir, if it exists.
    #[arg(long, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,

    /// Local API: `unix` (socket in the data dir), `unix:PATH`, or a loopback `IP:PORT` (port 0 picks one). [config: api.listen]
    #[arg(long, value_name = "ADDR")]
    pub(crate) api_listen: Option<String>,

    /// Log format: `text` or `json`; the level comes from RUST_LOG (default info). [config: log.format]
    #[arg(long, value_name = "FORMAT")]
    pub(crate) log_format: Option<String>,

    /// Threads for hashing large files (default: all cores). [config: store.hash_threads]
    #[arg(long, value_name = "N")]
    pub(crate) hash_threads: Option<usize>,

    /// Threads that run the network (QUIC, the protocol and the local API); hashing and
    /// disk work have threads of their own. Default: a quarter of the cores, at least
    /// 1. [config: net.threads]
    #[arg(long, value_name = "N")]
    pub(crate) net_threads: Option<usize>,

    /// Data-plane (QUIC) address to listen on; port 0 picks one. [config: net.listen, default 0.0.0.0:4810]
    #[arg(long, value_name = "IP:PORT")]
    pub(crate) listen: Option<String>,

    /// Only these node ids may connect (repeatable; default: any). [config: net.allow_peers]
    #[arg(long = "allow-peer", value_name = "NODE_ID")]
    pub(crate) allow_peers: Vec<String>,

    /// Upload cap, e.g. `100MiB` per second (0: none). [config: net.upload_rate]
    #[arg(long, value_name = "RATE")]
    pub(crate) upload_rate: Option<String>,

    /// Download cap, e.g. `1GiB` per second (0: none). [config: net.download_rate]
    #[arg(long, value_name = "RATE")]
    pub(crate) download_rate: Option<String>,

    /// A peer to fetch from when none are given (repeatable): IP:PORT or NODE_ID@IP:PORT. [config: net.peers]
    #[arg(long = "peer", value_name = "ADDR")]
    pub(crate) peers: Vec<String>,

    /// Base timeout of a request to a peer, e.g. `10s`. [config: net.request_timeout]
    #[arg(long, value_name = "DURATION")]
    pub(crate) request_timeout: Option<String>,

    /// Control-plane (libp2p TCP) address to listen on. [config: net.p2p_listen, default 0.0.0.0:4811]
    #[arg(long, value_name = "IP:PORT")]
    pub(crate) p2p_listen: Option<String>,

    /// Find peers on the local network with mDNS multicast: true or false. [config: net.mdns, default true]
    #[arg(long, value_name = "BOOL")]
    pub(crate) mdns: Option<bool>,

    /// A peer to join the DHT through (repeatable): IP:PORT, NODE_ID@IP:PORT or a multiaddr. [config: net.bootstrap]
    #[arg(long = "bootstrap", value_name = "ADDR")]
    pub(crate) bootstrap: Vec<String>,

    /// Accept pickle-based model files (PyTorch `.bin`/`.pt`, pickles, object arrays) for
    /// fetch and export, provided every global they import is a tensor-rebuilding
    /// callable: true or false. [config: safety.allow_pickle, default false]
    #[arg(long, value_name = "BOOL")]
    pub(crate) allow_pickle: Option<bool>,

    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    pub(crate) print_config: bool,
}

/// The config file's shape.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileConfig {
    #[serde(default)]
    api: ApiSection,
    #[serde(default)]
    log: LogSection,
    #[serde(default)]
    store: StoreSection,
    #[serde(default)]
    net: NetSection,
    #[serde(default)]
    safety: SafetySection,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SafetySection {
    allow_pickle: Option<bool>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct NetSection {
    threads: Option<usize>,
    listen: Option<String>,
    allow_peers: Option<Vec<String>>,
    upload_rate: Option<String>,
    download_rate: Option<String>,
    peers: Option<Vec<String>>,
    request_timeout: Option<String>,
    p2p_listen: Option<String>,
    mdns: Option<bool>,
    bootstrap: Option<Vec<String>>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApiSection {
    listen: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LogSection {
    format: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoreSection {
    hash_threads: Option<usize>,
}

/// Where the local API listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Listen {
    /// A unix socket at this path.
    Unix(PathBuf),
    /// TCP on a loopback address.
    Tcp(SocketAddr),
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LogFormat {
    Text,
    Json,
}

/// The effective configuration.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) data_dir: PathBuf,
    pub(crate) api_listen: Listen,
    pub(crate) log_format: LogFormat,
    pub(crate) hash_threads: usize,
    pub(crate) net: NetSettings,
    /// Pickle-based files may be fetched and exported (allow-listed globals only).
    pub(crate) allow_pickle: bool,
}

/// The effective data-plane settings.
#[derive(Debug, Clone)]
pub(crate) struct NetSettings {
    /// Worker threads of the async runtime.
    pub(crate) threads: usize,
    pub(crate) listen: SocketAddr,
    pub(crate) allow_peers: Vec<PublicKey>,
    pub(crate) upload_rate: u64,
    pub(crate) download_rate: u64,
    pub(crate) peers: Vec<PeerAddr>,
    pub(crate) request_timeout: Duration,
    pub(crate) p2p_listen: SocketAddr,
    pub(crate) mdns: bool,
    pub(crate) bootstrap: Vec<String>,
}

impl Config {
    /// Defaults, overlaid with the config file, overlaid with flags.
    pub(crate) fn load(args: &Args) -> anyhow::Result<Self> {
        let data_dir = modeld_api::paths::data_dir(args.data_dir.as_deref());
        let file_path = args
            .config
            .clone()
            .or_else(|| Some(data_dir.join(modeld_api::paths::CONFIG_FILE)).filter(|p| p.exists()));
        let file = match &file_path {
            Some(p) => read_file(p)?,
            None => FileConfig::default(),
        };
        let listen = args
            .api_listen
            .clone()
            .or(file.api.listen)
            .unwrap_or_else(|| "unix".to_owned());
        let format = args
            .log_format
            .clone()
            .or(file.log.format)
            .unwrap_or_else(|| "text".to_owned());
        let hash_threads = args
            .hash_threads
            .or(file.store.hash_threads)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, usize::from));
        if hash_threads == 0 {
            bail!("store.hash_threads must be at least 1");
        }
        let allow_pickle = args
            .allow_pickle
            .or(file.safety.allow_pickle)
            .unwrap_or(false);
        let n = file.net;
        let threads = args
            .net_threads
            .or(n.threads)
            .unwrap_or_else(default_net_threads);
        if threads == 0 {
            bail!("net.threads must be at least 1");
        }
        let net_listen = args
            .listen
            .clone()
            .or(n.listen)
            .unwrap_or_else(|| "0.0.0.0:4810".to_owned());
        let allow = if args.allow_peers.is_empty() {
            n.allow_peers.unwrap_or_default()
        } else {
            args.allow_peers.clone()
        };
        let peers = if args.peers.is_empty() {
            n.peers.unwrap_or_default()
        } else {
            args.peers.clone()
        };
        let p2p_listen = args
            .p2p_listen
            .clone()
            .or(n.p2p_listen)
            .unwrap_or_else(|| "0.0.0.0:4811".to_owned());
        let bootstrap = if args.bootstrap.is_empty() {
            n.bootstrap.unwrap_or_default()
        } else {
            args.bootstrap.clone()
        };
        for b in &bootstrap {
            modeld_net::discovery::check_bootstrap(b)
                .map_err(|e| anyhow::anyhow!("net.bootstrap: {e}"))?;
        }
        let net = NetSettings {
            threads,
            p2p_listen: p2p_listen
                .parse()
                .with_context(|| format!("net.p2p_listen must be IP:PORT, not {p2p_listen:?}"))?,
            mdns: args.mdns.or(n.mdns).unwrap_or(true),
            bootstrap,
            listen: net_listen
                .parse()
                .with_context(|| format!("net.listen must be IP:PORT, not {net_listen:?}"))?,
            allow_peers: allow
                .iter()
                .map(|k| k.parse().with_context(|| format!("net.allow_peers: {k:?}")))
                .collect::<anyhow::Result<_>>()?,
            upload_rate: parse_rate(
                &args
                    .upload_rate
                    .clone()
                    .or(n.upload_rate)
                    .unwrap_or_default(),
            )
            .context("net.upload_rate")?,
            download_rate: parse_rate(
                &args
                    .download_rate
                    .clone()
                    .or(n.download_rate)
                    .unwrap_or_default(),
            )
            .context("net.download_rate")?,
            peers: peers
                .iter()
                .map(|p| {
                    p.parse()
                        .map_err(|e: String| anyhow::anyhow!("net.peers: {e}"))
                })
                .collect::<anyhow::Result<_>>()?,
            request_timeout: humantime::parse_duration(
                &args
                    .request_timeout
                    .clone()
                    .or(n.request_timeout)
                    .unwrap_or_else(|| "10s".into()),
            )
            .context("net.request_timeout must be a duration like 10s")?,
        };
        Ok(Self {
            net,
            api_listen: parse_listen(&listen, &data_dir)?,
            log_format: match format.as_str() {
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                other => bail!("log.format must be `text` or `json`, not {other:?}"),
            },
            hash_threads,
            data_dir,
            allow_pickle,
        })
    }

    /// The effective configuration as TOML (for `--print-config`).
    pub(crate) fn to_toml(&self) -> String {
        let listen = match &self.api_listen {
            Listen::Unix(p) => format!("unix:{}", p.display()),
            Listen::Tcp(a) => a.to_string(),
        };
        let file = FileConfig {
            api: ApiSection {
                listen: Some(listen),
            },
            log: LogSection {
                format: Some(
                    match self.log_format {
                        LogFormat::Text => "text",
                        LogFormat::Json => "json",
                    }
                    .to_owned(),
                ),
            },
            store: StoreSection {
                hash_threads: Some(self.hash_threads),
            },
            net: NetSection {
                threads: Some(self.net.threads),
                listen: Some(self.net.listen.to_string()),
                allow_peers: Some(
                    self.net
                        .allow_peers
                        .iter()
                        .map(ToString::to_string)
                        .collect(),
                ),
                upload_rate: Some(self.net.upload_rate.to_string()),
                download_rate: Some(self.net.download_rate.to_string()),
                peers: Some(self.net.peers.iter().map(ToString::to_string).collect()),
                request_timeout: Some(
                    humantime::format_duration(self.net.request_timeout).to_string(),
                ),
                p2p_listen: Some(self.net.p2p_listen.to_string()),
                mdns: Some(self.net.mdns),
                bootstrap: Some(self.net.bootstrap.clone()),
            },
            safety: SafetySection {
                allow_pickle: Some(self.allow_pickle),
            },
        };
        format!(
            "# effective modeld configuration (data dir: {})\n{}",
            self.data_dir.display(),
            toml::to_string_pretty(&file).unwrap_or_default()
        )
    }
}

/// A quarter of the cores, at least one. The network's threads move packets; the
/// work per byte (hashing, verifying, reading and writing the store) runs on the
/// blocking pool. More network threads than that mostly wake each other: in the lab's
/// burst at 100 Mbit/s (eight daemons on two cores) one thread each instead of two
/// cost 9 % less CPU, and a transfer on loopback ran 11 % faster
/// (`docs/benchmarks.md`).
fn default_net_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 4).max(1))
}

fn read_file(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("in config file {}", path.display()))
}

/// Parses a byte rate per second: `0`, `1048576`, `100MiB`, `1.5GB`, `250KiB/s`.
/// Binary units (KiB, MiB, GiB) are powers of 1024, decimal ones (KB, MB, GB) of 1000.
pub(crate) fn parse_rate(text: &str) -> anyhow::Result<u64> {
    let t = text.trim().trim_end_matches("/s");
    if t.is_empty() {
        return Ok(0);
    }
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let num: f64 = num
        .parse()
        .with_context(|| format!("{text:?} is not a rate like 100MiB or 0"))?;
    let mult: f64 = match unit.trim() {
        "" | "B" => 1.0,
        "KB" | "kB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "K" | "KiB" => 1024.0,
        "M" | "MiB" => 1024.0 * 1024.0,
        "G" | "GiB" => 1024.0 * 1024.0 * 1024.0,
        other => {
            bail!("unknown unit {other:?} in rate {text:?} (use B, KiB, MiB, GiB, KB, MB or GB)")
        }
    };
    Ok((num * mult) as u64)
}

fn parse_listen(text: &str, data_dir: &Path) -> anyhow::Result<Listen> {
    if text == "unix" {
        return Ok(Listen::Unix(data_dir.join(modeld_api::paths::SOCKET_FILE)));
    }
    if let Some(path) = text.strip_prefix("unix:") {
        return Ok(Listen::Unix(PathBuf::from(path)));
    }
    let addr: SocketAddr = text.parse().with_context(|| {
        format!("api.listen must be `unix`, `unix:PATH` or a loopback IP:PORT, not {text:?}")
    })?;
    if !addr.ip().is_loopback() {
        bail!(
            "api.listen {addr} is not a loopback address: the local API has no encryption and must not leave this host"
        );
    }
    Ok(Listen::Tcp(addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Args {
        let mut v = vec!["modeld"];
        v.extend_from_slice(extra);
        Args::parse_from(v)
    }

    #[test]
    fn flags_override_file_which_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap();
        let c = Config::load(&args(&["--data-dir", d])).unwrap();
        assert_eq!(c.api_listen, Listen::Unix(dir.path().join("modeld.sock")));
        assert_eq!(c.log_format, LogFormat::Text);

        std::fs::write(
            dir.path().join("config.toml"),
            "[api]\nlisten = \"127.0.0.1:0\"\n[log]\nformat = \"json\"\n",
        )
        .unwrap();
        let c = Config::load(&args(&["--data-dir", d])).unwrap();
        assert_eq!(c.api_listen, Listen::Tcp("127.0.0.1:0".parse().unwrap()));
        assert_eq!(c.log_format, LogFormat::Json);

        let c = Config::load(&args(&[
            "--data-dir",
            d,
            "--log-format",
            "text",
            "--api-listen",
            "unix",
        ]))
        .unwrap();
        assert_eq!(c.log_format, LogFormat::Text);
        assert!(matches!(c.api_listen, Listen::Unix(_)));
    }

    #[test]
    fn unknown_keys_and_public_addresses_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap();
        std::fs::write(dir.path().join("config.toml"), "[api]\nlisen = \"unix\"\n").unwrap();
        let err = format!("{:#}", Config::load(&args(&["--data-dir", d])).unwrap_err());
        assert!(err.contains("lisen"), "{err}");
        std::fs::remove_file(dir.path().join("config.toml")).unwrap();
        let err =
            Config::load(&args(&["--data-dir", d, "--api-listen", "0.0.0.0:7000"])).unwrap_err();
        assert!(err.to_string().contains("not a loopback"), "{err}");
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("0").unwrap(), 0);
        assert_eq!(parse_rate("").unwrap(), 0);
        assert_eq!(parse_rate("100MiB").unwrap(), 100 << 20);
        assert_eq!(parse_rate("1.5GB/s").unwrap(), 1_500_000_000);
        assert_eq!(parse_rate("250 KiB/s").unwrap(), 250 << 10);
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("10Mbit").is_err());
    }

    #[test]
    fn net_settings_from_flags() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap();
        let key = modeld_core::SecretKey::from_seed([2; 32])
            .public()
            .to_string();
        let c = Config::load(&args(&[
            "--data-dir",
            d,
            "--listen",
            "127.0.0.1:0",
            "--peer",
            "127.0.0.1:9",
            "--allow-peer",
            &key,
            "--upload-rate",
            "10MiB",
            "--request-timeout",
            "2s",
            "--net-threads",
            "3",
        ]))
        .unwrap();
        assert_eq!(c.net.threads, 3);
        assert_eq!(c.net.listen, "127.0.0.1:0".parse().unwrap());
        assert_eq!(c.net.peers.len(), 1);
        assert_eq!(c.net.allow_peers.len(), 1);
        assert_eq!(c.net.upload_rate, 10 << 20);
        assert_eq!(c.net.request_timeout, Duration::from_secs(2));
        assert!(Config::load(&args(&["--data-dir", d, "--peer", "nowhere"])).is_err());
        let err = Config::load(&args(&["--data-dir", d, "--net-threads", "0"])).unwrap_err();
        assert!(err.to_string().contains("net.threads"), "{err}");
        let default = Config::load(&args(&["--data-dir", d])).unwrap();
        assert!(default.net.threads >= 1);
    }

    #[test]
    fn effective_config_round_trips_through_toml() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap();
        let c = Config::load(&args(&[
            "--data-dir",
            d,
            "--hash-threads",
            "3",
            "--download-rate",
            "5MB",
        ]))
        .unwrap();
        let text = c.to_toml();
        std::fs::write(dir.path().join("x.toml"), &text).unwrap();
        let x = dir.path().join("x.toml");
        let c2 = Config::load(&args(&["--data-dir", d, "--config", x.to_str().unwrap()])).unwrap();
        assert_eq!(c2.hash_threads, 3);
        assert_eq!(c2.api_listen, c.api_listen);
        assert_eq!(c2.net.download_rate, 5_000_000);
        assert_eq!(c2.net.request_timeout, c.net.request_timeout);
    }
}
