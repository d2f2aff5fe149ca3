//! Directories made durable: a directory's entry lives in its parent's data, so a directory
//! created without an fsync of its parent may vanish in a crash, and with it every file inside
//! that was itself fsynced (an acknowledged WAL). Some file systems sync new parents with a
//! file's fsync (ext4, XFS through their journals); POSIX does not promise it.

use std::path::{Path, PathBuf};

/// Creates `dir` and whichever of its parents are missing, and fsyncs the parent of each one
/// created (outermost first), so that the whole path survives a crash.
pub fn create_dir_all(dir: &Path) -> std::io::Result<()> {
    for parent in create_dir_all_unsynced(dir)? {
        std::fs::File::open(parent)?.sync_all()?;
    }
    Ok(())
}

/// Creates `dir` and whichever of its parents are missing; returns the directories whose
/// fsync makes them durable (the parent of each one created, outermost first), for a caller
/// that syncs them later, before anything inside counts as durable.
pub fn create_dir_all_unsynced(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    if dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut missing = Vec::new();
    let mut at = Some(dir);
    while let Some(path) = at.filter(|p| !p.as_os_str().is_empty() && !p.exists()) {
        missing.push(path);
        at = path.parent();
    }
    std::fs::create_dir_all(dir)?;
    Ok(missing
        .iter()
        .rev()
        .map(|created| parent_of(created))
        .collect())
}

fn parent_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Fsyncs the directory that holds `path`, making a create, rename or delete there durable.
pub fn sync_parent(path: &Path) -> std::io::Result<()> {
    std::fs::File::open(parent_of(path))?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_every_missing_level_and_leaves_existing_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let deep = dir.path().join("a").join("b").join("c");
        let unsynced = create_dir_all_unsynced(&deep).expect("create");
        assert!(deep.is_dir());
        assert_eq!(
            unsynced,
            [
                dir.path().to_path_buf(),
                dir.path().join("a"),
                dir.path().join("a").join("b")
            ],
            "the parent of each directory made, outermost first"
        );
        assert!(create_dir_all_unsynced(&deep).expect("again").is_empty());
        create_dir_all(&deep).expect("again: nothing to do");
        std::fs::write(dir.path().join("file"), b"x").expect("write");
        assert!(
            create_dir_all(&dir.path().join("file").join("d")).is_err(),
            "a file in the way is an error"
        );
    }
}
