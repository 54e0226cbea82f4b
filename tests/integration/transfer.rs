//! Verified transfer between real daemons over QUIC on loopback: several seeds at once,
//! a rotting seed, a lying peer, a silent peer, a kill -9 in the middle, and manifests
//! refused before any data moves.

use std::{
    collections::HashMap,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use modeld_core::{Hash, SignedManifest};
use modeld_tests::{
    Daemon, bin,
    peers::{Behaviour, FakePeer},
    publish_args, random_file, reference_b3sum,
};

/// A model of several files, a few hundred MiB in all.
fn make_model(dir: &Path) -> u64 {
    let files: [(&str, u64); 4] = [
        ("model-00001-of-00002.safetensors", 150 << 20),
        ("model-00002-of-00002.safetensors", (90 << 20) + 12_345),
        ("tokenizer/tokenizer.json", 3 << 20),
        ("config.json", 700),
    ];
    for (i, (name, size)) in files.iter().enumerate() {
        random_file(&dir.join(name), *size, 100 + i as u64);
    }
    files.iter().map(|(_, s)| s).sum()
}

struct Swarm {
    tmp: tempfile::TempDir,
    seeds: Vec<Daemon>,
    key: PathBuf,
    public: String,
    model: PathBuf,
    manifest: PathBuf,
    total: u64,
}

/// `n` seeds holding the same model; the signed manifest is written to a file.
fn swarm(n: usize) -> Swarm {
    swarm_with(n, &[])
}

/// Like [`swarm`], every seed started with extra `modeld` flags.
fn swarm_with(n: usize, seed_args: &[&str]) -> Swarm {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    let total = make_model(&model);
    let key = tmp.path().join("publisher.key");
    let mut seeds: Vec<Daemon> = (0..n)
        .map(|i| Daemon::start_with(&tmp.path().join(format!("seed{i}")), seed_args))
        .collect();
    let public = seeds[0]
        .ctl_ok(&["key", "generate", key.to_str().unwrap()])
        .trim()
        .to_owned();
    for s in &mut seeds {
        s.ctl_ok(&["trust", "add", &public, "--scope", "org/"]);
    }
    let k = key.to_str().unwrap();
    let m = model.to_str().unwrap();
    let id = seeds[0].ctl_ok(&publish_args(m, "org/model", "1", k));
    let manifest = tmp.path().join("org-model-1.json");
    std::fs::write(
        &manifest,
        seeds[0].ctl_ok(&["manifest", "show", id.trim(), "--raw"]),
    )
    .unwrap();
    // The other seeds hold the same blobs (published under a mirror name) and the manifest.
    for s in &seeds[1..] {
        s.ctl_ok(&publish_args(m, "org/mirror", "1", k));
        s.ctl_ok(&["manifest", "add", manifest.to_str().unwrap(), "--pin"]);
    }
    Swarm {
        tmp,
        seeds,
        key,
        public,
        model,
        manifest,
        total,
    }
}

impl Swarm {
    /// A fresh daemon that trusts the publisher.
    fn fetcher(&self, name: &str, args: &[&str]) -> Daemon {
        let d = Daemon::start_with(&self.tmp.path().join(name), args);
        d.ctl_ok(&["trust", "add", &self.public, "--scope", "org/"]);
        d
    }

    fn peer_args(&self) -> Vec<String> {
        self.seeds
            .iter()
            .flat_map(|s| ["--peer".to_owned(), s.peer_addr()])
            .collect()
    }

    fn files(&self) -> Vec<(String, Hash, u64)> {
        let env = std::fs::read(&self.manifest).unwrap();
        let signed = SignedManifest::open(&env).unwrap();
        signed
            .manifest
            .files()
            .iter()
            .map(|f| (f.path.to_string(), f.blake3, f.size))
            .collect()
    }

    /// Every exported file equals the original, by b3sum.
    fn check_export(&self, out: &Path) {
        for (path, _, _) in self.files() {
            assert_eq!(
                reference_b3sum(&out.join(&path)),
                reference_b3sum(&self.model.join(&path)),
                "{path} differs"
            );
        }
    }
}

fn fetch_json(d: &Daemon, what: &str, peers: &[String], out: Option<&Path>) -> serde_json::Value {
    let mut args = vec!["fetch", what];
    args.extend(peers.iter().map(String::as_str));
    if let Some(out) = out {
        args.extend(["--out", out.to_str().unwrap()]);
    }
    d.ctl_json(&args)
}

#[test]
fn three_seeds_serve_one_fetcher_in_parallel() {
    // The scheduler rightly gives more work to faster peers, and on a busy 2-core CI
    // machine one seed process may be starved for a while. An upload cap on every seed
    // makes the seeds equal, so a fair share is what a parallel fetch must show.
    let sw = swarm_with(3, &["--upload-rate", "40MiB"]);
    let leech = sw.fetcher("leech", &[]);
    let out = sw.tmp.path().join("out");
    let summary = fetch_json(
        &leech,
        sw.manifest.to_str().unwrap(),
        &sw.peer_args(),
        Some(&out),
    );
    sw.check_export(&out);
    assert_eq!(summary["bytes_fetched"], sw.total);
    assert_eq!(summary["bytes_present"], 0);
    assert_eq!(summary["manifest"]["pinned"], true);
    let shares: Vec<u64> = summary["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["bytes"].as_u64().unwrap())
        .collect();
    assert_eq!(shares.len(), 3, "{summary}");
    for (i, s) in sw.seeds.iter().enumerate() {
        let served = s.counter("bytes_served");
        assert!(
            served >= sw.total / 10,
            "seed {i} served only {served} of {} bytes: not a parallel fetch ({shares:?})",
            sw.total
        );
    }
    // The export is verified, and the store agrees.
    assert_eq!(
        leech.ctl_json(&["verify"])["corrupt"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
}

#[test]
fn a_seed_with_rotten_data_is_banned_and_the_fetch_completes() {
    let sw = swarm(3);
    // Rot one byte in every MiB of the largest file in seed 0's store.
    let (_, big, size) = sw.files().into_iter().max_by_key(|f| f.2).unwrap();
    let data = sw.seeds[0]
        .data_dir()
        .join(format!("store/blobs/{}/{big}.data", &big.to_hex()[..2]));
    flip_every_mib(&data, size);
    let leech = sw.fetcher("leech", &[]);
    let out = sw.tmp.path().join("out");
    let summary = fetch_json(
        &leech,
        sw.manifest.to_str().unwrap(),
        &sw.peer_args(),
        Some(&out),
    );
    sw.check_export(&out);
    let bad_id = sw.seeds[0]
        .peer_addr()
        .split('@')
        .next()
        .unwrap()
        .to_owned();
    let bad = summary["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == bad_id.as_str())
        .unwrap_or_else(|| panic!("rotten seed not in the report: {summary}"));
    assert!(
        bad["dropped"]
            .as_str()
            .unwrap_or_default()
            .contains("banned"),
        "rotten seed not banned: {summary}"
    );
    assert_eq!(leech.counter("peers_banned"), 1);
    assert!(
        leech.log().contains(&bad_id),
        "the ban is logged with the peer id"
    );
    assert!(sw.seeds[0].log().contains("refused to serve corrupt data"));
}

fn flip_every_mib(path: &Path, size: u64) {
    use std::os::unix::fs::{FileExt, PermissionsExt};
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut at = 4096;
    while at < size {
        let mut b = [0u8];
        f.read_exact_at(&mut b, at).unwrap();
        b[0] ^= 0x5a;
        f.write_all_at(&b, at).unwrap();
        at += 1 << 20;
    }
}

#[test]
fn a_peer_sending_bad_chunks_is_banned() {
    let sw = swarm(1);
    let sizes: HashMap<Hash, u64> = sw.files().into_iter().map(|(_, h, s)| (h, s)).collect();
    let liar = FakePeer::start(Behaviour::Lying(sizes));
    let leech = sw.fetcher("leech", &[]);
    let mut peers = sw.peer_args();
    peers.extend(["--peer".to_owned(), liar.peer_addr().to_owned()]);
    let out = sw.tmp.path().join("out");
    let summary = fetch_json(&leech, sw.manifest.to_str().unwrap(), &peers, Some(&out));
    sw.check_export(&out);
    let liar_id = liar.peer_addr().split('@').next().unwrap();
    let entry = summary["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == liar_id)
        .unwrap_or_else(|| panic!("liar not in report: {summary}"));
    assert!(
        entry["dropped"].as_str().unwrap().contains("banned"),
        "{summary}"
    );
    assert_eq!(entry["bytes"], 0, "no byte from the liar was kept");
}

#[test]
fn a_silent_peer_does_not_hang_the_fetch() {
    let sw = swarm(1);
    let silent = FakePeer::start(Behaviour::Silent);
    let leech = sw.fetcher("leech", &["--request-timeout", "2s"]);
    let started = std::time::Instant::now();
    // With a real seed beside it: the fetch completes.
    let mut peers = vec!["--peer".to_owned(), silent.peer_addr().to_owned()];
    peers.extend(sw.peer_args());
    let out = sw.tmp.path().join("out");
    let summary = fetch_json(&leech, sw.manifest.to_str().unwrap(), &peers, Some(&out));
    sw.check_export(&out);
    assert_eq!(summary["bytes_fetched"], sw.total);
    // Alone: the fetch fails, saying why, instead of waiting forever.
    let other = sw.fetcher("other", &["--request-timeout", "2s"]);
    let err = other.ctl_err(&[
        "fetch",
        sw.manifest.to_str().unwrap(),
        "--peer",
        silent.peer_addr(),
    ]);
    assert!(
        err.contains("no usable peer") || err.contains("no reachable peer"),
        "{err}"
    );
    assert!(
        started.elapsed().as_secs() < 60,
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn kill_9_mid_fetch_resumes_without_redownloading() {
    let sw = swarm(1);
    // A download cap makes the fetch last long enough to be killed half way.
    let mut leech = sw.fetcher("leech", &["--download-rate", "60MiB"]);
    let mut fetch = Command::new(bin("modelctl"))
        .arg("--data-dir")
        .arg(leech.data_dir())
        .args(["--json", "fetch", sw.manifest.to_str().unwrap()])
        .args(sw.peer_args())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut verified_at_kill = 0;
    for line in BufReader::new(fetch.stderr.take().unwrap()).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line.unwrap()) else {
            continue;
        };
        let done = v["event"]["progress"]["done"].as_u64().unwrap_or(0);
        if v["event"]["progress"]["phase"] == "fetching" && done >= sw.total * 2 / 5 {
            leech.kill9();
            verified_at_kill = done;
            break;
        }
    }
    assert!(verified_at_kill > 0, "never saw the fetch half way");
    assert!(!fetch.wait().unwrap().success());

    leech.start_again();
    let out = sw.tmp.path().join("out");
    let summary = fetch_json(
        &leech,
        sw.manifest.to_str().unwrap(),
        &sw.peer_args(),
        Some(&out),
    );
    sw.check_export(&out);
    let present = summary["bytes_present"].as_u64().unwrap();
    let fetched = summary["bytes_fetched"].as_u64().unwrap();
    let duplicate = summary["bytes_duplicate"].as_u64().unwrap();
    assert_eq!(present + fetched, sw.total, "{summary}");
    // Bytes verified before the kill that had to come over the network again.
    let lost = verified_at_kill.saturating_sub(present) + duplicate;
    eprintln!("verified at kill {verified_at_kill}, resumed {present}, re-downloaded {lost}");
    assert!(
        lost * 100 <= verified_at_kill,
        "re-downloaded {lost} of {verified_at_kill} verified bytes (more than 1 %)"
    );
    assert_eq!(leech.counter("bytes_resumed"), present);
}

#[test]
fn untrusted_and_rolled_back_manifests_are_refused_before_any_data_moves() {
    let sw = swarm(1);
    let seed = &sw.seeds[0];
    // A node that does not trust the publisher.
    let stranger = Daemon::start(&sw.tmp.path().join("stranger"));
    let err = stranger.ctl_err(&[
        "fetch",
        sw.manifest.to_str().unwrap(),
        "--peer",
        &seed.peer_addr(),
    ]);
    assert!(err.contains("does not trust"), "{err}");
    assert_eq!(seed.counter("bytes_served"), 0);
    assert_eq!(seed.counter("requests_served"), 0);

    // A node that already accepted sequence 2 refuses sequence 1.
    let leech = sw.fetcher("leech", &[]);
    let v2 = sw.tmp.path().join("v2");
    std::fs::create_dir_all(&v2).unwrap();
    std::fs::write(v2.join("w.bin"), b"version two").unwrap();
    let newer = seed.ctl_ok(&publish_args(
        v2.to_str().unwrap(),
        "org/model",
        "2",
        sw.key.to_str().unwrap(),
    ));
    let newer_file = sw.tmp.path().join("v2.json");
    std::fs::write(
        &newer_file,
        seed.ctl_ok(&["manifest", "show", newer.trim(), "--raw"]),
    )
    .unwrap();
    leech.ctl_ok(&["manifest", "add", newer_file.to_str().unwrap()]);
    let served_before = seed.counter("bytes_served");
    let err = leech.ctl_err(&[
        "fetch",
        sw.manifest.to_str().unwrap(),
        "--peer",
        &seed.peer_addr(),
    ]);
    assert!(err.contains("rollback"), "{err}");
    assert_eq!(
        seed.counter("bytes_served"),
        served_before,
        "data moved for a refused manifest"
    );
}

#[test]
fn a_file_no_peer_has_is_named_in_the_error() {
    let sw = swarm(1);
    // A second seed that holds only the small files: none has the weights shards.
    let partial = sw.fetcher("partial", &[]);
    let small = sw.tmp.path().join("small");
    std::fs::create_dir_all(small.join("tokenizer")).unwrap();
    std::fs::copy(sw.model.join("config.json"), small.join("config.json")).unwrap();
    std::fs::copy(
        sw.model.join("tokenizer/tokenizer.json"),
        small.join("tokenizer/tokenizer.json"),
    )
    .unwrap();
    partial.ctl_ok(&publish_args(
        small.to_str().unwrap(),
        "org/small",
        "1",
        sw.key.to_str().unwrap(),
    ));
    let leech = sw.fetcher("leech", &[]);
    let err = leech.ctl_err(&[
        "fetch",
        sw.manifest.to_str().unwrap(),
        "--peer",
        &partial.peer_addr(),
    ]);
    assert!(err.contains("no reachable peer has"), "{err}");
    assert!(err.contains("model-00001-of-00002.safetensors"), "{err}");
    assert!(
        !err.contains("config.json"),
        "a file the peer had is named: {err}"
    );
    // What the peer had was fetched, verified and kept for next time.
    let status = leech.ctl_json(&["status"]);
    assert_eq!(status["blobs_complete"], 2, "{status}");
}

#[test]
fn a_peer_claiming_a_2_pow_60_byte_blob_is_dropped_and_its_claim_never_sized_anything() {
    let sw = swarm(1);
    let sizes: HashMap<Hash, u64> = sw
        .files()
        .into_iter()
        .map(|(_, h, _)| (h, 1 << 60))
        .collect();
    let liar = FakePeer::start(Behaviour::Lying(sizes));
    // Alone, the liar gets the fetch nowhere; the fetcher sized its files from the
    // signed manifest (it reserves their space up front), never from the claim.
    let alone = sw.fetcher("alone", &["--request-timeout", "2s"]);
    let err = alone.ctl_err(&[
        "fetch",
        sw.manifest.to_str().unwrap(),
        "--peer",
        liar.peer_addr(),
    ]);
    assert!(
        err.contains("claimed blob size 1152921504606846976 is implausible (over 2^50 bytes)"),
        "{err}"
    );
    let stored: u64 = walk_sizes(&alone.data_dir().join("store/blobs"));
    assert!(
        stored <= sw.total + sw.total / 100,
        "{stored} bytes stored for a {}-byte model after a fetch from a liar",
        sw.total
    );
    // Beside an honest seed, the fetch completes and the liar is dropped.
    let leech = sw.fetcher("leech", &[]);
    let peers = vec![
        "--peer".to_owned(),
        liar.peer_addr().to_owned(),
        "--peer".to_owned(),
        sw.seeds[0].peer_addr(),
    ];
    let out = sw.tmp.path().join("out");
    let summary = fetch_json(&leech, sw.manifest.to_str().unwrap(), &peers, Some(&out));
    sw.check_export(&out);
    let liar_id = liar.peer_addr().split('@').next().unwrap();
    if let Some(entry) = summary["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == liar_id)
    {
        assert_eq!(entry["bytes"], 0, "{summary}");
    }
}

fn walk_sizes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| {
            let m = e.metadata().unwrap();
            if m.is_dir() {
                walk_sizes(&e.path())
            } else {
                m.len()
            }
        })
        .sum()
}
