//! Where a node keeps its data, and the run-info file through which clients find it.
//!
//! The data dir is, in order: `--data-dir`, `$MODELD_DATA_DIR`, `$XDG_DATA_HOME/modeld`,
//! `$HOME/.local/share/modeld`. Inside it, a running daemon writes `daemon.json`
//! ([`RunInfo`]) once its API is listening, and removes it on a clean shutdown.

use std::{
    io,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

/// The environment variable that names the data dir.
pub const DATA_DIR_ENV: &str = "MODELD_DATA_DIR";
/// The run-info file name inside the data dir.
pub const RUN_INFO_FILE: &str = "daemon.json";
/// The default unix socket name inside the data dir.
pub const SOCKET_FILE: &str = "modeld.sock";
/// The config file name inside the data dir (read if present).
pub const CONFIG_FILE: &str = "config.toml";

/// The data dir to use, given an explicit choice (flag) if any.
pub fn data_dir(explicit: Option<&Path>) -> PathBuf {
    if let Some(p) = explicit {
        return p.to_owned();
    }
    if let Some(p) = std::env::var_os(DATA_DIR_ENV).filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    default_data_dir()
}

/// The default data dir: `$XDG_DATA_HOME/modeld` or `$HOME/.local/share/modeld`.
pub fn default_data_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|p| !p.is_empty()) {
        return PathBuf::from(x).join("modeld");
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".local/share/modeld")
}

/// How to reach a running daemon's API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApiAddr {
    /// A unix socket at this path.
    Unix(PathBuf),
    /// TCP on loopback; requests must carry the token from the run-info file.
    Tcp(std::net::SocketAddr),
}

impl std::fmt::Display for ApiAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unix(p) => write!(f, "unix:{}", p.display()),
            Self::Tcp(a) => write!(f, "tcp:{a}"),
        }
    }
}

/// What a running daemon publishes about itself in `<data dir>/daemon.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunInfo {
    /// The daemon's process id.
    pub pid: u32,
    /// Its version.
    pub version: String,
    /// Where its local API listens.
    pub api: ApiAddr,
    /// Secret required on a TCP API (the file is readable by its owner only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Other addresses the daemon bound (data plane, control plane), by name.
    #[serde(default)]
    pub listen: std::collections::BTreeMap<String, String>,
    /// The node id (public key) the daemon proves to peers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    /// Start time, Unix seconds.
    pub started: u64,
}

impl RunInfo {
    /// Reads the run-info file of `data_dir`.
    pub fn read(data_dir: &Path) -> io::Result<Self> {
        let text = std::fs::read(data_dir.join(RUN_INFO_FILE))?;
        serde_json::from_slice(&text).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_dir_wins() {
        assert_eq!(data_dir(Some(Path::new("/x"))), PathBuf::from("/x"));
    }

    #[test]
    fn run_info_round_trip() {
        let info = RunInfo {
            pid: 7,
            version: "0.1.0".into(),
            api: ApiAddr::Tcp("127.0.0.1:9".parse().unwrap()),
            token: Some("t".into()),
            listen: [("quic".to_owned(), "127.0.0.1:5".to_owned())].into(),
            node_id: None,
            started: 1,
        };
        let json = serde_json::to_string(&info).unwrap();
        assert_eq!(serde_json::from_str::<RunInfo>(&json).unwrap(), info);
    }
}
