//! Configuration: defaults, then the TOML file, then flags (every key has a flag).
//!
//! The file is `--config FILE`, else `<data dir>/config.toml` if it exists. Unknown
//! keys are an error naming the key, so a typo never silently falls back to a default.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use anyhow::{Context, bail};
use clap::Parser;
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
        Ok(Self {
            api_listen: parse_listen(&listen, &data_dir)?,
            log_format: match format.as_str() {
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                other => bail!("log.format must be `text` or `json`, not {other:?}"),
            },
            hash_threads,
            data_dir,
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
        };
        format!(
            "# effective modeld configuration (data dir: {})\n{}",
            self.data_dir.display(),
            toml::to_string_pretty(&file).unwrap_or_default()
        )
    }
}

fn read_file(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("in config file {}", path.display()))
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
    fn effective_config_round_trips_through_toml() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap();
        let c = Config::load(&args(&["--data-dir", d, "--hash-threads", "3"])).unwrap();
        let text = c.to_toml();
        std::fs::write(dir.path().join("x.toml"), &text).unwrap();
        let x = dir.path().join("x.toml");
        let c2 = Config::load(&args(&["--data-dir", d, "--config", x.to_str().unwrap()])).unwrap();
        assert_eq!(c2.hash_threads, 3);
        assert_eq!(c2.api_listen, c.api_listen);
    }
}
