//! Where files live inside a store directory, and small file-system helpers.

use std::{
    fs::{self, File, OpenOptions},
    io,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use modeld_core::Hash;

#[derive(Debug, Clone)]
pub(crate) struct Layout {
    root: PathBuf,
}

impl Layout {
    pub(crate) fn new(root: &Path) -> Self {
        Self {
            root: root.to_owned(),
        }
    }

    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn index(&self) -> PathBuf {
        self.root.join("index.redb")
    }

    pub(crate) fn blobs(&self) -> PathBuf {
        self.root.join("blobs")
    }

    pub(crate) fn tmp(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// The fan-out directory of a blob: `blobs/<first two hex digits>`.
    pub(crate) fn blob_dir(&self, hash: Hash) -> PathBuf {
        self.blobs().join(&hash.to_hex()[..2])
    }

    pub(crate) fn data(&self, hash: Hash) -> PathBuf {
        self.blob_dir(hash).join(format!("{}.data", hash.to_hex()))
    }

    pub(crate) fn outboard(&self, hash: Hash) -> PathBuf {
        self.blob_dir(hash).join(format!("{}.obao", hash.to_hex()))
    }

    /// A fresh, exclusively created file in `tmp/`.
    pub(crate) fn temp_file(&self, suffix: &str) -> io::Result<(PathBuf, File)> {
        loop {
            let name = format!("{:016x}.{suffix}", rand::random::<u64>());
            let path = self.tmp().join(name);
            match OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o644)
                .open(&path)
            {
                Ok(f) => return Ok((path, f)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Removes everything in `tmp/` (left over by a crash). Only safe while nobody
    /// else uses the store, i.e. right after opening it.
    pub(crate) fn clear_tmp(&self) -> io::Result<()> {
        let tmp = self.tmp();
        fs::create_dir_all(&tmp)?;
        for entry in fs::read_dir(&tmp)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                fs::remove_dir_all(entry.path())?;
            } else {
                fs::remove_file(entry.path())?;
            }
        }
        Ok(())
    }
}

/// Flushes a directory's entries (after renames into it).
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Starts writing `len` bytes at `offset` back to disk without waiting
/// (`sync_file_range`), so a final `fsync` has little left to do. Measured: without
/// these hints the kernel's own writeback of a freshly written multi-GiB file throttles
/// the writer to half the speed (`docs/benchmarks.md`). Not a durability barrier.
pub(crate) fn write_back(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: sync_file_range only reads the descriptor and integers; an invalid range
    // is reported as an error, which is harmless here (this is a hint).
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

/// Tries to make `dst` share `src`'s blocks (a reflink). Fails on file systems
/// without copy-on-write clones (ext4), which callers treat as "copy instead".
pub(crate) fn reflink(src: &File, dst: &File) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: FICLONE takes the source descriptor as its argument and touches no
    // memory of ours; both descriptors are open for the duration of the call.
    let r = unsafe { libc::ioctl(dst.as_raw_fd(), libc::FICLONE, src.as_raw_fd()) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Reserves `len` bytes of disk for `file` up front: the data lands in contiguous
/// extents (sequential writeback) and a full disk fails before any work is done.
pub(crate) fn allocate(file: &File, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: fallocate only reads the descriptor and integers.
    let r = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len as libc::off_t) };
    if r == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        // File systems without fallocate: fine, the writes allocate as they go.
        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) => Ok(()),
        _ => Err(e),
    }
}
