//! Every refusal of the trust policy, each through the real daemon, each leaving the
//! store unchanged.

use std::path::{Path, PathBuf};

use modeld_core::{
    Envelope, Hash, Manifest, ManifestFile, ManifestHeader, SecretKey, format::FileFormat,
};
use modeld_tests::Daemon;

struct Fixture {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    node: Daemon,
    key: SecretKey,
}

/// A daemon that trusts `key` for `org/`.
fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_owned();
    let node = Daemon::start(&dir.join("node"));
    let key = SecretKey::generate();
    node.ctl_ok(&["trust", "add", &key.public().to_string(), "--scope", "org/"]);
    Fixture {
        _tmp: tmp,
        dir,
        node,
        key,
    }
}

fn manifest_text(key: &SecretKey, sequence: u64, paths: &[&str], expires: Option<u64>) -> String {
    let m = Manifest::new(
        ManifestHeader {
            name: "org/model".parse().unwrap(),
            version: sequence.to_string().parse().unwrap(),
            sequence,
            created: 1_000,
            expires,
            publisher: key.public(),
            allow_pickle: false,
        },
        paths
            .iter()
            .map(|p| ManifestFile {
                path: p.parse().unwrap(),
                size: 5,
                blake3: Hash::of(p.as_bytes()),
                format: FileFormat::Other,
            })
            .collect(),
    )
    .unwrap();
    String::from_utf8(m.to_bytes()).unwrap()
}

fn write_signed(dir: &Path, name: &str, body: &str, key: &SecretKey) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(
        &path,
        Envelope::sign(body.as_bytes().to_vec(), key).to_bytes(),
    )
    .unwrap();
    path
}

impl Fixture {
    /// Adds the manifest file, expecting a refusal; checks the store is unchanged.
    fn refused(&self, file: &Path) -> String {
        let before = self.node.ctl_json(&["ls"]);
        let err = self
            .node
            .ctl_err(&["manifest", "add", file.to_str().unwrap(), "--pin"]);
        assert_eq!(
            self.node.ctl_json(&["ls"]),
            before,
            "a refusal changed the store"
        );
        err
    }
}

#[test]
fn accepted_when_trusted() {
    let f = fixture();
    let file = write_signed(
        &f.dir,
        "ok.json",
        &manifest_text(&f.key, 1, &["a"], None),
        &f.key,
    );
    f.node.ctl_ok(&["manifest", "add", file.to_str().unwrap()]);
    assert_eq!(f.node.ctl_json(&["ls"]).as_array().unwrap().len(), 1);
}

#[test]
fn untrusted_key_is_refused() {
    let f = fixture();
    let stranger = SecretKey::generate();
    let file = write_signed(
        &f.dir,
        "m.json",
        &manifest_text(&stranger, 1, &["a"], None),
        &stranger,
    );
    let err = f.refused(&file);
    assert!(err.contains("does not trust"), "{err}");
    assert!(
        err.contains(&format!("modelctl trust add {}", stranger.public())),
        "{err}"
    );
}

#[test]
fn key_trusted_for_another_org_is_refused() {
    let f = fixture();
    let other = SecretKey::generate();
    f.node.ctl_ok(&[
        "trust",
        "add",
        &other.public().to_string(),
        "--scope",
        "elsewhere/",
    ]);
    let file = write_signed(
        &f.dir,
        "m.json",
        &manifest_text(&other, 1, &["a"], None),
        &other,
    );
    let err = f.refused(&file);
    assert!(err.contains("trusted only for elsewhere/"), "{err}");
}

#[test]
fn flipped_signature_byte_is_refused() {
    let f = fixture();
    let file = write_signed(
        &f.dir,
        "m.json",
        &manifest_text(&f.key, 1, &["a"], None),
        &f.key,
    );
    let mut env: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    let sig = env["signatures"][0]["sig"].as_str().unwrap().to_owned();
    let mut chars: Vec<char> = sig.chars().collect();
    chars[10] = if chars[10] == 'A' { 'B' } else { 'A' };
    env["signatures"][0]["sig"] = chars.into_iter().collect::<String>().into();
    std::fs::write(&file, serde_json::to_vec(&env).unwrap()).unwrap();
    let err = f.refused(&file);
    assert!(err.contains("not validly signed"), "{err}");
}

#[test]
fn signature_over_different_bytes_is_refused() {
    let f = fixture();
    let good = write_signed(
        &f.dir,
        "a.json",
        &manifest_text(&f.key, 1, &["a"], None),
        &f.key,
    );
    let env: serde_json::Value = serde_json::from_slice(&std::fs::read(&good).unwrap()).unwrap();
    // Keep the signature, swap in another (valid) manifest body.
    let other =
        Envelope::sign(manifest_text(&f.key, 7, &["b"], None).into_bytes(), &f.key).to_bytes();
    let mut swapped: serde_json::Value = serde_json::from_slice(&other).unwrap();
    swapped["signatures"] = env["signatures"].clone();
    let file = f.dir.join("swapped.json");
    std::fs::write(&file, serde_json::to_vec(&swapped).unwrap()).unwrap();
    let err = f.refused(&file);
    assert!(err.contains("not validly signed"), "{err}");
}

#[test]
fn rollback_to_a_lower_sequence_is_refused() {
    let f = fixture();
    let newer = write_signed(
        &f.dir,
        "2.json",
        &manifest_text(&f.key, 2, &["a"], None),
        &f.key,
    );
    f.node
        .ctl_ok(&["manifest", "add", newer.to_str().unwrap(), "--pin"]);
    let older = write_signed(
        &f.dir,
        "1.json",
        &manifest_text(&f.key, 1, &["a"], None),
        &f.key,
    );
    let err = f.refused(&older);
    assert!(err.contains("refusing a rollback"), "{err}");
    assert!(err.contains("sequence 1, lower than 2"), "{err}");
}

#[test]
fn reused_sequence_with_other_content_is_refused() {
    let f = fixture();
    let first = write_signed(
        &f.dir,
        "a.json",
        &manifest_text(&f.key, 3, &["a"], None),
        &f.key,
    );
    f.node.ctl_ok(&["manifest", "add", first.to_str().unwrap()]);
    let second = write_signed(
        &f.dir,
        "b.json",
        &manifest_text(&f.key, 3, &["b"], None),
        &f.key,
    );
    let err = f.refused(&second);
    assert!(err.contains("reuses sequence 3"), "{err}");
}

#[test]
fn expired_manifest_is_refused() {
    let f = fixture();
    // Expired in 1970: refused whatever the wall clock says.
    let file = write_signed(
        &f.dir,
        "m.json",
        &manifest_text(&f.key, 1, &["a"], Some(2_000)),
        &f.key,
    );
    let err = f.refused(&file);
    assert!(err.contains("expired at 2000"), "{err}");
}

#[test]
fn unsafe_paths_are_refused_even_when_validly_signed() {
    let f = fixture();
    let text = manifest_text(&f.key, 1, &["evil"], None);
    let long_path = format!("{}/evil", "d/".repeat(520));
    let long_component = "x".repeat(256);
    for (i, bad) in [
        "../evil",
        "/etc/evil",
        "",
        "a//evil",
        "./evil",
        "a\\evil",
        long_path.as_str(),
        long_component.as_str(),
    ]
    .iter()
    .enumerate()
    {
        let body = text.replace("\"path\":\"evil\"", &format!("\"path\":{bad:?}"));
        let file = write_signed(&f.dir, &format!("bad{i}.json"), &body, &f.key);
        let err = f.refused(&file);
        assert!(err.contains("unsafe file path"), "{bad:?}: {err}");
    }
}

#[test]
fn duplicate_paths_are_refused() {
    let f = fixture();
    let text = manifest_text(&f.key, 1, &["a", "b"], None);
    let body = text.replace("\"path\":\"b\"", "\"path\":\"a\"");
    let file = write_signed(&f.dir, "dup.json", &body, &f.key);
    let err = f.refused(&file);
    assert!(err.contains("duplicate path \"a\""), "{err}");
}

#[test]
fn truncated_envelope_is_refused() {
    let f = fixture();
    let file = write_signed(
        &f.dir,
        "m.json",
        &manifest_text(&f.key, 1, &["a"], None),
        &f.key,
    );
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
    let err = f.refused(&file);
    assert!(err.contains("malformed signed manifest"), "{err}");
}

#[test]
fn oversized_manifest_is_refused() {
    let f = fixture();
    // Valid JSON and validly signed, but over the 4 MiB limit on a body.
    let text = manifest_text(&f.key, 1, &["a"], None);
    let padded = text.replacen(
        "\"version\":\"1\"",
        &format!("\"version\":\"1\",\"pad\":\"{}\"", "x".repeat(5 << 20)),
        1,
    );
    let file = write_signed(&f.dir, "big.json", &padded, &f.key);
    let err = f.refused(&file);
    assert!(err.contains("larger than"), "{err}");
}
