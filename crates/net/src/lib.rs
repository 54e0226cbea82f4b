//! modeld's network: a QUIC data plane of its own (quinn), serving verified ranges of
//! blobs to peers and fetching models from many peers at once.
//!
//! - [`identity`]: the node key and TLS 1.3 with raw public keys: every connection is
//!   authenticated by both ends' ed25519 node ids.
//! - [`endpoint`]: the QUIC endpoint, tuned for bulk transfer.
//! - [`serve`]: answers peers' requests from the store (validated encoding only), with
//!   per-peer throttling and an upload cap; `budget` orders the requests that wait
//!   for room to assemble their answers.
//! - [`client`]: one peer connection and its requests, every read bounded and timed.
//! - [`fetch`]: the fetch driver: runs `modeld_proto`'s scheduler over real peers and
//!   writes each verified piece into the store.
//! - [`watch`]: have-map subscriptions: a fetching node pushes what it newly verifies
//!   to the peers that asked what it has.
//!
//! The wire protocol is `modeld_proto::wire` (`docs/protocol.md`).

mod budget;
pub mod client;
pub mod discovery;
pub mod endpoint;
pub mod fetch;
pub mod identity;
pub mod rate;
pub mod serve;
pub mod watch;

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    str::FromStr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use modeld_core::{Hash, PublicKey};
use modeld_proto::holders::Holders;
use modeld_store::Store;

pub use crate::identity::{AllowList, NodeKey};
use crate::rate::RateLimiter;

/// Errors of setting up or running the network.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    /// Bad configuration or key material.
    #[error("{0}")]
    Config(String),
    /// A system call failed.
    #[error("{0}: {1}")]
    Io(String, #[source] std::io::Error),
}

/// Where a peer is: `IP:PORT`, optionally with the node id it must have
/// (`ed25519:<hex>@IP:PORT`). `localhost` stands for 127.0.0.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr {
    /// The node id the peer must prove, if known.
    pub id: Option<PublicKey>,
    /// Its data-plane address.
    pub addr: SocketAddr,
}

impl FromStr for PeerAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (id, addr) = match s.rsplit_once('@') {
            Some((id, addr)) => (
                Some(id.parse::<PublicKey>().map_err(|e| e.to_string())?),
                addr,
            ),
            None => (None, s),
        };
        let addr = match addr.strip_prefix("localhost:") {
            Some(port) => SocketAddr::new(
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                port.parse().map_err(|_| format!("bad port in {s:?}"))?,
            ),
            None => addr.parse().map_err(|_| {
                format!("{s:?} is not a peer address: expected IP:PORT or ed25519:<hex>@IP:PORT")
            })?,
        };
        Ok(Self { id, addr })
    }
}

impl fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.id {
            Some(id) => write!(f, "{id}@{}", self.addr),
            None => write!(f, "{}", self.addr),
        }
    }
}

/// Settings of the data plane.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// UDP address to bind.
    pub listen: SocketAddr,
    /// Who may connect.
    pub allow: AllowList,
    /// Upload cap in bytes per second (0: none).
    pub upload_rate: u64,
    /// Download cap in bytes per second (0: none).
    pub download_rate: u64,
    /// Base timeout of a request (a stalled peer is given up after this plus the
    /// transfer time at the slowest tolerated rate).
    pub request_timeout: Duration,
    /// Timeout of a connection handshake.
    pub connect_timeout: Duration,
}

impl Default for NetConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 4810),
            allow: AllowList::anyone(),
            upload_rate: 0,
            download_rate: 0,
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// Monotonic counters of the data plane.
#[derive(Debug, Default)]
pub struct Counters {
    /// Blob data bytes sent to peers.
    pub bytes_served: AtomicU64,
    /// Requests answered.
    pub requests_served: AtomicU64,
    /// Requests refused as too frequent or too large.
    pub requests_throttled: AtomicU64,
    /// New verified bytes written by fetches.
    pub bytes_fetched: AtomicU64,
    /// Verified bytes received that were already present (endgame duplicates and
    /// re-downloads).
    pub bytes_duplicate: AtomicU64,
    /// Bytes that were present when fetches started (resumed, not downloaded).
    pub bytes_resumed: AtomicU64,
    /// Peers banned for bad data.
    pub peers_banned: AtomicU64,
    /// Blob requests the asker withdrew while they waited for the answer budget (a
    /// fetch that found a quicker peer for the piece); nothing was read or sent.
    pub requests_withdrawn: AtomicU64,
    /// Blob requests this complete node pointed elsewhere (`Status::Elsewhere`):
    /// enough of its other peers said they hold the ranges.
    pub requests_elsewhere: AtomicU64,
    /// Holder notices received from fetching peers.
    pub notices_received: AtomicU64,
    /// News this fetching node pushed to peers watching it (`watch`).
    pub notices_pushed: AtomicU64,
    /// News pushed to this node's fetches by the peers they watch.
    pub notices_heard: AtomicU64,
}

impl Counters {
    /// Name and value of every counter.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        [
            ("bytes_served", &self.bytes_served),
            ("requests_served", &self.requests_served),
            ("requests_throttled", &self.requests_throttled),
            ("bytes_fetched", &self.bytes_fetched),
            ("bytes_duplicate", &self.bytes_duplicate),
            ("bytes_resumed", &self.bytes_resumed),
            ("peers_banned", &self.peers_banned),
            ("requests_withdrawn", &self.requests_withdrawn),
            ("requests_elsewhere", &self.requests_elsewhere),
            ("notices_received", &self.notices_received),
            ("notices_pushed", &self.notices_pushed),
            ("notices_heard", &self.notices_heard),
        ]
        .into_iter()
        .map(|(k, v)| (k, v.load(Ordering::Relaxed)))
        .collect()
    }
}

/// A running data plane: the endpoint, the serving task, and what fetches need.
#[derive(Debug, Clone)]
pub struct Net {
    inner: Arc<NetInner>,
}

#[derive(Debug)]
struct NetInner {
    endpoint: quinn::Endpoint,
    key: NodeKey,
    config: NetConfig,
    store: Store,
    counters: Counters,
    upload: RateLimiter,
    download: RateLimiter,
    /// What connected peers say they hold (see `modeld_proto::holders`).
    holders: Mutex<Holders<PublicKey, Hash>>,
    /// Who watches the blobs this node is fetching (see [`watch`]).
    watchers: Mutex<watch::Watchers>,
    /// The origin of the times `holders` is given.
    started: Instant,
}

impl Net {
    /// Binds the endpoint and starts serving `store` to peers.
    pub fn start(store: Store, key: NodeKey, config: NetConfig) -> Result<Self, NetError> {
        let endpoint = endpoint::bind(&key, config.listen, config.allow.clone())?;
        let net = Self {
            inner: Arc::new(NetInner {
                endpoint,
                upload: RateLimiter::new(config.upload_rate),
                download: RateLimiter::new(config.download_rate),
                key,
                config,
                store,
                counters: Counters::default(),
                holders: Mutex::new(Holders::default()),
                watchers: Mutex::new(watch::Watchers::default()),
                started: Instant::now(),
            }),
        };
        tokio::spawn(serve::accept_loop(net.clone()));
        Ok(net)
    }

    /// This node's id.
    pub fn node_id(&self) -> PublicKey {
        self.inner.key.id()
    }

    /// The bound data-plane address.
    pub fn local_addr(&self) -> Result<SocketAddr, NetError> {
        self.inner
            .endpoint
            .local_addr()
            .map_err(|e| NetError::Io("reading the data-plane address".into(), e))
    }

    /// The counters.
    pub fn counters(&self) -> &Counters {
        &self.inner.counters
    }

    /// The settings.
    pub fn config(&self) -> &NetConfig {
        &self.inner.config
    }

    /// Stops accepting and closes every connection.
    pub async fn shutdown(&self) {
        self.inner
            .endpoint
            .close(quinn::VarInt::from_u32(0), b"shutting down");
        let _ = tokio::time::timeout(Duration::from_secs(2), self.inner.endpoint.wait_idle()).await;
    }
}

/// Locks `m`, going on past a panic elsewhere (every table it guards stays valid
/// between statements).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_addresses() {
        let a: PeerAddr = "127.0.0.1:4810".parse().unwrap();
        assert_eq!(a.id, None);
        let key = modeld_core::SecretKey::from_seed([1; 32]).public();
        let b: PeerAddr = format!("{key}@[::1]:9").parse().unwrap();
        assert_eq!(b.id, Some(key));
        assert_eq!(b.addr.port(), 9);
        assert_eq!(b.to_string().parse::<PeerAddr>().unwrap(), b);
        let c: PeerAddr = "localhost:5".parse().unwrap();
        assert_eq!(c.addr, "127.0.0.1:5".parse().unwrap());
        assert!("example.com:5".parse::<PeerAddr>().is_err());
        assert!("ed25519:zz@127.0.0.1:5".parse::<PeerAddr>().is_err());
    }
}
