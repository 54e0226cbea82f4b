//! Start-up and shutdown order of the daemon.

use std::{
    fs,
    io::Write,
    os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt},
    path::Path,
    sync::Arc,
    time::Instant,
};

use anyhow::Context;
use modeld_api::paths::{ApiAddr, RUN_INFO_FILE, RunInfo};
use modeld_net::{
    AllowList, Net, NetConfig, NodeKey,
    discovery::{Discovery, DiscoveryConfig},
};
use modeld_store::{Store, StoreOptions, unix_now};
use tokio::{
    net::{TcpListener, UnixListener},
    signal::unix::{SignalKind, signal},
    sync::watch,
};

use crate::{
    announce,
    config::{Config, Listen},
    lock::DataDirLock,
    node::{Counters, Node},
    server,
};

/// Runs the daemon until SIGINT or SIGTERM.
pub(crate) async fn run(config: Config) -> anyhow::Result<()> {
    let data_dir = config.data_dir.clone();
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&data_dir)
        .with_context(|| format!("creating data dir {}", data_dir.display()))?;
    let _lock = DataDirLock::acquire(&data_dir)?;
    let store = Store::open(
        &data_dir.join("store"),
        StoreOptions {
            hash_threads: config.hash_threads,
        },
    )
    .with_context(|| format!("opening the store in {}", data_dir.display()))?;
    let key = NodeKey::load_or_create(&data_dir.join("node.key"))?;
    let net = Net::start(
        store.clone(),
        key.clone(),
        NetConfig {
            listen: config.net.listen,
            allow: if config.net.allow_peers.is_empty() {
                AllowList::anyone()
            } else {
                AllowList::only(config.net.allow_peers.clone())
            },
            upload_rate: config.net.upload_rate,
            download_rate: config.net.download_rate,
            request_timeout: config.net.request_timeout,
            ..NetConfig::default()
        },
    )?;
    let quic = net.local_addr()?;
    tracing::info!(node_id = %net.node_id(), quic = %quic, "data plane listening");
    let discovery = Discovery::start(
        &key,
        DiscoveryConfig {
            listen: config.net.p2p_listen,
            mdns: config.net.mdns,
            bootstrap: config.net.bootstrap.clone(),
            data_port: quic.port(),
        },
        announce::record_check(store.clone()),
    )?;
    let node = Arc::new(Node {
        store,
        net: net.clone(),
        discovery: discovery.clone(),
        config: config.clone(),
        started: Instant::now(),
        counters: Counters::default(),
    });

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;

    let (api, token, server) = match &config.api_listen {
        Listen::Unix(path) => {
            // The lock is ours, so a socket file left here is stale.
            let _ = fs::remove_file(path);
            let listener = UnixListener::bind(path)
                .with_context(|| format!("binding the API socket {}", path.display()))?;
            fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
            let server = tokio::spawn(server::serve(node.clone(), listener, None, stop_rx.clone()));
            (ApiAddr::Unix(path.clone()), None, server)
        }
        Listen::Tcp(addr) => {
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the API on {addr}"))?;
            let bound = listener.local_addr()?;
            let token = format!("{:032x}", rand::random::<u128>());
            let server = tokio::spawn(server::serve(
                node.clone(),
                listener,
                Some(token.clone()),
                stop_rx.clone(),
            ));
            (ApiAddr::Tcp(bound), Some(token), server)
        }
    };
    // Give the control plane a moment to bind, so daemon.json can name its address.
    for _ in 0..50 {
        if !discovery.listen_addrs().is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let mut listen: std::collections::BTreeMap<String, String> =
        [("quic".to_owned(), quic.to_string())].into();
    if let Some(p2p) = discovery.listen_addrs().first() {
        listen.insert("p2p".to_owned(), p2p.clone());
    }
    {
        let node = node.clone();
        tokio::spawn(async move { announce::announce_store(&node).await });
    }
    write_run_info(
        &data_dir,
        api.clone(),
        token,
        listen,
        net.node_id().to_string(),
    )?;
    tracing::info!(data_dir = %data_dir.display(), api = %api, "modeld ready");

    let which = tokio::select! {
        _ = sigint.recv() => "SIGINT",
        _ = sigterm.recv() => "SIGTERM",
    };
    tracing::info!(signal = which, "shutting down");
    let _ = fs::remove_file(data_dir.join(RUN_INFO_FILE));
    let _ = stop_tx.send(true);
    let _ = server.await;
    net.shutdown().await;
    if let Listen::Unix(path) = &config.api_listen {
        let _ = fs::remove_file(path);
    }
    drop(node);
    tracing::info!("modeld stopped");
    Ok(())
}

/// Writes `daemon.json` atomically, readable by the owner only.
fn write_run_info(
    data_dir: &Path,
    api: ApiAddr,
    token: Option<String>,
    listen: std::collections::BTreeMap<String, String>,
    node_id: String,
) -> anyhow::Result<()> {
    let info = RunInfo {
        pid: std::process::id(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        api,
        token,
        listen,
        node_id: Some(node_id),
        started: unix_now(),
    };
    let tmp = data_dir.join(format!("{RUN_INFO_FILE}.tmp"));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(&serde_json::to_vec_pretty(&info)?)?;
    f.sync_all()?;
    fs::rename(&tmp, data_dir.join(RUN_INFO_FILE))?;
    Ok(())
}
