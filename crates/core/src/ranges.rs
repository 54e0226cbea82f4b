//! Chunk ranges: which parts of a blob are present or wanted.
//!
//! BLAKE3 works in 1 KiB chunks; modeld verifies in chunk groups of 16 chunks
//! (16 KiB, [`BLOCK_SIZE`]). Ranges are kept as [`ChunkRanges`] (sets of chunk
//! numbers) and converted to byte ranges only for people.

use std::ops::Range;

pub use bao_tree::{BaoTree, BlockSize, ChunkNum, ChunkRanges};
use smallvec::SmallVec;

/// The verification granularity: 2^4 chunks = 16 KiB chunk groups.
pub const BLOCK_SIZE: BlockSize = BlockSize::from_chunk_log(4);
/// Bytes in one chunk.
pub const CHUNK_BYTES: u64 = 1024;
/// Bytes in one chunk group.
pub const CHUNK_GROUP_BYTES: u64 = 16 * 1024;

/// The bao tree of a blob of `size` bytes.
pub fn tree(size: u64) -> BaoTree {
    BaoTree::new(size, BLOCK_SIZE)
}

/// The number of chunks in a blob of `size` bytes.
pub fn chunks(size: u64) -> u64 {
    size.div_ceil(CHUNK_BYTES)
}

/// Every chunk of a blob of `size` bytes, as a bounded range.
pub fn all(size: u64) -> ChunkRanges {
    ChunkRanges::from(ChunkNum(0)..ChunkNum(chunks(size)))
}

/// `ranges` with everything at or past the end of a blob of `size` bytes removed.
pub fn clip(ranges: &ChunkRanges, size: u64) -> ChunkRanges {
    match ranges.boundaries() {
        // Bounded and within the blob already (the common case): a plain copy.
        b if b.len() % 2 == 0 && b.last().is_none_or(|end| end.0 <= chunks(size)) => ranges.clone(),
        _ => ranges & &all(size),
    }
}

/// Whether `ranges` covers every chunk of a blob of `size` bytes.
pub fn is_complete(ranges: &ChunkRanges, size: u64) -> bool {
    all(size).is_subset(ranges)
}

/// The largest spans of the bounded `ranges`, so that at most `max` boundaries remain
/// (all of it if it already fits). Claiming less than one holds is always safe, so
/// over-long have-maps and holder notices shrink this way instead of being cut off.
pub fn keep_largest(ranges: &ChunkRanges, max: usize) -> ChunkRanges {
    if ranges.boundaries().len() <= max {
        return ranges.clone();
    }
    let mut spans: Vec<(u64, u64)> = ranges
        .boundaries()
        .chunks_exact(2)
        .map(|p| (p[0].0, p[1].0))
        .collect();
    spans.sort_by_key(|(s, e)| std::cmp::Reverse(e - s));
    spans.truncate(max / 2);
    spans.sort_unstable();
    let kept: Vec<ChunkNum> = spans
        .into_iter()
        .flat_map(|(s, e)| [ChunkNum(s), ChunkNum(e)])
        .collect();
    from_boundaries(&kept)
}

/// The set whose boundaries are `boundaries`: a run of consecutive boundaries of a set
/// (whole pairs, and an odd last one only if it starts an unbounded range), or any
/// strictly increasing sequence.
///
/// # Panics
/// If `boundaries` is not strictly increasing.
pub fn from_boundaries(boundaries: &[ChunkNum]) -> ChunkRanges {
    ChunkRanges::new(SmallVec::from_slice(boundaries)).expect("boundaries strictly increasing")
}

/// The byte ranges `ranges` covers in a blob of `size` bytes.
pub fn byte_ranges(ranges: &ChunkRanges, size: u64) -> Vec<Range<u64>> {
    byte_spans(ranges, size).collect()
}

/// Total bytes `ranges` covers in a blob of `size` bytes.
pub fn covered_bytes(ranges: &ChunkRanges, size: u64) -> u64 {
    byte_spans(ranges, size).map(|r| r.end - r.start).sum()
}

/// The non-empty byte ranges of `ranges` within a blob of `size` bytes, in order.
fn byte_spans(ranges: &ChunkRanges, size: u64) -> impl Iterator<Item = Range<u64>> + '_ {
    use range_collections::range_set::RangeSetRange;
    ranges
        .iter()
        .map(move |r| match r {
            RangeSetRange::Range(r) => {
                (r.start.0.saturating_mul(CHUNK_BYTES)).min(size)
                    ..(r.end.0.saturating_mul(CHUNK_BYTES)).min(size)
            }
            RangeSetRange::RangeFrom(r) => (r.start.0.saturating_mul(CHUNK_BYTES)).min(size)..size,
        })
        .filter(|r| r.start < r.end)
}

/// Human text for byte ranges: `0..16384, 32768..40000`.
pub fn format_byte_ranges(ranges: &[Range<u64>]) -> String {
    ranges
        .iter()
        .map(|r| format!("{}..{}", r.start, r.end))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The chunk ranges covering bytes `range` (rounded outwards to whole chunks).
pub fn from_bytes(range: Range<u64>) -> ChunkRanges {
    let start = range.start / CHUNK_BYTES;
    let end = range.end.div_ceil(CHUNK_BYTES);
    ChunkRanges::from(ChunkNum(start)..ChunkNum(end))
}

/// Serializes ranges as their boundaries, each a little-endian u64.
pub fn encode(ranges: &ChunkRanges) -> Vec<u8> {
    ranges
        .boundaries()
        .iter()
        .flat_map(|b| b.0.to_le_bytes())
        .collect()
}

/// Why bytes are not encoded ranges.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RangesError {
    /// Not a whole number of u64 boundaries.
    #[error("encoded ranges are {0} bytes, not a multiple of 8")]
    Length(usize),
    /// Boundaries not strictly increasing.
    #[error("encoded range boundaries are not strictly increasing")]
    Unsorted,
}

/// Parses [`encode`]'s output.
pub fn decode(bytes: &[u8]) -> Result<ChunkRanges, RangesError> {
    if !bytes.len().is_multiple_of(8) {
        return Err(RangesError::Length(bytes.len()));
    }
    let boundaries: SmallVec<[ChunkNum; 2]> = bytes
        .chunks_exact(8)
        .map(|c| {
            let mut b = [0u8; 8];
            b.copy_from_slice(c);
            ChunkNum(u64::from_le_bytes(b))
        })
        .collect();
    ChunkRanges::new(boundaries).ok_or(RangesError::Unsorted)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn all_and_complete() {
        assert_eq!(chunks(0), 0);
        assert_eq!(chunks(1), 1);
        assert_eq!(chunks(1024), 1);
        assert_eq!(chunks(1025), 2);
        assert!(is_complete(&ChunkRanges::all(), 5000));
        assert!(is_complete(&all(5000), 5000));
        assert!(!is_complete(&from_bytes(0..4096), 5000));
        assert!(is_complete(&ChunkRanges::empty(), 0));
    }

    #[test]
    fn byte_ranges_are_clipped_to_size() {
        let r = from_bytes(0..1024) | from_bytes(2048..10_000);
        assert_eq!(byte_ranges(&r, 5000), vec![0..1024, 2048..5000]);
        assert_eq!(covered_bytes(&r, 5000), 1024 + 2952);
        assert_eq!(
            format_byte_ranges(&byte_ranges(&r, 5000)),
            "0..1024, 2048..5000"
        );
    }

    #[test]
    fn decode_refuses_garbage() {
        assert_eq!(decode(&[1, 2, 3]), Err(RangesError::Length(3)));
        let mut unsorted = 5u64.to_le_bytes().to_vec();
        unsorted.extend_from_slice(&3u64.to_le_bytes());
        assert_eq!(decode(&unsorted), Err(RangesError::Unsorted));
    }

    proptest! {
        #[test]
        fn encode_decode_round_trip(mut points in proptest::collection::vec(0u64..10_000, 0..40)) {
            points.sort_unstable();
            points.dedup();
            let mut r = ChunkRanges::empty();
            for pair in points.chunks_exact(2) {
                r |= ChunkRanges::from(ChunkNum(pair[0])..ChunkNum(pair[1]));
            }
            prop_assert_eq!(decode(&encode(&r)).unwrap(), r);
        }

        /// Clipping and byte counting agree with the plain set arithmetic they
        /// shortcut, for sets within, across and past the end of the blob.
        #[test]
        fn clipping_matches_set_arithmetic(
            mut points in proptest::collection::vec(0u64..60, 0..12),
            open_end in any::<bool>(),
            size in 0u64..50_000,
        ) {
            points.sort_unstable();
            points.dedup();
            let mut r = ChunkRanges::empty();
            for pair in points.chunks_exact(2) {
                r |= ChunkRanges::from(ChunkNum(pair[0])..ChunkNum(pair[1]));
            }
            if open_end {
                r |= ChunkRanges::from(ChunkNum(points.last().map_or(0, |p| p + 1))..);
            }
            let clipped = &r & &all(size);
            prop_assert_eq!(&clip(&r, size), &clipped);
            let mut bytes = 0;
            for c in 0..chunks(size) {
                if clipped.contains(&ChunkNum(c)) {
                    bytes += ((c + 1) * CHUNK_BYTES).min(size) - c * CHUNK_BYTES;
                }
            }
            prop_assert_eq!(covered_bytes(&r, size), bytes);
            let spans = byte_ranges(&r, size);
            prop_assert_eq!(spans.iter().map(|s| s.end - s.start).sum::<u64>(), bytes);
            prop_assert!(spans.windows(2).all(|w| w[0].end < w[1].start), "{:?}", spans);
        }
    }
}
