//! Errors, one enum per operation. redb's types never cross this crate's boundary:
//! index failures become [`StoreError::Index`] with redb's message.

use std::{io, path::PathBuf};

use modeld_core::{Hash, Refusal, envelope::OpenError as EnvelopeOpenError};

/// A failure of the disk or the index underneath any operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A file-system call failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, naming the file.
        what: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The redb index failed.
    #[error("store index: {0}")]
    Index(String),
    /// The index holds bytes this code cannot read.
    #[error("store index is corrupt: {0}")]
    Corrupt(String),
}

impl StoreError {
    pub(crate) fn io(what: impl Into<String>, source: io::Error) -> Self {
        Self::Io {
            what: what.into(),
            source,
        }
    }
}

/// Converts redb results at the boundary.
pub(crate) trait IndexResult<T> {
    fn idx(self) -> Result<T, StoreError>;
}

impl<T, E: Into<redb::Error>> IndexResult<T> for Result<T, E> {
    fn idx(self) -> Result<T, StoreError> {
        self.map_err(|e| StoreError::Index(e.into().to_string()))
    }
}

/// Why a store could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// Another process has the store open.
    #[error(
        "the store in {0} is in use by another process (is another modeld running on this data dir?)"
    )]
    Locked(PathBuf),
    /// Written by a newer or unknown version of modeld.
    #[error("the store in {path} has layout version {found}, this modeld reads version {expected}")]
    Layout {
        /// The store directory.
        path: PathBuf,
        /// Version found.
        found: u8,
        /// Version this code reads.
        expected: u8,
    },
    /// Disk or index failure.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a file could not be imported.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImportError {
    /// The path is not a regular file.
    #[error("{0} is not a regular file")]
    NotAFile(PathBuf),
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The file changed (size or modification time) while it was being imported.
    #[error("{0} changed while it was being imported; try again once nothing is writing to it")]
    Changed(PathBuf),
    /// Stopped on request.
    #[error("import cancelled")]
    Cancelled,
    /// Disk or index failure.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why verified data could not be written into a partial blob.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    /// The store knows this blob with another size.
    #[error("blob {hash} is {stored} bytes in the store, not {expected}")]
    SizeMismatch {
        /// The blob.
        hash: Hash,
        /// The size asked for.
        expected: u64,
        /// The size on record.
        stored: u64,
    },
    /// The incoming data failed verification; nothing of it past the last good chunk
    /// group was kept.
    #[error("blob {hash}: received data failed verification at {what}")]
    Corrupt {
        /// The blob.
        hash: Hash,
        /// Which node or chunk failed.
        what: String,
    },
    /// The incoming stream ended or failed before all requested data arrived.
    #[error("blob {hash}: stream ended early: {source}")]
    Stream {
        /// The blob.
        hash: Hash,
        /// The reader's error.
        #[source]
        source: io::Error,
    },
    /// Disk or index failure.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why ranges of a blob could not be read (served).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// The store has nothing of this blob.
    #[error("blob {0} is not in the store")]
    NotFound(Hash),
    /// Some requested ranges are not present.
    #[error("blob {hash} does not have bytes {missing}")]
    NotPresent {
        /// The blob.
        hash: Hash,
        /// The missing byte ranges, as text.
        missing: String,
    },
    /// Stored data failed verification while being read; it is now marked missing.
    #[error("blob {hash} is corrupt on disk at {what}; it was marked missing")]
    Corrupt {
        /// The blob.
        hash: Hash,
        /// Which chunk failed.
        what: String,
    },
    /// Writing the encoding out failed.
    #[error("writing blob {hash}: {source}")]
    Sink {
        /// The blob.
        hash: Hash,
        /// The writer's error.
        #[source]
        source: io::Error,
    },
    /// Disk or index failure.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a signed manifest was not added.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AddManifestError {
    /// The envelope or manifest is malformed.
    #[error(transparent)]
    Malformed(#[from] EnvelopeOpenError),
    /// The trust policy refused it.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// Disk or index failure.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a reference to a manifest could not be resolved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ResolveError {
    /// Nothing matches.
    #[error("no manifest matches {0:?} in this store (see `modelctl ls`)")]
    NotFound(String),
    /// A hash prefix matches several manifests.
    #[error("{prefix:?} matches several manifests ({}); give more digits", candidates.iter().map(Hash::short).collect::<Vec<_>>().join(", "))]
    Ambiguous {
        /// The prefix given.
        prefix: String,
        /// The manifests it matches.
        candidates: Vec<Hash>,
    },
    /// Not a manifest id, id prefix, `org/model` or `org/model:version`.
    #[error(
        "{0:?} is not a manifest reference: give a manifest id (or at least 6 of its hex digits), org/model, or org/model:version"
    )]
    BadRef(String),
    /// Disk or index failure.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a manifest could not be exported.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExportError {
    /// The manifest is not in the store.
    #[error("manifest {0} is not in the store")]
    UnknownManifest(Hash),
    /// The manifest is no longer acceptable (key untrusted, expired, bad signature).
    #[error("refusing to export: {0}")]
    Refused(#[from] Refusal),
    /// Files of the manifest are missing or incomplete in the store.
    #[error("{} of the model's files are not complete in the store ({}); fetch the model first", missing.len(), missing.join(", "))]
    Incomplete {
        /// The paths missing.
        missing: Vec<String>,
    },
    /// The store holds the blob with another size than the manifest says.
    #[error("{path}: manifest says {expected} bytes but the stored blob {hash} has {stored}")]
    SizeMismatch {
        /// The file.
        path: String,
        /// Its hash.
        hash: Hash,
        /// Size in the manifest.
        expected: u64,
        /// Size in the store.
        stored: u64,
    },
    /// The stored data no longer hashes to the blob's hash.
    #[error(
        "{path}: stored blob {hash} is corrupt (run `modelctl verify`); nothing was written for it"
    )]
    CorruptBlob {
        /// The file.
        path: String,
        /// Its hash.
        hash: Hash,
    },
    /// The stored content is malformed for its format, or not what the manifest says.
    #[error("{path}: {reason}; nothing was exported")]
    Malformed {
        /// The file.
        path: String,
        /// What inspection found.
        reason: String,
    },
    /// The content is refused by this node's safety policy.
    #[error("{path}: {reason}; nothing was exported{hint}")]
    Unsafe {
        /// The file.
        path: String,
        /// What the policy refused.
        reason: modeld_core::format::SafetyError,
        /// What the user can do, if anything.
        hint: &'static str,
    },
    /// A different file already exists where a model file would go.
    #[error("{0} already exists with different content; pass --force to replace it")]
    Exists(PathBuf),
    /// Something in the way is a symlink or not a directory.
    #[error("refusing to write through {0}: it is a symlink or not a plain directory")]
    NotADirectory(PathBuf),
    /// The target is a directory where a file should go.
    #[error("{0} is a directory; cannot put a model file there")]
    IsADirectory(PathBuf),
    /// A file-system call failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Index failure.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ExportError {
    pub(crate) fn io(what: impl Into<String>, source: io::Error) -> Self {
        Self::Io {
            what: what.into(),
            source,
        }
    }
}
