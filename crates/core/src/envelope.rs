//! Signed envelopes (DSSE): signatures over the exact manifest bytes.
//!
//! An envelope is the JSON object
//! `{"payloadType":T,"payload":base64(body),"signatures":[{"keyid":K,"sig":base64(sig)}]}`
//! where each signature is ed25519 over the pre-authentication encoding
//! `"DSSEv1" SP len(T) SP T SP len(body) SP body` (lengths in ASCII decimal).
//! The body is never re-serialized before verifying: the signature covers the bytes
//! as received, and the manifest id is the BLAKE3 of those same bytes, so adding a
//! signature never changes the id.

use base64::{Engine as _, engine::general_purpose::STANDARD as B64};
use serde::{Deserialize, Serialize};

use crate::{
    hash::Hash,
    keys::{PublicKey, SecretKey},
    manifest::{MAX_MANIFEST_BYTES, Manifest, ManifestError},
};

/// The DSSE payload type of a modeld manifest.
pub const PAYLOAD_TYPE: &str = "application/vnd.modeld.manifest.v1+json";
/// Largest envelope accepted, in bytes (a maximal body in base64, plus signatures).
pub const MAX_ENVELOPE_BYTES: usize = MAX_MANIFEST_BYTES / 3 * 4 + 64 * 1024;
/// Most signatures one envelope may carry.
pub const MAX_SIGNATURES: usize = 16;

/// One signature in an envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvelopeSignature {
    /// The key that claims to have signed.
    pub key: PublicKey,
    /// The ed25519 signature bytes.
    pub sig: [u8; 64],
}

/// A parsed (not yet verified) envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    payload: Vec<u8>,
    signatures: Vec<EnvelopeSignature>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireEnvelope {
    #[serde(rename = "payloadType")]
    payload_type: String,
    payload: String,
    signatures: Vec<WireSignature>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireSignature {
    keyid: String,
    sig: String,
}

/// Why bytes are not a well-formed envelope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// Larger than [`MAX_ENVELOPE_BYTES`].
    #[error("signed manifest is {0} bytes, larger than the {MAX_ENVELOPE_BYTES}-byte limit")]
    TooLarge(usize),
    /// Not a JSON envelope (truncated, wrong shape, unknown keys).
    #[error("malformed signed manifest (DSSE envelope): {0}")]
    Malformed(String),
    /// Another kind of payload.
    #[error("envelope carries {0:?}, not a modeld manifest ({PAYLOAD_TYPE})")]
    PayloadType(String),
    /// The payload or a signature is not valid base64.
    #[error("envelope {0} is not valid base64")]
    Base64(&'static str),
    /// No signatures at all.
    #[error("manifest is not signed")]
    NoSignatures,
    /// More than [`MAX_SIGNATURES`] signatures.
    #[error("envelope has {0} signatures, more than the limit of {MAX_SIGNATURES}")]
    TooManySignatures(usize),
    /// A `keyid` that is not a public key.
    #[error("signature key id is not a public key: {0}")]
    KeyId(String),
    /// A signature that is not 64 bytes.
    #[error("signature by {0} is not 64 bytes")]
    SignatureLength(PublicKey),
}

/// The DSSE pre-authentication encoding of `body` under `payload_type`.
pub fn pae(payload_type: &str, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + payload_type.len() + 32);
    out.extend_from_slice(b"DSSEv1 ");
    out.extend_from_slice(payload_type.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload_type.as_bytes());
    out.push(b' ');
    out.extend_from_slice(body.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(body);
    out
}

impl Envelope {
    /// Signs manifest bytes with `key`.
    pub fn sign(body: Vec<u8>, key: &SecretKey) -> Self {
        let mut env = Self {
            payload: body,
            signatures: Vec::new(),
        };
        env.add_signature(key);
        env
    }

    /// Adds a signature by `key` (replacing an earlier one by the same key).
    pub fn add_signature(&mut self, key: &SecretKey) {
        let public = key.public();
        self.signatures.retain(|s| s.key != public);
        let sig = key.sign(&pae(PAYLOAD_TYPE, &self.payload));
        self.signatures.push(EnvelopeSignature { key: public, sig });
    }

    /// The signed body bytes (the manifest), exactly as signed.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// The signatures, as listed.
    pub fn signatures(&self) -> &[EnvelopeSignature] {
        &self.signatures
    }

    /// The manifest id: BLAKE3 of the body bytes.
    pub fn manifest_id(&self) -> Hash {
        Hash::of(&self.payload)
    }

    /// The envelope's JSON bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let wire = WireEnvelope {
            payload_type: PAYLOAD_TYPE.to_owned(),
            payload: B64.encode(&self.payload),
            signatures: self
                .signatures
                .iter()
                .map(|s| WireSignature {
                    keyid: s.key.to_string(),
                    sig: B64.encode(s.sig),
                })
                .collect(),
        };
        serde_json::to_vec(&wire).expect("envelope serializes")
    }

    /// Parses envelope bytes (bounded); does not check signatures.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        if bytes.len() > MAX_ENVELOPE_BYTES {
            return Err(EnvelopeError::TooLarge(bytes.len()));
        }
        let wire: WireEnvelope =
            serde_json::from_slice(bytes).map_err(|e| EnvelopeError::Malformed(e.to_string()))?;
        if wire.payload_type != PAYLOAD_TYPE {
            return Err(EnvelopeError::PayloadType(
                wire.payload_type.chars().take(80).collect(),
            ));
        }
        if wire.signatures.is_empty() {
            return Err(EnvelopeError::NoSignatures);
        }
        if wire.signatures.len() > MAX_SIGNATURES {
            return Err(EnvelopeError::TooManySignatures(wire.signatures.len()));
        }
        let payload = B64
            .decode(wire.payload.as_bytes())
            .map_err(|_| EnvelopeError::Base64("payload"))?;
        let mut signatures = Vec::with_capacity(wire.signatures.len());
        for s in wire.signatures {
            let key: PublicKey = s
                .keyid
                .parse()
                .map_err(|e: crate::keys::KeyError| EnvelopeError::KeyId(e.to_string()))?;
            let raw = B64
                .decode(s.sig.as_bytes())
                .map_err(|_| EnvelopeError::Base64("signature"))?;
            let sig: [u8; 64] = raw
                .try_into()
                .map_err(|_| EnvelopeError::SignatureLength(key))?;
            signatures.push(EnvelopeSignature { key, sig });
        }
        Ok(Self {
            payload,
            signatures,
        })
    }

    /// Checks every signature over the exact payload bytes with `verify_strict`.
    pub fn check_signatures(&self) -> SignatureCheck {
        let message = pae(PAYLOAD_TYPE, &self.payload);
        let mut check = SignatureCheck::default();
        for s in &self.signatures {
            if s.key.verify_strict(&message, &s.sig) {
                if !check.valid.contains(&s.key) {
                    check.valid.push(s.key);
                }
            } else {
                check.invalid.push(s.key);
            }
        }
        check
    }
}

/// Which signatures of an envelope verify.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SignatureCheck {
    /// Keys whose signature verifies.
    pub valid: Vec<PublicKey>,
    /// Keys whose signature does not verify.
    pub invalid: Vec<PublicKey>,
}

/// An envelope whose signatures were checked and whose body parsed as a manifest.
///
/// This says nothing yet about trust; see [`crate::trust::TrustSet::accept`].
#[derive(Debug, Clone)]
pub struct SignedManifest {
    /// BLAKE3 of the body bytes.
    pub id: Hash,
    /// The parsed manifest.
    pub manifest: Manifest,
    /// The envelope it came in.
    pub envelope: Envelope,
    /// Which signatures verify.
    pub signatures: SignatureCheck,
}

/// Why an envelope could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The envelope itself is malformed.
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    /// The body is not a valid manifest.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
}

impl SignedManifest {
    /// Parses an envelope, checks its signatures over the exact payload bytes, then
    /// parses the payload as a manifest.
    pub fn open(bytes: &[u8]) -> Result<Self, OpenError> {
        let envelope = Envelope::from_bytes(bytes)?;
        let signatures = envelope.check_signatures();
        let manifest = Manifest::from_bytes(envelope.payload())?;
        Ok(Self {
            id: envelope.manifest_id(),
            manifest,
            envelope,
            signatures,
        })
    }

    /// Signs `manifest` with `key` and opens the result (for publishers and tests).
    pub fn create(manifest: &Manifest, key: &SecretKey) -> Self {
        let envelope = Envelope::sign(manifest.to_bytes(), key);
        let signatures = envelope.check_signatures();
        Self {
            id: envelope.manifest_id(),
            manifest: manifest.clone(),
            envelope,
            signatures,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::tests::{file, header};

    fn signed() -> (Vec<u8>, SecretKey) {
        let key = SecretKey::from_seed([1; 32]);
        let m = Manifest::new(header(1), vec![file("a", b"a")]).unwrap();
        (Envelope::sign(m.to_bytes(), &key).to_bytes(), key)
    }

    #[test]
    fn pae_matches_the_dsse_spec_example() {
        // From the DSSE protocol document.
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
        );
    }

    #[test]
    fn sign_open_verify() {
        let (bytes, key) = signed();
        let s = SignedManifest::open(&bytes).unwrap();
        assert_eq!(s.signatures.valid, vec![key.public()]);
        assert!(s.signatures.invalid.is_empty());
        assert_eq!(s.id, Hash::of(s.envelope.payload()));
    }

    #[test]
    fn second_signature_keeps_id() {
        let (bytes, _) = signed();
        let mut env = Envelope::from_bytes(&bytes).unwrap();
        let id = env.manifest_id();
        let other = SecretKey::from_seed([2; 32]);
        env.add_signature(&other);
        let s = SignedManifest::open(&env.to_bytes()).unwrap();
        assert_eq!(s.id, id);
        assert_eq!(s.signatures.valid.len(), 2);
    }

    #[test]
    fn flipped_signature_bit_is_invalid() {
        let (bytes, key) = signed();
        let mut env = Envelope::from_bytes(&bytes).unwrap();
        env.signatures[0].sig[10] ^= 0x01;
        let s = SignedManifest::open(&env.to_bytes()).unwrap();
        assert!(s.signatures.valid.is_empty());
        assert_eq!(s.signatures.invalid, vec![key.public()]);
    }

    #[test]
    fn signature_over_other_bytes_is_invalid() {
        let (bytes, key) = signed();
        let env = Envelope::from_bytes(&bytes).unwrap();
        let m2 = Manifest::new(header(2), vec![file("a", b"a")]).unwrap();
        let forged = Envelope {
            payload: m2.to_bytes(),
            signatures: env.signatures.clone(),
        };
        let s = SignedManifest::open(&forged.to_bytes()).unwrap();
        assert_eq!(s.signatures.invalid, vec![key.public()]);
    }

    #[test]
    fn truncated_and_oversized_envelopes() {
        let (bytes, _) = signed();
        for cut in [0, 1, bytes.len() / 2, bytes.len() - 1] {
            assert!(matches!(
                Envelope::from_bytes(&bytes[..cut]),
                Err(EnvelopeError::Malformed(_))
            ));
        }
        let big = vec![b' '; MAX_ENVELOPE_BYTES + 1];
        assert!(matches!(
            Envelope::from_bytes(&big),
            Err(EnvelopeError::TooLarge(_))
        ));
    }

    #[test]
    fn wrong_payload_type_and_no_signatures() {
        let (bytes, _) = signed();
        let text = String::from_utf8(bytes).unwrap();
        let other = text.replace(PAYLOAD_TYPE, "application/vnd.in-toto+json");
        assert!(matches!(
            Envelope::from_bytes(other.as_bytes()),
            Err(EnvelopeError::PayloadType(_))
        ));
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let mut v = v.as_object().unwrap().clone();
        v.insert("signatures".into(), serde_json::json!([]));
        let unsigned = serde_json::to_vec(&v).unwrap();
        assert_eq!(
            Envelope::from_bytes(&unsigned),
            Err(EnvelopeError::NoSignatures)
        );
    }
}
