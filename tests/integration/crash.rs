//! Crash safety: `kill -9` of the daemon in the middle of a multi-GiB publish.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
};

use modeld_tests::{Daemon, bin, random_file, reference_b3sum, trusted_key};

#[test]
fn kill_9_during_a_multi_gib_publish_leaves_a_consistent_store() {
    let tmp = tempfile::tempdir().unwrap();
    let mut node = Daemon::start(&tmp.path().join("node"));
    let (key, _) = trusted_key(&node, tmp.path(), "*");
    let model = tmp.path().join("model");
    let size: u64 = 2 << 30;
    random_file(&model.join("big.bin"), size, 42);

    let publish_args = [
        "--json",
        "publish",
        model.to_str().unwrap(),
        "--name",
        "org/big",
        "--version",
        "1",
        "--key",
        key.to_str().unwrap(),
    ];
    let mut publish = Command::new(bin("modelctl"))
        .arg("--data-dir")
        .arg(node.data_dir())
        .args(publish_args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Progress events arrive as JSON lines on stderr; kill once hashing is under way.
    let mut killed_at = None;
    for line in BufReader::new(publish.stderr.take().unwrap()).lines() {
        let Ok(event) = serde_json::from_str::<serde_json::Value>(&line.unwrap()) else {
            continue;
        };
        let done = event["event"]["progress"]["done"].as_u64().unwrap_or(0);
        if done > 0 && done < size {
            node.kill9();
            killed_at = Some(done);
            break;
        }
    }
    let killed_at = killed_at.expect("saw the publish in progress before it finished");
    assert!(
        !publish.wait().unwrap().success(),
        "publish must fail when the daemon dies"
    );
    eprintln!("killed modeld after {killed_at} of {size} bytes");

    // The store reopens; nothing is wrongly complete; no temporary file survives.
    node.start_again();
    let status = node.ctl_json(&["status"]);
    assert_eq!(status["blobs_complete"], 0, "{status}");
    assert_eq!(status["blobs_partial"], 0, "{status}");
    assert_eq!(status["manifests"], 0, "{status}");
    let tmp_dir = node.data_dir().join("store/tmp");
    assert_eq!(
        std::fs::read_dir(&tmp_dir).unwrap().count(),
        0,
        "tmp/ not emptied"
    );

    // The same publish is accepted again and yields the right bytes.
    let mut args = publish_args.to_vec();
    args.remove(0);
    let id = node.ctl_ok(&args);
    let out = tmp.path().join("out");
    node.ctl_ok(&["export", id.trim(), out.to_str().unwrap()]);
    assert_eq!(
        reference_b3sum(&out.join("big.bin")),
        reference_b3sum(&model.join("big.bin"))
    );
    assert_eq!(
        node.ctl_json(&["verify"])["corrupt"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
}
