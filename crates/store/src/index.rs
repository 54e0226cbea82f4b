//! Opening the redb index and the small reads and writes of blob entries.

use modeld_core::Hash;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata};

use crate::{
    entry::BlobEntry,
    error::{IndexResult, OpenError, StoreError},
    layout::Layout,
    tables::{BLOBS, LAYOUT_VERSION, MANIFESTS, META, META_LAYOUT, NAMES, PINS, TRUST, VERSIONS},
};

/// Opens or creates the index, creating every table and checking the layout version.
pub(crate) fn open(layout: &Layout) -> Result<Database, OpenError> {
    std::fs::create_dir_all(layout.blobs())
        .map_err(|e| StoreError::io(format!("creating {}", layout.blobs().display()), e))?;
    let db = match Database::create(layout.index()) {
        Ok(db) => db,
        Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
            return Err(OpenError::Locked(layout.root().to_owned()));
        }
        Err(e) => return Err(StoreError::Index(e.to_string()).into()),
    };
    let tx = db.begin_write().idx()?;
    {
        let mut meta = tx.open_table(META).idx()?;
        let found = meta.get(META_LAYOUT).idx()?.map(|v| v.value().to_vec());
        match found.as_deref() {
            None => {
                meta.insert(META_LAYOUT, [LAYOUT_VERSION].as_slice())
                    .idx()?;
            }
            Some([v]) if *v == LAYOUT_VERSION => {}
            Some(other) => {
                return Err(OpenError::Layout {
                    path: layout.root().to_owned(),
                    found: other.first().copied().unwrap_or(0),
                    expected: LAYOUT_VERSION,
                });
            }
        }
        tx.open_table(BLOBS).idx()?;
        tx.open_table(MANIFESTS).idx()?;
        tx.open_table(NAMES).idx()?;
        tx.open_table(VERSIONS).idx()?;
        tx.open_table(PINS).idx()?;
        tx.open_table(TRUST).idx()?;
    }
    tx.commit().idx()?;
    Ok(db)
}

pub(crate) fn decode_entry(bytes: &[u8]) -> Result<BlobEntry, StoreError> {
    BlobEntry::from_bytes(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))
}

pub(crate) fn get_blob(db: &Database, hash: Hash) -> Result<Option<BlobEntry>, StoreError> {
    let tx = db.begin_read().idx()?;
    let table = tx.open_table(BLOBS).idx()?;
    let v = table.get(hash.as_bytes()).idx()?;
    v.map(|v| decode_entry(v.value())).transpose()
}

pub(crate) fn all_blobs(db: &Database) -> Result<Vec<(Hash, BlobEntry)>, StoreError> {
    let tx = db.begin_read().idx()?;
    let table = tx.open_table(BLOBS).idx()?;
    let mut out = Vec::with_capacity(table.len().idx()? as usize);
    for item in table.iter().idx()? {
        let (k, v) = item.idx()?;
        out.push((Hash::from_bytes(k.value()), decode_entry(v.value())?));
    }
    Ok(out)
}
