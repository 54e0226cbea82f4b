//! Discovery on loopback: daemons joined through one bootstrap address find each
//! other, resolve names through the DHT, and fetch without being told any peer.

use modeld_tests::{Daemon, publish_args, random_file};

#[test]
fn fetch_by_name_through_the_dht_with_no_peer_addresses() {
    let tmp = tempfile::tempdir().unwrap();
    let seed = Daemon::start(&tmp.path().join("seed"));
    let boot = seed.bootstrap_addr();
    let a = Daemon::start_with(&tmp.path().join("a"), &["--bootstrap", &boot]);
    let b = Daemon::start_with(&tmp.path().join("b"), &["--bootstrap", &boot]);
    let key = tmp.path().join("k.key");
    let public = seed
        .ctl_ok(&["key", "generate", key.to_str().unwrap()])
        .trim()
        .to_owned();
    for d in [&seed, &a, &b] {
        d.ctl_ok(&["trust", "add", &public, "--scope", "org/"]);
    }
    let model = tmp.path().join("model");
    random_file(&model.join("weights.bin"), 24 << 20, 1);
    random_file(&model.join("extra.bin"), 5 << 20, 2);
    let k = key.to_str().unwrap();
    let m = model.to_str().unwrap();
    let v1 = seed.ctl_ok(&publish_args(m, "org/model", "1", k));

    // `a` knows nothing but the bootstrap address: name -> manifest -> providers.
    let got = a.ctl_json(&["fetch", "org/model"]);
    assert_eq!(got["manifest"]["id"], v1.trim());
    assert_eq!(got["bytes_fetched"], (29u64 << 20));
    let peers = a.ctl_json(&["peers"]);
    assert!(
        peers
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["data"].is_string()),
        "peers without data-plane addresses: {peers}"
    );

    // `b` asks for a version by name and gets it, from the seed and from `a`, which
    // announced what it fetched.
    let got = b.ctl_json(&["fetch", "org/model:1"]);
    assert_eq!(got["manifest"]["id"], v1.trim());
    assert_eq!(got["peers"].as_array().unwrap().len(), 2, "{got}");

    // A new release: the latest is found through the DHT.
    random_file(&model.join("weights.bin"), 24 << 20, 3);
    let v2 = seed.ctl_ok(&publish_args(m, "org/model", "2", k));
    assert_eq!(
        b.ctl_json(&["fetch", "org/model"])["manifest"]["id"],
        v2.trim()
    );

    // A node that accepted sequence 2 is not walked back to 1, which it never had: the
    // DHT's version-1 record is a rollback for it, refused with a clear reason.
    let c = Daemon::start_with(&tmp.path().join("c"), &["--bootstrap", &boot]);
    c.ctl_ok(&["trust", "add", &public, "--scope", "org/"]);
    assert_eq!(
        c.ctl_json(&["fetch", "org/model"])["manifest"]["id"],
        v2.trim()
    );
    let err = c.ctl_err(&["fetch", "org/model:1"]);
    assert!(err.contains("refusing a rollback"), "{err}");
}

#[test]
fn a_name_nobody_published_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let seed = Daemon::start(&tmp.path().join("seed"));
    let a = Daemon::start_with(
        &tmp.path().join("a"),
        &["--bootstrap", &seed.bootstrap_addr()],
    );
    let err = a.ctl_err(&["fetch", "org/nothing"]);
    assert!(err.contains("no trusted manifest for org/nothing"), "{err}");
}
