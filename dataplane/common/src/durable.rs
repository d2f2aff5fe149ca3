//! Directories made durable: a directory's entry lives in its parent's data, so a directory
//! created without an fsync of its parent may vanish in a crash, and with it every file inside
//! that was itself fsynced (an acknowledged WAL). Some file systems sync new parents with a
//! file's fsync (ext4, XFS through their journals); POSIX does not promise it.

use std::path::Path;

/// Creates `dir` and whichever of its parents are missing, and fsyncs the parent of each one
/// created (outermost first), so that the whole path survives a crash.
pub fn create_dir_all(dir: &Path) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut missing = Vec::new();
    let mut at = Some(dir);
    while let Some(path) = at.filter(|p| !p.as_os_str().is_empty() && !p.exists()) {
        missing.push(path);
        at = path.parent();
    }
    std::fs::create_dir_all(dir)?;
    for created in missing.iter().rev() {
        sync_parent(created)?;
    }
    Ok(())
}

/// Fsyncs the directory that holds `path`, making a create, rename or delete there durable.
pub fn sync_parent(path: &Path) -> std::io::Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::File::open(parent)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_every_missing_level_and_leaves_existing_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let deep = dir.path().join("a").join("b").join("c");
        create_dir_all(&deep).expect("create");
        assert!(deep.is_dir());
        create_dir_all(&deep).expect("again: nothing to do");
        std::fs::write(dir.path().join("file"), b"x").expect("write");
        assert!(
            create_dir_all(&dir.path().join("file").join("d")).is_err(),
            "a file in the way is an error"
        );
    }
}
