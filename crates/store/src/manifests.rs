//! Signed manifests, names, versions, pins and the trust set in the index.
//!
//! A manifest enters the store only through [`Store::add_manifest`], which applies the
//! trust policy of [`modeld_core::trust`] inside the same write transaction that
//! records it, so two concurrent additions cannot both pass a rollback check.

use modeld_core::{
    Hash, ModelName, NameRef, NameState, PublicKey, Refusal, SignedManifest, TrustScope, TrustSet,
};
use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata};

use crate::{
    Store,
    error::{AddManifestError, IndexResult, ResolveError, StoreError},
    tables::{MANIFESTS, NAMES, PINS, TRUST, VERSIONS},
};

/// A manifest held by the store.
#[derive(Debug, Clone)]
pub struct StoredManifest {
    /// Its id.
    pub id: Hash,
    /// The envelope bytes as accepted.
    pub envelope: Vec<u8>,
    /// The parsed, signature-checked manifest.
    pub signed: SignedManifest,
    /// When it was pinned (Unix seconds), if it is.
    pub pinned: Option<u64>,
}

/// The result of [`Store::add_manifest`].
#[derive(Debug, Clone)]
pub struct AddedManifest {
    /// The manifest id.
    pub id: Hash,
    /// It was already in the store.
    pub existed: bool,
    /// The parsed manifest.
    pub signed: SignedManifest,
}

fn open_stored(id: Hash, bytes: &[u8]) -> Result<SignedManifest, StoreError> {
    SignedManifest::open(bytes)
        .map_err(|e| StoreError::Corrupt(format!("stored manifest {id} no longer parses: {e}")))
}

impl Store {
    /// Verifies and adds a signed manifest (envelope bytes) at time `now`, pinning it
    /// if asked. Refused unless the trust policy accepts it (see [`modeld_core::trust`]).
    pub fn add_manifest(
        &self,
        envelope: &[u8],
        now: u64,
        pin: bool,
    ) -> Result<AddedManifest, AddManifestError> {
        let signed = SignedManifest::open(envelope)?;
        let id = signed.id;
        let m = &signed.manifest;
        let tx = self.inner.db.begin_write().idx()?;
        let existed;
        {
            let trust = read_trust(&tx.open_table(TRUST).idx()?)?;
            let mut names = tx.open_table(NAMES).idx()?;
            let seen = names.get(m.name().as_str()).idx()?.map(|v| {
                let (sequence, id) = v.value();
                NameState {
                    sequence,
                    manifest: Hash::from_bytes(id),
                }
            });
            trust.accept(&signed, now, seen)?;
            let mut manifests = tx.open_table(MANIFESTS).idx()?;
            existed = manifests.get(id.as_bytes()).idx()?.is_some();
            if !existed {
                manifests.insert(id.as_bytes(), envelope).idx()?;
            }
            if seen.is_none_or(|s| m.sequence() > s.sequence) {
                names
                    .insert(m.name().as_str(), (m.sequence(), *id.as_bytes()))
                    .idx()?;
            }
            let mut versions = tx.open_table(VERSIONS).idx()?;
            let key = (m.name().as_str(), m.version().as_str());
            let replace = match versions.get(key).idx()? {
                None => true,
                Some(v) => {
                    let other = Hash::from_bytes(v.value());
                    match manifests.get(other.as_bytes()).idx()? {
                        Some(b) => {
                            open_stored(other, b.value())?.manifest.sequence() < m.sequence()
                        }
                        None => true,
                    }
                }
            };
            if replace {
                versions.insert(key, id.as_bytes()).idx()?;
            }
            if pin {
                let mut pins = tx.open_table(PINS).idx()?;
                if pins.get(id.as_bytes()).idx()?.is_none() {
                    pins.insert(id.as_bytes(), now).idx()?;
                }
            }
        }
        tx.commit().idx()?;
        Ok(AddedManifest {
            id,
            existed,
            signed,
        })
    }

    /// The manifest `id`, if the store has it.
    pub fn manifest(&self, id: Hash) -> Result<Option<StoredManifest>, StoreError> {
        let tx = self.inner.db.begin_read().idx()?;
        let manifests = tx.open_table(MANIFESTS).idx()?;
        let pins = tx.open_table(PINS).idx()?;
        let Some(v) = manifests.get(id.as_bytes()).idx()? else {
            return Ok(None);
        };
        let envelope = v.value().to_vec();
        Ok(Some(StoredManifest {
            id,
            signed: open_stored(id, &envelope)?,
            envelope,
            pinned: pins.get(id.as_bytes()).idx()?.map(|v| v.value()),
        }))
    }

    /// Every manifest in the store, sorted by name, then sequence.
    pub fn manifests(&self) -> Result<Vec<StoredManifest>, StoreError> {
        let tx = self.inner.db.begin_read().idx()?;
        let manifests = tx.open_table(MANIFESTS).idx()?;
        let pins = tx.open_table(PINS).idx()?;
        let mut out = Vec::with_capacity(manifests.len().idx()? as usize);
        for item in manifests.iter().idx()? {
            let (k, v) = item.idx()?;
            let id = Hash::from_bytes(k.value());
            let envelope = v.value().to_vec();
            out.push(StoredManifest {
                id,
                signed: open_stored(id, &envelope)?,
                envelope,
                pinned: pins.get(id.as_bytes()).idx()?.map(|v| v.value()),
            });
        }
        out.sort_by(|a, b| {
            let (a, b) = (&a.signed.manifest, &b.signed.manifest);
            (a.name(), a.sequence()).cmp(&(b.name(), b.sequence()))
        });
        Ok(out)
    }

    /// The highest sequence accepted for `name`, with its manifest id.
    pub fn name_state(&self, name: &ModelName) -> Result<Option<NameState>, StoreError> {
        let tx = self.inner.db.begin_read().idx()?;
        let names = tx.open_table(NAMES).idx()?;
        Ok(names.get(name.as_str()).idx()?.map(|v| {
            let (sequence, id) = v.value();
            NameState {
                sequence,
                manifest: Hash::from_bytes(id),
            }
        }))
    }

    /// Resolves what a user typed: a manifest id, a unique prefix of one (at least 6
    /// hex digits), `org/model` (the highest sequence stored) or `org/model:version`.
    pub fn resolve(&self, reference: &str) -> Result<Hash, ResolveError> {
        if let Ok(id) = reference.parse::<Hash>() {
            return Ok(id);
        }
        if reference.contains('/') {
            let r: NameRef = reference
                .parse()
                .map_err(|_| ResolveError::BadRef(reference.to_owned()))?;
            let tx = self.inner.db.begin_read().idx()?;
            if let Some(version) = &r.version {
                let versions = tx.open_table(VERSIONS).idx()?;
                return versions
                    .get((r.name.as_str(), version.as_str()))
                    .idx()?
                    .map(|v| Hash::from_bytes(v.value()))
                    .ok_or_else(|| ResolveError::NotFound(reference.to_owned()));
            }
            drop(tx);
            return self
                .manifests()?
                .into_iter()
                .filter(|m| m.signed.manifest.name() == &r.name)
                .max_by_key(|m| m.signed.manifest.sequence())
                .map(|m| m.id)
                .ok_or_else(|| ResolveError::NotFound(reference.to_owned()));
        }
        let prefix = reference.to_ascii_lowercase();
        if prefix.len() < 6 || !prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ResolveError::BadRef(reference.to_owned()));
        }
        let tx = self.inner.db.begin_read().idx()?;
        let manifests = tx.open_table(MANIFESTS).idx()?;
        let mut candidates = Vec::new();
        for item in manifests.iter().idx()? {
            let (k, _) = item.idx()?;
            let id = Hash::from_bytes(k.value());
            if id.to_hex().starts_with(&prefix) {
                candidates.push(id);
            }
        }
        match candidates.len() {
            0 => Err(ResolveError::NotFound(reference.to_owned())),
            1 => Ok(candidates[0]),
            _ => Err(ResolveError::Ambiguous {
                prefix: reference.to_owned(),
                candidates,
            }),
        }
    }

    /// Pins manifest `id` so GC keeps it and its blobs. Returns `false` if the store
    /// does not have that manifest.
    pub fn pin(&self, id: Hash, now: u64) -> Result<bool, StoreError> {
        let tx = self.inner.db.begin_write().idx()?;
        let known;
        {
            known = tx
                .open_table(MANIFESTS)
                .idx()?
                .get(id.as_bytes())
                .idx()?
                .is_some();
            let mut pins = tx.open_table(PINS).idx()?;
            if known && pins.get(id.as_bytes()).idx()?.is_none() {
                pins.insert(id.as_bytes(), now).idx()?;
            }
        }
        tx.commit().idx()?;
        Ok(known)
    }

    /// Unpins manifest `id`. Returns whether it was pinned.
    pub fn unpin(&self, id: Hash) -> Result<bool, StoreError> {
        let tx = self.inner.db.begin_write().idx()?;
        let was = tx
            .open_table(PINS)
            .idx()?
            .remove(id.as_bytes())
            .idx()?
            .is_some();
        tx.commit().idx()?;
        Ok(was)
    }

    /// The trusted keys and their scopes.
    pub fn trust(&self) -> Result<TrustSet, StoreError> {
        let tx = self.inner.db.begin_read().idx()?;
        read_trust(&tx.open_table(TRUST).idx()?)
    }

    /// Trusts `key` for `scope` (in addition to any scopes it has).
    pub fn trust_add(&self, key: PublicKey, scope: TrustScope) -> Result<(), StoreError> {
        self.update_trust(key, |scopes| {
            if !scopes.contains(&scope) {
                scopes.push(scope);
            }
        })
    }

    /// Removes one scope of `key`, or the key entirely when `scope` is `None`.
    /// Returns whether anything was removed.
    pub fn trust_remove(
        &self,
        key: PublicKey,
        scope: Option<&TrustScope>,
    ) -> Result<bool, StoreError> {
        let mut removed = false;
        self.update_trust(key, |scopes| {
            let before = scopes.len();
            match scope {
                Some(s) => scopes.retain(|x| x != s),
                None => scopes.clear(),
            }
            removed = scopes.len() != before;
        })?;
        Ok(removed)
    }

    fn update_trust(
        &self,
        key: PublicKey,
        f: impl FnOnce(&mut Vec<TrustScope>),
    ) -> Result<(), StoreError> {
        let tx = self.inner.db.begin_write().idx()?;
        {
            let mut table = tx.open_table(TRUST).idx()?;
            let mut scopes = match table.get(key.as_bytes()).idx()? {
                Some(v) => parse_scopes(v.value())?,
                None => Vec::new(),
            };
            f(&mut scopes);
            scopes.sort();
            scopes.dedup();
            if scopes.is_empty() {
                table.remove(key.as_bytes()).idx()?;
            } else {
                let text = scopes
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("\n");
                table.insert(key.as_bytes(), text.as_str()).idx()?;
            }
        }
        tx.commit().idx()
    }

    /// Re-checks a stored manifest against the current trust set and clock (before an
    /// export): signature, trust and scope, expiry. Not the sequence: an older stored
    /// release may still be exported on purpose.
    pub fn recheck(&self, m: &StoredManifest, now: u64) -> Result<(), Refusal> {
        let trust = self.trust().map_err(|_| Refusal::Untrusted {
            id: m.id,
            name: m.signed.manifest.name().clone(),
            signers: m.signed.signatures.valid.clone(),
        })?;
        trust.accept(&m.signed, now, None)
    }
}

fn parse_scopes(text: &str) -> Result<Vec<TrustScope>, StoreError> {
    text.lines()
        .map(|l| {
            l.parse()
                .map_err(|e| StoreError::Corrupt(format!("trust scope {l:?}: {e}")))
        })
        .collect()
}

fn read_trust(table: &impl ReadableTable<[u8; 32], &'static str>) -> Result<TrustSet, StoreError> {
    let mut set = TrustSet::new();
    for item in table.iter().idx()? {
        let (k, v) = item.idx()?;
        let key = PublicKey::from_bytes(&k.value())
            .map_err(|e| StoreError::Corrupt(format!("trusted key: {e}")))?;
        for scope in parse_scopes(v.value())? {
            set.add(key, scope);
        }
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use modeld_core::{
        Manifest, ManifestFile, ManifestHeader, Refusal, SecretKey, SignedManifest,
        format::FileFormat,
    };

    use crate::{AddManifestError, test_util::store};

    fn manifest(key: &SecretKey, seq: u64, version: &str) -> Vec<u8> {
        let m = Manifest::new(
            ManifestHeader {
                name: "org/model".parse().unwrap(),
                version: version.parse().unwrap(),
                sequence: seq,
                created: 1_700_000_000,
                expires: None,
                publisher: key.public(),
                allow_pickle: false,
            },
            vec![ManifestFile {
                path: "w.bin".parse().unwrap(),
                size: 3,
                blake3: modeld_core::Hash::of(b"abc"),
                format: FileFormat::Other,
            }],
        )
        .unwrap();
        SignedManifest::create(&m, key).envelope.to_bytes()
    }

    const NOW: u64 = 1_800_000_000;

    #[test]
    fn trust_then_add_then_refuse_rollback() {
        let (_d, store) = store();
        let key = SecretKey::from_seed([3; 32]);
        let m2 = manifest(&key, 2, "2");
        let err = store.add_manifest(&m2, NOW, true).unwrap_err();
        assert!(matches!(
            err,
            AddManifestError::Refused(Refusal::Untrusted { .. })
        ));
        store
            .trust_add(key.public(), "org/".parse().unwrap())
            .unwrap();
        let added = store.add_manifest(&m2, NOW, true).unwrap();
        assert!(!added.existed);
        assert!(store.add_manifest(&m2, NOW, false).unwrap().existed);
        let m1 = manifest(&key, 1, "1");
        let err = store.add_manifest(&m1, NOW, true).unwrap_err();
        assert!(
            matches!(err, AddManifestError::Refused(Refusal::Rollback { .. })),
            "{err}"
        );
        assert_eq!(store.manifests().unwrap().len(), 1);
        assert_eq!(
            store
                .name_state(&"org/model".parse().unwrap())
                .unwrap()
                .unwrap()
                .sequence,
            2
        );
    }

    #[test]
    fn resolve_by_id_prefix_name_and_version() {
        let (_d, store) = store();
        let key = SecretKey::from_seed([3; 32]);
        store.trust_add(key.public(), "*".parse().unwrap()).unwrap();
        let a = store
            .add_manifest(&manifest(&key, 1, "1"), NOW, true)
            .unwrap()
            .id;
        let b = store
            .add_manifest(&manifest(&key, 2, "2"), NOW, true)
            .unwrap()
            .id;
        assert_eq!(store.resolve(&a.to_hex()).unwrap(), a);
        assert_eq!(store.resolve(&b.to_hex()[..10]).unwrap(), b);
        assert_eq!(store.resolve("org/model").unwrap(), b);
        assert_eq!(store.resolve("org/model:1").unwrap(), a);
        assert!(store.resolve("org/model:3").is_err());
        assert!(store.resolve("abc").is_err());
        assert!(store.resolve("org/other").is_err());
    }

    #[test]
    fn trust_remove_scope_and_key() {
        let (_d, store) = store();
        let key = SecretKey::from_seed([3; 32]).public();
        store.trust_add(key, "org/".parse().unwrap()).unwrap();
        store.trust_add(key, "other/".parse().unwrap()).unwrap();
        assert_eq!(store.trust().unwrap().scopes(&key).unwrap().len(), 2);
        assert!(
            store
                .trust_remove(key, Some(&"org/".parse().unwrap()))
                .unwrap()
        );
        assert_eq!(store.trust().unwrap().scopes(&key).unwrap().len(), 1);
        assert!(store.trust_remove(key, None).unwrap());
        assert!(store.trust().unwrap().scopes(&key).is_none());
        assert!(!store.trust_remove(key, None).unwrap());
    }
}
