//! Real QUIC on loopback between in-process nodes: handshake with node ids, have-maps,
//! a multi-peer fetch, and a manifest by id.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use modeld_core::{Manifest, ManifestFile, ManifestHeader, SecretKey, SignedManifest, TrustScope};
use modeld_net::{AllowList, Net, NetConfig, NodeKey, PeerAddr, fetch};
use modeld_store::Store;

fn config() -> NetConfig {
    NetConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        request_timeout: Duration::from_secs(3),
        ..NetConfig::default()
    }
}

struct Node {
    _dir: tempfile::TempDir,
    store: Store,
    net: Net,
}

fn node(cfg: NetConfig) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("store"), Default::default()).unwrap();
    let net = Net::start(
        store.clone(),
        NodeKey::from_secret(SecretKey::generate()),
        cfg,
    )
    .unwrap();
    Node {
        _dir: dir,
        store,
        net,
    }
}

fn addr(n: &Node) -> PeerAddr {
    PeerAddr {
        id: Some(n.net.node_id()),
        addr: n.net.local_addr().unwrap(),
    }
}

/// Publishes `files` on `n`, returning the signed manifest bytes.
fn publish(n: &Node, files: &[(&str, Vec<u8>)], key: &SecretKey) -> Vec<u8> {
    n.store.trust_add(key.public(), TrustScope::All).unwrap();
    let mut entries = Vec::new();
    for (name, data) in files {
        let p = n._dir.path().join(name.replace('/', "_"));
        std::fs::write(&p, data).unwrap();
        let imported = n
            .store
            .import_file(&p, &|_| {}, &AtomicBool::new(false))
            .unwrap();
        entries.push(ManifestFile {
            path: name.parse().unwrap(),
            size: imported.size,
            blake3: imported.hash,
            format: modeld_core::format::FileFormat::Other,
        });
    }
    let m = Manifest::new(
        ManifestHeader {
            name: "org/m".parse().unwrap(),
            version: "1".parse().unwrap(),
            sequence: 1,
            created: 1,
            expires: None,
            publisher: key.public(),
            allow_pickle: false,
        },
        entries,
    )
    .unwrap();
    let env = SignedManifest::create(&m, key).envelope.to_bytes();
    n.store.add_manifest(&env, 2, true).unwrap();
    env
}

static NO: AtomicBool = AtomicBool::new(false);

fn options(peers: &[PeerAddr]) -> fetch::FetchOptions<'_> {
    fetch::FetchOptions {
        peers,
        discovered: None,
        progress: &|_, _, _| {},
        on_first_piece: &|_| {},
        cancel: &NO,
    }
}

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 11) as u8)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_from_two_seeds_over_quic() {
    let key = SecretKey::generate();
    let files = vec![
        ("a.bin", data(6 << 20, 1)),
        ("b/c.bin", data(3 << 20 | 77, 2)),
        ("d.txt", b"hello".to_vec()),
    ];
    let seed1 = node(config());
    let seed2 = node(config());
    let env = publish(&seed1, &files, &key);
    publish(&seed2, &files, &key);
    let leech = node(config());
    leech
        .store
        .trust_add(key.public(), TrustScope::All)
        .unwrap();
    let signed = leech.store.add_manifest(&env, 2, false).unwrap().signed;

    let report = fetch::fetch(&leech.net, &signed, options(&[addr(&seed1), addr(&seed2)]))
        .await
        .unwrap();
    assert_eq!(report.bytes_fetched, report.bytes_total);
    assert_eq!(report.bytes_present, 0);
    let from: Vec<u64> = report.peers.iter().map(|p| p.bytes).collect();
    assert_eq!(from.len(), 2, "{report:?}");
    assert!(from.iter().all(|b| *b > 0), "both seeds served: {from:?}");
    for (name, bytes) in &files {
        let f = signed
            .manifest
            .files()
            .iter()
            .find(|f| f.path.as_str() == *name)
            .unwrap();
        assert!(leech.store.blob(f.blake3).unwrap().unwrap().complete);
        assert_eq!(
            &std::fs::read(leech.store.data_path(f.blake3)).unwrap(),
            bytes
        );
    }
    assert!(seed1.net.counters().bytes_served.load(Ordering::Relaxed) > 0);

    // Fetching again moves nothing.
    let again = fetch::fetch(&leech.net, &signed, options(&[addr(&seed1)]))
        .await
        .unwrap();
    assert_eq!(again.bytes_fetched, 0);
    assert_eq!(again.bytes_present, again.bytes_total);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_by_id_and_wrong_node_id() {
    let key = SecretKey::generate();
    let seed = node(config());
    let env = publish(&seed, &[("x", data(1000, 3))], &key);
    let leech = node(config());
    let id = SignedManifest::open(&env).unwrap().id;
    let got = fetch::fetch_manifest(&leech.net, &[addr(&seed)], id)
        .await
        .unwrap();
    assert_eq!(got, env);
    // A peer that is not who the address says is refused.
    let wrong = PeerAddr {
        id: Some(SecretKey::generate().public()),
        addr: seed.net.local_addr().unwrap(),
    };
    let err = fetch::fetch_manifest(&leech.net, &[wrong], id)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_list_keeps_strangers_out() {
    let key = SecretKey::generate();
    let friend = NodeKey::from_secret(SecretKey::generate());
    let seed = node(NetConfig {
        allow: AllowList::only(vec![friend.id()]),
        ..config()
    });
    let env = publish(&seed, &[("x", data(1000, 4))], &key);
    let id = SignedManifest::open(&env).unwrap().id;
    let stranger = node(config());
    assert!(
        fetch::fetch_manifest(&stranger.net, &[addr(&seed)], id)
            .await
            .is_err()
    );
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("s"), Default::default()).unwrap();
    let friendly = Net::start(store, friend, config()).unwrap();
    assert_eq!(
        fetch::fetch_manifest(&friendly, &[addr(&seed)], id)
            .await
            .unwrap(),
        env
    );
}

/// A seed paced at 1 MiB/s holding one 80 MiB blob, a second node and its connection
/// to the seed: a few 16 MiB answers fill the seed's answer budget for a minute, so
/// later requests wait their turn.
async fn paced_seed() -> (Node, Node, modeld_net::client::PeerConn, modeld_core::Hash) {
    let key = SecretKey::generate();
    let seed = node(NetConfig {
        upload_rate: 1 << 20,
        ..config()
    });
    let bytes = data(80 << 20, 7);
    publish(&seed, &[("big.bin", bytes.clone())], &key);
    let hash = modeld_core::Hash::of(&bytes);
    let leech = node(config());
    let conn = modeld_net::client::PeerConn::connect(&leech.net, addr(&seed))
        .await
        .unwrap();
    (seed, leech, conn, hash)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_withdrawn_while_it_waits_leaves_the_servers_queue() {
    // A seed paced at 1 MiB/s: four 16 MiB answers fill its answer budget for a
    // minute, so a fifth request waits its turn. The asker withdraws it.
    let (seed, _leech, conn, hash) = paced_seed().await;
    let wait = Duration::from_secs(60);
    let ask = |i: u64| {
        let conn = conn.clone();
        let r = modeld_core::ranges::from_bytes(i * (16 << 20)..(i + 1) * (16 << 20));
        tokio::spawn(async move { conn.blob(hash, 80 << 20, &r, 0, wait).await })
    };
    let filling: Vec<_> = (0..4).map(ask).collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let waiting = ask(4);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let withdrawn = || {
        seed.net
            .counters()
            .requests_withdrawn
            .load(Ordering::Relaxed)
    };
    assert_eq!(withdrawn(), 0);
    waiting.abort();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while withdrawn() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the server kept the withdrawn request in its queue"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(withdrawn(), 1);
    for f in filling {
        f.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_counts_as_started_only_once_the_server_takes_it_up() {
    // As above: 16 MiB answers fill a 1 MiB/s seed's answer budget and the fifth
    // request waits its turn. The scheduler's rule (a copy waiting elsewhere is
    // cancelled once one starts) needs "started" to mean "being sent", not "sent".
    let (_seed, _leech, conn, hash) = paced_seed().await;
    let wait = Duration::from_secs(60);
    let ask = |i: u64| {
        let conn = conn.clone();
        let started = Arc::new(AtomicUsize::new(0));
        let flag = started.clone();
        let r = modeld_core::ranges::from_bytes(i * (16 << 20)..(i + 1) * (16 << 20));
        let task = tokio::spawn(async move {
            let on_start = || {
                flag.fetch_add(1, Ordering::SeqCst);
            };
            conn.blob_with_start(hash, 80 << 20, &r, 0, wait, on_start)
                .await
        });
        (task, started)
    };
    let filling: Vec<_> = (0..4).map(ask).collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (waiting, waiting_started) = ask(4);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let count = |s: &AtomicUsize| s.load(Ordering::SeqCst);
    while filling.iter().all(|(_, s)| count(s) == 0) {
        assert!(
            std::time::Instant::now() < deadline,
            "no answer being sent was reported started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        count(&waiting_started),
        0,
        "a request waiting in the server's queue was reported started"
    );
    // Reported once however many chunks arrive.
    assert!(filling.iter().all(|(_, s)| count(s) <= 1));
    waiting.abort();
    for (f, _) in filling {
        f.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_node_answers_the_asker_that_holds_least_first() {
    // Three 16 MiB answers (and their bao parents) fill a 1 MiB/s seed's 64 MiB answer
    // budget; two more requests wait: first one from an asker that holds 1 GiB of its
    // model, then one from an asker that holds nothing. When one answer is withdrawn,
    // the room goes to the asker that holds nothing.
    let (_seed, _leech, conn, hash) = paced_seed().await;
    let wait = Duration::from_secs(60);
    let ask = |i: u64, held: u64| {
        let conn = conn.clone();
        let started = Arc::new(AtomicBool::new(false));
        let flag = started.clone();
        let r = modeld_core::ranges::from_bytes(i * (16 << 20)..(i + 1) * (16 << 20));
        let task = tokio::spawn(async move {
            let on_start = || flag.store(true, Ordering::SeqCst);
            conn.blob_with_start(hash, 80 << 20, &r, held, wait, on_start)
                .await
        });
        (task, started)
    };
    let filling: Vec<_> = (0..3).map(|i| ask(i, 0)).collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !filling.iter().all(|(_, s)| s.load(Ordering::SeqCst)) {
        assert!(
            std::time::Instant::now() < deadline,
            "the budget never filled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (much, much_started) = ask(3, 1 << 30);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (little, little_started) = ask(4, 0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!much_started.load(Ordering::SeqCst) && !little_started.load(Ordering::SeqCst));
    filling[0].0.abort();
    let deadline = std::time::Instant::now() + Duration::from_secs(4);
    while !little_started.load(Ordering::SeqCst) {
        assert!(
            std::time::Instant::now() < deadline,
            "the asker holding nothing did not get the room"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !much_started.load(Ordering::SeqCst),
        "the asker holding more was answered too: the budget was not full"
    );
    for (task, _) in filling {
        task.abort();
    }
    much.abort();
    little.abort();
}

/// A node sending 32 MiB/s that holds all of one 80 MiB blob, and `n` other nodes
/// connected to it.
async fn seed_and_peers(
    n: usize,
) -> (
    Node,
    Vec<(Node, modeld_net::client::PeerConn)>,
    modeld_core::Hash,
    SecretKey,
) {
    let key = SecretKey::generate();
    let seed = node(NetConfig {
        upload_rate: 32 << 20,
        ..config()
    });
    let bytes = data(80 << 20, 9);
    publish(&seed, &[("w.bin", bytes.clone())], &key);
    let hash = modeld_core::Hash::of(&bytes);
    let mut peers = Vec::new();
    for _ in 0..n {
        let peer = node(config());
        let conn = modeld_net::client::PeerConn::connect(&peer.net, addr(&seed))
            .await
            .unwrap();
        peers.push((peer, conn));
    }
    (seed, peers, hash, key)
}

/// Fills the seed's 64 MiB answer budget with four 16 MiB requests (two seconds of
/// sending at 32 MiB/s): requests after them wait for their turn.
async fn fill_answer_budget(
    conn: &modeld_net::client::PeerConn,
    hash: modeld_core::Hash,
) -> Vec<tokio::task::JoinHandle<()>> {
    let tasks = (1..5)
        .map(|i| {
            let conn = conn.clone();
            let r = modeld_core::ranges::from_bytes(i * (16 << 20)..(i + 1) * (16 << 20));
            tokio::spawn(async move {
                // Sent, or pointed elsewhere at its turn (if others claim it).
                let answer = conn
                    .blob(hash, 80 << 20, &r, 0, Duration::from_secs(60))
                    .await;
                assert!(matches!(status_of(answer), None | Some(Status::Elsewhere)));
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    tasks
}

fn status_of<T: std::fmt::Debug>(r: Result<T, modeld_net::client::PeerError>) -> Option<Status> {
    match r {
        Ok(_) => None,
        Err(modeld_net::client::PeerError::Status { status, .. }) => Some(status),
        Err(e) => panic!("unexpected failure: {e}"),
    }
}

use modeld_proto::wire::Status;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_complete_node_points_requests_elsewhere_while_two_of_its_peers_hold_them() {
    let (seed, peers, hash, _) = seed_and_peers(4).await;
    let mib = |i: u64| modeld_core::ranges::from_bytes(i << 20..(i + 1) << 20);
    let t = Duration::from_secs(30);
    let (a, b, c, hog) = (&peers[0].1, &peers[1].1, &peers[2].1, &peers[3].1);
    let counter = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    // A and B say they hold the first MiB, only A the second.
    a.holds(hash, &mib(0) | &mib(1)).await.unwrap();
    b.holds(hash, mib(0)).await.unwrap();
    // A notice for a blob the node does not have is accepted and ignored.
    b.holds(modeld_core::Hash::of(b"nothing"), mib(0))
        .await
        .unwrap();
    assert_eq!(counter(&seed.net.counters().notices_received), 3);
    // With room in its answer budget the node sends what fewer than eight hold.
    assert_eq!(status_of(c.blob(hash, 80 << 20, &mib(0), 0, t).await), None);
    // Busy, it points C's request for the first MiB elsewhere at its turn; the
    // second MiB (one other holder) it sends.
    let hogging = fill_answer_budget(hog, hash).await;
    let (m0, m1) = (mib(0), mib(1));
    let (first, second) = tokio::join!(
        c.blob(hash, 80 << 20, &m0, 0, t),
        c.blob(hash, 80 << 20, &m1, 0, t)
    );
    assert_eq!(status_of(first), Some(Status::Elsewhere));
    assert_eq!(status_of(second), None);
    assert_eq!(counter(&seed.net.counters().requests_elsewhere), 1);
    for task in hogging {
        task.await.unwrap();
    }
    // B disconnects: its claims still count for a while (a fetch that rotated away
    // still holds what it said), so busy again, the node points C elsewhere again.
    b.close("done");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let hogging = fill_answer_budget(hog, hash).await;
    let again = c.blob(hash, 80 << 20, &mib(0), 0, t).await;
    assert_eq!(status_of(again), Some(Status::Elsewhere));
    assert_eq!(counter(&seed.net.counters().requests_elsewhere), 2);
    for task in hogging {
        task.await.unwrap();
    }
    // Past the linger only A holds the first MiB: busy again, the node sends it.
    tokio::time::sleep(modeld_proto::holders::CLAIMS_LINGER).await;
    let hogging = fill_answer_budget(hog, hash).await;
    assert_eq!(status_of(c.blob(hash, 80 << 20, &mib(0), 0, t).await), None);
    assert_eq!(counter(&seed.net.counters().requests_elsewhere), 2);
    for task in hogging {
        task.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_completes_from_a_busy_seed_whose_other_peers_lie_about_what_they_hold() {
    // Two peers of the seed claim the whole blob but serve nobody, and a third keeps
    // the seed busy: the fetch knows only the seed, is pointed elsewhere, and still
    // gets every piece (once the seed has room, or the refusal window has passed).
    // On the way it tells the seed what it holds.
    let (seed, peers, hash, key) = seed_and_peers(3).await;
    for (_, conn) in &peers[..2] {
        conn.holds(hash, modeld_core::ranges::all(80 << 20))
            .await
            .unwrap();
    }
    let hogging = fill_answer_budget(&peers[2].1, hash).await;
    let leech = node(config());
    leech
        .store
        .trust_add(key.public(), TrustScope::All)
        .unwrap();
    let env = seed.store.manifests().unwrap()[0].envelope.clone();
    let signed = leech.store.add_manifest(&env, 2, false).unwrap().signed;
    let report = fetch::fetch(&leech.net, &signed, options(&[addr(&seed)]))
        .await
        .unwrap();
    assert_eq!(report.bytes_fetched, 80 << 20);
    assert!(leech.store.blob(hash).unwrap().unwrap().complete);
    let counters = seed.net.counters();
    assert!(counters.requests_elsewhere.load(Ordering::Relaxed) > 0);
    assert!(counters.notices_received.load(Ordering::Relaxed) > 2);
    for task in hogging {
        task.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetching_node_pushes_what_it_verifies_to_a_peer_that_asked_what_it_has() {
    // A node fetches 24 MiB from a seed sending 4 MiB/s. A third node asks it once what
    // it has; from then on it is told, unasked, of every piece the fetch verifies,
    // and at the end that the fetching node holds everything.
    let key = SecretKey::generate();
    let seed = node(NetConfig {
        upload_rate: 4 << 20,
        ..config()
    });
    let bytes = data(24 << 20, 5);
    let env = publish(&seed, &[("w.bin", bytes.clone())], &key);
    let hash = modeld_core::Hash::of(&bytes);
    let fetcher = node(config());
    fetcher
        .store
        .trust_add(key.public(), TrustScope::All)
        .unwrap();
    let signed = fetcher.store.add_manifest(&env, 2, false).unwrap().signed;
    let fetching = {
        let (net, seed_addr) = (fetcher.net.clone(), addr(&seed));
        tokio::spawn(async move {
            fetch::fetch(&net, &signed, options(&[seed_addr]))
                .await
                .map(|r| r.bytes_fetched)
        })
    };
    // Once the fetch has begun (its partial blob exists), a watcher asks.
    let watcher = node(config());
    let conn = modeld_net::client::PeerConn::connect(&watcher.net, addr(&fetcher))
        .await
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    conn.forward_notices(tx);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let first = loop {
        match conn.have(hash).await {
            Ok(h) => break h,
            Err(e) => {
                assert!(std::time::Instant::now() < deadline, "no have-map: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert!(!first.complete, "the fetch ended before the watcher asked");
    let all = modeld_core::ranges::all(24 << 20);
    let mut known = first.ranges.clone();
    while !modeld_core::ranges::is_complete(&known, 24 << 20) {
        let notice = tokio::time::timeout(Duration::from_secs(20), rx.recv())
            .await
            .expect("the fetching node stopped telling what it verifies")
            .unwrap();
        assert_eq!(notice.peer, fetcher.net.node_id());
        assert_eq!(notice.hash, hash);
        assert!(
            !notice.ranges.is_subset(&known),
            "a notice said nothing new"
        );
        known |= notice.ranges;
    }
    assert_eq!(known, all);
    assert_eq!(fetching.await.unwrap().unwrap(), 24 << 20);
    let pushed = fetcher
        .net
        .counters()
        .notices_pushed
        .load(Ordering::Relaxed);
    assert!(pushed >= 2, "{pushed} notices pushed");
}
