//! Helpers for this crate's tests.

use std::path::{Path, PathBuf};

use crate::Store;

/// A fresh store in `<tempdir>/store`.
pub(crate) fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("store"), Default::default()).unwrap();
    (dir, store)
}

/// Writes `len` seeded pseudo-random bytes to `dir/name`.
pub(crate) fn random_file(dir: &Path, name: &str, len: usize, seed: u64) -> (PathBuf, Vec<u8>) {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut bytes = Vec::with_capacity(len + 8);
    while bytes.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        bytes.extend_from_slice(&x.to_le_bytes());
    }
    bytes.truncate(len);
    let path = dir.join(name);
    std::fs::write(&path, &bytes).unwrap();
    (path, bytes)
}

/// Imports `files` (name, content) and adds a manifest for them signed by a key
/// trusted for `*`; returns its id and the key.
pub(crate) fn publish(
    store: &Store,
    dir: &Path,
    files: &[(&str, &[u8])],
    sequence: u64,
) -> (modeld_core::Hash, modeld_core::SecretKey) {
    use modeld_core::{Manifest, ManifestFile, ManifestHeader, SecretKey, SignedManifest};
    let key = SecretKey::from_seed([5; 32]);
    store
        .trust_add(key.public(), modeld_core::TrustScope::All)
        .unwrap();
    let mut entries = Vec::new();
    for (i, (name, content)) in files.iter().enumerate() {
        let src = dir.join(format!("src-{sequence}-{i}"));
        std::fs::write(&src, content).unwrap();
        let imported = store
            .import_file(&src, &|_| {}, &std::sync::atomic::AtomicBool::new(false))
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
            name: "org/model".parse().unwrap(),
            version: sequence.to_string().parse().unwrap(),
            sequence,
            created: 1_700_000_000,
            expires: None,
            publisher: key.public(),
            allow_pickle: false,
        },
        entries,
    )
    .unwrap();
    let env = SignedManifest::create(&m, &key).envelope.to_bytes();
    let id = store.add_manifest(&env, NOW, true).unwrap().id;
    (id, key)
}

/// The clock used by tests.
pub(crate) const NOW: u64 = 1_800_000_000;
