//! Reading verified ranges of a blob out as a bao encoding (what peers are sent).
//!
//! The encoder is bao-tree's validated one: every chunk group is hashed against the
//! outboard before it is written out, so holes in a partial blob and bytes that rotted
//! on disk are never served. Rot found this way is marked missing in the index at once.

use std::{
    fs::{self, File, Permissions},
    io::Write,
    os::unix::fs::PermissionsExt,
};

use bao_tree::{
    ChunkNum,
    io::{EncodeError, outboard::PreOrderOutboard, sync::encode_ranges_validated},
};
use modeld_core::{
    Hash,
    ranges::{self, ChunkRanges},
};
use redb::ReadableTable;

use crate::{
    Store,
    entry::{BlobEntry, BlobState},
    error::{IndexResult, ReadError, StoreError},
    index,
    tables::BLOBS,
};

impl Store {
    /// The verified ranges of `hash` available to serve right now (including data
    /// verified by a running fetch but not yet checkpointed), and its size.
    pub fn available(&self, hash: Hash) -> Result<Option<(u64, ChunkRanges)>, StoreError> {
        let Some(entry) = index::get_blob(&self.inner.db, hash)? else {
            return Ok(None);
        };
        let mut have = entry.ranges();
        if !entry.is_complete() {
            let open = self
                .inner
                .partials
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&hash)
                .and_then(std::sync::Weak::upgrade);
            if let Some(shared) = open {
                have |= crate::PartialBlob { shared }.available();
            }
        }
        Ok(Some((entry.size, have)))
    }

    /// Writes the bao encoding of `ranges` of blob `hash` to `out`, verifying every
    /// chunk group on the way. Fails without writing if any requested range is not
    /// present; if stored data turns out corrupt, marks it missing and fails.
    pub fn encode_ranges(
        &self,
        hash: Hash,
        ranges: &ChunkRanges,
        out: impl Write,
    ) -> Result<(), ReadError> {
        let (size, have) = self.available(hash)?.ok_or(ReadError::NotFound(hash))?;
        let wanted = ranges::clip(ranges, size);
        let missing = &wanted - &have;
        if !missing.is_empty() {
            return Err(ReadError::NotPresent {
                hash,
                missing: ranges::format_byte_ranges(&ranges::byte_ranges(&missing, size)),
            });
        }
        let layout = &self.inner.layout;
        let io = |what: &str, e| StoreError::io(format!("{what} of blob {hash}"), e);
        let data = File::open(layout.data(hash)).map_err(|e| io("opening data", e))?;
        let obao = File::open(layout.outboard(hash)).map_err(|e| io("opening outboard", e))?;
        let outboard = PreOrderOutboard {
            root: hash.into(),
            tree: ranges::tree(size),
            data: &obao,
        };
        match encode_ranges_validated(&data, outboard, &wanted, out) {
            Ok(()) => Ok(()),
            Err(EncodeError::LeafHashMismatch(chunk)) => {
                let group = chunk.0 / 16 * 16;
                let bad = ChunkRanges::from(ChunkNum(group)..ChunkNum(group + 16));
                self.mark_missing(hash, &bad)?;
                let bytes = ranges::byte_ranges(&bad, size);
                tracing::error!(blob = %hash, bytes = %ranges::format_byte_ranges(&bytes), "stored data is corrupt; marked missing");
                Err(ReadError::Corrupt {
                    hash,
                    what: format!("bytes {}", ranges::format_byte_ranges(&bytes)),
                })
            }
            Err(EncodeError::ParentHashMismatch(node)) => {
                // The outboard is damaged: nothing under this node can be vouched for.
                let bad = wanted.clone();
                self.mark_missing(hash, &bad)?;
                tracing::error!(blob = %hash, node = %node, "stored outboard is corrupt; marked missing");
                Err(ReadError::Corrupt {
                    hash,
                    what: format!("outboard node {node}"),
                })
            }
            Err(EncodeError::Io(e)) => Err(io("reading", e).into()),
            Err(EncodeError::SizeMismatch) => Err(ReadError::Corrupt {
                hash,
                what: "data file size".into(),
            }),
            Err(e @ (EncodeError::ParentWrite(_) | EncodeError::LeafWrite(_))) => {
                Err(ReadError::Sink {
                    hash,
                    source: std::io::Error::new(std::io::ErrorKind::BrokenPipe, e.to_string()),
                })
            }
        }
    }

    /// Removes `bad` from the verified ranges of `hash` (demoting a complete blob).
    pub(crate) fn mark_missing(&self, hash: Hash, bad: &ChunkRanges) -> Result<(), StoreError> {
        let tx = self.inner.db.begin_write().idx()?;
        {
            let mut blobs = tx.open_table(BLOBS).idx()?;
            let Some(entry) = blobs
                .get(hash.as_bytes())
                .idx()?
                .map(|v| index::decode_entry(v.value()))
                .transpose()?
            else {
                return Ok(());
            };
            if entry.is_complete() {
                // Writable again, so the missing ranges can be fetched back in place.
                let _ = fs::set_permissions(
                    self.inner.layout.data(hash),
                    Permissions::from_mode(0o644),
                );
            }
            let left = &entry.ranges() - bad;
            let demoted = BlobEntry {
                size: entry.size,
                state: BlobState::Partial(left),
            };
            blobs
                .insert(hash.as_bytes(), demoted.to_bytes().as_slice())
                .idx()?;
        }
        tx.commit().idx()
    }
}
