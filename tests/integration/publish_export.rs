//! Publish a directory, export it, and check every byte against independent tools.

use std::path::Path;

use modeld_tests::{Daemon, publish_args, random_file, reference_b3sum, trusted_key};

/// The sizes where chunking goes wrong if it goes wrong anywhere.
const SIZES: &[u64] = &[
    0,
    1,
    1023,
    1024,
    1025,
    16383,
    16384,
    16385,
    (4 << 20) - 16384,
    (4 << 20) + 16384,
    37 << 20,
];

fn make_model(dir: &Path) -> Vec<(String, u64)> {
    let mut files = Vec::new();
    for (i, size) in SIZES.iter().enumerate() {
        let name = format!("shard-{i:02}-{size}.bin");
        random_file(&dir.join(&name), *size, i as u64 + 1);
        files.push((name, *size));
    }
    std::fs::create_dir_all(dir.join("tokenizer")).unwrap();
    std::fs::write(dir.join("tokenizer/vocab.json"), b"{\"hello\": 1}").unwrap();
    files.push(("tokenizer/vocab.json".into(), 12));
    files
}

#[test]
fn publish_then_export_is_byte_identical_and_matches_b3sum() {
    let tmp = tempfile::tempdir().unwrap();
    let node = Daemon::start(&tmp.path().join("node"));
    let (key, _) = trusted_key(&node, tmp.path(), "org/");
    let model = tmp.path().join("model");
    let files = make_model(&model);

    let id = node.ctl_ok(&publish_args(
        model.to_str().unwrap(),
        "org/model",
        "1",
        key.to_str().unwrap(),
    ));
    let id = id.trim();
    assert_eq!(id.len(), 64, "publish prints the manifest id: {id:?}");

    // The manifest lists every file with the hash b3sum computes.
    let shown = node.ctl_json(&["manifest", "show", id]);
    let listed = shown["manifest"]["files"].as_array().unwrap();
    assert_eq!(listed.len(), files.len());
    for f in listed {
        let path = f["path"].as_str().unwrap();
        assert_eq!(
            f["blake3"].as_str().unwrap(),
            reference_b3sum(&model.join(path)),
            "hash of {path}"
        );
    }

    let out = tmp.path().join("export");
    node.ctl_ok(&["export", "org/model:1", out.to_str().unwrap()]);
    for (name, size) in &files {
        let a = std::fs::read(model.join(name)).unwrap();
        let b = std::fs::read(out.join(name)).unwrap();
        assert_eq!(a.len() as u64, *size);
        assert!(a == b, "{name} differs after export");
        assert_eq!(
            reference_b3sum(&out.join(name)),
            reference_b3sum(&model.join(name))
        );
    }

    // Listing, status and a clean verify agree.
    let ls = node.ctl_json(&["ls"]);
    assert_eq!(ls[0]["name"], "org/model");
    assert_eq!(ls[0]["complete_files"], files.len());
    assert_eq!(ls[0]["pinned"], true);
    let verify = node.ctl_json(&["verify"]);
    assert_eq!(verify["corrupt"].as_array().unwrap().len(), 0);

    // Exporting again changes nothing; a copy export is independent of the store.
    let again = node.ctl_json(&["export", id, out.to_str().unwrap()]);
    assert!(
        again["files"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f[1] == "unchanged")
    );
    let copy = tmp.path().join("copy");
    let copied = node.ctl_json(&["export", "--copy", id, copy.to_str().unwrap()]);
    assert!(
        copied["files"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f[1] == "copy")
    );
}

#[test]
fn a_flipped_byte_on_disk_is_reported_by_verify_with_its_range() {
    let tmp = tempfile::tempdir().unwrap();
    let node = Daemon::start(&tmp.path().join("node"));
    let (key, _) = trusted_key(&node, tmp.path(), "*");
    let model = tmp.path().join("model");
    random_file(&model.join("w.bin"), 3 << 20, 9);
    node.ctl_ok(&publish_args(
        model.to_str().unwrap(),
        "org/m",
        "1",
        key.to_str().unwrap(),
    ));
    let hash = reference_b3sum(&model.join("w.bin"));

    // Rot one byte in the store's data file.
    let data = tmp
        .path()
        .join(format!("node/store/blobs/{}/{hash}.data", &hash[..2]));
    let at: u64 = 2_000_000;
    flip_byte(&data, at);

    let out = node.ctl(&["--json", "verify"]);
    assert!(
        !out.status.success(),
        "verify must fail when it finds corruption"
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let corrupt = report["corrupt"].as_array().unwrap();
    assert_eq!(corrupt.len(), 1);
    assert_eq!(corrupt[0]["hash"], hash.as_str());
    assert_eq!(corrupt[0]["files"][0], "org/m:1/w.bin");
    let start = at / 16384 * 16384;
    assert_eq!(
        corrupt[0]["bad"],
        serde_json::json!([[start, start + 16384]])
    );

    // The bad range is no longer claimed: export refuses instead of handing it out.
    let err = node.ctl_err(&["export", "org/m", tmp.path().join("out").to_str().unwrap()]);
    assert!(err.contains("not complete"), "{err}");
}

fn flip_byte(path: &Path, at: u64) {
    use std::os::unix::fs::{FileExt, PermissionsExt};
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8];
    f.read_exact_at(&mut b, at).unwrap();
    b[0] ^= 0x01;
    f.write_all_at(&b, at).unwrap();
}

#[test]
fn pin_unpin_and_gc() {
    let tmp = tempfile::tempdir().unwrap();
    let node = Daemon::start(&tmp.path().join("node"));
    let (key, _) = trusted_key(&node, tmp.path(), "*");
    let k = key.to_str().unwrap();
    for v in ["1", "2"] {
        let dir = tmp.path().join(format!("m{v}"));
        random_file(&dir.join("w.bin"), 100_000, v.parse().unwrap());
        node.ctl_ok(&publish_args(dir.to_str().unwrap(), "org/m", v, k));
    }
    let gc = node.ctl_json(&["gc"]);
    assert_eq!(gc["blobs_removed"], 0);
    node.ctl_ok(&["unpin", "org/m:1"]);
    let gc = node.ctl_json(&["gc"]);
    assert_eq!(gc["manifests_removed"], 1);
    assert_eq!(gc["blobs_removed"], 1);
    assert_eq!(gc["bytes_freed"], 100_000);
    let ls = node.ctl_json(&["ls"]);
    assert_eq!(ls.as_array().unwrap().len(), 1);
    assert_eq!(ls[0]["version"], "2");
    let err = node.ctl_err(&["export", "org/m:1", tmp.path().join("x").to_str().unwrap()]);
    assert!(err.contains("no manifest matches"), "{err}");
}
