//! The modeld binary's command line (and, as a side effect, makes `cargo test`
//! build the binary for the workspace integration tests).

use std::process::Command;

fn modeld() -> Command {
    Command::new(env!("CARGO_BIN_EXE_modeld"))
}

#[test]
fn help_and_version() {
    let out = modeld().arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--data-dir",
        "--config",
        "--api-listen",
        "--log-format",
        "--hash-threads",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
    let out = modeld().arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("modeld "));
}

#[test]
fn print_config_shows_the_effective_settings() {
    let dir = tempfile::tempdir().unwrap();
    let out = modeld()
        .args([
            "--data-dir",
            dir.path().to_str().unwrap(),
            "--hash-threads",
            "3",
            "--print-config",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("hash_threads = 3"), "{text}");
    assert!(text.contains("modeld.sock"), "{text}");
}

#[test]
fn bad_config_is_an_error_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.toml"), "[store]\nhash_thread = 2\n").unwrap();
    let out = modeld()
        .args(["--data-dir", dir.path().to_str().unwrap(), "--print-config"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("hash_thread"));
}
