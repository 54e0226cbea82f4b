//! Garbage collection: drop what no pinned manifest needs.
//!
//! In one write transaction: unpinned manifests are removed (their names keep their
//! highest sequence, so rollback protection survives), and every blob that no pinned
//! manifest references and nothing protects (an import awaiting its manifest, a fetch
//! in progress) is removed from the index. Only after that commit are the files
//! deleted. Files that the index does not know at all (left by a crash between a
//! rename and its commit) are swept when the store opens.

use std::{collections::HashSet, fs};

use modeld_core::Hash;
use redb::ReadableTable;

use crate::{
    Store,
    error::{IndexResult, StoreError},
    index,
    tables::{BLOBS, MANIFESTS, PINS, VERSIONS},
};

/// What a GC run removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Unpinned manifests removed.
    pub manifests_removed: usize,
    /// Blobs removed.
    pub blobs_removed: usize,
    /// Bytes of blob data freed.
    pub bytes_freed: u64,
    /// The manifests removed.
    pub removed_manifests: Vec<Hash>,
    /// The blobs removed.
    pub removed_blobs: Vec<Hash>,
}

impl Store {
    /// Removes unpinned manifests and unreferenced, unprotected blobs.
    pub fn gc(&self) -> Result<GcReport, StoreError> {
        let mut report = GcReport::default();
        let mut doomed: Vec<(Hash, u64)> = Vec::new();
        let tx = self.inner.db.begin_write().idx()?;
        {
            let pins = tx.open_table(PINS).idx()?;
            let mut manifests = tx.open_table(MANIFESTS).idx()?;
            let mut keep: HashSet<Hash> = HashSet::new();
            let mut unpinned = Vec::new();
            for item in manifests.iter().idx()? {
                let (k, v) = item.idx()?;
                let id = Hash::from_bytes(k.value());
                // A fetch in progress protects its (not yet pinned) manifest.
                if pins.get(id.as_bytes()).idx()?.is_some() || self.is_protected(&id) {
                    let signed = modeld_core::SignedManifest::open(v.value())
                        .map_err(|e| StoreError::Corrupt(format!("manifest {id}: {e}")))?;
                    keep.extend(signed.manifest.files().iter().map(|f| f.blake3));
                } else {
                    unpinned.push(id);
                }
            }
            for id in &unpinned {
                manifests.remove(id.as_bytes()).idx()?;
            }
            report.manifests_removed = unpinned.len();
            report.removed_manifests = unpinned.clone();
            let unpinned: HashSet<Hash> = unpinned.into_iter().collect();
            let mut versions = tx.open_table(VERSIONS).idx()?;
            versions
                .retain(|_, id| !unpinned.contains(&Hash::from_bytes(id)))
                .idx()?;

            let mut blobs = tx.open_table(BLOBS).idx()?;
            for item in blobs.iter().idx()? {
                let (k, v) = item.idx()?;
                let hash = Hash::from_bytes(k.value());
                if !keep.contains(&hash) && !self.is_protected(&hash) {
                    doomed.push((hash, index::decode_entry(v.value())?.size));
                }
            }
            for (hash, _) in &doomed {
                blobs.remove(hash.as_bytes()).idx()?;
            }
        }
        tx.commit().idx()?;

        let layout = &self.inner.layout;
        for (hash, size) in &doomed {
            for path in [layout.data(*hash), layout.outboard(*hash)] {
                match fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(StoreError::io(format!("removing {}", path.display()), e));
                    }
                }
            }
            report.blobs_removed += 1;
            report.bytes_freed += size;
            report.removed_blobs.push(*hash);
        }
        Ok(report)
    }

    /// Deletes files under `blobs/` that the index does not know (left by a crash
    /// between a rename and its commit). Only run at open, when nothing else can be
    /// between those two steps.
    pub(crate) fn sweep_strays(&self) -> Result<usize, StoreError> {
        let known: HashSet<Hash> = index::all_blobs(&self.inner.db)?
            .into_iter()
            .map(|(h, _)| h)
            .collect();
        let blobs = self.inner.layout.blobs();
        let io = |e| StoreError::io(format!("listing {}", blobs.display()), e);
        let mut removed = 0;
        for dir in fs::read_dir(&blobs).map_err(io)? {
            let dir = dir.map_err(io)?;
            if !dir.file_type().map_err(io)?.is_dir() {
                continue;
            }
            for file in fs::read_dir(dir.path()).map_err(io)? {
                let file = file.map_err(io)?;
                let name = file.file_name();
                let name = name.to_string_lossy();
                let stem = name.split('.').next().unwrap_or_default();
                let Ok(hash) = stem.parse::<Hash>() else {
                    continue;
                };
                if !known.contains(&hash) && !self.is_protected(&hash) {
                    match fs::remove_file(file.path()) {
                        Ok(()) => removed += 1,
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => return Err(io(e)),
                    }
                }
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use crate::test_util::{NOW, publish, store};

    #[test]
    fn gc_keeps_pinned_and_protected_and_removes_the_rest() {
        let (dir, store) = store();
        let (old, _) = publish(&store, dir.path(), &[("a.bin", b"old weights")], 1);
        let old_envelope = store.manifest(old).unwrap().unwrap().envelope;
        let (new, _) = publish(&store, dir.path(), &[("a.bin", b"new weights")], 2);
        let src = dir.path().join("loose");
        std::fs::write(&src, b"imported, not yet in a manifest").unwrap();
        let loose = store
            .import_file(&src, &|_| {}, &AtomicBool::new(false))
            .unwrap();

        assert!(store.unpin(old).unwrap());
        let report = store.gc().unwrap();
        assert_eq!(report.manifests_removed, 1);
        assert_eq!(report.blobs_removed, 1);
        assert_eq!(report.bytes_freed, 11);
        assert!(store.manifest(new).unwrap().is_some());
        assert!(store.manifest(old).unwrap().is_none());
        assert!(
            store.blob(loose.hash).unwrap().is_some(),
            "protected blob removed"
        );

        drop(loose.tag);
        let report = store.gc().unwrap();
        assert_eq!(report.blobs_removed, 1);
        assert!(!store.data_path(loose.hash).exists());

        // The name's sequence floor survives GC: the old release is still refused.
        let err = store.add_manifest(&old_envelope, NOW, true).unwrap_err();
        assert!(err.to_string().contains("rollback"), "{err}");
    }
}
