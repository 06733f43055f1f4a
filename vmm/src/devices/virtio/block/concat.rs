//! A read-only disk that is several image files back to back: how a
//! container image's layers (each a read-only erofs file, shared between
//! images) reach the guest as ONE virtio-blk device instead of one device,
//! MMIO window and IRQ per layer. The guest finds each layer at its offset
//! (loop devices with `--offset`/`--sizelimit`).
//!
//! The list file names the components, one absolute path per line, blank
//! lines ignored. Every component is opened when the disk is (VMM start),
//! so a file may be unlinked or its filesystem lazily unmounted afterwards;
//! the sizes are taken then too. Each size must be a non-zero multiple of
//! 512 bytes so that components start on sector boundaries.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use thiserror::Error;

use super::request::SECTOR_SIZE;

/// Most components in one concatenated disk (a container image has at
/// most 125 layers; this leaves room for several images in one disk).
pub const MAX_COMPONENTS: usize = 4096;
/// Largest list file read: every line a PATH_MAX path.
const MAX_LIST_BYTES: u64 = MAX_COMPONENTS as u64 * (libc::PATH_MAX as u64 + 1);

#[derive(Debug, Error)]
pub enum ConcatError {
    #[error("cannot read the component list {list}: {source}")]
    ListUnreadable {
        list: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("component list {list} is larger than {MAX_LIST_BYTES} bytes")]
    ListTooLarge { list: PathBuf },
    #[error("component list {list} names no image files")]
    Empty { list: PathBuf },
    #[error("component list {list} names more than {MAX_COMPONENTS} image files")]
    TooManyComponents { list: PathBuf },
    #[error("component list {list}, line {line}: {path:?} is not an absolute path")]
    RelativePath {
        list: PathBuf,
        line: usize,
        path: PathBuf,
    },
    #[error("component image {path:?} (line {line} of {list}): {source}")]
    Open {
        list: PathBuf,
        line: usize,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "component image {path:?} (line {line} of {list}) is not a regular file or block device"
    )]
    NotAFile {
        list: PathBuf,
        line: usize,
        path: PathBuf,
    },
    #[error("component image {path:?} (line {line} of {list}) is {size} bytes, not a non-zero multiple of {SECTOR_SIZE}")]
    BadSize {
        list: PathBuf,
        line: usize,
        path: PathBuf,
        size: u64,
    },
    #[error("component list {list}: the images add up to more than 2^63 bytes")]
    TooLarge { list: PathBuf },
}

/// One component: its open file and where it sits in the disk.
#[derive(Debug)]
pub struct Component {
    pub path: PathBuf,
    pub file: File,
    /// Byte offset of the component's first byte in the disk.
    pub start: u64,
    /// Size in bytes, a non-zero multiple of 512.
    pub len: u64,
}

/// The components in disk order; `start`s are increasing and contiguous.
#[derive(Debug)]
pub struct ConcatImage {
    components: Vec<Component>,
    size: u64,
}

impl ConcatImage {
    /// Reads the list file and opens every component read-only.
    pub fn open(list: &Path) -> Result<Self, ConcatError> {
        let entries = read_list(list)?;
        let mut opened = Vec::with_capacity(entries.len());
        for (line, path) in entries {
            let (file, len) = open_component(list, line, &path)?;
            if len == 0 || len % SECTOR_SIZE != 0 {
                return Err(ConcatError::BadSize {
                    list: list.to_owned(),
                    line,
                    path,
                    size: len,
                });
            }
            opened.push((path, file, len));
        }
        Self::laid_out(list.to_owned(), opened)
    }

    /// The image of files already open (passed in by the VMM's control
    /// socket: the jail cannot open files).
    /// Each must be a regular file or block device of a non-zero multiple
    /// of 512 bytes.
    pub fn from_files(files: Vec<File>) -> Result<Self, ConcatError> {
        let list = PathBuf::from("<passed descriptors>");
        if files.is_empty() {
            return Err(ConcatError::Empty { list });
        }
        if files.len() > MAX_COMPONENTS {
            return Err(ConcatError::TooManyComponents { list });
        }
        let mut opened = Vec::with_capacity(files.len());
        for (index, mut file) in files.into_iter().enumerate() {
            let path = PathBuf::from(format!("descriptor {index}"));
            let failed = |source| ConcatError::Open {
                list: list.clone(),
                line: index + 1,
                path: path.clone(),
                source,
            };
            let kind = file.metadata().map_err(failed)?.file_type();
            if !(kind.is_file() || kind.is_block_device()) {
                return Err(ConcatError::NotAFile {
                    list,
                    line: index + 1,
                    path,
                });
            }
            let len = file.seek(SeekFrom::End(0)).map_err(failed)?;
            if len == 0 || len % SECTOR_SIZE != 0 {
                return Err(ConcatError::BadSize {
                    list,
                    line: index + 1,
                    path,
                    size: len,
                });
            }
            opened.push((path, file, len));
        }
        Self::laid_out(list, opened)
    }

    /// The image of checked components (path, file, length), back to back
    /// in the given order.
    fn laid_out(list: PathBuf, opened: Vec<(PathBuf, File, u64)>) -> Result<Self, ConcatError> {
        let starts =
            layout(opened.iter().map(|(_, _, len)| *len)).ok_or(ConcatError::TooLarge { list })?;
        let size = starts.last().copied().unwrap_or(0);
        let components = opened
            .into_iter()
            .zip(starts)
            .map(|((path, file, len), start)| Component {
                path,
                file,
                start,
                len,
            })
            .collect();
        Ok(ConcatImage { components, size })
    }

    /// Total size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn components(&self) -> &[Component] {
        &self.components
    }

    /// The component holding disk byte `offset`, and the offset inside it;
    /// `None` at or past the end.
    pub fn locate(&self, offset: u64) -> Option<(&Component, u64)> {
        let index = self
            .components
            .partition_point(|c| c.start + c.len <= offset);
        let component = self.components.get(index)?;
        Some((component, offset - component.start))
    }
}

/// The non-blank lines of the list with their 1-based line numbers, as
/// absolute paths, at most `MAX_COMPONENTS` of them.
fn read_list(list: &Path) -> Result<Vec<(usize, PathBuf)>, ConcatError> {
    let unreadable = |source| ConcatError::ListUnreadable {
        list: list.to_owned(),
        source,
    };
    let mut bytes = Vec::new();
    File::open(list)
        .map_err(unreadable)?
        .take(MAX_LIST_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(unreadable)?;
    if bytes.len() as u64 > MAX_LIST_BYTES {
        return Err(ConcatError::ListTooLarge {
            list: list.to_owned(),
        });
    }
    let mut entries = Vec::new();
    for (index, line) in bytes.split(|&b| b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        if entries.len() == MAX_COMPONENTS {
            return Err(ConcatError::TooManyComponents {
                list: list.to_owned(),
            });
        }
        // Taken exactly as written (a path may end in a space); errors
        // quote it so stray whitespace shows.
        let path = PathBuf::from(OsStr::from_bytes(line));
        if !path.is_absolute() {
            return Err(ConcatError::RelativePath {
                list: list.to_owned(),
                line: index + 1,
                path,
            });
        }
        entries.push((index + 1, path));
    }
    if entries.is_empty() {
        return Err(ConcatError::Empty {
            list: list.to_owned(),
        });
    }
    Ok(entries)
}

/// Opens one component read-only and measures it.
fn open_component(list: &Path, line: usize, path: &Path) -> Result<(File, u64), ConcatError> {
    let failed = |source| ConcatError::Open {
        list: list.to_owned(),
        line,
        path: path.to_owned(),
        source,
    };
    let mut file = File::open(path).map_err(failed)?;
    let kind = file.metadata().map_err(failed)?.file_type();
    if !(kind.is_file() || kind.is_block_device()) {
        return Err(ConcatError::NotAFile {
            list: list.to_owned(),
            line,
            path: path.to_owned(),
        });
    }
    // Seeking to the end also measures block devices (metadata says 0).
    let size = file.seek(SeekFrom::End(0)).map_err(failed)?;
    Ok((file, size))
}

/// Start offsets of components of the given sizes followed by the total;
/// `None` if the total exceeds `i64::MAX` (file offsets are signed).
fn layout(sizes: impl IntoIterator<Item = u64>) -> Option<Vec<u64>> {
    let mut starts = vec![0u64];
    let mut end = 0u64;
    for size in sizes {
        end = end.checked_add(size).filter(|&e| e <= i64::MAX as u64)?;
        starts.push(end);
    }
    Some(starts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_adds_up_and_refuses_overflow() {
        assert_eq!(layout([512, 1024, 512]), Some(vec![0, 512, 1536, 2048]));
        assert_eq!(layout([]), Some(vec![0]));
        assert_eq!(layout([i64::MAX as u64 - 511, 512]), None);
        assert_eq!(layout([u64::MAX, 512]), None);
        assert_eq!(layout([u64::MAX / 2, u64::MAX / 2, 1024]), None);
        assert!(layout([i64::MAX as u64 - 511, 511]).is_some());
    }
}
