//! Exporting a manifest to an ordinary directory in its layout.
//!
//! Each file is placed by the cheapest means the file system allows: a reflink (a
//! copy-on-write clone), else a hard link to the store's read-only data file, else a
//! copy. Whatever the means, the bytes are hashed on the way and must match the
//! manifest, so a file that rotted in the store is never handed out.
//!
//! Safety: model paths are [`modeld_core::ModelPath`]s (no `..`, nothing absolute);
//! every directory on the way is checked to be a real directory, not a symlink; each
//! file is written under a temporary name and renamed into place, which replaces a
//! symlink rather than following it. An existing different file is replaced only with
//! `overwrite`.

use std::{
    fs::{self, File, OpenOptions, Permissions},
    io,
    os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use modeld_core::{Hash, ManifestFile};

use crate::{
    Store,
    error::ExportError,
    hasher::{self, NoNodes},
    index,
    layout::reflink,
};

/// How to export.
#[derive(Debug, Clone, Copy)]
pub struct ExportOptions {
    /// Replace existing files whose content differs.
    pub overwrite: bool,
    /// Always copy (never reflink or hard-link to the store).
    pub copy: bool,
    /// The time for the trust and expiry check (Unix seconds).
    pub now: u64,
}

/// How one file got into the export directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// A copy-on-write clone: no data copied, no extra space.
    Reflink,
    /// A hard link to the store's read-only file: no extra space.
    Hardlink,
    /// A byte copy.
    Copy,
    /// An identical file was already there.
    Unchanged,
}

impl Placement {
    /// A short name for reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reflink => "reflink",
            Self::Hardlink => "hardlink",
            Self::Copy => "copy",
            Self::Unchanged => "unchanged",
        }
    }
}

/// What an export did.
#[derive(Debug, Clone)]
pub struct ExportReport {
    /// The directory written to.
    pub target: PathBuf,
    /// Each file with how it was placed.
    pub files: Vec<(String, Placement)>,
    /// Bytes of the model.
    pub bytes: u64,
}

impl Store {
    /// Exports manifest `id` into `target` (created if needed). `progress` is called
    /// with bytes verified as they go.
    pub fn export(
        &self,
        id: Hash,
        target: &Path,
        options: &ExportOptions,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<ExportReport, ExportError> {
        let stored = self.manifest(id)?.ok_or(ExportError::UnknownManifest(id))?;
        self.recheck(&stored, options.now)?;
        let files = stored.signed.manifest.files();
        let mut missing = Vec::new();
        for f in files {
            match index::get_blob(&self.inner.db, f.blake3)? {
                Some(e) if e.size != f.size => {
                    return Err(ExportError::SizeMismatch {
                        path: f.path.to_string(),
                        hash: f.blake3,
                        expected: f.size,
                        stored: e.size,
                    });
                }
                Some(e) if e.is_complete() => {}
                _ => missing.push(f.path.to_string()),
            }
        }
        if !missing.is_empty() {
            return Err(ExportError::Incomplete { missing });
        }
        match fs::symlink_metadata(target) {
            Ok(m) if !m.is_dir() && !m.file_type().is_symlink() => {
                return Err(ExportError::NotADirectory(target.to_owned()));
            }
            _ => {}
        }
        fs::create_dir_all(target)
            .map_err(|e| ExportError::io(format!("creating {}", target.display()), e))?;
        let root = fs::canonicalize(target)
            .map_err(|e| ExportError::io(format!("resolving {}", target.display()), e))?;
        let mut report = ExportReport {
            target: root.clone(),
            files: Vec::with_capacity(files.len()),
            bytes: 0,
        };
        for f in files {
            let placement = self.export_file(&root, f, options, progress)?;
            report.files.push((f.path.to_string(), placement));
            report.bytes += f.size;
        }
        Ok(report)
    }

    fn export_file(
        &self,
        root: &Path,
        f: &ManifestFile,
        options: &ExportOptions,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<Placement, ExportError> {
        for dir in f.path.ancestors() {
            ensure_dir(&root.join(dir))?;
        }
        let dest = root.join(f.path.as_str());
        let source_path = self.inner.layout.data(f.blake3);
        let source = File::open(&source_path)
            .map_err(|e| ExportError::io(format!("opening stored blob {}", f.blake3), e))?;
        let threads = self.inner.options.hash_threads;
        match fs::symlink_metadata(&dest) {
            Ok(m) if m.is_dir() => return Err(ExportError::IsADirectory(dest)),
            Ok(m) if m.is_file() => {
                let store_meta = source
                    .metadata()
                    .map_err(|e| ExportError::io("reading stored blob", e))?;
                let same_inode = m.dev() == store_meta.dev() && m.ino() == store_meta.ino();
                let identical = same_inode
                    || (m.len() == f.size
                        && File::open(&dest)
                            .ok()
                            .and_then(|d| hash_of(&d, f.size, None, threads).ok())
                            == Some(f.blake3));
                if identical {
                    if same_inode {
                        self.check_blob(f, &source, None, progress)?;
                    } else {
                        progress(f.size);
                    }
                    return Ok(Placement::Unchanged);
                }
                if !options.overwrite {
                    return Err(ExportError::Exists(dest));
                }
            }
            Ok(_) if !options.overwrite => return Err(ExportError::Exists(dest)),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(ExportError::io(format!("checking {}", dest.display()), e)),
        }

        let dir = dest.parent().unwrap_or(root);
        let name = dest
            .file_name()
            .map_or_else(Default::default, |n| n.to_string_lossy().into_owned());
        let tmp = dir.join(format!(".{name}.modeld-{:08x}", rand::random::<u32>()));
        let _cleanup = RemoveOnDrop(&tmp);
        let io_err = |what: &str, e| ExportError::io(format!("{what} {}", tmp.display()), e);

        let placement = 'placed: {
            if !options.copy {
                let clone = create_new(&tmp).map_err(|e| io_err("creating", e))?;
                if f.size > 0 && reflink(&source, &clone).is_ok() {
                    self.check_blob(f, &clone, None, progress)?;
                    set_read_only(&tmp).map_err(|e| io_err("making read-only", e))?;
                    break 'placed Placement::Reflink;
                }
                drop(clone);
                fs::remove_file(&tmp).map_err(|e| io_err("removing", e))?;
                if fs::hard_link(&source_path, &tmp).is_ok() {
                    self.check_blob(f, &source, None, progress)?;
                    break 'placed Placement::Hardlink;
                }
            }
            let copy = create_new(&tmp).map_err(|e| io_err("creating", e))?;
            self.check_blob(f, &source, Some(&copy), progress)?;
            set_read_only(&tmp).map_err(|e| io_err("making read-only", e))?;
            Placement::Copy
        };
        fs::rename(&tmp, &dest)
            .map_err(|e| ExportError::io(format!("moving into place {}", dest.display()), e))?;
        Ok(placement)
    }

    /// Hashes `data` (optionally copying it to `copy_to`) and checks it against the
    /// manifest. A mismatch marks the stored blob's bad ranges missing.
    fn check_blob(
        &self,
        f: &ManifestFile,
        data: &File,
        copy_to: Option<&File>,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<(), ExportError> {
        let job = hasher::Job {
            src: data,
            size: f.size,
            copy_to,
            nodes: &NoNodes,
            threads: self.inner.options.hash_threads,
            progress,
            cancel: &std::sync::atomic::AtomicBool::new(false),
        };
        let ok = match hasher::run(&job) {
            Ok(h) => Hash::from(h) == f.blake3,
            Err(hasher::HashError::Truncated { .. }) => false,
            Err(e) => {
                return Err(ExportError::io(
                    format!("reading stored blob {}", f.blake3),
                    io::Error::other(e.to_string()),
                ));
            }
        };
        if !ok {
            tracing::error!(blob = %f.blake3, path = %f.path, "stored blob failed verification during export");
            // Record exactly what is bad so it is never served and can be re-fetched.
            let _ = self.verify_blob(f.blake3);
            return Err(ExportError::CorruptBlob {
                path: f.path.to_string(),
                hash: f.blake3,
            });
        }
        Ok(())
    }
}

fn hash_of(
    file: &File,
    size: u64,
    copy_to: Option<&File>,
    threads: usize,
) -> Result<Hash, hasher::HashError> {
    let job = hasher::Job {
        src: file,
        size,
        copy_to,
        nodes: &NoNodes,
        threads,
        progress: &|_| {},
        cancel: &std::sync::atomic::AtomicBool::new(false),
    };
    hasher::run(&job).map(Hash::from)
}

/// Makes sure `dir` is a real directory (creating it if absent), never a symlink.
fn ensure_dir(dir: &Path) -> Result<(), ExportError> {
    match fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(ExportError::NotADirectory(dir.to_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => match fs::create_dir(dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => ensure_dir(dir),
            Err(e) => Err(ExportError::io(format!("creating {}", dir.display()), e)),
        },
        Err(e) => Err(ExportError::io(format!("checking {}", dir.display()), e)),
    }
}

fn create_new(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

fn set_read_only(path: &Path) -> io::Result<()> {
    fs::set_permissions(path, Permissions::from_mode(0o444))
}

struct RemoveOnDrop<'a>(&'a Path);

impl Drop for RemoveOnDrop<'_> {
    fn drop(&mut self) {
        // After a successful rename the temporary name is gone and this is a no-op.
        let _ = fs::remove_file(self.0);
    }
}
