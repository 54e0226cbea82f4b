//! Trust policy: which signed manifests a node accepts.
//!
//! A manifest is accepted only if all of these hold, checked in this order:
//! 1. its publisher's signature verifies (`verify_strict` over the exact bytes);
//! 2. some key with a verifying signature is trusted with a scope covering the name;
//! 3. it has not expired at `now` (the clock is passed in, never read here);
//! 4. its sequence is not lower than the highest already accepted for the name
//!    (rollback), and an equal sequence names the very same manifest (no equivocation).
//!
//! Paths, duplicates and the other body rules were already enforced when the
//! manifest was parsed ([`crate::manifest::Manifest::from_bytes`]).

use std::{collections::BTreeMap, fmt, str::FromStr};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{
    envelope::SignedManifest,
    hash::Hash,
    keys::PublicKey,
    names::{ModelName, NameError},
};

/// Which model names a trusted key may sign for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TrustScope {
    /// Every name (written `*`).
    All,
    /// Every name of one organisation (written `org/`).
    Org(String),
    /// Exactly one name (written `org/model`).
    Name(ModelName),
}

impl TrustScope {
    /// Whether this scope covers `name`.
    pub fn covers(&self, name: &ModelName) -> bool {
        match self {
            Self::All => true,
            Self::Org(org) => name.org() == org,
            Self::Name(n) => n == name,
        }
    }
}

impl fmt::Display for TrustScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::All => f.write_str("*"),
            Self::Org(org) => write!(f, "{org}/"),
            Self::Name(n) => write!(f, "{n}"),
        }
    }
}

impl FromStr for TrustScope {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "*" {
            return Ok(Self::All);
        }
        if let Some(org) = s.strip_suffix('/') {
            // Validate the organisation by validating a name inside it.
            let probe: ModelName = format!("{org}/x").parse()?;
            return Ok(Self::Org(probe.org().to_owned()));
        }
        Ok(Self::Name(s.parse()?))
    }
}

impl Serialize for TrustScope {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for TrustScope {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// What a node already accepted for a name: the floor for rollback protection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NameState {
    /// The highest sequence accepted so far.
    pub sequence: u64,
    /// The manifest accepted at that sequence.
    pub manifest: Hash,
}

/// The set of trusted publisher keys and their scopes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustSet {
    keys: BTreeMap<PublicKey, Vec<TrustScope>>,
}

/// Why a signed manifest is refused. Each message says what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The publisher named in the manifest did not produce a valid signature.
    #[error(
        "manifest {id} is not validly signed by its publisher {publisher}{}: the signature does not verify over these bytes (tampered or corrupt)",
        if invalid.is_empty() { String::new() } else { format!(" (bad signatures by: {})", join(invalid)) }
    )]
    BadSignature {
        /// Manifest id.
        id: Hash,
        /// The publisher the manifest names.
        publisher: PublicKey,
        /// Keys whose signatures failed.
        invalid: Vec<PublicKey>,
    },
    /// No verifying signer is trusted at all.
    #[error(
        "manifest {id} for {name} is signed by {}, which this node does not trust; if you trust this publisher, run `modelctl trust add {} --scope {}/`",
        join(signers), signers.first().map(ToString::to_string).unwrap_or_default(), name.org()
    )]
    Untrusted {
        /// Manifest id.
        id: Hash,
        /// The model name.
        name: ModelName,
        /// Keys whose signatures verify.
        signers: Vec<PublicKey>,
    },
    /// A signer is trusted, but not for this name.
    #[error(
        "manifest {id} for {name} is signed by {key}, which is trusted only for {}; widen its scope with `modelctl trust add {key} --scope {}/` if that is intended",
        scopes.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "), name.org()
    )]
    OutOfScope {
        /// Manifest id.
        id: Hash,
        /// The model name.
        name: ModelName,
        /// The trusted signer.
        key: PublicKey,
        /// Its scopes.
        scopes: Vec<TrustScope>,
    },
    /// Past its expiry.
    #[error(
        "manifest {id} for {name} expired at {expires} (now {now}, Unix seconds); ask the publisher for a current release"
    )]
    Expired {
        /// Manifest id.
        id: Hash,
        /// The model name.
        name: ModelName,
        /// Its expiry.
        expires: u64,
        /// The time of the check.
        now: u64,
    },
    /// Lower sequence than already accepted: a rollback.
    #[error(
        "manifest {id} for {name} has sequence {sequence}, lower than {highest} already accepted: refusing a rollback"
    )]
    Rollback {
        /// Manifest id.
        id: Hash,
        /// The model name.
        name: ModelName,
        /// Its sequence.
        sequence: u64,
        /// The highest accepted.
        highest: u64,
    },
    /// Same sequence as an accepted manifest, but different content.
    #[error(
        "manifest {id} for {name} reuses sequence {sequence}, already taken by manifest {existing}: a publisher must raise the sequence for every release"
    )]
    Equivocation {
        /// Manifest id.
        id: Hash,
        /// The model name.
        name: ModelName,
        /// The reused sequence.
        sequence: u64,
        /// The manifest accepted earlier at that sequence.
        existing: Hash,
    },
}

fn join(keys: &[PublicKey]) -> String {
    keys.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

impl TrustSet {
    /// An empty set: trusts nobody.
    pub fn new() -> Self {
        Self::default()
    }

    /// Trusts `key` for `scope` (in addition to its other scopes).
    pub fn add(&mut self, key: PublicKey, scope: TrustScope) {
        let scopes = self.keys.entry(key).or_default();
        if !scopes.contains(&scope) {
            scopes.push(scope);
            scopes.sort();
        }
    }

    /// The scopes `key` is trusted for, if any.
    pub fn scopes(&self, key: &PublicKey) -> Option<&[TrustScope]> {
        self.keys.get(key).map(Vec::as_slice)
    }

    /// Every trusted key with its scopes.
    pub fn iter(&self) -> impl Iterator<Item = (&PublicKey, &[TrustScope])> {
        self.keys.iter().map(|(k, s)| (k, s.as_slice()))
    }

    /// Whether `key` may sign for `name`.
    pub fn allows(&self, key: &PublicKey, name: &ModelName) -> bool {
        self.scopes(key)
            .is_some_and(|s| s.iter().any(|scope| scope.covers(name)))
    }

    /// Applies the policy in the module docs to `signed`, at time `now` (Unix seconds),
    /// given what was already accepted for its name.
    pub fn accept(
        &self,
        signed: &SignedManifest,
        now: u64,
        seen: Option<NameState>,
    ) -> Result<(), Refusal> {
        let m = &signed.manifest;
        let id = signed.id;
        let name = m.name();
        if !signed.signatures.valid.contains(m.publisher()) {
            return Err(Refusal::BadSignature {
                id,
                publisher: *m.publisher(),
                invalid: signed.signatures.invalid.clone(),
            });
        }
        if !signed.signatures.valid.iter().any(|k| self.allows(k, name)) {
            let scoped = signed
                .signatures
                .valid
                .iter()
                .find_map(|k| self.scopes(k).map(|s| (*k, s.to_vec())));
            return Err(match scoped {
                Some((key, scopes)) => Refusal::OutOfScope {
                    id,
                    name: name.clone(),
                    key,
                    scopes,
                },
                None => Refusal::Untrusted {
                    id,
                    name: name.clone(),
                    signers: signed.signatures.valid.clone(),
                },
            });
        }
        if let Some(expires) = m.expires()
            && expires <= now
        {
            return Err(Refusal::Expired {
                id,
                name: name.clone(),
                expires,
                now,
            });
        }
        if let Some(seen) = seen {
            if m.sequence() < seen.sequence {
                return Err(Refusal::Rollback {
                    id,
                    name: name.clone(),
                    sequence: m.sequence(),
                    highest: seen.sequence,
                });
            }
            if m.sequence() == seen.sequence && seen.manifest != id {
                return Err(Refusal::Equivocation {
                    id,
                    name: name.clone(),
                    sequence: m.sequence(),
                    existing: seen.manifest,
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        keys::SecretKey,
        manifest::{
            Manifest,
            tests::{file, header},
        },
    };

    fn publisher() -> SecretKey {
        SecretKey::from_seed([1; 32])
    }

    fn signed(sequence: u64, expires: Option<u64>) -> SignedManifest {
        let mut h = header(sequence);
        h.expires = expires;
        let m = Manifest::new(h, vec![file("a", b"a")]).unwrap();
        SignedManifest::create(&m, &publisher())
    }

    fn trusting(scope: &str) -> TrustSet {
        let mut t = TrustSet::new();
        t.add(publisher().public(), scope.parse().unwrap());
        t
    }

    const NOW: u64 = 1_800_000_000;

    #[test]
    fn scopes_parse_and_cover() {
        let name: ModelName = "org/model".parse().unwrap();
        assert!("*".parse::<TrustScope>().unwrap().covers(&name));
        assert!("org/".parse::<TrustScope>().unwrap().covers(&name));
        assert!(!"or/".parse::<TrustScope>().unwrap().covers(&name));
        assert!("org/model".parse::<TrustScope>().unwrap().covers(&name));
        assert!(!"org/model2".parse::<TrustScope>().unwrap().covers(&name));
        assert!("org".parse::<TrustScope>().is_err());
        assert_eq!("org/".parse::<TrustScope>().unwrap().to_string(), "org/");
    }

    #[test]
    fn accepts_trusted_in_scope() {
        trusting("org/")
            .accept(&signed(1, None), NOW, None)
            .unwrap();
        trusting("*").accept(&signed(1, None), NOW, None).unwrap();
    }

    #[test]
    fn refuses_untrusted_key() {
        let err = TrustSet::new()
            .accept(&signed(1, None), NOW, None)
            .unwrap_err();
        assert!(matches!(err, Refusal::Untrusted { .. }));
        assert!(err.to_string().contains("modelctl trust add ed25519:"));
    }

    #[test]
    fn refuses_out_of_scope() {
        let err = trusting("other/")
            .accept(&signed(1, None), NOW, None)
            .unwrap_err();
        assert!(matches!(err, Refusal::OutOfScope { .. }), "{err}");
    }

    #[test]
    fn refuses_bad_signature() {
        let mut s = signed(1, None);
        s.signatures.invalid = std::mem::take(&mut s.signatures.valid);
        let err = trusting("*").accept(&s, NOW, None).unwrap_err();
        assert!(matches!(err, Refusal::BadSignature { .. }), "{err}");
    }

    #[test]
    fn refuses_signature_only_by_a_co_signer_when_publisher_missing() {
        let mut s = signed(1, None);
        let other = SecretKey::from_seed([9; 32]).public();
        s.signatures.valid = vec![other];
        let mut t = trusting("*");
        t.add(other, TrustScope::All);
        assert!(matches!(
            t.accept(&s, NOW, None),
            Err(Refusal::BadSignature { .. })
        ));
    }

    #[test]
    fn refuses_expired_with_injected_clock() {
        let s = signed(1, Some(NOW));
        assert!(matches!(
            trusting("*").accept(&s, NOW, None),
            Err(Refusal::Expired { .. })
        ));
        trusting("*").accept(&s, NOW - 1, None).unwrap();
    }

    #[test]
    fn refuses_rollback_and_equivocation() {
        let s = signed(3, None);
        let seen = |sequence, manifest| Some(NameState { sequence, manifest });
        let t = trusting("*");
        assert!(matches!(
            t.accept(&s, NOW, seen(4, Hash::EMPTY)),
            Err(Refusal::Rollback {
                sequence: 3,
                highest: 4,
                ..
            })
        ));
        assert!(matches!(
            t.accept(&s, NOW, seen(3, Hash::EMPTY)),
            Err(Refusal::Equivocation { .. })
        ));
        // The same manifest again is fine, and so is a newer one.
        t.accept(&s, NOW, seen(3, s.id)).unwrap();
        t.accept(&s, NOW, seen(2, Hash::EMPTY)).unwrap();
    }
}
