//! Scrubbing: re-hash stored data and say exactly which blob and bytes are corrupt.
//!
//! A complete blob is re-hashed on all cores and its outboard compared node by node.
//! If the data hashes to the blob's hash, the data is proven good; a differing outboard
//! is then simply rewritten from it. Otherwise every chunk group is validated against
//! the outboard to find the bad byte ranges, which are marked missing at once so they
//! are never served or exported (a later fetch repairs them).

use std::{fs::File, ops::Range, os::unix::fs::OpenOptionsExt, sync::atomic::AtomicBool};

use modeld_core::{
    Hash,
    ranges::{self, ChunkRanges},
};

use crate::{
    Store,
    error::StoreError,
    hasher::{self, CompareNodes, FileNodes},
    index,
    partial::recover,
};

/// One blob that failed verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorruptBlob {
    /// The blob.
    pub hash: Hash,
    /// Its size.
    pub size: u64,
    /// The byte ranges that failed (now marked missing).
    pub bad: Vec<Range<u64>>,
}

/// What a scrub found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Blobs checked.
    pub blobs: u64,
    /// Bytes re-hashed.
    pub bytes: u64,
    /// Blobs whose outboard was damaged but whose data was good; the outboard was rebuilt.
    pub outboards_repaired: Vec<Hash>,
    /// Blobs with bad data.
    pub corrupt: Vec<CorruptBlob>,
}

enum Outcome {
    Good,
    OutboardRepaired,
    Corrupt(CorruptBlob),
}

impl Store {
    /// Verifies every blob (or only `only`), calling `progress` with bytes hashed.
    pub fn verify(
        &self,
        only: Option<&[Hash]>,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<VerifyReport, StoreError> {
        let blobs = match only {
            Some(hashes) => hashes.to_vec(),
            None => index::all_blobs(&self.inner.db)?
                .into_iter()
                .map(|(h, _)| h)
                .collect(),
        };
        let mut report = VerifyReport::default();
        for hash in blobs {
            let Some(entry) = index::get_blob(&self.inner.db, hash)? else {
                continue;
            };
            report.blobs += 1;
            report.bytes += ranges::covered_bytes(&entry.ranges(), entry.size);
            match self.check(
                hash,
                entry.size,
                &entry.ranges(),
                entry.is_complete(),
                progress,
            )? {
                Outcome::Good => {}
                Outcome::OutboardRepaired => report.outboards_repaired.push(hash),
                Outcome::Corrupt(c) => report.corrupt.push(c),
            }
        }
        Ok(report)
    }

    /// Verifies one blob; returns what is corrupt (already marked missing).
    pub(crate) fn verify_blob(&self, hash: Hash) -> Result<Option<CorruptBlob>, StoreError> {
        let Some(entry) = index::get_blob(&self.inner.db, hash)? else {
            return Ok(None);
        };
        match self.check(
            hash,
            entry.size,
            &entry.ranges(),
            entry.is_complete(),
            &|_| {},
        )? {
            Outcome::Corrupt(c) => Ok(Some(c)),
            _ => Ok(None),
        }
    }

    fn check(
        &self,
        hash: Hash,
        size: u64,
        present: &ChunkRanges,
        complete: bool,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<Outcome, StoreError> {
        let layout = &self.inner.layout;
        let io = |what: &str, e| StoreError::io(format!("{what} of blob {hash}"), e);
        let corrupt = |bad: &ChunkRanges| -> Result<Outcome, StoreError> {
            self.mark_missing(hash, bad)?;
            let bad = ranges::byte_ranges(bad, size);
            tracing::error!(blob = %hash, bytes = %ranges::format_byte_ranges(&bad), "verification failed; marked missing");
            Ok(Outcome::Corrupt(CorruptBlob { hash, size, bad }))
        };
        let (data, obao) = match (
            File::open(layout.data(hash)),
            File::open(layout.outboard(hash)),
        ) {
            (Ok(d), Ok(o)) => (d, o),
            _ => return corrupt(present),
        };
        if complete {
            let len = data.metadata().map_err(|e| io("reading", e))?.len();
            if len == size {
                let cmp = CompareNodes::new(&obao);
                let job = hasher::Job {
                    src: &data,
                    size,
                    copy_to: None,
                    nodes: &cmp,
                    threads: self.inner.options.hash_threads,
                    progress,
                    cancel: &AtomicBool::new(false),
                };
                let root =
                    hasher::run(&job).map_err(|e| io("hashing", std::io::Error::other(e)))?;
                if Hash::from(root) == hash {
                    if !cmp.mismatch() {
                        return Ok(Outcome::Good);
                    }
                    self.rebuild_outboard(hash, size, &data)?;
                    tracing::warn!(blob = %hash, "outboard was damaged; rebuilt it from the verified data");
                    return Ok(Outcome::OutboardRepaired);
                }
            }
        } else {
            progress(ranges::covered_bytes(present, size));
        }
        let good = recover(hash, size, &data, &obao, present).map_err(|e| io("validating", e))?;
        let bad = present - &good;
        if bad.is_empty() {
            return Ok(Outcome::Good);
        }
        corrupt(&bad)
    }

    fn rebuild_outboard(&self, hash: Hash, size: u64, data: &File) -> Result<(), StoreError> {
        let path = self.inner.layout.outboard(hash);
        let io = |e| StoreError::io(format!("rewriting outboard of blob {hash}"), e);
        let obao = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(io)?;
        let job = hasher::Job {
            src: data,
            size,
            copy_to: None,
            nodes: &FileNodes(&obao),
            threads: self.inner.options.hash_threads,
            progress: &|_| {},
            cancel: &AtomicBool::new(false),
        };
        hasher::run(&job).map_err(|e| io(std::io::Error::other(e)))?;
        obao.sync_all().map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use std::{
        os::unix::fs::{FileExt, PermissionsExt},
        sync::atomic::AtomicBool,
    };

    use crate::test_util::{random_file, store};

    fn flip(path: &std::path::Path, at: u64) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, at).unwrap();
        b[0] ^= 0xff;
        f.write_all_at(&b, at).unwrap();
    }

    #[test]
    fn a_flipped_byte_is_reported_with_its_range_and_marked_missing() {
        let (dir, store) = store();
        let size = 10 << 20;
        let (path, _) = random_file(dir.path(), "w.bin", size, 7);
        let hash = store
            .import_file(&path, &|_| {}, &AtomicBool::new(false))
            .unwrap()
            .hash;
        assert!(store.verify(None, &|_| {}).unwrap().corrupt.is_empty());

        let at = 5 * 1024 * 1024 + 100;
        flip(&store.data_path(hash), at);
        let report = store.verify(None, &|_| {}).unwrap();
        assert_eq!(report.corrupt.len(), 1);
        let bad = &report.corrupt[0];
        assert_eq!(bad.hash, hash);
        let group = at / 16384 * 16384;
        assert_eq!(bad.bad, vec![group..group + 16384]);
        // Never again served or exported as present.
        let info = store.blob(hash).unwrap().unwrap();
        assert!(!info.complete);
        assert_eq!(
            modeld_core::ranges::covered_bytes(&info.ranges, size as u64),
            size as u64 - 16384
        );
        // A second scrub finds nothing more (the bad range is no longer claimed).
        assert!(store.verify(None, &|_| {}).unwrap().corrupt.is_empty());
    }

    #[test]
    fn a_damaged_outboard_is_rebuilt_from_good_data() {
        let (dir, store) = store();
        let (path, _) = random_file(dir.path(), "w.bin", 3 << 20, 8);
        let hash = store
            .import_file(&path, &|_| {}, &AtomicBool::new(false))
            .unwrap()
            .hash;
        flip(
            &dir.path()
                .join("store/blobs")
                .join(&hash.to_hex()[..2])
                .join(format!("{hash}.obao")),
            70,
        );
        let report = store.verify(None, &|_| {}).unwrap();
        assert_eq!(report.outboards_repaired, vec![hash]);
        assert!(report.corrupt.is_empty());
        assert!(store.blob(hash).unwrap().unwrap().complete);
        assert!(
            store
                .verify(None, &|_| {})
                .unwrap()
                .outboards_repaired
                .is_empty()
        );
    }
}
