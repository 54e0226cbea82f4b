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
//!
//! Before anything is written, every file's stored content is inspected again
//! ([`modeld_core::format::inspect`]): it must be well-formed, be the format the
//! manifest records, and pass this node's pickle policy, whatever the publisher said.

use std::{
    fs::{self, File, OpenOptions, Permissions},
    io,
    os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use modeld_core::{
    Hash, ManifestFile,
    format::{self, FileSource, SafetyError},
};

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
    /// This node allows pickle-based files (whose globals are all allow-listed).
    pub allow_pickle: bool,
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

/// What to do with one file, decided before anything is written.
#[derive(Debug, Clone, Copy)]
enum Plan {
    /// Write it (creating directories as needed).
    Place,
    /// Already there as a hard link to the store's file.
    Linked,
    /// Already there as an identical file (hashed).
    Identical,
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
        for f in files {
            self.inspect_stored(f, options.allow_pickle)?;
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
        let plans = files
            .iter()
            .map(|f| self.plan_file(&root, f, options))
            .collect::<Result<Vec<_>, _>>()?;
        for (f, plan) in files.iter().zip(plans) {
            let placement = self.export_file(&root, f, plan, options, progress)?;
            report.files.push((f.path.to_string(), placement));
            report.bytes += f.size;
        }
        Ok(report)
    }

    /// Re-inspects a stored file before it is written out: its content must be
    /// well-formed, be the format the manifest says, and pass this node's policy.
    fn inspect_stored(&self, f: &ManifestFile, allow_pickle: bool) -> Result<(), ExportError> {
        let path = self.inner.layout.data(f.blake3);
        let file = File::open(&path)
            .map_err(|e| ExportError::io(format!("reading stored blob {}", f.blake3), e))?;
        let src = FileSource::new(&file)
            .map_err(|e| ExportError::io(format!("reading stored blob {}", f.blake3), e))?;
        let found =
            format::inspect_named(&src, f.path.as_str()).map_err(|e| ExportError::Malformed {
                path: f.path.to_string(),
                reason: e.to_string(),
            })?;
        if found.format != f.format {
            return Err(ExportError::Malformed {
                path: f.path.to_string(),
                reason: format!(
                    "the manifest says {} but the content is {}",
                    f.format, found.format
                ),
            });
        }
        found.check(allow_pickle).map_err(|reason| {
            let hint = match reason {
                SafetyError::PickleNotAllowed { .. } => {
                    " (set safety.allow_pickle = true in modeld's config, or start it with --allow-pickle true, to accept pickles of tensors)"
                }
                _ => "",
            };
            ExportError::Unsafe {
                path: f.path.to_string(),
                reason,
                hint,
            }
        })
    }

    /// Decides what to do with one file without changing anything, so that a conflict
    /// anywhere stops the export before any file is written.
    fn plan_file(
        &self,
        root: &Path,
        f: &ManifestFile,
        options: &ExportOptions,
    ) -> Result<Plan, ExportError> {
        for dir in f.path.ancestors() {
            let dir = root.join(dir);
            match fs::symlink_metadata(&dir) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => return Err(ExportError::NotADirectory(dir)),
                // Missing: created at placement; nothing below it can exist either.
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Plan::Place),
                Err(e) => return Err(ExportError::io(format!("checking {}", dir.display()), e)),
            }
        }
        let dest = root.join(f.path.as_str());
        match fs::symlink_metadata(&dest) {
            Ok(m) if m.is_dir() => Err(ExportError::IsADirectory(dest)),
            Ok(m) if m.is_file() => {
                let store_meta = fs::metadata(self.inner.layout.data(f.blake3))
                    .map_err(|e| ExportError::io(format!("reading stored blob {}", f.blake3), e))?;
                if m.dev() == store_meta.dev() && m.ino() == store_meta.ino() {
                    return Ok(Plan::Linked);
                }
                let threads = self.inner.options.hash_threads;
                let identical = m.len() == f.size
                    && File::open(&dest)
                        .ok()
                        .and_then(|d| hash_of(&d, f.size, None, threads).ok())
                        == Some(f.blake3);
                if identical {
                    Ok(Plan::Identical)
                } else if options.overwrite {
                    Ok(Plan::Place)
                } else {
                    Err(ExportError::Exists(dest))
                }
            }
            Ok(_) if options.overwrite => Ok(Plan::Place),
            Ok(_) => Err(ExportError::Exists(dest)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Plan::Place),
            Err(e) => Err(ExportError::io(format!("checking {}", dest.display()), e)),
        }
    }

    fn export_file(
        &self,
        root: &Path,
        f: &ManifestFile,
        plan: Plan,
        options: &ExportOptions,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<Placement, ExportError> {
        let source_path = self.inner.layout.data(f.blake3);
        let source = File::open(&source_path)
            .map_err(|e| ExportError::io(format!("opening stored blob {}", f.blake3), e))?;
        match plan {
            Plan::Linked => {
                // The export is the store's own file: verify it in place.
                self.check_blob(f, &source, None, progress)?;
                return Ok(Placement::Unchanged);
            }
            Plan::Identical => {
                progress(f.size);
                return Ok(Placement::Unchanged);
            }
            Plan::Place => {}
        }
        for dir in f.path.ancestors() {
            ensure_dir(&root.join(dir))?;
        }
        let dest = root.join(f.path.as_str());
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

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    use super::*;
    use crate::test_util::{NOW, publish, store};

    fn opts() -> ExportOptions {
        ExportOptions {
            overwrite: false,
            copy: false,
            now: NOW,
            allow_pickle: false,
        }
    }

    #[test]
    fn export_places_read_only_identical_files_and_is_idempotent() {
        let (dir, store) = store();
        let big = vec![9u8; 300_000];
        let (id, _) = publish(
            &store,
            dir.path(),
            &[("w/model.bin", &big), ("config.json", b"{}")],
            1,
        );
        let out = dir.path().join("out");
        let report = store.export(id, &out, &opts(), &|_| {}).unwrap();
        assert_eq!(report.bytes, 300_002);
        assert!(
            report.files.iter().all(|(_, p)| *p == Placement::Hardlink),
            "{report:?}"
        );
        assert_eq!(fs::read(out.join("w/model.bin")).unwrap(), big);
        assert_eq!(fs::read(out.join("config.json")).unwrap(), b"{}");
        let mode = fs::metadata(out.join("w/model.bin")).unwrap().mode();
        assert_eq!(mode & 0o222, 0, "exported file is writable: {mode:o}");
        let again = store.export(id, &out, &opts(), &|_| {}).unwrap();
        assert!(again.files.iter().all(|(_, p)| *p == Placement::Unchanged));
        let copied = store
            .export(
                id,
                &dir.path().join("out2"),
                &ExportOptions {
                    copy: true,
                    ..opts()
                },
                &|_| {},
            )
            .unwrap();
        assert!(copied.files.iter().all(|(_, p)| *p == Placement::Copy));
        assert_eq!(fs::read(dir.path().join("out2/w/model.bin")).unwrap(), big);
    }

    #[test]
    fn a_different_existing_file_is_kept_unless_forced() {
        let (dir, store) = store();
        let (id, _) = publish(&store, dir.path(), &[("a.bin", b"model bytes")], 1);
        let out = dir.path().join("out");
        fs::create_dir_all(&out).unwrap();
        fs::write(out.join("a.bin"), b"user's own file").unwrap();
        let err = store.export(id, &out, &opts(), &|_| {}).unwrap_err();
        assert!(matches!(err, ExportError::Exists(_)), "{err}");
        assert_eq!(fs::read(out.join("a.bin")).unwrap(), b"user's own file");
        store
            .export(
                id,
                &out,
                &ExportOptions {
                    overwrite: true,
                    ..opts()
                },
                &|_| {},
            )
            .unwrap();
        assert_eq!(fs::read(out.join("a.bin")).unwrap(), b"model bytes");
    }

    #[test]
    fn symlinks_inside_the_target_are_never_followed() {
        let (dir, store) = store();
        let (id, _) = publish(
            &store,
            dir.path(),
            &[("sub/a.bin", b"aaa"), ("b.bin", b"bbb")],
            1,
        );
        let out = dir.path().join("out");
        let elsewhere = dir.path().join("elsewhere");
        fs::create_dir_all(&out).unwrap();
        fs::create_dir_all(&elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, out.join("sub")).unwrap();
        let err = store.export(id, &out, &opts(), &|_| {}).unwrap_err();
        assert!(matches!(err, ExportError::NotADirectory(_)), "{err}");
        assert_eq!(fs::read_dir(&elsewhere).unwrap().count(), 0);

        fs::remove_file(out.join("sub")).unwrap();
        let victim = elsewhere.join("victim");
        fs::write(&victim, b"precious").unwrap();
        std::os::unix::fs::symlink(&victim, out.join("b.bin")).unwrap();
        let err = store.export(id, &out, &opts(), &|_| {}).unwrap_err();
        assert!(matches!(err, ExportError::Exists(_)), "{err}");
        store
            .export(
                id,
                &out,
                &ExportOptions {
                    overwrite: true,
                    ..opts()
                },
                &|_| {},
            )
            .unwrap();
        // The link was replaced; what it pointed at is untouched.
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
        assert!(fs::symlink_metadata(out.join("b.bin")).unwrap().is_file());
    }

    #[test]
    fn untrusted_incomplete_and_corrupt_models_are_not_exported() {
        let (dir, store) = store();
        let (id, key) = publish(&store, dir.path(), &[("a.bin", &[1u8; 50_000])], 1);
        let data =
            store.data_path(store.manifest(id).unwrap().unwrap().signed.manifest.files()[0].blake3);

        // Corrupt on disk: refused, nothing written, and the bad range marked missing.
        fs::set_permissions(&data, Permissions::from_mode(0o644)).unwrap();
        let mut bytes = fs::read(&data).unwrap();
        bytes[40_000] ^= 1;
        fs::write(&data, &bytes).unwrap();
        let out = dir.path().join("out");
        let err = store
            .export(
                id,
                &out,
                &ExportOptions {
                    copy: true,
                    ..opts()
                },
                &|_| {},
            )
            .unwrap_err();
        assert!(matches!(err, ExportError::CorruptBlob { .. }), "{err}");
        assert!(!out.join("a.bin").exists());
        // Now incomplete in the index.
        let err = store.export(id, &out, &opts(), &|_| {}).unwrap_err();
        assert!(matches!(err, ExportError::Incomplete { .. }), "{err}");

        // Untrusted publisher: refused before anything else.
        store.trust_remove(key.public(), None).unwrap();
        let err = store.export(id, &out, &opts(), &|_| {}).unwrap_err();
        assert!(matches!(err, ExportError::Refused(_)), "{err}");
    }
}
