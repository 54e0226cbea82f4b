//! One daemon per data dir: an exclusive lock on `<data dir>/modeld.lock`.
//!
//! The lock is an OS file lock (released by the kernel however the process ends), and
//! the file records the holder's pid so the error can name it.

use std::{
    fs::{File, OpenOptions},
    io::{Read, Seek, Write},
    os::unix::fs::OpenOptionsExt,
    path::Path,
};

use anyhow::{Context, bail};

/// Holds the data-dir lock until dropped.
#[derive(Debug)]
pub(crate) struct DataDirLock {
    _file: File,
}

impl DataDirLock {
    /// Takes the lock, or fails naming the process that holds it.
    pub(crate) fn acquire(data_dir: &Path) -> anyhow::Result<Self> {
        let path = data_dir.join("modeld.lock");
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                let pid = pid.trim();
                bail!(
                    "another modeld{} is already using data dir {}; stop it first, or give this one its own --data-dir",
                    if pid.is_empty() {
                        String::new()
                    } else {
                        format!(" (pid {pid})")
                    },
                    data_dir.display()
                );
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("locking {}", path.display()));
            }
        }
        file.set_len(0)?;
        file.rewind()?;
        writeln!(file, "{}", std::process::id())?;
        file.flush()?;
        Ok(Self { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_fails_with_pid() {
        let dir = tempfile::tempdir().unwrap();
        let _held = DataDirLock::acquire(dir.path()).unwrap();
        let err = DataDirLock::acquire(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        drop(_held);
        DataDirLock::acquire(dir.path()).unwrap();
    }
}
