//! The libp2p behaviours of the control plane and their settings.

use std::{num::NonZeroUsize, time::Duration};

use libp2p::{
    StreamProtocol, identify, identity, kad, mdns, ping,
    swarm::{NetworkBehaviour, behaviour::toggle::Toggle},
};

/// The Kademlia protocol name: a private DHT of modeld nodes only.
pub(crate) const KAD_PROTOCOL: &str = "/modeld/kad/1.0.0";
/// The identify protocol version.
pub(crate) const IDENTIFY_PROTOCOL: &str = "/modeld/id/1.0.0";
/// Largest name record (a signed manifest) kept or sent through the DHT.
pub(crate) const MAX_RECORD_BYTES: usize = 1 << 20;

#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour {
    pub(crate) kad: kad::Behaviour<kad::store::MemoryStore>,
    pub(crate) mdns: Toggle<mdns::tokio::Behaviour>,
    pub(crate) identify: identify::Behaviour,
    pub(crate) ping: ping::Behaviour,
}

/// The agent string carries the data-plane port: `modeld/<version> data-port=<port>`.
pub(crate) fn agent(data_port: u16) -> String {
    format!("modeld/{} data-port={data_port}", env!("CARGO_PKG_VERSION"))
}

/// The data-plane port in a peer's agent string.
pub(crate) fn data_port_of(agent: &str) -> Option<u16> {
    agent
        .split_whitespace()
        .find_map(|t| t.strip_prefix("data-port="))
        .and_then(|p| p.parse().ok())
}

pub(crate) fn build(
    key: &identity::Keypair,
    mdns_on: bool,
    data_port: u16,
) -> Result<Behaviour, Box<dyn std::error::Error + Send + Sync>> {
    let peer_id = key.public().to_peer_id();
    let mut cfg = kad::Config::new(StreamProtocol::new(KAD_PROTOCOL));
    cfg.set_record_filtering(kad::StoreInserts::FilterBoth)
        .set_max_packet_size(MAX_RECORD_BYTES + (64 << 10))
        .set_query_timeout(super::QUERY_TIMEOUT)
        .set_provider_publication_interval(Some(Duration::from_secs(10 * 60)))
        .set_provider_record_ttl(Some(Duration::from_secs(30 * 60)))
        .set_publication_interval(Some(Duration::from_secs(10 * 60)))
        .set_record_ttl(Some(Duration::from_secs(24 * 3600)))
        .set_replication_factor(NonZeroUsize::new(8).expect("non-zero"));
    // Thousands of models, each with a manifest and a few dozen blobs.
    let store = kad::store::MemoryStore::with_config(
        peer_id,
        kad::store::MemoryStoreConfig {
            max_records: 1 << 16,
            max_value_bytes: MAX_RECORD_BYTES,
            max_providers_per_key: 64,
            max_provided_keys: 1 << 20,
        },
    );
    let mut kad = kad::Behaviour::with_config(peer_id, store, cfg);
    kad.set_mode(Some(kad::Mode::Server));
    let mdns = if mdns_on {
        Some(mdns::tokio::Behaviour::new(
            mdns::Config::default(),
            peer_id,
        )?)
    } else {
        None
    };
    let identify = identify::Behaviour::new(
        identify::Config::new(IDENTIFY_PROTOCOL.into(), key.public())
            .with_agent_version(agent(data_port))
            .with_push_listen_addr_updates(true),
    );
    let ping = ping::Behaviour::new(ping::Config::new().with_interval(Duration::from_secs(5)));
    Ok(Behaviour {
        kad,
        mdns: mdns.into(),
        identify,
        ping,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_carries_the_data_port() {
        assert_eq!(data_port_of(&agent(4810)), Some(4810));
        assert_eq!(data_port_of("rust-libp2p/0.1"), None);
    }
}
