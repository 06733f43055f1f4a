//! Setting extended attributes (nix has no xattr calls; these are the two
//! libc calls the unpacker needs).

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;

/// Sets `name` on the open file `fd`.
pub fn set_on_fd(fd: BorrowedFd<'_>, name: &CString, value: &[u8]) -> io::Result<()> {
    // SAFETY: fd is a live descriptor; name is NUL-terminated; value points
    // to value.len() readable bytes for the duration of the call.
    let rc = unsafe {
        libc::fsetxattr(
            fd.as_raw_fd(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Sets `name` on the entry `entry` of directory `dir` without following it
/// if it is a symlink (symlinks and device nodes cannot be opened for
/// fsetxattr). `/proc/self/fd/<dir>` pins the directory we already walked.
pub fn set_on_entry(
    dir: BorrowedFd<'_>,
    entry: &OsStr,
    name: &CString,
    value: &[u8],
) -> io::Result<()> {
    let mut path = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
    path.extend_from_slice(entry.as_bytes());
    let path = CString::new(path).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: as above; path is NUL-terminated.
    let rc = unsafe {
        libc::lsetxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
