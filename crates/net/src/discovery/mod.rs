//! The control plane: who is out there, who has what, and which manifest a name means.
//!
//! libp2p with the node key as identity, over TCP with noise and yamux:
//! - **Kademlia** (protocol `/modeld/kad/1.0.0`, every node in server mode): provider
//!   records for every blob and manifest a node holds, complete or partial; signed
//!   manifests as name records under `/modeld/name/<org/model>` (latest) and
//!   `/modeld/name/<org/model>:<version>`, validated on receipt;
//! - **mDNS** on the local network (off in tests and on loopback), feeding Kademlia;
//! - **identify**, which also carries each node's data-plane port;
//! - **ping**, whose round-trip times rank peers.
//!
//! The swarm runs in one task (an actor); [`Discovery`] is its cloneable handle. Every
//! queue is bounded and every query has a deadline.

mod actor;
mod behaviour;
pub mod records;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use libp2p::{Multiaddr, PeerId};
use modeld_core::{Hash, ModelName, PublicKey, Version};
use tokio::sync::{mpsc, oneshot};

use crate::{NetError, NodeKey};

/// How the control plane runs.
#[derive(Debug, Clone)]
pub struct DiscoveryConfig {
    /// TCP address for libp2p.
    pub listen: SocketAddr,
    /// Discover peers on the local network with mDNS (multicast).
    pub mdns: bool,
    /// Peers to join the DHT through: multiaddrs or `[NODE_ID@]IP:PORT`.
    pub bootstrap: Vec<String>,
    /// The data-plane (QUIC) port announced to peers.
    pub data_port: u16,
}

/// How a peer became known.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Source {
    /// Found on the local network.
    Mdns,
    /// Given as a bootstrap peer.
    Bootstrap,
    /// Learned from the DHT (routing table or provider records).
    Dht,
    /// It connected to us.
    Inbound,
}

impl Source {
    /// A short name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Mdns => "mdns",
            Self::Bootstrap => "bootstrap",
            Self::Dht => "dht",
            Self::Inbound => "inbound",
        }
    }
}

/// What this node knows about a peer.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    /// Its node id.
    pub id: PublicKey,
    /// Its control-plane addresses.
    pub addrs: Vec<String>,
    /// Its data-plane address, once known.
    pub data: Option<SocketAddr>,
    /// How it became known.
    pub sources: Vec<Source>,
    /// Whether a control-plane connection is open.
    pub connected: bool,
    /// Last measured round-trip time.
    pub rtt: Option<Duration>,
    /// On one of this host's subnets (the same /24, or the same IPv6 address).
    pub near: bool,
}

/// Decides whether a name record (key, signed manifest) is acceptable, returning its
/// sequence number. Called for every record stored or returned by the DHT.
pub type RecordCheck = Arc<dyn Fn(&[u8], &[u8]) -> Result<u64, String> + Send + Sync>;

enum Command {
    Peers(oneshot::Sender<Vec<PeerInfo>>),
    Provide(Vec<Hash>),
    Unprovide(Vec<Hash>),
    FindProviders(Hash, oneshot::Sender<Vec<PeerId>>),
    PutRecord(Vec<u8>, Vec<u8>),
    GetRecord(Vec<u8>, oneshot::Sender<Vec<Vec<u8>>>),
    Dial(Vec<PeerId>),
}

/// Handle to the control plane. Clones share it; it stops when the last one drops.
#[derive(Debug, Clone)]
pub struct Discovery {
    tx: mpsc::Sender<Command>,
    local: PublicKey,
    listen: Arc<std::sync::Mutex<Vec<Multiaddr>>>,
}

/// Checks the form of a bootstrap peer (`IP:PORT`, `NODE_ID@IP:PORT` or a multiaddr).
pub fn check_bootstrap(text: &str) -> Result<(), String> {
    actor::parse_bootstrap(text).map(|_| ())
}

/// How long a DHT query may take.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

impl Discovery {
    /// Starts the swarm: listens, joins the bootstrap peers, starts mDNS if asked.
    pub fn start(
        key: &NodeKey,
        config: DiscoveryConfig,
        check: RecordCheck,
    ) -> Result<Self, NetError> {
        let (tx, rx) = mpsc::channel(256);
        let listen = Arc::new(std::sync::Mutex::new(Vec::new()));
        actor::spawn(key, config, check, rx, listen.clone())?;
        Ok(Self {
            tx,
            local: key.id(),
            listen,
        })
    }

    /// This node's id.
    pub fn local_id(&self) -> PublicKey {
        self.local
    }

    /// The control-plane addresses this node listens on.
    pub fn listen_addrs(&self) -> Vec<String> {
        self.listen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Option<T> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(make(reply)).await.ok()?;
        tokio::time::timeout(QUERY_TIMEOUT + Duration::from_secs(1), rx)
            .await
            .ok()?
            .ok()
    }

    /// Every known peer, nearest first (same subnet, then round-trip time).
    pub async fn peers(&self) -> Vec<PeerInfo> {
        self.ask(Command::Peers).await.unwrap_or_default()
    }

    /// Announces that this node has `keys` (blobs or manifests).
    pub async fn provide(&self, keys: Vec<Hash>) {
        let _ = self.tx.send(Command::Provide(keys)).await;
    }

    /// Withdraws announcements (after GC removed the data).
    pub async fn unprovide(&self, keys: Vec<Hash>) {
        let _ = self.tx.send(Command::Unprovide(keys)).await;
    }

    /// Peers that announced `key`, found through the DHT (and locally known).
    pub async fn find_providers(&self, key: Hash) -> Vec<PublicKey> {
        let peers = self
            .ask(|r| Command::FindProviders(key, r))
            .await
            .unwrap_or_default();
        peers.iter().filter_map(records::key_of_peer).collect()
    }

    /// Makes sure there is a connection to each of `peers` (to learn their data-plane
    /// addresses).
    pub async fn dial(&self, peers: Vec<PublicKey>) {
        let ids = peers.iter().filter_map(records::peer_of_key).collect();
        let _ = self.tx.send(Command::Dial(ids)).await;
    }

    /// Publishes a signed manifest as the name record of its name and of its version.
    pub async fn publish_name(&self, envelope: &[u8]) -> Result<(), String> {
        let signed = modeld_core::SignedManifest::open(envelope).map_err(|e| e.to_string())?;
        let m = &signed.manifest;
        for key in [
            records::name_key(m.name(), None),
            records::name_key(m.name(), Some(m.version())),
        ] {
            let _ = self
                .tx
                .send(Command::PutRecord(key, envelope.to_vec()))
                .await;
        }
        Ok(())
    }

    /// The signed manifests the DHT holds for `name` (and `version`), as found; the
    /// caller validates them and picks the highest sequence.
    pub async fn resolve_name(&self, name: &ModelName, version: Option<&Version>) -> Vec<Vec<u8>> {
        let key = records::name_key(name, version);
        self.ask(|r| Command::GetRecord(key, r))
            .await
            .unwrap_or_default()
    }
}
