//! The wire format of the data plane (`docs/protocol.md`), as pure functions on bytes.
//!
//! One request per QUIC bidirectional stream: the client writes a request and finishes
//! its side; the server answers with a status byte and a body, and finishes. Every
//! length is bounded before anything is allocated.

use bao_tree::iter::ResponseIterRef;
use modeld_core::{
    Hash,
    envelope::MAX_ENVELOPE_BYTES,
    ranges::{self, ChunkRanges},
};

/// ALPN protocol id of the data plane.
pub const ALPN: &[u8] = b"modeld/2";
/// Most range boundaries in a request.
pub const MAX_REQUEST_BOUNDARIES: usize = 256;
/// Largest request in bytes.
pub const MAX_REQUEST_BYTES: usize = 1 + 32 + 8 + 2 + MAX_REQUEST_BOUNDARIES * 8;
/// Most data bytes one blob request may ask for; servers answer larger ones `TooLarge`.
pub const MAX_BLOB_REQUEST_BYTES: u64 = 16 << 20;
/// Most boundaries in a have-map answer (a server with more fragments sends a subset).
pub const MAX_HAVE_BOUNDARIES: usize = 65_536;
/// Longest error message in an answer.
pub const MAX_ERROR_BYTES: usize = 1024;
/// Largest blob size a peer may claim (2^50 bytes, a petabyte); anything larger is a lie.
pub const MAX_BLOB_SIZE: u64 = 1 << 50;

/// A request from client to server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// The bao encoding of `ranges` of blob `hash`.
    GetBlob {
        /// The blob.
        hash: Hash,
        /// Chunk ranges wanted.
        ranges: ChunkRanges,
        /// Bytes the asker holds, verified, of everything it is fetching (0 if it is
        /// not fetching). It decides only the order in which a busy server answers:
        /// those that hold least first ([`crate::turns`]).
        held: u64,
    },
    /// A signed manifest by id.
    GetManifest {
        /// The manifest id.
        id: Hash,
    },
    /// Which ranges of blob `hash` the server has.
    Have {
        /// The blob.
        hash: Hash,
    },
    /// A notice, not a question: the sender now holds (verified) `ranges` of blob
    /// `hash`, besides what it said before. Sent by a fetch to the complete peers it is
    /// connected to (see [`crate::holders`]); answered with a bare `Ok`.
    Holds {
        /// The blob.
        hash: Hash,
        /// Chunk ranges newly held.
        ranges: ChunkRanges,
    },
}

const KIND_GET_BLOB: u8 = 1;
const KIND_GET_MANIFEST: u8 = 2;
const KIND_HAVE: u8 = 3;
const KIND_HOLDS: u8 = 4;

/// Why bytes are not a valid message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// Ended too early.
    #[error("message truncated")]
    Truncated,
    /// Bytes after the end of the message.
    #[error("{0} unexpected bytes after the message")]
    Trailing(usize),
    /// Unknown request kind or status.
    #[error("unknown message kind {0}")]
    UnknownKind(u8),
    /// Too many range boundaries.
    #[error("{0} range boundaries, more than allowed")]
    TooManyRanges(usize),
    /// Range boundaries not strictly increasing.
    #[error("range boundaries are not strictly increasing")]
    UnsortedRanges,
    /// A length field over its limit.
    #[error("length {0} over the limit")]
    TooLong(u64),
    /// An error message that is not UTF-8.
    #[error("error message is not UTF-8")]
    NotUtf8,
    /// A claimed blob size beyond any real blob.
    #[error("claimed blob size {0} is implausible (over 2^50 bytes)")]
    ImplausibleSize(u64),
    /// A flag byte other than 0 or 1.
    #[error("invalid flag byte {0}")]
    BadFlag(u8),
}

/// A cursor over bytes that fails cleanly instead of panicking.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.bytes.len() < n {
            return Err(WireError::Truncated);
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, WireError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, WireError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, WireError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }

    fn hash(&mut self) -> Result<Hash, WireError> {
        let mut a = [0u8; 32];
        a.copy_from_slice(self.take(32)?);
        Ok(Hash::from_bytes(a))
    }

    fn ranges(&mut self, max: usize) -> Result<ChunkRanges, WireError> {
        let n = self.u16()? as usize;
        if n > max {
            return Err(WireError::TooManyRanges(n));
        }
        self.ranges_of(n)
    }

    fn ranges_of(&mut self, n: usize) -> Result<ChunkRanges, WireError> {
        let raw = self.take(n.checked_mul(8).ok_or(WireError::Truncated)?)?;
        ranges::decode(raw).map_err(|_| WireError::UnsortedRanges)
    }

    fn finish(self) -> Result<(), WireError> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(WireError::Trailing(self.bytes.len()))
        }
    }
}

fn put_ranges(out: &mut Vec<u8>, r: &ChunkRanges, wide: bool) {
    let b = r.boundaries();
    if wide {
        out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    } else {
        out.extend_from_slice(&(b.len() as u16).to_le_bytes());
    }
    for x in b {
        out.extend_from_slice(&x.0.to_le_bytes());
    }
}

impl Request {
    /// Encodes the request. Ranges must have at most [`MAX_REQUEST_BOUNDARIES`] boundaries.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        match self {
            Self::GetBlob { hash, ranges, held } => {
                debug_assert!(ranges.boundaries().len() <= MAX_REQUEST_BOUNDARIES);
                out.push(KIND_GET_BLOB);
                out.extend_from_slice(hash.as_bytes());
                out.extend_from_slice(&held.to_le_bytes());
                put_ranges(&mut out, ranges, false);
            }
            Self::GetManifest { id } => {
                out.push(KIND_GET_MANIFEST);
                out.extend_from_slice(id.as_bytes());
            }
            Self::Have { hash } => {
                out.push(KIND_HAVE);
                out.extend_from_slice(hash.as_bytes());
            }
            Self::Holds { hash, ranges } => {
                debug_assert!(ranges.boundaries().len() <= MAX_REQUEST_BOUNDARIES);
                out.push(KIND_HOLDS);
                out.extend_from_slice(hash.as_bytes());
                put_ranges(&mut out, ranges, false);
            }
        }
        out
    }

    /// Decodes a whole request.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        if bytes.len() > MAX_REQUEST_BYTES {
            return Err(WireError::TooLong(bytes.len() as u64));
        }
        let mut r = Reader { bytes };
        let req = match r.u8()? {
            KIND_GET_BLOB => Self::GetBlob {
                hash: r.hash()?,
                held: r.u64()?,
                ranges: r.ranges(MAX_REQUEST_BOUNDARIES)?,
            },
            KIND_GET_MANIFEST => Self::GetManifest { id: r.hash()? },
            KIND_HAVE => Self::Have { hash: r.hash()? },
            KIND_HOLDS => Self::Holds {
                hash: r.hash()?,
                ranges: r.ranges(MAX_REQUEST_BOUNDARIES)?,
            },
            k => return Err(WireError::UnknownKind(k)),
        };
        r.finish()?;
        Ok(req)
    }
}

/// The status byte that starts every answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Status {
    /// Success; the body follows.
    Ok = 0,
    /// The server has no such blob or manifest.
    NotFound = 1,
    /// Some requested ranges are not present.
    NotPresent = 2,
    /// Throttled; try later or elsewhere.
    Busy = 3,
    /// The request asks for too much at once.
    TooLarge = 4,
    /// The server found its stored data corrupt (and marked it missing).
    Corrupt = 5,
    /// The request was malformed.
    BadRequest = 6,
    /// The server failed.
    Internal = 7,
    /// The server holds the ranges, but enough of its other peers hold them too: ask
    /// those (a complete node keeps its upload for what the swarm lacks; see
    /// [`crate::holders`]). Asked again, it answers.
    Elsewhere = 8,
}

impl Status {
    /// Parses a status byte.
    pub fn from_byte(b: u8) -> Result<Self, WireError> {
        Ok(match b {
            0 => Self::Ok,
            1 => Self::NotFound,
            2 => Self::NotPresent,
            3 => Self::Busy,
            4 => Self::TooLarge,
            5 => Self::Corrupt,
            6 => Self::BadRequest,
            7 => Self::Internal,
            8 => Self::Elsewhere,
            k => return Err(WireError::UnknownKind(k)),
        })
    }
}

/// An error answer: status and message bytes (`u16` length, UTF-8).
pub fn encode_error(status: Status, message: &str) -> Vec<u8> {
    let mut m = message.as_bytes();
    if m.len() > MAX_ERROR_BYTES {
        let mut end = MAX_ERROR_BYTES;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        m = &m[..end];
    }
    let mut out = Vec::with_capacity(3 + m.len());
    out.push(status as u8);
    out.extend_from_slice(&(m.len() as u16).to_le_bytes());
    out.extend_from_slice(m);
    out
}

/// Decodes the message of an error answer (everything after the status byte).
pub fn decode_error(body: &[u8]) -> Result<String, WireError> {
    let mut r = Reader { bytes: body };
    let n = r.u16()? as usize;
    if n > MAX_ERROR_BYTES {
        return Err(WireError::TooLong(n as u64));
    }
    let text = std::str::from_utf8(r.take(n)?).map_err(|_| WireError::NotUtf8)?;
    let text = text.to_owned();
    r.finish()?;
    Ok(text)
}

/// The header of a successful blob answer: status and blob size. The bao encoding of
/// the requested ranges follows.
pub fn encode_blob_header(size: u64) -> [u8; 9] {
    let mut h = [0u8; 9];
    h[0] = Status::Ok as u8;
    h[1..].copy_from_slice(&size.to_le_bytes());
    h
}

/// Parses the blob size after an `Ok` status.
pub fn decode_blob_size(bytes: &[u8; 8]) -> Result<u64, WireError> {
    let size = u64::from_le_bytes(*bytes);
    if size > MAX_BLOB_SIZE {
        return Err(WireError::ImplausibleSize(size));
    }
    Ok(size)
}

/// A successful manifest answer: status, `u32` length, envelope bytes.
pub fn encode_manifest(envelope: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + envelope.len());
    out.push(Status::Ok as u8);
    out.extend_from_slice(&(envelope.len() as u32).to_le_bytes());
    out.extend_from_slice(envelope);
    out
}

/// Parses a manifest answer body (after the `Ok` status).
pub fn decode_manifest(body: &[u8]) -> Result<Vec<u8>, WireError> {
    let mut r = Reader { bytes: body };
    let n = r.u32()? as usize;
    if n > MAX_ENVELOPE_BYTES {
        return Err(WireError::TooLong(n as u64));
    }
    let env = r.take(n)?.to_vec();
    r.finish()?;
    Ok(env)
}

/// What a peer holds of a blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HaveMap {
    /// The blob's size.
    pub size: u64,
    /// Whether the peer has all of it.
    pub complete: bool,
    /// The chunk ranges it has (all of them when complete).
    pub ranges: ChunkRanges,
}

impl HaveMap {
    /// Encodes a successful have answer, keeping at most [`MAX_HAVE_BOUNDARIES`]
    /// boundaries (the largest ranges; claiming less than one has is always safe).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![Status::Ok as u8];
        out.extend_from_slice(&self.size.to_le_bytes());
        out.push(u8::from(self.complete));
        let ranges = if self.complete {
            ChunkRanges::empty()
        } else {
            ranges::keep_largest(&ranges::clip(&self.ranges, self.size), MAX_HAVE_BOUNDARIES)
        };
        put_ranges(&mut out, &ranges, true);
        out
    }

    /// Parses a have answer body (after the `Ok` status).
    pub fn decode(body: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader { bytes: body };
        let size = r.u64()?;
        if size > MAX_BLOB_SIZE {
            return Err(WireError::ImplausibleSize(size));
        }
        let complete = match r.u8()? {
            0 => false,
            1 => true,
            b => return Err(WireError::BadFlag(b)),
        };
        let n = r.u32()? as usize;
        if n > MAX_HAVE_BOUNDARIES {
            return Err(WireError::TooManyRanges(n));
        }
        let ranges = r.ranges_of(n)?;
        r.finish()?;
        let ranges = if complete {
            ranges::all(size)
        } else {
            ranges::clip(&ranges, size)
        };
        Ok(Self {
            size,
            complete,
            ranges,
        })
    }
}

/// The exact length of the bao encoding of `ranges` of a blob of `size` bytes: what
/// follows a blob header. Lets a client bound its reads before it reads anything.
///
/// Walks the same traversal as bao-tree's encoder and decoder: ranges are first put in
/// their canonical form for this size (a range reaching the last chunk becomes open
/// ended, which changes how the last chunk group is walked), and the walk stops as soon
/// as no hash is left to check.
pub fn encoded_len(size: u64, ranges: &ChunkRanges) -> u64 {
    use bao_tree::iter::BaoChunk;
    let tree = ranges::tree(size);
    let ranges = bao_tree::io::sync::truncate_ranges(ranges, size);
    // Only the depth of the stack of hashes still to check matters here.
    let mut pending: u64 = 1;
    let mut len = 0;
    for item in ResponseIterRef::new(tree, ranges) {
        if pending == 0 {
            break;
        }
        pending -= 1;
        match item {
            BaoChunk::Parent { left, right, .. } => {
                len += 64;
                pending += u64::from(left) + u64::from(right);
            }
            BaoChunk::Leaf { size, .. } => len += size as u64,
        }
    }
    len
}

#[cfg(test)]
mod tests {
    use bao_tree::io::{outboard::PreOrderMemOutboard, sync::encode_ranges_validated};
    use modeld_core::ranges::ChunkNum;
    use proptest::prelude::*;

    use super::*;

    fn r(a: u64, b: u64) -> ChunkRanges {
        ChunkRanges::from(ChunkNum(a)..ChunkNum(b))
    }

    #[test]
    fn requests_round_trip() {
        for req in [
            Request::GetBlob {
                hash: Hash::of(b"x"),
                ranges: r(0, 1024) | r(2048, 4096),
                held: 0,
            },
            Request::GetBlob {
                hash: Hash::of(b"x"),
                ranges: ChunkRanges::from(ChunkNum(5)..),
                held: u64::MAX,
            },
            Request::GetManifest { id: Hash::of(b"m") },
            Request::Have {
                hash: Hash::of(b"h"),
            },
            Request::Holds {
                hash: Hash::of(b"h"),
                ranges: r(0, 16) | r(64, 4096),
            },
        ] {
            assert_eq!(Request::decode(&req.encode()).unwrap(), req);
        }
    }

    #[test]
    fn hostile_requests_are_refused() {
        assert_eq!(Request::decode(&[]), Err(WireError::Truncated));
        assert_eq!(Request::decode(&[9]), Err(WireError::UnknownKind(9)));
        let mut bytes = Request::Have { hash: Hash::EMPTY }.encode();
        bytes.push(0);
        assert_eq!(Request::decode(&bytes), Err(WireError::Trailing(1)));
        // Too many boundaries, claimed by the count before any data.
        let mut big = vec![KIND_GET_BLOB];
        big.extend_from_slice(&[0; 32 + 8]);
        big.extend_from_slice(&u16::MAX.to_le_bytes());
        assert_eq!(Request::decode(&big), Err(WireError::TooManyRanges(65535)));
        // Unsorted boundaries.
        let mut bad = vec![KIND_GET_BLOB];
        bad.extend_from_slice(&[0; 32 + 8]);
        bad.extend_from_slice(&2u16.to_le_bytes());
        bad.extend_from_slice(&9u64.to_le_bytes());
        bad.extend_from_slice(&3u64.to_le_bytes());
        assert_eq!(Request::decode(&bad), Err(WireError::UnsortedRanges));
    }

    #[test]
    fn answers_round_trip() {
        for b in 0..=8 {
            assert_eq!(Status::from_byte(b).unwrap() as u8, b);
        }
        assert_eq!(Status::from_byte(9), Err(WireError::UnknownKind(9)));
        let err = encode_error(Status::NotPresent, "no such range");
        assert_eq!(Status::from_byte(err[0]).unwrap(), Status::NotPresent);
        assert_eq!(decode_error(&err[1..]).unwrap(), "no such range");
        let long = "é".repeat(1000);
        let err = encode_error(Status::Internal, &long);
        assert!(decode_error(&err[1..]).unwrap().len() <= MAX_ERROR_BYTES);

        let m = encode_manifest(b"{\"env\":1}");
        assert_eq!(decode_manifest(&m[1..]).unwrap(), b"{\"env\":1}");

        let h = HaveMap {
            size: 10 << 20,
            complete: false,
            ranges: r(0, 64) | r(128, 256),
        };
        assert_eq!(HaveMap::decode(&h.encode()[1..]).unwrap(), h);
        let full = HaveMap {
            size: 5000,
            complete: true,
            ranges: ranges::all(5000),
        };
        assert_eq!(HaveMap::decode(&full.encode()[1..]).unwrap(), full);
    }

    #[test]
    fn a_peer_claiming_an_absurd_size_is_refused() {
        let mut body = (1u64 << 60).to_le_bytes().to_vec();
        body.extend_from_slice(&[1, 0, 0, 0, 0]);
        assert_eq!(
            HaveMap::decode(&body),
            Err(WireError::ImplausibleSize(1 << 60))
        );
        assert_eq!(
            decode_blob_size(&(1u64 << 60).to_le_bytes()),
            Err(WireError::ImplausibleSize(1 << 60))
        );
    }

    #[test]
    fn have_maps_are_coarsened_not_truncated() {
        let mut many = ChunkRanges::empty();
        for i in 0..(MAX_HAVE_BOUNDARIES as u64) {
            many |= r(i * 10, i * 10 + 1 + (i % 3));
        }
        let h = HaveMap {
            size: u64::MAX >> 20,
            complete: false,
            ranges: many.clone(),
        };
        let back = HaveMap::decode(&h.encode()[1..]).unwrap();
        assert!(back.ranges.boundaries().len() <= MAX_HAVE_BOUNDARIES);
        assert!(back.ranges.is_subset(&many));
    }

    #[test]
    fn encoded_len_matches_the_encoder() {
        for len in [(6 << 20) + 77u32, 6 << 20, 8 << 20, 300_000, 16384, 100, 0] {
            let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let ob = PreOrderMemOutboard::create(&data, ranges::BLOCK_SIZE);
            for want in [
                r(0, 16),
                r(16, 64) | r(200, 250),
                ChunkRanges::all(),
                r(290, 300),
                r(1024, 2048),
                r(5120, 6144),
                r(5120, 6145),
                r(7168, 8192),
            ] {
                let want = ranges::clip(&want, u64::from(len));
                assert_eq!(
                    encoded_len(u64::from(len), &want),
                    encoding(&data, &ob, &want).len() as u64,
                    "len {len} ranges {want:?}"
                );
            }
        }
    }

    fn encoding(data: &[u8], ob: &PreOrderMemOutboard, want: &ChunkRanges) -> Vec<u8> {
        let mut out = Vec::new();
        encode_ranges_validated(data, ob, want, &mut out).unwrap();
        out
    }

    proptest! {
        #[test]
        fn encoded_len_is_exact(len in 0u64..(5 << 20), a in 0u64..6000, n in 1u64..2000) {
            let data: Vec<u8> = (0..len).map(|i| (i % 253) as u8).collect();
            let ob = PreOrderMemOutboard::create(&data, ranges::BLOCK_SIZE);
            let want = ranges::clip(&r(a, a + n), len);
            prop_assert_eq!(encoded_len(len, &want), encoding(&data, &ob, &want).len() as u64);
        }

        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = Request::decode(&bytes);
            let _ = HaveMap::decode(&bytes);
            let _ = decode_manifest(&bytes);
            let _ = decode_error(&bytes);
        }
    }
}
