//! modeld's vocabulary, with no IO: everything here is a pure function of its inputs.
//!
//! - [`Hash`](struct@Hash): a blob's address, its plain BLAKE3 hash (what `b3sum` prints).
//! - [`ranges`]: chunk ranges and the 16 KiB chunk-group geometry of verification.
//! - [`PublicKey`], [`SecretKey`]: ed25519 publisher keys and their text forms.
//! - [`Manifest`]: which files, sizes and hashes make up `org/model` at a version,
//!   with one canonical byte form (`docs/manifest.md`).
//! - [`Envelope`], [`SignedManifest`]: DSSE signatures over the exact manifest bytes.
//! - [`TrustSet`]: which signed manifests a node accepts (trust, scope, expiry, rollback).
//! - [`ModelName`], [`Version`], [`ModelPath`]: validated names; a `ModelPath` can
//!   never leave the directory it is joined to.
//! - [`format`](mod@format): recognising model file formats by content.
//!
//! ```
//! use modeld_core::{Hash, Manifest, ManifestFile, ManifestHeader, SecretKey, SignedManifest, TrustSet, TrustScope};
//!
//! let key = SecretKey::from_seed([7; 32]);
//! let weights = b"not really weights";
//! let manifest = Manifest::new(
//!     ManifestHeader {
//!         name: "org/model".parse()?,
//!         version: "1".parse()?,
//!         sequence: 1,
//!         created: 1_700_000_000,
//!         expires: None,
//!         publisher: key.public(),
//!         allow_pickle: false,
//!     },
//!     vec![ManifestFile {
//!         path: "model.safetensors".parse()?,
//!         size: weights.len() as u64,
//!         blake3: Hash::of(weights),
//!         format: modeld_core::format::FileFormat::Other,
//!     }],
//! )?;
//! let bytes = SignedManifest::create(&manifest, &key).envelope.to_bytes();
//!
//! // A node that trusts the key for `org/` accepts it ...
//! let opened = SignedManifest::open(&bytes)?;
//! let mut trust = TrustSet::new();
//! trust.add(key.public(), "org/".parse()?);
//! trust.accept(&opened, 1_800_000_000, None)?;
//! // ... and one that trusts nobody refuses it.
//! assert!(TrustSet::new().accept(&opened, 1_800_000_000, None).is_err());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod envelope;
pub mod format;
pub mod hash;
pub mod keys;
pub mod manifest;
pub mod names;
pub mod ranges;
pub mod trust;

pub use envelope::{Envelope, SignedManifest};
pub use hash::Hash;
pub use keys::{PublicKey, SecretKey};
pub use manifest::{Manifest, ManifestFile, ManifestHeader};
pub use names::{ModelName, ModelPath, NameRef, Version};
pub use trust::{NameState, Refusal, TrustScope, TrustSet};
