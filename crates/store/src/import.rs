//! Importing a local file: one pass that copies, hashes and builds the outboard.
//!
//! The data goes to a temporary file (a reflink where the file system allows, else a
//! copy made during the hashing pass), is flushed, and only then renamed to its
//! hash-named place and recorded complete. A crash at any point leaves either no
//! entry (temporary files are swept when the store opens) or a complete, correct one.

use std::{
    fs::{self, File, Permissions},
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::atomic::AtomicBool,
};

use modeld_core::{Hash, ranges};
use redb::ReadableTable;

use crate::{
    Store, TempTag,
    entry::BlobEntry,
    error::{ImportError, IndexResult, StoreError},
    hasher::{self, FileNodes, HashError},
    layout::{self, reflink},
    tables::BLOBS,
};

/// The result of importing one file.
#[derive(Debug)]
pub struct Imported {
    /// Its BLAKE3 hash.
    pub hash: Hash,
    /// Its length.
    pub size: u64,
    /// The store already had it complete; nothing was written.
    pub deduplicated: bool,
    /// The data was adopted by reflink (no bytes copied).
    pub reflinked: bool,
    /// Keeps the blob from GC until a pinned manifest references it.
    pub tag: TempTag,
}

/// Temporary files that are removed unless disarmed.
struct TempFiles(Vec<PathBuf>);

impl Drop for TempFiles {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = fs::remove_file(p);
        }
    }
}

impl Store {
    /// Imports the file at `path`: hashes it on all cores, stores data and outboard,
    /// and records it complete. `progress` is called with bytes hashed as they go;
    /// setting `cancel` stops the import and leaves no trace.
    pub fn import_file(
        &self,
        path: &Path,
        progress: &(dyn Fn(u64) + Sync),
        cancel: &AtomicBool,
    ) -> Result<Imported, ImportError> {
        let read_err = |source| ImportError::Read {
            path: path.to_owned(),
            source,
        };
        let src = File::open(path).map_err(read_err)?;
        let before = src.metadata().map_err(read_err)?;
        if !before.is_file() {
            return Err(ImportError::NotAFile(path.to_owned()));
        }
        let size = before.len();

        let layout = &self.inner.layout;
        let tmp_err =
            |e| StoreError::io(format!("creating a file in {}", layout.tmp().display()), e);
        let (data_path, data) = layout.temp_file("data").map_err(tmp_err)?;
        let (obao_path, obao) = layout.temp_file("obao").map_err(tmp_err)?;
        let mut temps = TempFiles(vec![data_path.clone(), obao_path.clone()]);
        obao.set_len(ranges::tree(size).outboard_size())
            .map_err(|e| StoreError::io("sizing outboard", e))?;

        let started = std::time::Instant::now();
        let reflinked = size > 0 && reflink(&src, &data).is_ok();
        if !reflinked && size > 0 {
            layout::allocate(&data, size).map_err(|e| {
                StoreError::io(format!("reserving {size} bytes for {}", path.display()), e)
            })?;
        }
        // Hash the source even when reflinked: the clone shares its blocks but not its
        // page cache, and the size/mtime check below catches a change after cloning.
        let job = hasher::Job {
            src: &src,
            size,
            copy_to: (!reflinked).then_some(&data),
            nodes: &FileNodes(&obao),
            threads: self.inner.options.hash_threads,
            progress,
            cancel,
        };
        let hash: Hash = match hasher::run(&job) {
            Ok(h) => h.into(),
            Err(HashError::Cancelled) => return Err(ImportError::Cancelled),
            Err(HashError::Truncated { .. }) => return Err(ImportError::Changed(path.to_owned())),
            Err(HashError::Io(e)) => {
                return Err(StoreError::io(format!("importing {}", path.display()), e).into());
            }
        };
        let after = src.metadata().map_err(read_err)?;
        if after.len() != size
            || after.mtime() != before.mtime()
            || after.mtime_nsec() != before.mtime_nsec()
        {
            return Err(ImportError::Changed(path.to_owned()));
        }
        let hashed = started.elapsed();
        data.sync_all()
            .and_then(|()| obao.sync_all())
            .map_err(|e| StoreError::io("flushing imported data", e))?;
        tracing::debug!(
            path = %path.display(),
            size,
            hash_ms = hashed.as_millis() as u64,
            flush_ms = (started.elapsed() - hashed).as_millis() as u64,
            "import timing"
        );

        let tag = self.protect(hash);
        let deduplicated = self.commit_complete(hash, size, &data_path, &obao_path)?;
        if !deduplicated {
            temps.0.clear();
        }
        Ok(Imported {
            hash,
            size,
            deduplicated,
            reflinked,
            tag,
        })
    }

    /// Moves verified, flushed files into place and records the blob complete.
    /// Returns `true` if the store already had the blob complete (files untouched).
    pub(crate) fn commit_complete(
        &self,
        hash: Hash,
        size: u64,
        data_path: &Path,
        obao_path: &Path,
    ) -> Result<bool, StoreError> {
        let layout = &self.inner.layout;
        let tx = self.inner.db.begin_write().idx()?;
        {
            let mut blobs = tx.open_table(BLOBS).idx()?;
            if let Some(v) = blobs.get(hash.as_bytes()).idx()?
                && crate::index::decode_entry(v.value())?.is_complete()
            {
                return Ok(true);
            }
            let dir = layout.blob_dir(hash);
            let io = |what: &str, e| StoreError::io(format!("{what} blob {hash}"), e);
            fs::create_dir_all(&dir).map_err(|e| io("creating directory for", e))?;
            fs::set_permissions(data_path, Permissions::from_mode(0o444))
                .map_err(|e| io("making read-only", e))?;
            fs::rename(data_path, layout.data(hash)).map_err(|e| io("moving data of", e))?;
            fs::rename(obao_path, layout.outboard(hash))
                .map_err(|e| io("moving outboard of", e))?;
            layout::sync_dir(&dir).map_err(|e| io("flushing directory of", e))?;
            blobs
                .insert(
                    hash.as_bytes(),
                    BlobEntry::complete(size).to_bytes().as_slice(),
                )
                .idx()?;
        }
        tx.commit().idx()?;
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use crate::test_util::{random_file, store};

    #[test]
    fn import_matches_blake3_and_dedups() {
        let (dir, store) = store();
        let (path, bytes) = random_file(dir.path(), "a.bin", 5 << 20, 1);
        let no = AtomicBool::new(false);
        let a = store.import_file(&path, &|_| {}, &no).unwrap();
        assert_eq!(a.hash.as_bytes(), blake3::hash(&bytes).as_bytes());
        assert!(!a.deduplicated);
        let info = store.blob(a.hash).unwrap().unwrap();
        assert!(info.complete);
        assert_eq!(info.size, bytes.len() as u64);
        assert_eq!(std::fs::read(store.data_path(a.hash)).unwrap(), bytes);
        let b = store.import_file(&path, &|_| {}, &no).unwrap();
        assert!(b.deduplicated);
        // Nothing is left in tmp/.
        assert_eq!(
            std::fs::read_dir(dir.path().join("store/tmp"))
                .unwrap()
                .count(),
            0
        );
    }

    #[test]
    fn import_of_a_directory_is_refused() {
        let (dir, store) = store();
        let err = store
            .import_file(dir.path(), &|_| {}, &AtomicBool::new(false))
            .unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
    }

    #[test]
    fn cancelled_import_leaves_nothing() {
        let (dir, store) = store();
        let (path, _) = random_file(dir.path(), "a.bin", 9 << 20, 2);
        let err = store
            .import_file(&path, &|_| {}, &AtomicBool::new(true))
            .unwrap_err();
        assert!(matches!(err, crate::ImportError::Cancelled));
        assert!(store.blobs().unwrap().is_empty());
        assert_eq!(
            std::fs::read_dir(dir.path().join("store/tmp"))
                .unwrap()
                .count(),
            0
        );
    }
}
