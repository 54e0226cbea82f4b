//! modelctl commands that need no daemon (and, as a side effect, makes `cargo test`
//! build the binary for the workspace integration tests).

use std::process::Command;

fn modelctl(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_modelctl"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn key_generate_and_show_agree() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("k.key");
    let out = modelctl(&["key", "generate", file.to_str().unwrap()]);
    assert!(out.status.success());
    let public = String::from_utf8(out.stdout).unwrap();
    assert!(public.starts_with("ed25519:"));
    let shown = modelctl(&["key", "show", file.to_str().unwrap()]);
    assert_eq!(String::from_utf8(shown.stdout).unwrap(), public);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // Never silently replaced.
    let again = modelctl(&["key", "generate", file.to_str().unwrap()]);
    assert!(!again.status.success());
}

#[test]
fn usage_errors_exit_2() {
    assert_eq!(modelctl(&["frobnicate"]).status.code(), Some(2));
    assert_eq!(
        modelctl(&["trust", "add", "not-a-key"]).status.code(),
        Some(2)
    );
}
