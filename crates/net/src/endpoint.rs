//! The QUIC endpoint of the data plane: one UDP socket that serves and connects.
//!
//! Transport settings are tuned for bulk transfer between a few peers: stream and
//! connection windows sized for fast links without overflowing socket buffers, CUBIC
//! congestion control, large socket buffers. See `docs/benchmarks.md` for what each
//! setting measured against a plain HTTP transfer and in the lab's burst.
//!
//! Why CUBIC and not quinn's BBR: in the lab's burst (`docs/benchmarks.md`), where
//! every host sends to and receives from six others at once over shaped links, BBR's
//! connections settled at very unequal rates, and a host whose download link was full
//! saw its own uploads (their acknowledgements queued behind that download) stuck near
//! the minimum window for the whole run, its link idle. With CUBIC every connection
//! got its fair share, the links ran full, and the burst took 1.15x F/U at 100 Mbit/s
//! instead of 1.35x. On loopback the two are level.

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
/// Concurrent pushed notices one peer may have open towards this node, on a
/// connection this node opened (`watch`).
pub const MAX_PUSHES_PER_PEER: u32 = 16;
/// Largest UDP payload this endpoint accepts (so a peer may use jumbo frames).
const MAX_UDP_PAYLOAD: u16 = 9000;
/// How far path MTU discovery searches. Measured on loopback (`docs/benchmarks.md`):
/// larger datagrams were lost under load, and each loss burst sends quinn's black-hole
/// detector back to 1200 bytes for a minute, so searching higher bought nothing.
const MTU_UPPER_BOUND: u16 = 1452;
/// Kernel socket buffers, so bursts at high rates are not dropped.
const SOCKET_BUFFER: usize = 8 << 20;
/// Receive window of one stream (one request's answer, at most 16 MiB of data).
const STREAM_WINDOW: u32 = 4 << 20;
/// Receive window of a connection (all answers in flight from one peer): enough for
/// 1 Gbit/s at 60 ms, small enough that bursts do not overflow socket buffers.
const CONNECTION_WINDOW: u32 = 8 << 20;

fn transport() -> TransportConfig {
    let mut t = TransportConfig::default();
    t.max_concurrent_bidi_streams(VarInt::from_u32(MAX_STREAMS_PER_PEER));
    t.max_concurrent_uni_streams(VarInt::from_u32(MAX_PUSHES_PER_PEER));
    t.stream_receive_window(VarInt::from_u32(STREAM_WINDOW));
    t.receive_window(VarInt::from_u32(CONNECTION_WINDOW));
    t.send_window(u64::from(CONNECTION_WINDOW));
    t.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(Duration::from_secs(30)).expect("30 s fits"),
    ));
    t.keep_alive_interval(Some(Duration::from_secs(5)));
    // Not BBR: see the module documentation.
    t.congestion_controller_factory(Arc::new(quinn::congestion::CubicConfig::default()));
    let mut mtu = MtuDiscoveryConfig::default();
    mtu.upper_bound(MTU_UPPER_BOUND);
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
    let socket = udp_socket(listen)
        .map_err(|e| NetError::Io(format!("binding the data plane on {listen}"), e))?;
    let mut endpoint_config = quinn::EndpointConfig::default();
    endpoint_config
        .max_udp_payload_size(MAX_UDP_PAYLOAD)
        .map_err(|e| NetError::Config(e.to_string()))?;
    let mut endpoint = quinn::Endpoint::new(
        endpoint_config,
        Some(server),
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(|e| NetError::Io(format!("starting the data plane on {listen}"), e))?;
    endpoint.set_default_client_config(client);
    Ok(endpoint)
}

/// A UDP socket on `addr` with large kernel buffers.
fn udp_socket(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let socket = std::net::UdpSocket::bind(addr)?;
    let sock = socket2::SockRef::from(&socket);
    // Best effort: the kernel caps these at net.core.{r,w}mem_max.
    let _ = sock.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = sock.set_send_buffer_size(SOCKET_BUFFER);
    Ok(socket)
}
