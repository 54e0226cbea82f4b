//! The daemon's life: one per data dir, clean shutdown, clear errors without one.

use modeld_tests::{Daemon, modelctl};

#[test]
fn a_second_daemon_on_the_same_data_dir_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let node = Daemon::start(&tmp.path().join("node"));
    let out = std::process::Command::new(modeld_tests::bin("modeld"))
        .arg("--data-dir")
        .arg(node.data_dir())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another modeld"), "{err}");
    assert!(err.contains(&format!("pid {}", node.pid())), "{err}");
    // The first one is unharmed.
    node.ctl_ok(&["status"]);
}

#[test]
fn sigterm_shuts_down_cleanly_and_the_store_reopens() {
    let tmp = tempfile::tempdir().unwrap();
    let mut node = Daemon::start(&tmp.path().join("node"));
    node.ctl_ok(&[
        "trust",
        "add",
        &modeld_core::SecretKey::generate().public().to_string(),
    ]);
    assert!(node.stop(), "modeld did not exit 0 on SIGTERM");
    assert!(!node.data_dir().join("daemon.json").exists());
    assert!(!node.data_dir().join("modeld.sock").exists());
    assert!(node.log().contains("modeld stopped"));
    node.start_again();
    let trust = node.ctl_json(&["trust", "list"]);
    assert_eq!(trust.as_array().unwrap().len(), 1);
}

#[test]
fn commands_without_a_daemon_fail_with_a_hint() {
    let tmp = tempfile::tempdir().unwrap();
    let out = modelctl(tmp.path(), &["ls"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no modeld is running"), "{err}");
    assert!(err.contains("modeld --data-dir"), "{err}");
}

#[test]
fn tcp_api_on_loopback_with_token() {
    let tmp = tempfile::tempdir().unwrap();
    let node = Daemon::start_with(&tmp.path().join("node"), &["--api-listen", "127.0.0.1:0"]);
    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(node.data_dir().join("daemon.json")).unwrap())
            .unwrap();
    assert!(
        info["api"]["tcp"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    assert_eq!(info["token"].as_str().unwrap().len(), 32);
    node.ctl_ok(&["status"]);
}
