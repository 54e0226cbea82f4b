//! `modelctl key`: generate and show publisher keys. Needs no daemon.

use std::{
    fs::{self, OpenOptions},
    io::Write,
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use clap::Subcommand;
use modeld_core::SecretKey;

use crate::{Context, output};

#[derive(Debug, Subcommand)]
pub(crate) enum KeyCommand {
    /// Generate a new publisher key; print its public key.
    Generate {
        /// Where to write the secret key (created readable by you only).
        file: PathBuf,
        /// Replace an existing key file (the old key is lost).
        #[arg(long)]
        force: bool,
    },
    /// Print the public key of a secret key file.
    Show {
        /// The secret key file.
        file: PathBuf,
    },
}

pub(crate) fn run(ctx: &Context, command: KeyCommand) -> anyhow::Result<()> {
    let (file, key, created) = match command {
        KeyCommand::Generate { file, force } => {
            let key = SecretKey::generate();
            write_key(&file, &key, force)?;
            (file, key, true)
        }
        KeyCommand::Show { file } => {
            let key = load(&file)?;
            (file, key, false)
        }
    };
    if ctx.json {
        return output::json(&serde_json::json!({
            "public_key": key.public().to_string(),
            "file": file,
        }));
    }
    println!("{}", key.public());
    if created {
        eprintln!(
            "wrote secret key to {} (keep it private). Nodes that should accept its manifests run:\n  modelctl trust add {} --scope ORG/",
            file.display(),
            key.public()
        );
    }
    Ok(())
}

fn write_key(file: &Path, key: &SecretKey, force: bool) -> anyhow::Result<()> {
    if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if file.exists() && !force {
        bail!(
            "{} already exists; pass --force to replace it (the old key is then lost)",
            file.display()
        );
    }
    // Write next to the target and rename, so a crash never leaves half a key.
    let tmp = file.with_extension("tmp-modeld");
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(key.to_file_text().as_bytes())?;
    f.sync_all()?;
    fs::rename(&tmp, file).with_context(|| format!("writing {}", file.display()))?;
    Ok(())
}

/// Reads a secret key file, refusing one that others can read.
pub(crate) fn load(file: &Path) -> anyhow::Result<SecretKey> {
    let meta =
        fs::metadata(file).with_context(|| format!("cannot read key file {}", file.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        bail!(
            "key file {} is accessible by other users (mode {mode:o}); run `chmod 600 {}`",
            file.display(),
            file.display()
        );
    }
    let text = fs::read_to_string(file)
        .with_context(|| format!("cannot read key file {}", file.display()))?;
    SecretKey::from_file_text(&text).with_context(|| format!("in key file {}", file.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_key_is_private_and_loads() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("keys/pub.key");
        let key = SecretKey::generate();
        write_key(&f, &key, false).unwrap();
        assert_eq!(
            fs::metadata(&f).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(load(&f).unwrap().public(), key.public());
        assert!(
            write_key(&f, &key, false)
                .unwrap_err()
                .to_string()
                .contains("--force")
        );
        fs::set_permissions(&f, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(load(&f).unwrap_err().to_string().contains("chmod 600"));
    }
}
