//! The layer disks of an imported image, mounted read-only on the host and
//! stacked with overlayfs as the guest does, show exactly the merged tree
//! the layers describe.

use husk_e2e::fixtures::{self, Format, Mounts, TestStore, MTIME};
use husk_e2e::skip;
use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let path = CString::new(path.as_os_str().as_bytes()).ok()?;
    let name = CString::new(name).ok()?;
    let mut buf = [0u8; 64];
    // SAFETY: valid NUL-terminated strings and a buffer of buf.len() bytes.
    let n = unsafe {
        libc::lgetxattr(
            path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    (n >= 0).then(|| buf[..n as usize].to_vec())
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
}

fn check_merged_tree(format: Format) {
    let work = tempfile::tempdir().unwrap();
    let archive = work.path().join("busybox");
    let image = fixtures::build(&fixtures::busybox(Some("busybox:latest")).unwrap());
    fixtures::write(&[image], format, &archive).unwrap();
    let store = TestStore::new();
    store.import(&archive, &[]);
    let disks: Vec<PathBuf> = store.inspect("busybox")["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| PathBuf::from(l["disk"].as_str().unwrap()))
        .collect();
    assert_eq!(disks.len(), 3);

    let mut mounts = Mounts::default();
    let mut lowers = Vec::new();
    for (i, disk) in disks.iter().enumerate() {
        let point = work.path().join(format!("layer{}", i + 1));
        mounts.erofs(disk, &point).expect("mounting a layer disk");
        lowers.push(point);
    }
    // In the top layer alone: the overlayfs forms of the whiteouts.
    let top = &lowers[2];
    let whiteout = fs::symlink_metadata(top.join("var/lib/todelete")).unwrap();
    assert!(
        whiteout.file_type().is_char_device() && whiteout.rdev() == 0,
        "whiteout is a 0/0 char device"
    );
    assert_eq!(
        xattr(&top.join("opt/data"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert!(!top.join("opt/data/.wh..wh..opq").exists());

    lowers.reverse();
    let merged = work.path().join("merged");
    mounts
        .overlay(&lowers, &merged)
        .expect("mounting the overlay");

    // Deleted file gone; opaque directory holds only the top layer's content.
    assert!(fs::symlink_metadata(merged.join("var/lib/todelete")).is_err());
    assert_eq!(names(&merged.join("opt/data")), ["new"]);
    assert_eq!(
        fs::read(merged.join("opt/data/new")).unwrap(),
        b"new in layer 3\n"
    );
    // Content of every layer is there.
    assert_eq!(
        fs::read(merged.join("etc/motd")).unwrap(),
        b"Welcome to a husk microVM.\n"
    );
    assert_eq!(
        fs::read(merged.join("etc/release")).unwrap(),
        b"husk-fixtures 1\n"
    );
    assert_eq!(
        fs::read(merged.join("bin/busybox")).unwrap(),
        fs::read(fixtures::BUSYBOX).unwrap()
    );
    // Modes, owners, times.
    assert_eq!(mode(&merged.join("bin/busybox")), 0o755);
    assert_eq!(mode(&merged.join("tmp")), 0o1777);
    assert_eq!(mode(&merged.join("root")), 0o700);
    let home = fs::metadata(merged.join("home/user")).unwrap();
    assert_eq!(
        (home.uid(), home.gid(), home.mode() & 0o7777),
        (1000, 1000, 0o750)
    );
    let profile = fs::metadata(merged.join("home/user/.profile")).unwrap();
    assert_eq!((profile.uid(), profile.mode() & 0o777), (1000, 0o640));
    assert_eq!(
        fs::metadata(merged.join("etc/passwd")).unwrap().mtime(),
        MTIME as i64
    );
    // Symlinks.
    assert_eq!(
        fs::read_link(merged.join("bin/sh")).unwrap(),
        Path::new("busybox")
    );
    assert_eq!(
        fs::read_link(merged.join("usr/bin/env")).unwrap(),
        Path::new("/bin/busybox")
    );
    // Hard link: one inode within the layer.
    let readme = fs::metadata(merged.join("usr/share/doc/husk/README")).unwrap();
    let link = fs::metadata(merged.join("usr/share/doc/husk/README.link")).unwrap();
    assert_eq!(readme.ino(), link.ino());
    assert_eq!(readme.nlink(), 2);
    // Device node and fifo.
    let null = fs::symlink_metadata(merged.join("opt/dev/null")).unwrap();
    assert!(null.file_type().is_char_device());
    assert_eq!((libc::major(null.rdev()), libc::minor(null.rdev())), (1, 3));
    assert_eq!(null.mode() & 0o777, 0o666);
    let fifo = fs::symlink_metadata(merged.join("opt/dev/fifo")).unwrap();
    assert!(fifo.file_type().is_fifo());
    assert_eq!(fifo.mode() & 0o777, 0o620);

    // The merged tree is a working busybox root.
    let out = std::process::Command::new("chroot")
        .arg(&merged)
        .args(["/bin/sh", "-c", "echo hello; id -un; cat /etc/release"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello\nroot\nhusk-fixtures 1\n"
    );
}

#[test]
fn merged_tree_of_an_oci_image() {
    if let Some(reason) = fixtures::import_unavailable().or_else(fixtures::mount_unavailable) {
        skip!("{reason}");
    }
    check_merged_tree(Format::Oci);
}

#[test]
fn merged_tree_of_a_docker_archive() {
    if let Some(reason) = fixtures::import_unavailable().or_else(fixtures::mount_unavailable) {
        skip!("{reason}");
    }
    check_merged_tree(Format::Docker);
}
