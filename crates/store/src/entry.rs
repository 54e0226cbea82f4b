//! The index entry of one blob and its byte layout (see `docs/store.md`).
//!
//! ```text
//! byte 0      layout version (1)
//! byte 1      state: 0 = partial, 1 = complete
//! bytes 2..10 size in bytes, u64 little-endian
//! bytes 10..  partial only: verified chunk ranges, as strictly increasing
//!             u64 little-endian boundaries (an even number, all <= chunks(size))
//! ```

use modeld_core::ranges::{self, ChunkRanges};

const LAYOUT: u8 = 1;

/// What the index knows about a blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BlobEntry {
    /// Length of the blob in bytes.
    pub(crate) size: u64,
    /// Which parts are present and verified.
    pub(crate) state: BlobState,
}

/// Complete, or partial with the verified ranges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BlobState {
    /// Every byte present, verified end to end against the hash.
    Complete,
    /// Only these chunk ranges are present and verified (never all of them).
    Partial(ChunkRanges),
}

/// Why stored entry bytes could not be read.
#[derive(Debug, thiserror::Error)]
#[error("corrupt blob entry in the index: {0}")]
pub(crate) struct EntryError(&'static str);

impl BlobEntry {
    /// An entry for a complete blob.
    pub(crate) fn complete(size: u64) -> Self {
        Self {
            size,
            state: BlobState::Complete,
        }
    }

    /// The verified ranges (all of them for a complete blob).
    pub(crate) fn ranges(&self) -> ChunkRanges {
        match &self.state {
            BlobState::Complete => ranges::all(self.size),
            BlobState::Partial(r) => r.clone(),
        }
    }

    /// Whether the blob is complete.
    pub(crate) fn is_complete(&self) -> bool {
        matches!(self.state, BlobState::Complete)
    }

    /// Serializes to the layout above.
    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(10);
        out.push(LAYOUT);
        out.push(u8::from(self.is_complete()));
        out.extend_from_slice(&self.size.to_le_bytes());
        if let BlobState::Partial(r) = &self.state {
            out.extend_from_slice(&ranges::encode(r));
        }
        out
    }

    /// Parses the layout above, checking every invariant.
    pub(crate) fn from_bytes(bytes: &[u8]) -> Result<Self, EntryError> {
        if bytes.len() < 10 {
            return Err(EntryError("too short"));
        }
        if bytes[0] != LAYOUT {
            return Err(EntryError("unknown layout version"));
        }
        let mut size = [0u8; 8];
        size.copy_from_slice(&bytes[2..10]);
        let size = u64::from_le_bytes(size);
        let state = match bytes[1] {
            1 if bytes.len() == 10 => BlobState::Complete,
            0 => {
                let r = ranges::decode(&bytes[10..]).map_err(|_| EntryError("bad ranges"))?;
                if r != ranges::clip(&r, size) {
                    return Err(EntryError("ranges past the end of the blob"));
                }
                BlobState::Partial(r)
            }
            _ => return Err(EntryError("unknown state")),
        };
        Ok(Self { size, state })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for e in [
            BlobEntry::complete(0),
            BlobEntry::complete(1 << 40),
            BlobEntry {
                size: 100_000,
                state: BlobState::Partial(ranges::from_bytes(16384..32768)),
            },
            BlobEntry {
                size: 5,
                state: BlobState::Partial(ChunkRanges::empty()),
            },
        ] {
            assert_eq!(BlobEntry::from_bytes(&e.to_bytes()).unwrap(), e);
        }
    }

    #[test]
    fn refuses_corrupt_bytes() {
        assert!(BlobEntry::from_bytes(&[1, 1]).is_err());
        let mut b = BlobEntry::complete(3).to_bytes();
        b[0] = 9;
        assert!(BlobEntry::from_bytes(&b).is_err());
        let over = BlobEntry {
            size: 1024,
            state: BlobState::Partial(ranges::from_bytes(0..4096)),
        };
        assert!(BlobEntry::from_bytes(&over.to_bytes()).is_err());
    }
}
