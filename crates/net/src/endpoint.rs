//! The QUIC endpoint of the data plane: one UDP socket that serves and connects.
//!
//! Transport settings are tuned for bulk transfer between a few peers: large stream
//! and connection windows (so one connection can fill a fast link), BBR congestion
//! control, path MTU discovery up to jumbo frames. See `docs/benchmarks.md` for what
//! these settings measured against a plain HTTP transfer.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use quinn::{
    MtuDiscoveryConfig, TransportConfig, VarInt,
    crypto::rustls::{QuicClientConfig, QuicServerConfig},
};

use crate::{
    NetError,
    identity::{AllowList, NodeKey, client_tls, server_tls},
};

/// Concurrent requests one peer may have open on a connection.
pub const MAX_STREAMS_PER_PEER: u32 = 64;
/// Receive window of one stream (one request's answer).
const STREAM_WINDOW: u32 = 16 << 20;
/// Receive window of a connection (all answers in flight from one peer).
const CONNECTION_WINDOW: u32 = 32 << 20;

fn transport() -> TransportConfig {
    let mut t = TransportConfig::default();
    t.max_concurrent_bidi_streams(VarInt::from_u32(MAX_STREAMS_PER_PEER));
    t.max_concurrent_uni_streams(VarInt::from_u32(0));
    t.stream_receive_window(VarInt::from_u32(STREAM_WINDOW));
    t.receive_window(VarInt::from_u32(CONNECTION_WINDOW));
    t.send_window(u64::from(CONNECTION_WINDOW));
    t.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(Duration::from_secs(30)).expect("30 s fits"),
    ));
    t.keep_alive_interval(Some(Duration::from_secs(5)));
    t.congestion_controller_factory(Arc::new(quinn::congestion::BbrConfig::default()));
    let mut mtu = MtuDiscoveryConfig::default();
    mtu.upper_bound(9000);
    t.mtu_discovery_config(Some(mtu));
    t
}

/// Binds the data-plane endpoint on `listen`, serving peers on `allow`.
pub fn bind(
    key: &NodeKey,
    listen: SocketAddr,
    allow: AllowList,
) -> Result<quinn::Endpoint, NetError> {
    let transport = Arc::new(transport());
    let server_crypto = QuicServerConfig::try_from(server_tls(key, allow)?)
        .map_err(|e| NetError::Config(e.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
    server.transport_config(transport.clone());
    let client_crypto = QuicClientConfig::try_from(client_tls(key)?)
        .map_err(|e| NetError::Config(e.to_string()))?;
    let mut client = quinn::ClientConfig::new(Arc::new(client_crypto));
    client.transport_config(transport);
    let mut endpoint = quinn::Endpoint::server(server, listen)
        .map_err(|e| NetError::Io(format!("binding the data plane on {listen}"), e))?;
    endpoint.set_default_client_config(client);
    Ok(endpoint)
}
