//! Files and directories made durable. Directories: a directory's entry lives in its parent's data, so a directory
//! created without an fsync of its parent may vanish in a crash, and with it every file inside
//! that was itself fsynced (an acknowledged WAL). Some file systems sync new parents with a
//! file's fsync (ext4, XFS through their journals); POSIX does not promise it.

use std::path::{Path, PathBuf};

/// Creates `dir` and whichever of its parents are missing, and fsyncs the parent of each one
/// created (outermost first), so that the whole path survives a crash.
pub fn create_dir_all(dir: &Path) -> std::io::Result<()> {
    for parent in create_dir_all_unsynced(dir)? {
        sync_dir(&parent)?;
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
    sync_dir(&parent_of(path))
}

/// Fsyncs directory `dir` itself (the entries it holds).
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Drops a file's pages from the page cache once a sync covering it failed. After a failed
/// write-back the kernel marks the lost pages clean but keeps them cached, so whatever reads
/// the file next (a restarted node's recovery) would see data the disk never got. Read from
/// the device, the file shows the hole, which checksums catch. Pages dirtied since stay (what
/// they hold was never acknowledged).
pub fn forget_cached_pages(file: &std::fs::File, path: &Path) {
    #[cfg(target_os = "linux")]
    if let Err(error) = rustix::fs::fadvise(file, 0, None, rustix::fs::Advice::DontNeed) {
        tracing::warn!(path = %path.display(), %error, "could not drop the pages of a file whose sync failed from the page cache");
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, path);
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
