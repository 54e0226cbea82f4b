//! Publisher keys: ed25519 key pairs, their text forms and the secret-key file format.
//!
//! A public key is written `ed25519:` followed by 64 lowercase hex digits, a form that
//! survives copy and paste through terminals, chat and YAML unchanged. A secret key
//! file holds one line `modeld-secret-key-v1:<64 hex digits of the seed>` plus comment
//! lines starting with `#`.

use std::{fmt, str::FromStr};

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::hash::{HexError, decode_hex, encode_hex};

const PUBLIC_PREFIX: &str = "ed25519:";
const SECRET_PREFIX: &str = "modeld-secret-key-v1:";

/// An ed25519 public key that signs manifests (a publisher) or identifies a node.
///
/// Holds the 32 compressed bytes, checked on construction to be a valid point.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey([u8; 32]);

impl PublicKey {
    /// Builds a key from its 32 bytes, refusing points that are not valid keys.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, KeyError> {
        VerifyingKey::from_bytes(bytes)
            .map(|_| Self(*bytes))
            .map_err(|_| KeyError::InvalidPoint)
    }

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Checks `signature` over `message` with the strict rules of RFC 8032
    /// (no small-order keys, canonical `S`), so a signature has exactly one valid form.
    pub fn verify_strict(&self, message: &[u8], signature: &[u8; 64]) -> bool {
        let Ok(key) = VerifyingKey::from_bytes(&self.0) else {
            return false;
        };
        let sig = Signature::from_bytes(signature);
        key.verify_strict(message, &sig).is_ok()
    }
}

impl PartialOrd for PublicKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for PublicKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_bytes().cmp(other.as_bytes())
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PUBLIC_PREFIX}{}", encode_hex(self.as_bytes()))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl FromStr for PublicKey {
    type Err = KeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let hex = s
            .strip_prefix(PUBLIC_PREFIX)
            .ok_or_else(|| KeyError::PublicKeyForm(s.chars().take(80).collect()))?;
        let bytes = decode_hex::<32>(hex).map_err(|e| match e {
            HexError::Length(n) => KeyError::PublicKeyLength(n),
            HexError::NotHex(c) => KeyError::NotHex(c),
        })?;
        Self::from_bytes(&bytes)
    }
}

impl Serialize for PublicKey {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PublicKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        let key: Self = s.parse().map_err(serde::de::Error::custom)?;
        if key.to_string() != s {
            return Err(serde::de::Error::custom(
                "public key must be written in canonical form (ed25519: and lowercase hex)",
            ));
        }
        Ok(key)
    }
}

/// An ed25519 secret key. Its `Debug` output never shows the secret.
#[derive(Clone)]
pub struct SecretKey(SigningKey);

impl SecretKey {
    /// A fresh key from the operating system's random source.
    pub fn generate() -> Self {
        let mut seed = [0u8; 32];
        rand::fill(&mut seed);
        Self(SigningKey::from_bytes(&seed))
    }

    /// A key from a 32-byte seed (tests and deterministic fixtures).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self(SigningKey::from_bytes(&seed))
    }

    /// The 32-byte seed (for writing to a key file; handle with care).
    pub fn to_seed(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// The matching public key.
    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key().to_bytes())
    }

    /// Signs `message`.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.0.sign(message).to_bytes()
    }

    /// The text of a secret-key file for this key.
    pub fn to_file_text(&self) -> String {
        format!(
            "# modeld secret key (ed25519). Keep it private: it signs manifests.\n\
             # public key: {}\n\
             {SECRET_PREFIX}{}\n",
            self.public(),
            encode_hex(&self.to_seed())
        )
    }

    /// Parses the text of a secret-key file (comment lines start with `#`).
    pub fn from_file_text(text: &str) -> Result<Self, KeyError> {
        let mut key_lines = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'));
        let line = key_lines.next().ok_or(KeyError::NoSecretKeyLine)?;
        if key_lines.next().is_some() {
            return Err(KeyError::SecretKeyForm);
        }
        let hex = line
            .strip_prefix(SECRET_PREFIX)
            .ok_or(KeyError::SecretKeyForm)?;
        let seed = decode_hex::<32>(hex).map_err(|_| KeyError::SecretKeyForm)?;
        Ok(Self::from_seed(seed))
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey(public: {})", self.public())
    }
}

/// Why text or bytes are not a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The public key text does not start with `ed25519:`.
    #[error("{0:?} is not a public key: expected `ed25519:` followed by 64 hex digits")]
    PublicKeyForm(String),
    /// The hex part of a public key has the wrong length.
    #[error("a public key is `ed25519:` followed by 64 hex digits, got {0} digits")]
    PublicKeyLength(usize),
    /// The hex part of a public key has a non-hex character.
    #[error("public key has {0:?}, which is not a hex digit")]
    NotHex(char),
    /// The 32 bytes are not a valid ed25519 point.
    #[error("the 32 bytes are not a valid ed25519 public key")]
    InvalidPoint,
    /// A secret-key file without a key line.
    #[error("no `modeld-secret-key-v1:` line found: this is not a modeld secret key file")]
    NoSecretKeyLine,
    /// A secret-key file whose key line is malformed.
    #[error(
        "malformed secret key file: expected exactly one line `modeld-secret-key-v1:` followed by 64 hex digits"
    )]
    SecretKeyForm,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_key_text_round_trip() {
        let sk = SecretKey::from_seed([7; 32]);
        let pk = sk.public();
        let text = pk.to_string();
        assert!(text.starts_with("ed25519:"));
        assert_eq!(text.len(), 8 + 64);
        assert_eq!(text.parse::<PublicKey>().unwrap(), pk);
        assert_eq!(format!("  {text}\n").parse::<PublicKey>().unwrap(), pk);
    }

    #[test]
    fn public_key_errors_say_what_is_wrong() {
        assert!(matches!(
            "ssh-ed25519 AAAA".parse::<PublicKey>(),
            Err(KeyError::PublicKeyForm(_))
        ));
        assert_eq!(
            "ed25519:abcd".parse::<PublicKey>(),
            Err(KeyError::PublicKeyLength(4))
        );
    }

    #[test]
    fn secret_key_file_round_trip_and_debug_hides_secret() {
        let sk = SecretKey::generate();
        let text = sk.to_file_text();
        let back = SecretKey::from_file_text(&text).unwrap();
        assert_eq!(back.public(), sk.public());
        let dbg = format!("{sk:?}");
        assert!(!dbg.contains(&encode_hex(&sk.to_seed())));
    }

    #[test]
    fn secret_key_file_refuses_garbage() {
        assert_eq!(
            SecretKey::from_file_text("# only a comment\n").unwrap_err(),
            KeyError::NoSecretKeyLine
        );
        assert_eq!(
            SecretKey::from_file_text("modeld-secret-key-v1:zz").unwrap_err(),
            KeyError::SecretKeyForm
        );
    }

    #[test]
    fn sign_and_verify_strict() {
        let sk = SecretKey::from_seed([1; 32]);
        let sig = sk.sign(b"msg");
        assert!(sk.public().verify_strict(b"msg", &sig));
        assert!(!sk.public().verify_strict(b"msh", &sig));
        let mut bad = sig;
        bad[0] ^= 1;
        assert!(!sk.public().verify_strict(b"msg", &bad));
    }
}
