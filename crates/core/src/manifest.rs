//! The manifest: exactly which files, sizes and hashes make up `org/model` at a version.
//!
//! The byte format is specified in `docs/manifest.md`. In short: compact JSON with a
//! fixed key order, files sorted by path, optional keys omitted when absent. Parsing is
//! strict (unknown or duplicate keys, a wrong schema, non-canonical bytes, unsafe or
//! conflicting paths are all refused), so one manifest has exactly one byte form and
//! therefore one id, the BLAKE3 hash of those bytes.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::{
    format::FileFormat,
    hash::Hash,
    keys::PublicKey,
    names::{ModelName, ModelPath, Version},
};

/// The schema number written into every manifest this code produces.
pub const SCHEMA: u32 = 1;
/// Largest manifest body accepted, in bytes.
pub const MAX_MANIFEST_BYTES: usize = 4 << 20;
/// Most files one manifest may list.
pub const MAX_FILES: usize = 100_000;

/// One file of a model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestFile {
    /// Where the file goes, relative to the model directory.
    pub path: ModelPath,
    /// Its length in bytes.
    pub size: u64,
    /// Its BLAKE3 hash (what `b3sum` prints).
    pub blake3: Hash,
    /// Its format, detected from its content.
    pub format: FileFormat,
}

/// A model release: name, version, sequence, and its files.
///
/// Construct with [`Manifest::new`] (which sorts and checks the files) or parse with
/// [`Manifest::from_bytes`]; either way the invariants in `docs/manifest.md` hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    name: ModelName,
    version: Version,
    sequence: u64,
    created: u64,
    expires: Option<u64>,
    publisher: PublicKey,
    allow_pickle: bool,
    files: Vec<ManifestFile>,
}

/// The wire form; field order here is the canonical key order.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    schema: u32,
    name: ModelName,
    version: Version,
    sequence: u64,
    created: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires: Option<u64>,
    publisher: PublicKey,
    /// `true` only, and present only when the publisher allowed pickle-based files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    allow_pickle: Option<bool>,
    files: Vec<ManifestFile>,
}

/// What [`Manifest::new`] needs besides the files.
#[derive(Debug, Clone)]
pub struct ManifestHeader {
    /// `org/model`.
    pub name: ModelName,
    /// The version label.
    pub version: Version,
    /// Per-name sequence number; must grow with every release of the name.
    pub sequence: u64,
    /// Creation time, seconds since the Unix epoch.
    pub created: u64,
    /// Optional expiry, seconds since the Unix epoch.
    pub expires: Option<u64>,
    /// The key that signs it.
    pub publisher: PublicKey,
    /// The publisher knowingly includes pickle-based files (`publish --allow-pickle`);
    /// required when any file's format is pickle-based.
    pub allow_pickle: bool,
}

/// Why bytes are not a valid manifest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    /// Larger than [`MAX_MANIFEST_BYTES`].
    #[error("manifest is {0} bytes, larger than the {MAX_MANIFEST_BYTES}-byte limit")]
    TooLarge(usize),
    /// Not JSON of the expected shape (includes unknown and duplicate keys).
    #[error("malformed manifest: {0}")]
    Malformed(String),
    /// A schema this code does not know.
    #[error("manifest schema {0} is not supported (this modeld reads schema {SCHEMA})")]
    Schema(u32),
    /// Valid content, but not in the one canonical byte form.
    #[error(
        "manifest bytes are not in canonical form (compact JSON, fixed key order, files sorted by path)"
    )]
    NotCanonical,
    /// Lists no files.
    #[error("manifest lists no files")]
    NoFiles,
    /// More than [`MAX_FILES`] files.
    #[error("manifest lists {0} files, more than the limit of {MAX_FILES}")]
    TooManyFiles(usize),
    /// The same path twice.
    #[error("duplicate path {0:?} in manifest")]
    DuplicatePath(String),
    /// A path that is both a file and a directory of another file.
    #[error("path {file:?} is a file, but {other:?} needs it to be a directory")]
    PathConflict {
        /// The path listed as a file.
        file: String,
        /// The path that would put a file inside it.
        other: String,
    },
    /// The sizes add up past `u64::MAX`.
    #[error("total size of the files overflows")]
    SizeOverflow,
    /// A pickle-based file without the manifest declaring `allow_pickle`.
    #[error("{path} is {format}, but the manifest does not declare allow_pickle")]
    UndeclaredPickle {
        /// The file.
        path: String,
        /// Its format.
        format: FileFormat,
    },
    /// `"allow_pickle":false` (absence is the only way to say false).
    #[error("allow_pickle may only be true (omit it otherwise)")]
    FalsePickleFlag,
    /// Expires before it was created.
    #[error("manifest expires ({expires}) before it was created ({created})")]
    ExpiresBeforeCreated {
        /// Creation time.
        created: u64,
        /// Expiry time.
        expires: u64,
    },
}

impl Manifest {
    /// Builds a manifest; sorts `files` by path and checks every rule.
    pub fn new(
        header: ManifestHeader,
        mut files: Vec<ManifestFile>,
    ) -> Result<Self, ManifestError> {
        files.sort_by(|a, b| a.path.as_str().cmp(b.path.as_str()));
        let manifest = Self {
            name: header.name,
            version: header.version,
            sequence: header.sequence,
            created: header.created,
            expires: header.expires,
            publisher: header.publisher,
            allow_pickle: header.allow_pickle,
            files,
        };
        manifest.check()?;
        Ok(manifest)
    }

    /// Parses and checks manifest bytes; refuses anything but the canonical form.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ManifestError> {
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(ManifestError::TooLarge(bytes.len()));
        }
        // Peek at the schema first so a future schema gets a precise error.
        #[derive(Deserialize)]
        struct SchemaOnly {
            schema: u32,
        }
        match serde_json::from_slice::<SchemaOnly>(bytes) {
            Ok(s) if s.schema != SCHEMA => return Err(ManifestError::Schema(s.schema)),
            _ => {}
        }
        let wire: Wire =
            serde_json::from_slice(bytes).map_err(|e| ManifestError::Malformed(e.to_string()))?;
        let manifest = Self {
            name: wire.name,
            version: wire.version,
            sequence: wire.sequence,
            created: wire.created,
            expires: wire.expires,
            publisher: wire.publisher,
            allow_pickle: wire.allow_pickle == Some(true),
            files: wire.files,
        };
        if wire.allow_pickle == Some(false) {
            return Err(ManifestError::FalsePickleFlag);
        }
        if manifest.files.len() > MAX_FILES {
            return Err(ManifestError::TooManyFiles(manifest.files.len()));
        }
        let sorted = manifest
            .files
            .windows(2)
            .all(|w| w[0].path.as_str() <= w[1].path.as_str());
        if sorted {
            // Duplicates and conflicts get their own error before the canonical check.
            manifest.check()?;
        }
        if manifest.to_bytes() != bytes {
            return Err(ManifestError::NotCanonical);
        }
        Ok(manifest)
    }

    /// The canonical bytes: what is signed and what the id is computed over.
    pub fn to_bytes(&self) -> Vec<u8> {
        let wire = Wire {
            schema: SCHEMA,
            name: self.name.clone(),
            version: self.version.clone(),
            sequence: self.sequence,
            created: self.created,
            expires: self.expires,
            publisher: self.publisher,
            allow_pickle: self.allow_pickle.then_some(true),
            files: self.files.clone(),
        };
        // Serializing plain structs of strings and integers into a Vec cannot fail.
        serde_json::to_vec(&wire).expect("manifest serializes")
    }

    fn check(&self) -> Result<(), ManifestError> {
        if self.files.is_empty() {
            return Err(ManifestError::NoFiles);
        }
        if self.files.len() > MAX_FILES {
            return Err(ManifestError::TooManyFiles(self.files.len()));
        }
        if let Some(expires) = self.expires
            && expires <= self.created
        {
            return Err(ManifestError::ExpiresBeforeCreated {
                created: self.created,
                expires,
            });
        }
        let mut paths = HashSet::with_capacity(self.files.len());
        let mut total: u64 = 0;
        for f in &self.files {
            if !paths.insert(f.path.as_str()) {
                return Err(ManifestError::DuplicatePath(f.path.to_string()));
            }
            total = total
                .checked_add(f.size)
                .ok_or(ManifestError::SizeOverflow)?;
            if f.format.is_pickle() && !self.allow_pickle {
                return Err(ManifestError::UndeclaredPickle {
                    path: f.path.to_string(),
                    format: f.format,
                });
            }
        }
        for f in &self.files {
            if let Some(dir) = f.path.ancestors().find(|a| paths.contains(a)) {
                return Err(ManifestError::PathConflict {
                    file: dir.to_owned(),
                    other: f.path.to_string(),
                });
            }
        }
        Ok(())
    }

    /// `org/model`.
    pub fn name(&self) -> &ModelName {
        &self.name
    }
    /// The version label.
    pub fn version(&self) -> &Version {
        &self.version
    }
    /// The per-name sequence number.
    pub fn sequence(&self) -> u64 {
        self.sequence
    }
    /// Creation time (Unix seconds).
    pub fn created(&self) -> u64 {
        self.created
    }
    /// Expiry time (Unix seconds), if any.
    pub fn expires(&self) -> Option<u64> {
        self.expires
    }
    /// The key that signed it as publisher.
    pub fn publisher(&self) -> &PublicKey {
        &self.publisher
    }
    /// The publisher allowed pickle-based files in this release.
    pub fn allow_pickle(&self) -> bool {
        self.allow_pickle
    }
    /// The files whose format is pickle-based.
    pub fn pickle_files(&self) -> impl Iterator<Item = &ManifestFile> {
        self.files.iter().filter(|f| f.format.is_pickle())
    }
    /// The files, sorted by path.
    pub fn files(&self) -> &[ManifestFile] {
        &self.files
    }
    /// Sum of the file sizes.
    pub fn total_size(&self) -> u64 {
        // `check` guarantees this does not overflow.
        self.files.iter().map(|f| f.size).sum()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::keys::SecretKey;

    pub(crate) fn file(path: &str, data: &[u8]) -> ManifestFile {
        ManifestFile {
            path: path.parse().unwrap(),
            size: data.len() as u64,
            blake3: Hash::of(data),
            format: FileFormat::Other,
        }
    }

    pub(crate) fn header(sequence: u64) -> ManifestHeader {
        ManifestHeader {
            name: "org/model".parse().unwrap(),
            version: "1.0".parse().unwrap(),
            sequence,
            created: 1_700_000_000,
            expires: None,
            publisher: SecretKey::from_seed([1; 32]).public(),
            allow_pickle: false,
        }
    }

    #[test]
    fn pickle_files_need_the_declaration() {
        let mut f = file("model.bin", b"x");
        f.format = FileFormat::Pickle;
        assert!(matches!(
            Manifest::new(header(1), vec![f.clone()]),
            Err(ManifestError::UndeclaredPickle { .. })
        ));
        let mut h = header(1);
        h.allow_pickle = true;
        let m = Manifest::new(h, vec![f]).unwrap();
        let bytes = m.to_bytes();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.contains(",\"allow_pickle\":true,\"files\":"), "{text}");
        assert_eq!(Manifest::from_bytes(&bytes).unwrap(), m);
        let undeclared = text.replace(",\"allow_pickle\":true", "");
        assert!(matches!(
            Manifest::from_bytes(undeclared.as_bytes()),
            Err(ManifestError::UndeclaredPickle { .. })
        ));
        let falsy = text.replace("\"allow_pickle\":true", "\"allow_pickle\":false");
        assert_eq!(
            Manifest::from_bytes(falsy.as_bytes()),
            Err(ManifestError::FalsePickleFlag)
        );
    }

    #[test]
    fn round_trip_is_canonical_and_sorted() {
        let m =
            Manifest::new(header(1), vec![file("b.bin", b"b"), file("a/c.json", b"c")]).unwrap();
        assert_eq!(m.files()[0].path.as_str(), "a/c.json");
        let bytes = m.to_bytes();
        assert!(bytes.starts_with(b"{\"schema\":1,\"name\":\"org/model\""));
        assert!(!bytes.windows(9).any(|w| w == b"\"expires\""));
        let back = Manifest::from_bytes(&bytes).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.total_size(), 2);
    }

    #[test]
    fn non_canonical_forms_are_refused() {
        let m = Manifest::new(header(1), vec![file("a", b"a")]).unwrap();
        let text = String::from_utf8(m.to_bytes()).unwrap();
        let pretty = serde_json::to_string_pretty(
            &serde_json::from_str::<serde_json::Value>(&text).unwrap(),
        )
        .unwrap();
        assert_eq!(
            Manifest::from_bytes(pretty.as_bytes()),
            Err(ManifestError::NotCanonical)
        );
        let with_null = text.replace(",\"publisher\"", ",\"expires\":null,\"publisher\"");
        assert_eq!(
            Manifest::from_bytes(with_null.as_bytes()),
            Err(ManifestError::NotCanonical)
        );
    }

    #[test]
    fn unknown_and_duplicate_keys_are_refused() {
        let m = Manifest::new(header(1), vec![file("a", b"a")]).unwrap();
        let text = String::from_utf8(m.to_bytes()).unwrap();
        let extra = text.replacen("{\"schema\":1,", "{\"schema\":1,\"x\":1,", 1);
        assert!(matches!(
            Manifest::from_bytes(extra.as_bytes()),
            Err(ManifestError::Malformed(_))
        ));
        let dup = text.replacen("\"sequence\":1,", "\"sequence\":1,\"sequence\":9,", 1);
        let err = Manifest::from_bytes(dup.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("duplicate field"), "{err}");
    }

    #[test]
    fn schema_and_size_limits() {
        let m = Manifest::new(header(1), vec![file("a", b"a")]).unwrap();
        let text = String::from_utf8(m.to_bytes()).unwrap();
        let v2 = text.replacen("\"schema\":1", "\"schema\":2", 1);
        assert_eq!(
            Manifest::from_bytes(v2.as_bytes()),
            Err(ManifestError::Schema(2))
        );
        let huge = vec![b' '; MAX_MANIFEST_BYTES + 1];
        assert_eq!(
            Manifest::from_bytes(&huge),
            Err(ManifestError::TooLarge(MAX_MANIFEST_BYTES + 1))
        );
    }

    #[test]
    fn duplicate_and_conflicting_paths_are_refused() {
        assert_eq!(
            Manifest::new(header(1), vec![file("a", b"1"), file("a", b"2")]),
            Err(ManifestError::DuplicatePath("a".into()))
        );
        assert!(matches!(
            Manifest::new(header(1), vec![file("a", b"1"), file("a/b", b"2")]),
            Err(ManifestError::PathConflict { .. })
        ));
        assert_eq!(
            Manifest::new(header(1), vec![]),
            Err(ManifestError::NoFiles)
        );
    }

    #[test]
    fn hostile_paths_in_bytes_are_refused() {
        let m = Manifest::new(header(1), vec![file("a", b"a")]).unwrap();
        let text = String::from_utf8(m.to_bytes()).unwrap();
        for bad in ["../a", "/a", "", "a//b"] {
            let t = text.replace("\"path\":\"a\"", &format!("\"path\":{bad:?}"));
            let err = Manifest::from_bytes(t.as_bytes()).unwrap_err();
            assert!(
                err.to_string().contains("unsafe file path"),
                "{bad:?}: {err}"
            );
        }
    }

    #[test]
    fn sizes_may_not_overflow() {
        let mut a = file("a", b"a");
        a.size = u64::MAX;
        let b = file("b", b"b");
        assert_eq!(
            Manifest::new(header(1), vec![a, b]),
            Err(ManifestError::SizeOverflow)
        );
    }

    #[test]
    fn expiry_after_creation() {
        let mut h = header(1);
        h.expires = Some(h.created);
        assert!(matches!(
            Manifest::new(h, vec![file("a", b"a")]),
            Err(ManifestError::ExpiresBeforeCreated { .. })
        ));
    }
}
