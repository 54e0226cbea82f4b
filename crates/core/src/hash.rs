//! Content addresses: the plain BLAKE3 hash of a blob, exactly what `b3sum` prints.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The 32-byte BLAKE3 hash of a blob's bytes.
///
/// Displayed and parsed as 64 lowercase hex digits, the same text `b3sum` prints,
/// so any file a user holds can be checked against a manifest with standard tools.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Hash([u8; 32]);

impl Hash {
    /// The hash of the empty blob.
    pub const EMPTY: Self = Self([
        0xaf, 0x13, 0x49, 0xb9, 0xf5, 0xf9, 0xa1, 0xa6, 0xa0, 0x40, 0x4d, 0xea, 0x36, 0xdc, 0xc9,
        0x49, 0x9b, 0xcb, 0x25, 0xc9, 0xad, 0xc1, 0x12, 0xb7, 0xcc, 0x9a, 0x93, 0xca, 0xe4, 0x1f,
        0x32, 0x62,
    ]);

    /// Wraps raw hash bytes.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// Hashes `data` in one call (for small inputs such as manifests).
    pub fn of(data: &[u8]) -> Self {
        Self(*blake3::hash(data).as_bytes())
    }

    /// The raw bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The 64-digit lowercase hex form.
    pub fn to_hex(&self) -> String {
        let mut s = String::with_capacity(64);
        for b in self.0 {
            s.push(HEX[(b >> 4) as usize] as char);
            s.push(HEX[(b & 0xf) as usize] as char);
        }
        s
    }

    /// The first 12 hex digits: enough to tell blobs apart in a listing.
    pub fn short(&self) -> String {
        self.to_hex()[..12].to_owned()
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

impl From<blake3::Hash> for Hash {
    fn from(h: blake3::Hash) -> Self {
        Self(*h.as_bytes())
    }
}

impl From<Hash> for blake3::Hash {
    fn from(h: Hash) -> Self {
        Self::from_bytes(h.0)
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({})", self.short())
    }
}

/// Why a string is not a hash.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseHashError {
    /// Not exactly 64 characters.
    #[error("a BLAKE3 hash is 64 hex digits, got {0} characters")]
    Length(usize),
    /// A character outside `0-9a-fA-F`.
    #[error("a BLAKE3 hash is 64 hex digits; {0:?} is not a hex digit")]
    NotHex(char),
}

impl FromStr for Hash {
    type Err = ParseHashError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = decode_hex::<32>(s).map_err(|e| match e {
            HexError::Length(n) => ParseHashError::Length(n),
            HexError::NotHex(c) => ParseHashError::NotHex(c),
        })?;
        Ok(Self(bytes))
    }
}

/// Why a string is not `N` bytes of hex.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HexError {
    Length(usize),
    NotHex(char),
}

/// Decodes exactly `N` bytes from `2N` hex digits (either case).
pub(crate) fn decode_hex<const N: usize>(s: &str) -> Result<[u8; N], HexError> {
    if s.len() != 2 * N {
        return Err(HexError::Length(s.chars().count()));
    }
    let mut out = [0u8; N];
    let digits = s.as_bytes();
    for (i, byte) in out.iter_mut().enumerate() {
        let hi = nibble(digits[2 * i])?;
        let lo = nibble(digits[2 * i + 1])?;
        *byte = (hi << 4) | lo;
    }
    Ok(out)
}

fn nibble(c: u8) -> Result<u8, HexError> {
    match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        b'A'..=b'F' => Ok(c - b'A' + 10),
        // Non-ASCII bytes: report the byte as a char; exact text is not needed here.
        _ => Err(HexError::NotHex(c as char)),
    }
}

/// Lowercase hex of any byte slice.
pub(crate) fn encode_hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(HEX[(b >> 4) as usize] as char);
        s.push(HEX[(b & 0xf) as usize] as char);
    }
    s
}

impl Serialize for Hash {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Hash {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        if s.bytes().any(|b| b.is_ascii_uppercase()) {
            // Canonical text is lowercase; refusing uppercase keeps one spelling per hash.
            return Err(serde::de::Error::custom(
                "hash must be lowercase hex (as b3sum prints it)",
            ));
        }
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_hash_matches_blake3() {
        assert_eq!(Hash::of(b""), Hash::EMPTY);
    }

    #[test]
    fn hex_round_trip() {
        let h = Hash::of(b"hello");
        let s = h.to_string();
        assert_eq!(s, blake3::hash(b"hello").to_hex().as_str());
        assert_eq!(s.parse::<Hash>().unwrap(), h);
        assert_eq!(s.to_uppercase().parse::<Hash>().unwrap(), h);
    }

    #[test]
    fn bad_hex_is_refused() {
        assert_eq!("abc".parse::<Hash>(), Err(ParseHashError::Length(3)));
        let bad = "g".repeat(64);
        assert_eq!(bad.parse::<Hash>(), Err(ParseHashError::NotHex('g')));
    }

    #[test]
    fn serde_refuses_uppercase() {
        let h = Hash::of(b"x");
        let json = serde_json::to_string(&h).unwrap();
        assert_eq!(serde_json::from_str::<Hash>(&json).unwrap(), h);
        assert!(serde_json::from_str::<Hash>(&json.to_uppercase()).is_err());
    }
}
