//! Partial blobs: verified data arriving in pieces, from any number of writers.
//!
//! Incoming data is a bao encoding of some chunk ranges. It is decoded and verified
//! chunk group by chunk group against the blob's hash; verified parent nodes go to the
//! outboard file and verified leaves to the data file, both with positioned writes.
//! Such ranges are *pending*: verified and written, not yet flushed. A checkpoint
//! flushes both files and then records the pending ranges in the index, so the index
//! never claims data that a power cut could lose. Checkpoints happen every
//! [`CHECKPOINT_BYTES`] or [`CHECKPOINT_INTERVAL`], and when the last handle drops.
//!
//! When a partial blob is reopened (after a crash, or a `kill -9`), the ranges not
//! recorded are re-validated against the outboard: whatever had been written and still
//! verifies is recovered without a byte of network traffic.
//!
//! When the recorded ranges cover the whole blob, the data file is hashed once more end
//! to end; only if that matches is the blob marked complete.

use std::{
    fs::{self, File, OpenOptions, Permissions},
    io::{self, Read},
    os::unix::fs::{FileExt, PermissionsExt},
    sync::{Arc, Mutex, atomic::AtomicBool},
    time::{Duration, Instant},
};

use bao_tree::{
    BaoTree, ChunkNum, TreeNode,
    io::{
        BaoContentItem, DecodeError, Leaf, Parent,
        outboard::PreOrderOutboard,
        sync::{DecodeResponseIter, OutboardMut, valid_ranges},
    },
};
use modeld_core::{
    Hash,
    ranges::{self, ChunkRanges},
};
use redb::ReadableTable;

use crate::{
    Store, TempTag,
    entry::{BlobEntry, BlobState},
    error::{IndexResult, StoreError, WriteError},
    hasher::{self, CompareNodes},
    index, layout,
    tables::BLOBS,
};

/// Pending bytes that trigger a checkpoint.
pub const CHECKPOINT_BYTES: u64 = 32 << 20;
/// Time after which pending data is checkpointed at the next write.
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);

/// What one [`PartialBlob::write_encoded`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Written {
    /// Verified bytes that were new, now written.
    pub new: u64,
    /// Verified bytes that were already present (not written again).
    pub duplicate: u64,
}

/// A handle for writing verified data into a blob. Clones share state; so do handles
/// for the same blob obtained separately from [`Store::partial`].
#[derive(Debug, Clone)]
pub struct PartialBlob {
    pub(crate) shared: Arc<Shared>,
}

#[derive(Debug)]
pub(crate) struct Shared {
    store: Store,
    hash: Hash,
    size: u64,
    data: File,
    obao: File,
    state: Mutex<State>,
    /// Serialises checkpoints (flush + commit), which run without holding `state`.
    checkpointing: Mutex<()>,
    _tag: TempTag,
}

#[derive(Debug)]
struct State {
    /// Recorded in the index: flushed and verified.
    durable: ChunkRanges,
    /// Verified and written, not yet flushed and recorded.
    pending: ChunkRanges,
    pending_bytes: u64,
    last_checkpoint: Instant,
    complete: bool,
}

/// Saves verified parent nodes into the pre-order outboard file.
struct OutboardWriter<'a> {
    tree: BaoTree,
    file: &'a File,
}

impl OutboardMut for OutboardWriter<'_> {
    fn save(&mut self, node: TreeNode, pair: &(blake3::Hash, blake3::Hash)) -> io::Result<()> {
        let Some(offset) = self.tree.pre_order_offset(node) else {
            return Ok(());
        };
        let mut bytes = [0u8; 64];
        bytes[..32].copy_from_slice(pair.0.as_bytes());
        bytes[32..].copy_from_slice(pair.1.as_bytes());
        self.file.write_all_at(&bytes, offset * 64)
    }

    fn sync(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Store {
    /// Opens the blob `hash` of `size` bytes for verified writes, creating an empty
    /// partial entry if the store has nothing of it. Data written earlier but not yet
    /// recorded (a crash between write and checkpoint) is re-verified and recovered.
    pub fn partial(&self, hash: Hash, size: u64) -> Result<PartialBlob, WriteError> {
        let mut registry = self
            .inner
            .partials
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(shared) = registry.get(&hash).and_then(std::sync::Weak::upgrade) {
            if shared.size != size {
                return Err(WriteError::SizeMismatch {
                    hash,
                    expected: size,
                    stored: shared.size,
                });
            }
            return Ok(PartialBlob { shared });
        }
        registry.retain(|_, w| w.strong_count() > 0);
        let shared = Arc::new(self.open_partial(hash, size)?);
        registry.insert(hash, Arc::downgrade(&shared));
        Ok(PartialBlob { shared })
    }

    fn open_partial(&self, hash: Hash, size: u64) -> Result<Shared, WriteError> {
        let layout = &self.inner.layout;
        let tag = self.protect(hash);
        let existing = index::get_blob(&self.inner.db, hash)?;
        if let Some(e) = &existing
            && e.size != size
        {
            return Err(WriteError::SizeMismatch {
                hash,
                expected: size,
                stored: e.size,
            });
        }
        let io = |what: &str, e| StoreError::io(format!("{what} of blob {hash}"), e);
        fs::create_dir_all(layout.blob_dir(hash)).map_err(|e| io("creating directory", e))?;
        let complete = existing.as_ref().is_some_and(BlobEntry::is_complete);
        let open = |path: &std::path::Path| {
            let mut o = OpenOptions::new();
            o.read(true);
            if !complete {
                o.write(true).create(true);
            }
            o.open(path)
        };
        let data = open(&layout.data(hash)).map_err(|e| io("opening data", e))?;
        let obao = open(&layout.outboard(hash)).map_err(|e| io("opening outboard", e))?;
        let mut durable = existing
            .as_ref()
            .map_or_else(ChunkRanges::empty, BlobEntry::ranges);
        if !complete {
            let tree = ranges::tree(size);
            if obao
                .metadata()
                .map_err(|e| io("reading outboard", e))?
                .len()
                < tree.outboard_size()
            {
                obao.set_len(tree.outboard_size())
                    .map_err(|e| io("sizing outboard", e))?;
            }
            if existing.is_none() {
                // Reserve the space now: a full disk fails here rather than half way, and
                // pieces land in allocated extents instead of holes.
                layout::allocate(&data, size).map_err(|e| io("reserving space", e))?;
                data.sync_all().map_err(|e| io("flushing data", e))?;
                obao.sync_all().map_err(|e| io("flushing outboard", e))?;
                layout::sync_dir(&layout.blob_dir(hash))
                    .map_err(|e| io("flushing directory", e))?;
                self.record_partial(hash, size, &ChunkRanges::empty())?;
            } else {
                let missing = &ranges::all(size) - &durable;
                let recovered = recover(hash, size, &data, &obao, &missing)
                    .map_err(|e| io("re-verifying", e))?;
                if !recovered.is_empty() {
                    tracing::info!(
                        blob = %hash,
                        bytes = ranges::covered_bytes(&recovered, size),
                        "recovered verified data written before a restart"
                    );
                    data.sync_all().map_err(|e| io("flushing data", e))?;
                    obao.sync_all().map_err(|e| io("flushing outboard", e))?;
                    durable |= recovered;
                }
            }
        }
        let shared = Shared {
            store: self.clone(),
            hash,
            size,
            data,
            obao,
            state: Mutex::new(State {
                durable: ChunkRanges::empty(),
                pending: durable,
                pending_bytes: 0,
                last_checkpoint: Instant::now(),
                complete,
            }),
            checkpointing: Mutex::new(()),
            _tag: tag,
        };
        if !complete {
            // Records recovered ranges (or completes the blob if they were the last).
            let shared_ref = PartialBlob {
                shared: Arc::new(shared),
            };
            shared_ref.checkpoint()?;
            return Ok(Arc::into_inner(shared_ref.shared).expect("sole owner"));
        }
        Ok(shared)
    }

    /// Writes the index entry of a partial blob (or completes it).
    fn record_partial(&self, hash: Hash, size: u64, r: &ChunkRanges) -> Result<(), StoreError> {
        let tx = self.inner.db.begin_write().idx()?;
        {
            let mut blobs = tx.open_table(BLOBS).idx()?;
            let current = blobs
                .get(hash.as_bytes())
                .idx()?
                .map(|v| index::decode_entry(v.value()))
                .transpose()?;
            if current.as_ref().is_some_and(BlobEntry::is_complete) {
                return Ok(());
            }
            let entry = BlobEntry {
                size,
                state: BlobState::Partial(ranges::clip(r, size)),
            };
            blobs
                .insert(hash.as_bytes(), entry.to_bytes().as_slice())
                .idx()?;
        }
        tx.commit().idx()
    }

    /// Marks a fully present blob complete after hashing it end to end.
    /// Returns the ranges that failed if the hash does not match.
    fn complete_partial(&self, shared: &Shared) -> Result<Option<ChunkRanges>, StoreError> {
        let hash = shared.hash;
        let cmp = CompareNodes::new(&shared.obao);
        let job = hasher::Job {
            src: &shared.data,
            size: shared.size,
            copy_to: None,
            nodes: &cmp,
            threads: self.inner.options.hash_threads,
            progress: &|_| {},
            cancel: &AtomicBool::new(false),
        };
        let io = |what: &str, e| StoreError::io(format!("{what} blob {hash}"), e);
        let root = hasher::run(&job).map_err(|e| io("verifying", io::Error::other(e)))?;
        if Hash::from(root) != hash || cmp.mismatch() {
            let all = ranges::all(shared.size);
            let good = recover(hash, shared.size, &shared.data, &shared.obao, &all)
                .map_err(|e| io("re-verifying", e))?;
            return Ok(Some(&all - &good));
        }
        let tx = self.inner.db.begin_write().idx()?;
        {
            let mut blobs = tx.open_table(BLOBS).idx()?;
            fs::set_permissions(self.inner.layout.data(hash), Permissions::from_mode(0o444))
                .map_err(|e| io("making read-only", e))?;
            blobs
                .insert(
                    hash.as_bytes(),
                    BlobEntry::complete(shared.size).to_bytes().as_slice(),
                )
                .idx()?;
        }
        tx.commit().idx()?;
        Ok(None)
    }
}

/// The chunk ranges within `within` whose data verifies against the outboard.
pub(crate) fn recover(
    hash: Hash,
    size: u64,
    data: &File,
    obao: &File,
    within: &ChunkRanges,
) -> io::Result<ChunkRanges> {
    let outboard = PreOrderOutboard {
        root: hash.into(),
        tree: ranges::tree(size),
        data: obao,
    };
    let mut good = ChunkRanges::empty();
    for r in valid_ranges(outboard, data, within) {
        good |= ChunkRanges::from(r?);
    }
    Ok(good)
}

impl PartialBlob {
    /// The blob's hash.
    pub fn hash(&self) -> Hash {
        self.shared.hash
    }

    /// The blob's size.
    pub fn size(&self) -> u64 {
        self.shared.size
    }

    /// Whether every byte is present, verified and recorded.
    pub fn is_complete(&self) -> bool {
        self.lock().complete
    }

    /// Verified ranges present, including those not yet checkpointed.
    pub fn available(&self) -> ChunkRanges {
        let s = self.lock();
        if s.complete {
            return ranges::all(self.shared.size);
        }
        &s.durable | &s.pending
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Decodes `encoded`, the bao encoding of `ranges` of this blob, verifying every
    /// parent and chunk group before writing it. Returns how many verified bytes were
    /// new and how many were already present (and not written again).
    ///
    /// On a verification failure or a broken stream, what verified before the failure
    /// is kept (pending) and the error says what failed.
    pub fn write_encoded(
        &self,
        ranges: &ChunkRanges,
        encoded: impl Read,
    ) -> Result<Written, WriteError> {
        let hash = self.shared.hash;
        let tree = ranges::tree(self.shared.size);
        let mut outboard = OutboardWriter {
            tree,
            file: &self.shared.obao,
        };
        // What is already here of the requested ranges (small: one request's worth).
        let have = {
            let s = self.lock();
            if s.complete {
                ranges::all(self.shared.size)
            } else {
                &(&s.durable | &s.pending) & ranges
            }
        };
        let mut written = Written::default();
        let mut fresh = ChunkRanges::empty();
        let mut result = Ok(());
        for item in DecodeResponseIter::new(hash.into(), tree, encoded, ranges) {
            let step = match item {
                Ok(BaoContentItem::Parent(Parent { node, pair })) => outboard
                    .save(node, &pair)
                    .map_err(|e| StoreError::io(format!("writing outboard of {hash}"), e).into()),
                Ok(BaoContentItem::Leaf(Leaf { offset, data })) => {
                    let start = offset / ranges::CHUNK_BYTES;
                    let end = (offset + data.len() as u64).div_ceil(ranges::CHUNK_BYTES);
                    let leaf = ChunkRanges::from(ChunkNum(start)..ChunkNum(end));
                    if leaf.is_subset(&have) {
                        written.duplicate += data.len() as u64;
                        Ok(())
                    } else {
                        let w = self.shared.data.write_all_at(&data, offset).map_err(|e| {
                            WriteError::from(StoreError::io(format!("writing data of {hash}"), e))
                        });
                        if w.is_ok() {
                            fresh |= leaf;
                            written.new += data.len() as u64;
                        }
                        w
                    }
                }
                Err(DecodeError::LeafHashMismatch(c)) => Err(WriteError::Corrupt {
                    hash,
                    what: format!("chunk group at byte {}", c.0 * ranges::CHUNK_BYTES),
                }),
                Err(DecodeError::ParentHashMismatch(n)) => Err(WriteError::Corrupt {
                    hash,
                    what: format!("tree node {n}"),
                }),
                Err(DecodeError::Io(e)) => Err(WriteError::Stream { hash, source: e }),
                Err(e @ (DecodeError::ParentNotFound(_) | DecodeError::LeafNotFound(_))) => {
                    Err(WriteError::Stream {
                        hash,
                        source: io::Error::new(io::ErrorKind::UnexpectedEof, e.to_string()),
                    })
                }
            };
            if let Err(e) = step {
                result = Err(e);
                break;
            }
        }

        // Whatever verified before a failure is kept.
        self.add_pending(fresh, written.new)?;
        result.map(|()| written)
    }

    /// Records verified, written ranges as pending; checkpoints when due.
    fn add_pending(&self, fresh: ChunkRanges, bytes: u64) -> Result<(), WriteError> {
        if fresh.is_empty() {
            return Ok(());
        }
        let due = {
            let mut s = self.lock();
            if s.complete {
                return Ok(());
            }
            s.pending |= fresh;
            s.pending_bytes += bytes;
            s.pending_bytes >= CHECKPOINT_BYTES
                || s.last_checkpoint.elapsed() >= CHECKPOINT_INTERVAL
        };
        if due {
            self.checkpoint()?;
        }
        Ok(())
    }

    /// Flushes written data and records it in the index. Completes the blob (after an
    /// end-to-end hash) when everything is present.
    pub fn checkpoint(&self) -> Result<(), StoreError> {
        let _one_at_a_time = self
            .shared
            .checkpointing
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let (snapshot, durable) = {
            let mut s = self.lock();
            s.last_checkpoint = Instant::now();
            if s.complete || s.pending.is_empty() {
                return Ok(());
            }
            s.pending_bytes = 0;
            (s.pending.clone(), s.durable.clone())
        };
        let hash = self.shared.hash;
        let io = |what: &str, e| StoreError::io(format!("{what} of blob {hash}"), e);
        let started = Instant::now();
        self.shared
            .data
            .sync_data()
            .map_err(|e| io("flushing data", e))?;
        self.shared
            .obao
            .sync_data()
            .map_err(|e| io("flushing outboard", e))?;
        let recorded = &durable | &snapshot;
        let store = &self.shared.store;
        if ranges::is_complete(&recorded, self.shared.size) {
            let flushed = started.elapsed();
            let verdict = store.complete_partial(&self.shared)?;
            tracing::debug!(
                blob = %hash,
                flush_ms = flushed.as_millis() as u64,
                verify_ms = (started.elapsed() - flushed).as_millis() as u64,
                "blob whole: flushed and verified end to end"
            );
            match verdict {
                None => {
                    let mut s = self.lock();
                    s.complete = true;
                    s.durable = ranges::all(self.shared.size);
                    s.pending = ChunkRanges::empty();
                    return Ok(());
                }
                Some(bad) => {
                    tracing::error!(
                        blob = %hash,
                        bad = %ranges::format_byte_ranges(&ranges::byte_ranges(&bad, self.shared.size)),
                        "blob failed end-to-end verification; dropping the bad ranges"
                    );
                    let good = &recorded - &bad;
                    store.record_partial(hash, self.shared.size, &good)?;
                    let mut s = self.lock();
                    s.durable = good;
                    s.pending = &s.pending - &bad;
                    s.pending = &s.pending - &s.durable;
                    return Ok(());
                }
            }
        }
        store.record_partial(hash, self.shared.size, &recorded)?;
        let mut s = self.lock();
        s.durable = recorded;
        s.pending = &s.pending - &s.durable;
        Ok(())
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        let s = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
        if s.complete || s.pending.is_empty() {
            return;
        }
        // Last handle gone with data pending: flush and record it (best effort).
        let pending = std::mem::take(&mut s.pending);
        let recorded = &s.durable | &pending;
        let flushed = self.data.sync_data().and_then(|()| self.obao.sync_data());
        if flushed.is_ok()
            && !ranges::is_complete(&recorded, self.size)
            && let Err(e) = self.store.record_partial(self.hash, self.size, &recorded)
        {
            tracing::warn!(blob = %self.hash, error = %e, "could not record final checkpoint");
        }
        // A blob that became whole here is completed the next time it is opened.
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use modeld_core::ranges::{self, ChunkRanges};

    use crate::test_util::{random_file, store};

    fn chunk_ranges(bytes: std::ops::Range<u64>) -> ChunkRanges {
        ranges::from_bytes(bytes)
    }

    #[test]
    fn pieces_from_a_seed_assemble_into_a_complete_blob() {
        let (dir, seed) = store();
        let (dir2, leech) = store();
        let size = 3 * (1 << 20) + 12_345;
        let (path, bytes) = random_file(dir.path(), "w.bin", size, 3);
        let imported = seed
            .import_file(&path, &|_| {}, &AtomicBool::new(false))
            .unwrap();
        let hash = imported.hash;

        let blob = leech.partial(hash, size as u64).unwrap();
        let pieces = [1u64 << 20..2 << 20, 0..1 << 20, 2 << 20..size as u64];
        for (i, piece) in pieces.iter().enumerate() {
            let r = chunk_ranges(piece.clone());
            let mut encoded = Vec::new();
            seed.encode_ranges(hash, &r, &mut encoded).unwrap();
            let n = blob.write_encoded(&r, encoded.as_slice()).unwrap();
            assert_eq!(n.new, piece.end - piece.start);
            assert_eq!(n.duplicate, 0);
            blob.checkpoint().unwrap();
            let info = leech.blob(hash).unwrap().unwrap();
            assert_eq!(info.complete, i == pieces.len() - 1);
        }
        assert!(blob.is_complete());
        assert_eq!(std::fs::read(leech.data_path(hash)).unwrap(), bytes);
        // The same piece again is counted as a duplicate and changes nothing.
        let r = chunk_ranges(0..1 << 20);
        let mut encoded = Vec::new();
        seed.encode_ranges(hash, &r, &mut encoded).unwrap();
        let again = blob.write_encoded(&r, encoded.as_slice()).unwrap();
        assert_eq!((again.new, again.duplicate), (0, 1 << 20));
        drop(dir2);
    }

    #[test]
    fn a_partial_blob_serves_only_what_it_has() {
        let (dir, seed) = store();
        let (_d2, leech) = store();
        let size = 1 << 20;
        let (path, _) = random_file(dir.path(), "w.bin", size, 4);
        let hash = seed
            .import_file(&path, &|_| {}, &AtomicBool::new(false))
            .unwrap()
            .hash;
        let blob = leech.partial(hash, size as u64).unwrap();
        let first = chunk_ranges(0..256 * 1024);
        let mut enc = Vec::new();
        seed.encode_ranges(hash, &first, &mut enc).unwrap();
        blob.write_encoded(&first, enc.as_slice()).unwrap();
        blob.checkpoint().unwrap();

        // What it has, it serves, and the bytes decode against the hash.
        let mut served = Vec::new();
        leech.encode_ranges(hash, &first, &mut served).unwrap();
        assert_eq!(served, enc);
        // What it lacks, it refuses, naming the missing bytes.
        let err = leech
            .encode_ranges(hash, &chunk_ranges(0..512 * 1024), &mut Vec::new())
            .unwrap_err();
        assert!(err.to_string().contains("262144..524288"), "{err}");
    }

    #[test]
    fn a_corrupt_piece_is_refused_and_nothing_after_it_kept() {
        let (dir, seed) = store();
        let (_d2, leech) = store();
        let size = 1 << 20;
        let (path, _) = random_file(dir.path(), "w.bin", size, 5);
        let hash = seed
            .import_file(&path, &|_| {}, &AtomicBool::new(false))
            .unwrap()
            .hash;
        let r = chunk_ranges(0..size as u64);
        let mut enc = Vec::new();
        seed.encode_ranges(hash, &r, &mut enc).unwrap();
        // Flip a byte far into the stream (past a few chunk groups).
        let at = enc.len() / 2;
        enc[at] ^= 0x40;
        let blob = leech.partial(hash, size as u64).unwrap();
        let err = blob.write_encoded(&r, enc.as_slice()).unwrap_err();
        assert!(matches!(err, crate::WriteError::Corrupt { .. }), "{err}");
        blob.checkpoint().unwrap();
        let have = leech.blob(hash).unwrap().unwrap();
        assert!(!have.complete);
        let kept = ranges::covered_bytes(&have.ranges, size as u64);
        assert!(kept > 0 && kept < size as u64 / 2 + 16384, "kept {kept}");
    }

    #[test]
    fn unrecorded_writes_are_recovered_on_reopen() {
        let (dir, seed) = store();
        let (d2, leech) = store();
        let size = 2 << 20;
        let (path, bytes) = random_file(dir.path(), "w.bin", size, 6);
        let hash = seed
            .import_file(&path, &|_| {}, &AtomicBool::new(false))
            .unwrap()
            .hash;
        let r = chunk_ranges(0..1 << 20);
        let mut enc = Vec::new();
        seed.encode_ranges(hash, &r, &mut enc).unwrap();
        {
            let blob = leech.partial(hash, size as u64).unwrap();
            blob.write_encoded(&r, enc.as_slice()).unwrap();
            // Simulate a crash: the handle is leaked, nothing is recorded.
            std::mem::forget(blob);
        }
        let before = leech.blob(hash).unwrap().unwrap();
        assert!(before.ranges.is_empty());
        // The leaked handle keeps this store open, as a killed process would have left
        // its files: open a copy of the directory, as the restarted daemon would.
        let copy = tempfile::tempdir().unwrap();
        copy_dir(&d2.path().join("store"), &copy.path().join("store"));
        let leech = crate::Store::open(&copy.path().join("store"), Default::default()).unwrap();
        let blob = leech.partial(hash, size as u64).unwrap();
        assert_eq!(
            ranges::covered_bytes(&blob.available(), size as u64),
            1 << 20
        );
        let info = leech.blob(hash).unwrap().unwrap();
        assert_eq!(ranges::covered_bytes(&info.ranges, size as u64), 1 << 20);
        let data = std::fs::read(leech.data_path(hash)).unwrap();
        assert_eq!(&data[..1 << 20], &bytes[..1 << 20]);
    }

    fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            let dst = to.join(e.file_name());
            if e.file_type().unwrap().is_dir() {
                copy_dir(&e.path(), &dst);
            } else {
                std::fs::copy(e.path(), dst).unwrap();
            }
        }
    }
}
