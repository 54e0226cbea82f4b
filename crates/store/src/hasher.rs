//! One pass over a file: its BLAKE3 hash and bao outboard, on every core, in flat memory.
//!
//! The file is cut into segments of [`SEGMENT_GROUPS`] chunk groups (4 MiB). Each worker
//! thread claims the next segment, reads it in L2-sized pieces with `pread`, hashes
//! every 16 KiB chunk group (optionally writing the piece to a copy), then folds the
//! segment's group hashes into its subtree. A segment is a complete subtree of the
//! bao tree, so its parent nodes form one contiguous run of the pre-order outboard
//! and are written with one positioned write. When all segments are done, the
//! calling thread folds the segment hashes into the top of the tree.
//!
//! The tree is BLAKE3's own: left-balanced, the left child of every node covering the
//! largest power of two of chunk groups smaller than the node. The outboard layout is
//! bao-tree's pre-order layout (tested byte for byte against `bao_tree`).
//!
//! Memory: one segment buffer per thread plus 32 bytes per segment for the hashes
//! (8 bytes per MiB of file), whatever the file size.

use std::{
    fs::File,
    io,
    os::unix::fs::FileExt,
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use blake3::hazmat::{
    ChainingValue, HasherExt, Mode, merge_subtrees_non_root, merge_subtrees_root,
};
use modeld_core::ranges::CHUNK_GROUP_BYTES;

/// Chunk groups per segment (the unit of work of one thread): 256 x 16 KiB = 4 MiB.
pub(crate) const SEGMENT_GROUPS: u64 = 256;
/// Bytes read and hashed at a time (fits in L2 cache): 16 chunk groups.
const PIECE_BYTES: usize = 256 * 1024;
/// Finished segments queued for the flusher before workers wait.
const FLUSH_QUEUE: usize = 8;
/// Bytes of contiguous written data handed to the disk at once.
const FLUSH_WINDOW: u64 = 64 << 20;
/// Size in bytes of one outboard node (two hashes).
const NODE_BYTES: usize = 64;

/// Where the parent nodes of the outboard go.
pub(crate) trait NodeSink: Sync {
    /// Stores `bytes` (whole nodes) at byte offset `offset` of the pre-order outboard.
    fn put(&self, offset: u64, bytes: &[u8]) -> io::Result<()>;
}

/// Discards nodes (hash only).
#[derive(Debug)]
pub(crate) struct NoNodes;

impl NodeSink for NoNodes {
    fn put(&self, _: u64, _: &[u8]) -> io::Result<()> {
        Ok(())
    }
}

/// Writes nodes into an outboard file with positioned writes.
#[derive(Debug)]
pub(crate) struct FileNodes<'a>(pub(crate) &'a File);

impl NodeSink for FileNodes<'_> {
    fn put(&self, offset: u64, bytes: &[u8]) -> io::Result<()> {
        self.0.write_all_at(bytes, offset)
    }
}

/// Compares nodes against an existing outboard file and remembers any difference.
#[derive(Debug)]
pub(crate) struct CompareNodes<'a> {
    file: &'a File,
    mismatch: AtomicBool,
}

impl<'a> CompareNodes<'a> {
    pub(crate) fn new(file: &'a File) -> Self {
        Self {
            file,
            mismatch: AtomicBool::new(false),
        }
    }

    /// Whether any node differed from (or was missing in) the file.
    pub(crate) fn mismatch(&self) -> bool {
        self.mismatch.load(Ordering::Relaxed)
    }
}

impl NodeSink for CompareNodes<'_> {
    fn put(&self, offset: u64, bytes: &[u8]) -> io::Result<()> {
        let mut stored = vec![0u8; bytes.len()];
        match self.file.read_exact_at(&mut stored, offset) {
            Ok(()) if stored == bytes => {}
            Ok(()) => self.mismatch.store(true, Ordering::Relaxed),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                self.mismatch.store(true, Ordering::Relaxed);
            }
            Err(e) => return Err(e),
        }
        Ok(())
    }
}

/// One hashing run.
pub(crate) struct Job<'a> {
    /// The data, read with `pread`.
    pub(crate) src: &'a File,
    /// Its expected length; a shorter file is an error.
    pub(crate) size: u64,
    /// Also write every byte here, at the same offset (import by copy).
    pub(crate) copy_to: Option<&'a File>,
    /// Where the outboard's parent nodes go.
    pub(crate) nodes: &'a dyn NodeSink,
    /// Worker threads (at least 1).
    pub(crate) threads: usize,
    /// Called with the number of bytes just hashed, from any worker.
    pub(crate) progress: &'a (dyn Fn(u64) + Sync),
    /// Set from outside to stop early.
    pub(crate) cancel: &'a AtomicBool,
}

impl std::fmt::Debug for Job<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("size", &self.size)
            .field("copy", &self.copy_to.is_some())
            .field("threads", &self.threads)
            .finish()
    }
}

/// Why a hashing run stopped.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HashError {
    /// Reading or writing failed.
    #[error(transparent)]
    Io(#[from] io::Error),
    /// The file ended before `size` bytes.
    #[error("file is shorter than expected ({expected} bytes): it changed while being read")]
    Truncated { expected: u64 },
    /// `cancel` was set.
    #[error("cancelled")]
    Cancelled,
}

/// Hashes `job.src`, writing the outboard and optional copy; returns the BLAKE3 hash.
pub(crate) fn run(job: &Job<'_>) -> Result<blake3::Hash, HashError> {
    let groups = job.size.div_ceil(CHUNK_GROUP_BYTES).max(1);
    if groups == 1 {
        // One chunk group: the plain hash is the root and there are no parent nodes.
        let mut buf = vec![0u8; job.size as usize];
        read_exact_at(job.src, &mut buf, 0, job.size)?;
        if let Some(dst) = job.copy_to {
            dst.write_all_at(&buf, 0)?;
        }
        (job.progress)(job.size);
        return Ok(blake3::hash(&buf));
    }
    let segments = groups.div_ceil(SEGMENT_GROUPS);
    let next = AtomicU64::new(0);
    let failed = AtomicBool::new(false);
    let cvs: Mutex<Vec<ChainingValue>> = Mutex::new(vec![[0; 32]; segments as usize]);
    let threads = job.threads.clamp(1, segments.min(64) as usize);
    let only_segment_is_root = segments == 1;

    // A copy is handed to the disk by a flusher thread while hashing goes on, so the
    // final fsync has little left to do.
    let (flush_tx, flush_rx) = std::sync::mpsc::sync_channel::<Option<(u64, u64)>>(FLUSH_QUEUE);

    let worker = || -> Result<Option<blake3::Hash>, HashError> {
        let mut buf = vec![0u8; PIECE_BYTES];
        let mut leaves: Vec<ChainingValue> = Vec::with_capacity(SEGMENT_GROUPS as usize);
        let mut nodes = vec![0u8; (SEGMENT_GROUPS as usize - 1) * NODE_BYTES];
        let mut root = None;
        loop {
            if job.cancel.load(Ordering::Relaxed) {
                return Err(HashError::Cancelled);
            }
            if failed.load(Ordering::Relaxed) {
                return Ok(None);
            }
            let k = next.fetch_add(1, Ordering::Relaxed);
            if k >= segments {
                return Ok(root);
            }
            let first_group = k * SEGMENT_GROUPS;
            let seg_groups = (groups - first_group).min(SEGMENT_GROUPS);
            let seg_start = first_group * CHUNK_GROUP_BYTES;
            let seg_end = (seg_start + seg_groups * CHUNK_GROUP_BYTES).min(job.size);
            leaves.clear();
            let mut pos = seg_start;
            while pos < seg_end {
                let len = ((seg_end - pos) as usize).min(PIECE_BYTES);
                let piece = &mut buf[..len];
                read_exact_at(job.src, piece, pos, job.size)?;
                for (i, group) in piece.chunks(CHUNK_GROUP_BYTES as usize).enumerate() {
                    let offset = pos + i as u64 * CHUNK_GROUP_BYTES;
                    leaves.push(leaf_cv(offset, group));
                }
                if let Some(dst) = job.copy_to {
                    dst.write_all_at(piece, pos)?;
                }
                (job.progress)(len as u64);
                pos += len as u64;
            }
            if job.copy_to.is_some() {
                // The flusher only stops after every worker is done, so this cannot fail.
                let _ = flush_tx.send(Some((seg_start, seg_end - seg_start)));
            }
            let node_bytes = &mut nodes[..(leaves.len() - 1) * NODE_BYTES];
            let (cv, is_root_hash) = fold(&leaves, only_segment_is_root, node_bytes);
            if !node_bytes.is_empty() {
                let base = segment_base(groups, k);
                job.nodes.put(base * NODE_BYTES as u64, node_bytes)?;
            }
            if let Some(h) = is_root_hash {
                root = Some(h);
            }
            cvs.lock().unwrap_or_else(|e| e.into_inner())[k as usize] = cv;
        }
    };

    let mut results = Vec::with_capacity(threads);
    std::thread::scope(|s| {
        let flusher = job.copy_to.map(|dst| {
            s.spawn(move || {
                // Segments finish out of order; write back the contiguous written prefix
                // in large windows, which the disk handles as one sequential stream.
                let mut done = std::collections::BTreeMap::new();
                let (mut prefix, mut flushed) = (0u64, 0u64);
                while let Ok(Some((offset, len))) = flush_rx.recv() {
                    done.insert(offset, len);
                    while let Some(len) = done.remove(&prefix) {
                        prefix += len;
                    }
                    if prefix - flushed >= FLUSH_WINDOW {
                        crate::layout::write_back(dst, flushed, prefix - flushed);
                        flushed = prefix;
                    }
                }
            })
        });
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let r = worker();
                    if r.is_err() {
                        failed.store(true, Ordering::Relaxed);
                    }
                    r
                })
            })
            .collect();
        for h in handles {
            results.push(h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)));
        }
        if let Some(f) = flusher {
            let _ = flush_tx.send(None);
            let _ = f.join();
        }
    });
    let mut root = None;
    for r in results {
        if let Some(h) = r? {
            root = Some(h);
        }
    }
    if only_segment_is_root {
        // Exactly one worker processed the single segment and returned its root.
        return root.ok_or(HashError::Cancelled);
    }
    let cvs = cvs.into_inner().unwrap_or_else(|e| e.into_inner());
    Ok(fold_top(&cvs, 0, groups, 0, true, job.nodes)?
        .1
        .expect("top is root"))
}

fn read_exact_at(src: &File, buf: &mut [u8], offset: u64, expected: u64) -> Result<(), HashError> {
    src.read_exact_at(buf, offset).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            HashError::Truncated { expected }
        } else {
            HashError::Io(e)
        }
    })
}

/// The chaining value of the chunk group at byte `offset` (never the root).
fn leaf_cv(offset: u64, data: &[u8]) -> ChainingValue {
    let mut hasher = blake3::Hasher::new();
    hasher.set_input_offset(offset);
    hasher.update(data);
    hasher.finalize_non_root()
}

/// The largest power of two strictly smaller than `n` (n >= 2).
fn left_len(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1 << (63 - (n - 1).leading_zeros())
}

fn parent(l: &ChainingValue, r: &ChainingValue, nodes: &mut [u8]) -> ChainingValue {
    nodes[..32].copy_from_slice(l);
    nodes[32..64].copy_from_slice(r);
    merge_subtrees_non_root(l, r, Mode::Hash)
}

/// Folds leaf hashes into their subtree, writing its parent nodes in pre-order into
/// `nodes` (exactly `(leaves.len() - 1) * 64` bytes). If `is_root`, the second value
/// is the finished root hash.
fn fold(
    leaves: &[ChainingValue],
    is_root: bool,
    nodes: &mut [u8],
) -> (ChainingValue, Option<blake3::Hash>) {
    let n = leaves.len() as u64;
    if n == 1 {
        return (leaves[0], None);
    }
    let left = left_len(n);
    let (head, rest) = nodes.split_at_mut(NODE_BYTES);
    let (left_nodes, right_nodes) = rest.split_at_mut((left as usize - 1) * NODE_BYTES);
    let (l, _) = fold(&leaves[..left as usize], false, left_nodes);
    let (r, _) = fold(&leaves[left as usize..], false, right_nodes);
    if is_root {
        head[..32].copy_from_slice(&l);
        head[32..].copy_from_slice(&r);
        (l, Some(merge_subtrees_root(&l, &r, Mode::Hash)))
    } else {
        (parent(&l, &r, head), None)
    }
}

/// Folds segment hashes above the segments: the node over groups
/// `start..start + count` has pre-order index `offset`.
fn fold_top(
    segment_cvs: &[ChainingValue],
    start: u64,
    count: u64,
    offset: u64,
    is_root: bool,
    sink: &dyn NodeSink,
) -> io::Result<(ChainingValue, Option<blake3::Hash>)> {
    if count <= SEGMENT_GROUPS {
        return Ok((segment_cvs[(start / SEGMENT_GROUPS) as usize], None));
    }
    let left = left_len(count);
    let (l, _) = fold_top(segment_cvs, start, left, offset + 1, false, sink)?;
    let (r, _) = fold_top(
        segment_cvs,
        start + left,
        count - left,
        offset + left,
        false,
        sink,
    )?;
    let mut node = [0u8; NODE_BYTES];
    node[..32].copy_from_slice(&l);
    node[32..].copy_from_slice(&r);
    sink.put(offset * NODE_BYTES as u64, &node)?;
    if is_root {
        Ok((l, Some(merge_subtrees_root(&l, &r, Mode::Hash))))
    } else {
        Ok((merge_subtrees_non_root(&l, &r, Mode::Hash), None))
    }
}

/// The pre-order index of the first parent node inside segment `k` of a tree of
/// `groups` chunk groups.
fn segment_base(groups: u64, k: u64) -> u64 {
    let target = k * SEGMENT_GROUPS;
    let (mut start, mut count, mut offset) = (0, groups, 0);
    while count > SEGMENT_GROUPS {
        let left = left_len(count);
        if target < start + left {
            offset += 1;
            count = left;
        } else {
            offset += left;
            start += left;
            count -= left;
        }
    }
    debug_assert_eq!(start, target);
    offset
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use bao_tree::io::outboard::PreOrderMemOutboard;
    use modeld_core::ranges::BLOCK_SIZE;
    use proptest::prelude::*;

    use super::*;

    /// Collects nodes in memory.
    struct MemNodes(Mutex<Vec<u8>>);

    impl NodeSink for MemNodes {
        fn put(&self, offset: u64, bytes: &[u8]) -> io::Result<()> {
            let mut v = self.0.lock().unwrap();
            let end = offset as usize + bytes.len();
            if v.len() < end {
                v.resize(end, 0);
            }
            v[offset as usize..end].copy_from_slice(bytes);
            Ok(())
        }
    }

    fn data(len: usize, seed: u8) -> Vec<u8> {
        let mut x = seed as u32 | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect()
    }

    fn check(len: usize, threads: usize) {
        let bytes = data(len, len as u8);
        let mut src = tempfile::tempfile().unwrap();
        src.write_all(&bytes).unwrap();
        let copy = tempfile::tempfile().unwrap();
        let nodes = MemNodes(Mutex::new(Vec::new()));
        let seen = AtomicU64::new(0);
        let cancel = AtomicBool::new(false);
        let job = Job {
            src: &src,
            size: len as u64,
            copy_to: Some(&copy),
            nodes: &nodes,
            threads,
            progress: &|n| {
                seen.fetch_add(n, Ordering::Relaxed);
            },
            cancel: &cancel,
        };
        let hash = run(&job).unwrap();
        assert_eq!(hash, blake3::hash(&bytes), "hash of {len} bytes");
        let expected = PreOrderMemOutboard::create(&bytes, BLOCK_SIZE);
        assert_eq!(expected.root, hash);
        assert_eq!(
            nodes.0.into_inner().unwrap(),
            expected.data,
            "outboard of {len} bytes"
        );
        let mut copied = vec![0u8; len];
        copy.read_exact_at(&mut copied, 0).unwrap();
        assert_eq!(copied, bytes);
        assert_eq!(seen.load(Ordering::Relaxed), len as u64);
    }

    #[test]
    fn interesting_sizes_match_bao_tree_and_blake3() {
        let g = CHUNK_GROUP_BYTES as usize;
        let seg = SEGMENT_GROUPS as usize * g;
        for len in [
            0,
            1,
            1023,
            1024,
            1025,
            g - 1,
            g,
            g + 1,
            3 * g + 5,
            seg - 1,
            seg,
            seg + 1,
            2 * seg + g,
            5 * seg + 7,
        ] {
            check(len, 2);
            check(len, 1);
        }
    }

    #[test]
    fn truncated_source_is_an_error() {
        let mut src = tempfile::tempfile().unwrap();
        src.write_all(&[1u8; 100_000]).unwrap();
        let cancel = AtomicBool::new(false);
        let job = Job {
            src: &src,
            size: 200_000,
            copy_to: None,
            nodes: &NoNodes,
            threads: 2,
            progress: &|_| {},
            cancel: &cancel,
        };
        assert!(matches!(run(&job), Err(HashError::Truncated { .. })));
    }

    #[test]
    fn cancel_stops() {
        let src = tempfile::tempfile().unwrap();
        src.set_len(64 << 20).unwrap();
        let cancel = AtomicBool::new(true);
        let job = Job {
            src: &src,
            size: 64 << 20,
            copy_to: None,
            nodes: &NoNodes,
            threads: 2,
            progress: &|_| {},
            cancel: &cancel,
        };
        assert!(matches!(run(&job), Err(HashError::Cancelled)));
    }

    #[test]
    fn segment_bases_are_consistent_with_fold() {
        // The segment runs and top nodes must tile the outboard exactly once.
        for groups in [257u64, 512, 513, 1000, 1024, 1025, 3000] {
            let segments = groups.div_ceil(SEGMENT_GROUPS);
            let mut covered = vec![0u8; (groups - 1) as usize];
            for k in 0..segments {
                let n = (groups - k * SEGMENT_GROUPS).min(SEGMENT_GROUPS);
                let base = segment_base(groups, k);
                for i in 0..n - 1 {
                    covered[(base + i) as usize] += 1;
                }
            }
            let top = covered.iter().filter(|c| **c == 0).count() as u64;
            assert_eq!(top, segments - 1, "{groups} groups");
            assert!(covered.iter().all(|c| *c <= 1));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]
        #[test]
        fn random_sizes_match(len in 0usize..(9 << 20), threads in 1usize..4) {
            check(len, threads);
        }
    }
}
