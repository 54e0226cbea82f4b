//! The task that owns the libp2p swarm: handles commands from [`super::Discovery`]
//! handles and swarm events, one at a time.

use std::{
    collections::{BTreeSet, HashMap},
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use libp2p::kad::store::RecordStore;
use libp2p::{
    Multiaddr, PeerId, Swarm, SwarmBuilder, futures::StreamExt, identify, identity, kad, mdns,
    multiaddr::Protocol, noise, ping, swarm::SwarmEvent, tcp, yamux,
};
use tokio::sync::{mpsc, oneshot};

use super::{
    Command, DiscoveryConfig, PeerInfo, RecordCheck, Source,
    behaviour::{self, Behaviour, BehaviourEvent},
    records,
};
use crate::{NetError, NodeKey};

/// Providers after which a provider query stops early.
const ENOUGH_PROVIDERS: usize = 32;

#[derive(Debug, Default)]
struct PeerEntry {
    addrs: BTreeSet<Multiaddr>,
    data_port: Option<u16>,
    remote_ip: Option<IpAddr>,
    sources: BTreeSet<Source>,
    connections: usize,
    rtt: Option<Duration>,
}

struct PendingProviders {
    found: BTreeSet<PeerId>,
    reply: oneshot::Sender<Vec<PeerId>>,
    deadline: Instant,
}

struct PendingRecord {
    key: Vec<u8>,
    found: Vec<Vec<u8>>,
    reply: oneshot::Sender<Vec<Vec<u8>>>,
    deadline: Instant,
}

struct State {
    swarm: Swarm<Behaviour>,
    check: RecordCheck,
    peers: HashMap<PeerId, PeerEntry>,
    providers: HashMap<kad::QueryId, PendingProviders>,
    records: HashMap<kad::QueryId, PendingRecord>,
    listen: Arc<Mutex<Vec<Multiaddr>>>,
}

fn to_multiaddr(addr: SocketAddr) -> Multiaddr {
    let ip = match addr.ip() {
        IpAddr::V4(v4) => Protocol::Ip4(v4),
        IpAddr::V6(v6) => Protocol::Ip6(v6),
    };
    Multiaddr::empty().with(ip).with(Protocol::Tcp(addr.port()))
}

/// Parses a bootstrap peer: a multiaddr, or `[ed25519:<hex>@]IP:PORT`.
pub(crate) fn parse_bootstrap(text: &str) -> Result<(Option<PeerId>, Multiaddr), String> {
    if text.starts_with('/') {
        let addr: Multiaddr = text.parse().map_err(|e| format!("{text:?}: {e}"))?;
        let peer = addr.iter().find_map(|p| match p {
            Protocol::P2p(id) => Some(id),
            _ => None,
        });
        return Ok((peer, addr));
    }
    let (id, addr) = match text.rsplit_once('@') {
        Some((id, addr)) => {
            let key: modeld_core::PublicKey = id.parse().map_err(|e| format!("{text:?}: {e}"))?;
            (records::peer_of_key(&key), addr)
        }
        None => (None, text),
    };
    let addr: SocketAddr = addr.parse().map_err(|_| {
        format!(
            "{text:?} is not a bootstrap peer: expected IP:PORT, NODE_ID@IP:PORT or a multiaddr"
        )
    })?;
    Ok((id, to_multiaddr(addr)))
}

fn ip_of(addr: &Multiaddr) -> Option<IpAddr> {
    addr.iter().find_map(|p| match p {
        Protocol::Ip4(v4) => Some(IpAddr::V4(v4)),
        Protocol::Ip6(v6) => Some(IpAddr::V6(v6)),
        _ => None,
    })
}

pub(super) fn spawn(
    key: &NodeKey,
    config: DiscoveryConfig,
    check: RecordCheck,
    commands: mpsc::Receiver<Command>,
    listen: Arc<Mutex<Vec<Multiaddr>>>,
) -> Result<(), NetError> {
    let err = |e: &dyn std::fmt::Display| NetError::Config(format!("control plane: {e}"));
    let mut seed = key.secret().to_seed();
    let keypair = identity::Keypair::ed25519_from_bytes(&mut seed).map_err(|e| err(&e))?;
    let (mdns_on, data_port) = (config.mdns, config.data_port);
    let mut swarm = SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| err(&e))?
        .with_behaviour(|key| behaviour::build(key, mdns_on, data_port))
        .map_err(|e| err(&e))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(120)))
        .build();
    swarm
        .listen_on(to_multiaddr(config.listen))
        .map_err(|e| err(&e))?;
    let mut state = State {
        swarm,
        check,
        peers: HashMap::new(),
        providers: HashMap::new(),
        records: HashMap::new(),
        listen,
    };
    for b in &config.bootstrap {
        let (peer, addr) =
            parse_bootstrap(b).map_err(|e| NetError::Config(format!("bootstrap peer {e}")))?;
        if let Some(peer) = peer {
            state
                .swarm
                .behaviour_mut()
                .kad
                .add_address(&peer, addr.clone());
            state.entry(peer).sources.insert(Source::Bootstrap);
        }
        if let Err(e) = state.swarm.dial(addr.clone()) {
            tracing::warn!(%addr, error = %e, "cannot dial bootstrap peer");
        }
    }
    tokio::spawn(run(state, commands));
    Ok(())
}

async fn run(mut state: State, mut commands: mpsc::Receiver<Command>) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut bootstrapped = false;
    loop {
        tokio::select! {
            command = commands.recv() => match command {
                Some(c) => state.command(c),
                None => break,
            },
            event = state.swarm.select_next_some() => state.event(event),
            _ = tick.tick() => {
                state.expire();
                if !bootstrapped && state.peers.values().any(|p| p.connections > 0) {
                    bootstrapped = true;
                    let _ = state.swarm.behaviour_mut().kad.bootstrap();
                }
            }
        }
    }
    tracing::debug!("control plane stopped");
}

impl State {
    fn entry(&mut self, peer: PeerId) -> &mut PeerEntry {
        self.peers.entry(peer).or_default()
    }

    fn local_ips(&self) -> Vec<IpAddr> {
        self.listen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter_map(ip_of)
            .collect()
    }

    fn command(&mut self, command: Command) {
        match command {
            Command::Peers(reply) => {
                let _ = reply.send(self.peer_list());
            }
            Command::Provide(keys) => {
                for k in keys {
                    if let Err(e) = self
                        .swarm
                        .behaviour_mut()
                        .kad
                        .start_providing(records::provider_key(&k).into())
                    {
                        tracing::warn!(key = %k, error = ?e, "cannot announce");
                    }
                }
            }
            Command::Unprovide(keys) => {
                for k in keys {
                    self.swarm
                        .behaviour_mut()
                        .kad
                        .stop_providing(&records::provider_key(&k).into());
                }
            }
            Command::FindProviders(hash, reply) => {
                let key: kad::RecordKey = records::provider_key(&hash).into();
                let local = self.swarm.local_peer_id().to_owned();
                let found = self
                    .swarm
                    .behaviour_mut()
                    .kad
                    .store_mut()
                    .providers(&key)
                    .into_iter()
                    .map(|p| p.provider)
                    .filter(|p| *p != local)
                    .collect();
                let id = self.swarm.behaviour_mut().kad.get_providers(key);
                self.providers.insert(
                    id,
                    PendingProviders {
                        found,
                        reply,
                        deadline: Instant::now() + super::QUERY_TIMEOUT,
                    },
                );
            }
            Command::PutRecord(key, value) => {
                let record = kad::Record::new(key, value);
                if let Err(e) = self
                    .swarm
                    .behaviour_mut()
                    .kad
                    .put_record(record, kad::Quorum::One)
                {
                    tracing::warn!(error = ?e, "cannot publish name record");
                }
            }
            Command::GetRecord(key, reply) => {
                let id = self
                    .swarm
                    .behaviour_mut()
                    .kad
                    .get_record(key.clone().into());
                self.records.insert(
                    id,
                    PendingRecord {
                        key,
                        found: Vec::new(),
                        reply,
                        deadline: Instant::now() + super::QUERY_TIMEOUT,
                    },
                );
            }
            Command::Dial(peers) => {
                for p in peers {
                    if self.peers.get(&p).is_none_or(|e| e.connections == 0) {
                        let _ = self.swarm.dial(p);
                    }
                }
            }
        }
    }

    fn peer_list(&self) -> Vec<PeerInfo> {
        let local = self.local_ips();
        let near = |ip: Option<IpAddr>| match ip {
            Some(IpAddr::V4(a)) => local.iter().any(|l| match l {
                IpAddr::V4(b) => a.octets()[..3] == b.octets()[..3],
                IpAddr::V6(_) => false,
            }),
            Some(ip) => local.contains(&ip),
            None => false,
        };
        let mut list: Vec<PeerInfo> = self
            .peers
            .iter()
            .filter_map(|(peer, e)| {
                let id = records::key_of_peer(peer)?;
                let ip = e.remote_ip.or_else(|| e.addrs.iter().find_map(ip_of));
                let data = match (ip, e.data_port) {
                    (Some(ip), Some(port)) => Some(SocketAddr::new(ip, port)),
                    _ => None,
                };
                Some(PeerInfo {
                    id,
                    addrs: e.addrs.iter().map(ToString::to_string).collect(),
                    data,
                    sources: e.sources.iter().copied().collect(),
                    connected: e.connections > 0,
                    rtt: e.rtt,
                    near: near(ip),
                })
            })
            .collect();
        list.sort_by_key(|p| (!p.near, p.rtt.unwrap_or(Duration::MAX), p.id));
        list
    }

    /// Answers queries that ran past their deadline with what they found.
    fn expire(&mut self) {
        let now = Instant::now();
        let late: Vec<_> = self
            .providers
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in late {
            self.finish_providers(id);
        }
        let late: Vec<_> = self
            .records
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in late {
            self.finish_record(id);
        }
    }

    fn finish_providers(&mut self, id: kad::QueryId) {
        if let Some(mut q) = self.swarm.behaviour_mut().kad.query_mut(&id) {
            q.finish();
        }
        if let Some(p) = self.providers.remove(&id) {
            let _ = p.reply.send(p.found.into_iter().collect());
        }
    }

    fn finish_record(&mut self, id: kad::QueryId) {
        if let Some(mut q) = self.swarm.behaviour_mut().kad.query_mut(&id) {
            q.finish();
        }
        if let Some(mut p) = self.records.remove(&id) {
            let key: kad::RecordKey = p.key.clone().into();
            if let Some(local) = self.swarm.behaviour_mut().kad.store_mut().get(&key)
                && (self.check)(&p.key, &local.value).is_ok()
            {
                p.found.push(local.value.clone());
            }
            let _ = p.reply.send(p.found);
        }
    }

    fn event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(%address, "control plane listening");
                self.listen
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(address);
            }
            SwarmEvent::ConnectionEstablished {
                peer_id, endpoint, ..
            } => {
                let inbound = endpoint.is_listener();
                let remote = ip_of(endpoint.get_remote_address());
                let e = self.entry(peer_id);
                e.connections += 1;
                if e.remote_ip.is_none() {
                    e.remote_ip = remote;
                }
                if inbound {
                    e.sources.insert(Source::Inbound);
                }
            }
            SwarmEvent::ConnectionClosed { peer_id, .. } => {
                let e = self.entry(peer_id);
                e.connections = e.connections.saturating_sub(1);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(found))) => {
                for (peer, addr) in found {
                    if peer == *self.swarm.local_peer_id() {
                        continue;
                    }
                    self.swarm
                        .behaviour_mut()
                        .kad
                        .add_address(&peer, addr.clone());
                    let e = self.entry(peer);
                    e.sources.insert(Source::Mdns);
                    e.addrs.insert(addr);
                    if e.connections == 0 {
                        let _ = self.swarm.dial(peer);
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Expired(gone))) => {
                for (peer, addr) in gone {
                    self.entry(peer).addrs.remove(&addr);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => {
                let port = behaviour::data_port_of(&info.agent_version);
                for addr in &info.listen_addrs {
                    if addr.iter().any(|p| matches!(p, Protocol::Tcp(_))) {
                        self.swarm
                            .behaviour_mut()
                            .kad
                            .add_address(&peer_id, addr.clone());
                    }
                }
                let e = self.entry(peer_id);
                e.data_port = port.or(e.data_port);
                e.addrs.extend(info.listen_addrs);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event {
                peer,
                result: Ok(rtt),
                ..
            })) => {
                self.entry(peer).rtt = Some(rtt);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kad(event)) => self.kad_event(event),
            _ => {}
        }
    }

    fn kad_event(&mut self, event: kad::Event) {
        match event {
            kad::Event::RoutingUpdated {
                peer, addresses, ..
            } => {
                let e = self.entry(peer);
                e.sources.insert(Source::Dht);
                e.addrs.extend(addresses.iter().cloned());
            }
            kad::Event::InboundRequest { request } => match request {
                kad::InboundRequest::PutRecord {
                    source,
                    record: Some(record),
                    ..
                } => self.inbound_record(source, record),
                kad::InboundRequest::AddProvider {
                    record: Some(record),
                } => {
                    // Provider records are hints; the data they point to is verified.
                    let _ = self
                        .swarm
                        .behaviour_mut()
                        .kad
                        .store_mut()
                        .add_provider(record);
                }
                _ => {}
            },
            kad::Event::OutboundQueryProgressed {
                id, result, step, ..
            } => match result {
                kad::QueryResult::GetProviders(Ok(kad::GetProvidersOk::FoundProviders {
                    providers,
                    ..
                })) => {
                    let local = *self.swarm.local_peer_id();
                    let mut enough = false;
                    if let Some(p) = self.providers.get_mut(&id) {
                        p.found
                            .extend(providers.into_iter().filter(|p| *p != local));
                        enough = p.found.len() >= ENOUGH_PROVIDERS;
                    }
                    if enough || step.last {
                        self.finish_providers(id);
                    }
                }
                kad::QueryResult::GetProviders(_) => self.finish_providers(id),
                kad::QueryResult::GetRecord(Ok(kad::GetRecordOk::FoundRecord(found))) => {
                    let ok = self.records.get(&id).is_some_and(|p| {
                        match (self.check)(&p.key, &found.record.value) {
                            Ok(_) => true,
                            Err(e) => {
                                tracing::warn!(peer = ?found.peer, error = %e, "ignoring a name record from the DHT");
                                false
                            }
                        }
                    });
                    if ok && let Some(p) = self.records.get_mut(&id) {
                        p.found.push(found.record.value);
                    }
                    if step.last {
                        self.finish_record(id);
                    }
                }
                kad::QueryResult::GetRecord(_) => self.finish_record(id),
                _ => {}
            },
            _ => {}
        }
    }

    /// A peer asks us to store a name record: only valid records that do not roll the
    /// name back are kept.
    fn inbound_record(&mut self, source: PeerId, record: kad::Record) {
        let sequence = match (self.check)(record.key.as_ref(), &record.value) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(peer = %source, error = %e, "ignoring a name record");
                return;
            }
        };
        let store = self.swarm.behaviour_mut().kad.store_mut();
        if let Some(existing) = store.get(&record.key)
            && let Ok(current) = (self.check)(existing.key.as_ref(), &existing.value)
            && sequence < current
        {
            tracing::warn!(
                peer = %source,
                sequence,
                current,
                "ignoring a name record that rolls back to an older sequence"
            );
            return;
        }
        if let Err(e) = store.put(record) {
            tracing::warn!(peer = %source, error = ?e, "cannot keep a name record");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_forms() {
        let (peer, addr) = parse_bootstrap("10.0.0.1:4811").unwrap();
        assert!(peer.is_none());
        assert_eq!(addr.to_string(), "/ip4/10.0.0.1/tcp/4811");
        let key = modeld_core::SecretKey::from_seed([1; 32]).public();
        let (peer, _) = parse_bootstrap(&format!("{key}@127.0.0.1:9")).unwrap();
        assert_eq!(peer, records::peer_of_key(&key));
        assert!(parse_bootstrap("/ip4/1.2.3.4/tcp/1").is_ok());
        assert!(parse_bootstrap("nowhere").is_err());
    }
}
