//! Listing the files of a model directory for `publish`.
//!
//! Symlinks are followed (a Hugging Face cache snapshot is a tree of symlinks into
//! its blob store), with loop detection; `.git` directories are skipped; anything that
//! is not a regular file or directory is an error, as is a name that is not UTF-8 or
//! not a safe model path.

use std::{
    collections::HashSet,
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use anyhow::{Context, bail};
use modeld_core::ModelPath;

/// One file to publish.
#[derive(Debug, Clone)]
pub(crate) struct ModelFile {
    /// Where it goes in the model.
    pub(crate) path: ModelPath,
    /// Where it is now (absolute).
    pub(crate) source: PathBuf,
    /// Its size when listed.
    pub(crate) size: u64,
}

/// Lists `dir`'s files, sorted by model path.
pub(crate) fn model_files(dir: &Path) -> anyhow::Result<Vec<ModelFile>> {
    let root = fs::canonicalize(dir).with_context(|| format!("cannot open {}", dir.display()))?;
    if !root.is_dir() {
        bail!("{} is not a directory", dir.display());
    }
    let mut out = Vec::new();
    let mut visited = HashSet::new();
    walk(&root, "", &mut visited, &mut out)?;
    if out.is_empty() {
        bail!("{} contains no files to publish", dir.display());
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

fn walk(
    dir: &Path,
    prefix: &str,
    visited: &mut HashSet<(u64, u64)>,
    out: &mut Vec<ModelFile>,
) -> anyhow::Result<()> {
    let meta = fs::metadata(dir).with_context(|| format!("reading {}", dir.display()))?;
    if !visited.insert((meta.dev(), meta.ino())) {
        bail!(
            "{} is reached twice through symlinks (a loop?)",
            dir.display()
        );
    }
    let mut entries: Vec<_> = fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("listing {}", dir.display()))?;
    entries.sort_by_key(fs::DirEntry::file_name);
    for entry in entries {
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            bail!("{} has a name that is not UTF-8", entry.path().display());
        };
        if name == ".git" || name.contains(".modeld-") {
            continue;
        }
        let source = entry.path();
        let rel = if prefix.is_empty() {
            name.to_owned()
        } else {
            format!("{prefix}/{name}")
        };
        let meta = fs::metadata(&source)
            .with_context(|| format!("reading {} (a dangling symlink?)", source.display()))?;
        if meta.is_dir() {
            walk(&source, &rel, visited, out)?;
        } else if meta.is_file() {
            let path: ModelPath = rel.parse()?;
            out.push(ModelFile {
                path,
                source,
                size: meta.len(),
            });
        } else {
            bail!("{} is not a regular file or directory", source.display());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_follows_symlinks_and_skips_git() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("m");
        fs::create_dir_all(root.join("sub")).unwrap();
        fs::create_dir_all(root.join(".git")).unwrap();
        fs::write(root.join(".git/HEAD"), "x").unwrap();
        fs::write(root.join("b.bin"), "bb").unwrap();
        fs::write(root.join("sub/a.json"), "a").unwrap();
        fs::write(d.path().join("outside.bin"), "ooo").unwrap();
        std::os::unix::fs::symlink(d.path().join("outside.bin"), root.join("link.bin")).unwrap();
        let files = model_files(&root).unwrap();
        let names: Vec<_> = files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(names, ["b.bin", "link.bin", "sub/a.json"]);
        assert_eq!(files[1].size, 3);
    }

    #[test]
    fn loops_and_empty_dirs_are_errors() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("m");
        fs::create_dir_all(&root).unwrap();
        assert!(
            model_files(&root)
                .unwrap_err()
                .to_string()
                .contains("no files")
        );
        fs::write(root.join("a"), "a").unwrap();
        std::os::unix::fs::symlink(&root, root.join("again")).unwrap();
        assert!(
            model_files(&root)
                .unwrap_err()
                .to_string()
                .contains("twice")
        );
    }
}
