//! Every redb table of the index, in one place. Names carry a version suffix: a
//! change of key or value layout gets a new name and a migration, never a silent
//! reinterpretation of old bytes. Value layouts are specified in `docs/store.md`.

use redb::TableDefinition;

/// Blob hash -> [`crate::entry::BlobEntry`] bytes (state, size, verified ranges).
pub(crate) const BLOBS: TableDefinition<'_, [u8; 32], &[u8]> = TableDefinition::new("blobs-v1");

/// Manifest id -> the signed envelope bytes, exactly as accepted.
pub(crate) const MANIFESTS: TableDefinition<'_, [u8; 32], &[u8]> =
    TableDefinition::new("manifests-v1");

/// Model name -> (highest sequence accepted, manifest id at that sequence).
/// Never deleted by GC: it is the floor that refuses rollbacks.
pub(crate) const NAMES: TableDefinition<'_, &str, (u64, [u8; 32])> =
    TableDefinition::new("names-v1");

/// (model name, version) -> the manifest id with the highest sequence for that version.
pub(crate) const VERSIONS: TableDefinition<'_, (&str, &str), [u8; 32]> =
    TableDefinition::new("versions-v1");

/// Pinned manifest id -> time it was pinned (Unix seconds). GC keeps what pins reference.
pub(crate) const PINS: TableDefinition<'_, [u8; 32], u64> = TableDefinition::new("pins-v1");

/// Trusted publisher key (32 bytes) -> its scopes, one per line.
pub(crate) const TRUST: TableDefinition<'_, [u8; 32], &str> = TableDefinition::new("trust-v1");

/// Store-wide facts, such as the layout version.
pub(crate) const META: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("meta-v1");

/// The key in [`META`] holding the layout version.
pub(crate) const META_LAYOUT: &str = "layout";
/// The layout version this code writes and reads.
pub(crate) const LAYOUT_VERSION: u8 = 1;
