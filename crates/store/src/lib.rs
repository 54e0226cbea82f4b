//! modeld's store: BLAKE3-verified blobs on disk, indexed by redb.
//!
//! A store is a directory (`docs/store.md` specifies it byte for byte):
//!
//! ```text
//! index.redb                 the index: blobs, manifests, names, versions, pins, trust
//! blobs/ab/<hash>.data       blob bytes, named by their BLAKE3 hash (read-only once complete)
//! blobs/ab/<hash>.obao       the blob's bao outboard: pre-order parent hashes, 16 KiB groups
//! tmp/                       imports in progress (emptied when the store opens)
//! ```
//!
//! Invariants the code keeps (and the tests check):
//! - A blob is marked complete only after its every byte was hashed against its hash.
//! - Verified ranges of a partial blob are recorded only after the bytes they describe
//!   and their outboard nodes were flushed to disk (`fsync`), never before.
//! - Files are deleted only after the index commit that stops referring to them.
//! - Nothing is served, exported or reported present unless it is verified.
//!
//! The API is synchronous (redb and file IO block); async callers run it on a blocking
//! thread. A [`Store`] is a cheap handle: clone it freely. Only one process can open a
//! store at a time (redb locks the index file).
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::atomic::AtomicBool;
//! let dir = tempfile::tempdir()?;
//! let store = modeld_store::Store::open(dir.path(), Default::default())?;
//! let file = dir.path().join("weights.bin");
//! std::fs::write(&file, vec![7u8; 100_000])?;
//! let imported = store.import_file(&file, &|_| {}, &AtomicBool::new(false))?;
//! assert_eq!(imported.hash.as_bytes(), blake3::hash(&vec![7u8; 100_000]).as_bytes());
//! assert!(store.blob(imported.hash)?.unwrap().complete);
//! # Ok(()) }
//! ```

mod entry;
mod error;
mod export;
mod gc;
mod hasher;
mod import;
mod index;
mod layout;
mod manifests;
mod partial;
mod serve;
mod tables;
mod verify;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, Weak},
};

pub use error::{
    AddManifestError, ExportError, ImportError, OpenError, ReadError, ResolveError, StoreError,
    WriteError,
};
pub use export::{ExportOptions, ExportReport, Placement};
pub use gc::GcReport;
pub use import::Imported;
pub use manifests::{AddedManifest, StoredManifest};
use modeld_core::{Hash, ranges::ChunkRanges};
pub use partial::{CHECKPOINT_BYTES, CHECKPOINT_INTERVAL, PartialBlob, Written};
pub use verify::{CorruptBlob, VerifyReport};

/// Settings of a store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Threads used to hash a large file (import, verify, export). Default: all cores.
    pub hash_threads: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            hash_threads: std::thread::available_parallelism().map_or(2, usize::from),
        }
    }
}

/// What the store holds of one blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobInfo {
    /// Its hash.
    pub hash: Hash,
    /// Its full length in bytes.
    pub size: u64,
    /// Whether every byte is present and verified.
    pub complete: bool,
    /// The verified chunk ranges present (all of them when complete).
    pub ranges: ChunkRanges,
}

/// A handle to an open store. Clones share the same store.
#[derive(Debug, Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    layout: layout::Layout,
    db: redb::Database,
    options: StoreOptions,
    /// Blobs that GC must not touch: imports not yet referenced by a pinned manifest,
    /// fetches in progress. Counted, released when the last [`TempTag`] drops.
    protected: Mutex<HashMap<Hash, usize>>,
    /// Open partial blobs, so concurrent writers of one blob share one handle.
    partials: Mutex<HashMap<Hash, Weak<partial::Shared>>>,
}

impl Store {
    /// Opens (creating if needed) the store in `root`.
    ///
    /// Fails with [`OpenError::Locked`] if another process has it open.
    pub fn open(root: &Path, options: StoreOptions) -> Result<Self, OpenError> {
        let layout = layout::Layout::new(root);
        let db = index::open(&layout)?;
        layout
            .clear_tmp()
            .map_err(|e| StoreError::io("emptying tmp/", e))?;
        let store = Self {
            inner: Arc::new(Inner {
                layout,
                db,
                options,
                protected: Mutex::new(HashMap::new()),
                partials: Mutex::new(HashMap::new()),
            }),
        };
        let strays = store.sweep_strays()?;
        if strays > 0 {
            tracing::info!(strays, "removed files left behind by an interrupted write");
        }
        Ok(store)
    }

    /// The directory the store lives in.
    pub fn root(&self) -> &Path {
        self.inner.layout.root()
    }

    /// What the store holds of `hash`, if anything.
    pub fn blob(&self, hash: Hash) -> Result<Option<BlobInfo>, StoreError> {
        Ok(index::get_blob(&self.inner.db, hash)?.map(|e| BlobInfo {
            hash,
            size: e.size,
            complete: e.is_complete(),
            ranges: e.ranges(),
        }))
    }

    /// Every blob in the store.
    pub fn blobs(&self) -> Result<Vec<BlobInfo>, StoreError> {
        Ok(index::all_blobs(&self.inner.db)?
            .into_iter()
            .map(|(hash, e)| BlobInfo {
                hash,
                size: e.size,
                complete: e.is_complete(),
                ranges: e.ranges(),
            })
            .collect())
    }

    /// The path of a blob's data file (which may not exist).
    pub fn data_path(&self, hash: Hash) -> PathBuf {
        self.inner.layout.data(hash)
    }

    /// Keeps `hash` safe from GC until the returned tag is dropped.
    pub fn protect(&self, hash: Hash) -> TempTag {
        *self
            .inner
            .protected
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(hash)
            .or_insert(0) += 1;
        TempTag {
            store: Arc::downgrade(&self.inner),
            hash,
        }
    }

    fn is_protected(&self, hash: &Hash) -> bool {
        self.inner
            .protected
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(hash)
    }
}

/// Protection of one blob from GC; released on drop. See [`Store::protect`].
#[derive(Debug)]
pub struct TempTag {
    store: Weak<Inner>,
    hash: Hash,
}

impl TempTag {
    /// The protected blob.
    pub fn hash(&self) -> Hash {
        self.hash
    }
}

impl Drop for TempTag {
    fn drop(&mut self) {
        if let Some(inner) = self.store.upgrade() {
            let mut protected = inner.protected.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = protected.get_mut(&self.hash) {
                *n -= 1;
                if *n == 0 {
                    protected.remove(&self.hash);
                }
            }
        }
    }
}

/// Hashes `src` (`size` bytes) on `threads` threads in one pass, writing its pre-order
/// bao outboard (16 KiB chunk groups) into `outboard`; returns the BLAKE3 hash. This is
/// the import path's hashing on its own, for tools and benchmarks.
pub fn compute_outboard(
    src: &std::fs::File,
    size: u64,
    outboard: &std::fs::File,
    threads: usize,
) -> std::io::Result<Hash> {
    let job = hasher::Job {
        src,
        size,
        copy_to: None,
        nodes: &hasher::FileNodes(outboard),
        threads,
        progress: &|_| {},
        cancel: &std::sync::atomic::AtomicBool::new(false),
    };
    hasher::run(&job)
        .map(Hash::from)
        .map_err(std::io::Error::other)
}

/// Seconds since the Unix epoch, for callers that want the wall clock.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
pub(crate) mod test_util;
