//! Small file helpers the store needs: bounded reads, atomic writes and
//! removals that never leave a half-written or half-deleted entry visible.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// Reads a whole file, refusing files larger than `limit` bytes (every JSON
/// document the store reads comes from an archive someone else wrote).
pub fn read_bounded(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    read_all_bounded(File::open(path)?, limit)
}

pub fn read_all_bounded(reader: impl Read, limit: u64) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    reader.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than the limit of {limit} bytes"),
        ));
    }
    Ok(bytes)
}

/// Writes `bytes` to a temporary file in `tmp_dir` (same filesystem), syncs
/// it and renames it over `path`: readers see the old or the new content.
pub fn write_atomic(tmp_dir: &Path, path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = tempfile::NamedTempFile::new_in(tmp_dir)?;
    file.write_all(bytes)?;
    file.as_file().sync_all()?;
    file.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Removes a directory tree by first renaming it into `tmp_dir`, so other
/// readers never see it half-deleted; a crash leaves only a staging entry
/// that the next sweep removes.
pub fn remove_tree_atomically(tmp_dir: &Path, path: &Path) -> io::Result<()> {
    let trash = tempfile::Builder::new()
        .prefix("trash-")
        .tempdir_in(tmp_dir)?
        .keep();
    let target = trash.join("entry");
    fs::rename(path, &target)?;
    fs::remove_dir_all(&trash)
}

/// Sum of the apparent sizes of the regular files under `path`.
pub fn tree_size(path: &Path) -> io::Result<u64> {
    let mut total = 0;
    let mut pending: Vec<PathBuf> = vec![path.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                pending.push(entry.path());
            } else if kind.is_file() {
                total += entry.metadata()?.len();
            }
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_read_refuses_large_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        fs::write(&path, b"12345").unwrap();
        assert_eq!(read_bounded(&path, 5).unwrap(), b"12345");
        assert!(read_bounded(&path, 4).is_err());
    }

    #[test]
    fn atomic_write_and_remove() {
        let dir = tempfile::tempdir().unwrap();
        let tmp = dir.path().join("tmp");
        fs::create_dir(&tmp).unwrap();
        let path = dir.path().join("f");
        write_atomic(&tmp, &path, b"one").unwrap();
        write_atomic(&tmp, &path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        let tree = dir.path().join("tree/a");
        fs::create_dir_all(&tree).unwrap();
        fs::write(tree.join("x"), b"x").unwrap();
        remove_tree_atomically(&tmp, &dir.path().join("tree")).unwrap();
        assert!(!dir.path().join("tree").exists());
        assert_eq!(fs::read_dir(&tmp).unwrap().count(), 0);
    }
}
