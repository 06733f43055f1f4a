//! Unpacker tests on tars built in memory. Hostile members are written with
//! raw headers, since `tar::Builder` refuses to write them.

use super::*;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A header with the name written straight into the name field.
fn raw(name: &[u8], kind: EntryType, size: u64, link: &[u8]) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.as_old_mut().name[..name.len()].copy_from_slice(name);
    header.as_old_mut().linkname[..link.len()].copy_from_slice(link);
    header.set_entry_type(kind);
    header.set_size(size);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(1_000_000);
    header.set_cksum();
    header
}

struct TarBuilder(tar::Builder<Vec<u8>>);

impl TarBuilder {
    fn new() -> Self {
        Self(tar::Builder::new(Vec::new()))
    }
    fn entry(
        mut self,
        name: &str,
        kind: EntryType,
        data: &[u8],
        link: &str,
        mode: u32,
        uid: u64,
    ) -> Self {
        let mut header = raw(name.as_bytes(), kind, data.len() as u64, link.as_bytes());
        header.set_mode(mode);
        header.set_uid(uid);
        header.set_gid(uid);
        header.set_cksum();
        self.0.append(&header, data).unwrap();
        self
    }
    fn dir(self, name: &str, mode: u32) -> Self {
        self.entry(name, EntryType::Directory, b"", "", mode, 0)
    }
    fn file(self, name: &str, data: &[u8]) -> Self {
        self.entry(name, EntryType::Regular, data, "", 0o644, 0)
    }
    fn symlink(self, name: &str, target: &str) -> Self {
        self.entry(name, EntryType::Symlink, b"", target, 0o777, 0)
    }
    fn hardlink(self, name: &str, target: &str) -> Self {
        self.entry(name, EntryType::Link, b"", target, 0o644, 0)
    }
    fn bytes(self) -> Vec<u8> {
        self.0.into_inner().unwrap()
    }
}

fn unpack_bytes(
    tar: &[u8],
    limits: &Limits,
) -> (tempfile::TempDir, Result<UnpackStats, UnpackError>) {
    let dir = tempfile::tempdir().unwrap();
    let result = unpack(tar, dir.path(), limits, &mut |_| {});
    (dir, result)
}

#[test]
fn unpacks_a_root_filesystem_faithfully() {
    if !is_root() {
        husk_test_skip::skip_unless_ci("unpacking with owners and device nodes needs root");
        return;
    }
    let tar = TarBuilder::new()
        .dir("./", 0o755)
        .dir("./bin/", 0o755)
        .entry(
            "./bin/busybox",
            EntryType::Regular,
            b"\x7fELF",
            "",
            0o4755,
            0,
        )
        .hardlink("./bin/ls", "./bin/busybox")
        .symlink("./bin/sh", "busybox")
        .entry(
            "./home/user/file",
            EntryType::Regular,
            b"data",
            "",
            0o600,
            1000,
        )
        .entry("./dev/null", EntryType::Char, b"", "", 0o666, 0)
        .entry("./run/fifo", EntryType::Fifo, b"", "", 0o620, 0)
        .dir("./tmp/", 0o1777)
        .file("./etc/.wh.removed", b"")
        .file("./opaque/.wh..wh..opq", b"")
        .file("./opaque/new", b"n")
        .file("./replaced", b"first")
        .file("./replaced", b"second")
        .bytes();
    let (dir, result) = unpack_bytes(&tar, &Limits::default());
    let stats = result.unwrap();
    assert_eq!(stats.entries, 14);
    let root = dir.path();
    let busybox = fs::metadata(root.join("bin/busybox")).unwrap();
    assert_eq!(busybox.permissions().mode() & 0o7777, 0o4755);
    assert_eq!(busybox.mtime(), 1_000_000);
    assert_eq!(
        fs::metadata(root.join("bin/ls")).unwrap().ino(),
        busybox.ino()
    );
    assert_eq!(busybox.nlink(), 2);
    assert_eq!(
        fs::read_link(root.join("bin/sh")).unwrap(),
        Path::new("busybox")
    );
    let user_file = fs::metadata(root.join("home/user/file")).unwrap();
    assert_eq!(
        (user_file.uid(), user_file.gid(), user_file.mode() & 0o777),
        (1000, 1000, 0o600)
    );
    // Implicit parents are 0755 root.
    let home = fs::metadata(root.join("home")).unwrap();
    assert_eq!((home.uid(), home.mode() & 0o7777), (0, 0o755));
    assert!(fs::symlink_metadata(root.join("dev/null"))
        .unwrap()
        .file_type()
        .is_char_device());
    assert!(fs::symlink_metadata(root.join("run/fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
    assert_eq!(
        fs::metadata(root.join("tmp")).unwrap().mode() & 0o7777,
        0o1777
    );
    assert_eq!(fs::metadata(root.join("tmp")).unwrap().mtime(), 1_000_000);
    let whiteout = fs::symlink_metadata(root.join("etc/removed")).unwrap();
    assert!(whiteout.file_type().is_char_device());
    assert_eq!(whiteout.rdev(), 0);
    assert!(!root.join("etc/.wh.removed").exists());
    let mut value = [0u8; 4];
    let path = CString::new(root.join("opaque").as_os_str().as_bytes()).unwrap();
    let name = CString::new(whiteout::OPAQUE_XATTR).unwrap();
    // SAFETY: valid NUL-terminated strings and a 4-byte buffer.
    let n = unsafe {
        libc::lgetxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_mut_ptr().cast(),
            value.len(),
        )
    };
    assert_eq!(&value[..n as usize], b"y");
    assert!(!root.join("opaque/.wh..wh..opq").exists());
    assert_eq!(fs::read(root.join("replaced")).unwrap(), b"second");
}

fn refused(tar: Vec<u8>, limits: &Limits) -> UnpackError {
    let (dir, result) = unpack_bytes(&tar, limits);
    let err = result.expect_err("hostile tar accepted");
    // Nothing was written outside the destination (checked by the callers'
    // targets living in a separate temp dir).
    drop(dir);
    err
}

#[test]
fn refuses_escaping_paths() {
    let outside = tempfile::tempdir().unwrap();
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            TarBuilder::new().file("/etc/passwd", b"x").bytes(),
            "absolute",
        ),
        (TarBuilder::new().file("../escape", b"x").bytes(), ".."),
        (TarBuilder::new().file("a/../../escape", b"x").bytes(), ".."),
        (
            TarBuilder::new().symlink("up", "../../..").bytes(),
            "symlink escaping",
        ),
        (
            TarBuilder::new()
                .dir("d", 0o755)
                .symlink("d/l", "../..")
                .bytes(),
            "symlink escaping from a subdir",
        ),
        (
            TarBuilder::new()
                .file("f", b"x")
                .hardlink("h", "../f")
                .bytes(),
            "hard link with ..",
        ),
        (
            TarBuilder::new().hardlink("h", "/etc/passwd").bytes(),
            "hard link absolute",
        ),
        (
            TarBuilder::new().hardlink("h", "missing").bytes(),
            "hard link to nothing",
        ),
        (
            TarBuilder::new()
                .symlink("l", "/etc")
                .hardlink("h", "l/passwd")
                .bytes(),
            "hard link through a symlink",
        ),
        (
            TarBuilder::new().dir("d", 0o755).hardlink("h", "d").bytes(),
            "hard link to a directory",
        ),
        (TarBuilder::new().file(".wh..", b"").bytes(), "bad whiteout"),
    ];
    for (tar, what) in cases {
        let err = refused(tar, &Limits::default());
        eprintln!("{what}: {err}");
    }
    assert_eq!(
        fs::read_dir(outside.path()).unwrap().count(),
        0,
        "something escaped"
    );
}

#[test]
fn symlinked_parents_inside_the_layer_resolve_as_docker_resolves_them() {
    if !is_root() {
        husk_test_skip::skip_unless_ci("unpacking with owners and device nodes needs root");
        return;
    }
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().to_str().unwrap();
    let tar = TarBuilder::new()
        .dir("usr/lib/", 0o755)
        // Relative, in a subdirectory: lib -> usr/lib.
        .symlink("lib", "usr/lib")
        .file("lib/libc.so", b"relative")
        // Absolute: from the layer root, not the host's.
        .symlink("abslib", "/usr/lib")
        .file("abslib/libm.so", b"absolute")
        // An absolute link naming a host directory lands inside the layer.
        .symlink("hostdir", target)
        .file("hostdir/pwned", b"inside")
        // A link through a link, and a directory made past it.
        .dir("usr/share/", 0o755)
        .symlink("usr/share/up", "../lib")
        .file("usr/share/up/deep/x", b"deep")
        // A symlink entry under a symlinked parent is checked where it lands.
        .symlink("lib/sibling", "../share")
        // A hard link whose target's parent is a symlink.
        .hardlink("usr/hard", "lib/libc.so")
        // Whiteouts too land where their parent leads.
        .file("lib/.wh.gone", b"")
        .bytes();
    let (dir, result) = unpack_bytes(&tar, &Limits::default());
    result.unwrap();
    let root = dir.path();
    assert_eq!(fs::read(root.join("usr/lib/libc.so")).unwrap(), b"relative");
    assert_eq!(fs::read(root.join("usr/lib/libm.so")).unwrap(), b"absolute");
    assert_eq!(
        fs::read(root.join(target.trim_start_matches('/')).join("pwned")).unwrap(),
        b"inside"
    );
    assert_eq!(fs::read(root.join("usr/lib/deep/x")).unwrap(), b"deep");
    for link in [
        "lib",
        "abslib",
        "hostdir",
        "usr/share/up",
        "usr/lib/sibling",
    ] {
        assert!(
            fs::symlink_metadata(root.join(link))
                .unwrap()
                .file_type()
                .is_symlink(),
            "{link} is still a symlink"
        );
    }
    assert_eq!(
        fs::metadata(root.join("usr/hard")).unwrap().ino(),
        fs::metadata(root.join("usr/lib/libc.so")).unwrap().ino()
    );
    assert!(fs::symlink_metadata(root.join("usr/lib/gone"))
        .unwrap()
        .file_type()
        .is_char_device());
    assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);
}

#[test]
fn symlinked_parents_that_escape_loop_or_name_a_file_are_refused() {
    let outside = tempfile::tempdir().unwrap();
    let escape = TarBuilder::new()
        .dir("d/", 0o755)
        // Each link stays inside lexically; the chain climbs out:
        // esc -> d/up/.. -> (..)/.. = above the root.
        .symlink("d/up", "..")
        .symlink("esc", "d/up/..")
        .file("esc/pwned", b"x")
        .bytes();
    let err = refused(escape, &Limits::default());
    assert!(
        matches!(
            &err,
            UnpackError::Parent {
                path,
                reason: ResolveError::Escapes { .. }
            } if path == "esc/pwned"
        ),
        "{err}"
    );
    assert!(err.to_string().contains("esc/pwned"), "{err}");
    assert!(err.to_string().contains("outside the layer"), "{err}");

    let looping = TarBuilder::new()
        .symlink("a", "b")
        .symlink("b", "a")
        .file("a/x", b"x")
        .bytes();
    let err = refused(looping, &Limits::default());
    assert!(
        matches!(
            &err,
            UnpackError::Parent {
                reason: ResolveError::Loop,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("a/x"), "{err}");

    let to_file = TarBuilder::new()
        .file("real", b"a file")
        .symlink("alias", "real")
        .file("alias/f", b"x")
        .bytes();
    let err = refused(to_file, &Limits::default());
    assert!(
        matches!(
            &err,
            UnpackError::Parent {
                reason: ResolveError::NotADirectory { .. },
                ..
            }
        ),
        "{err}"
    );

    // A hard link whose target's parents climb out is refused the same way.
    let hard = TarBuilder::new()
        .dir("d/", 0o755)
        .symlink("d/up", "..")
        .symlink("esc", "d/up/..")
        .hardlink("h", "esc/etc/passwd")
        .bytes();
    let err = refused(hard, &Limits::default());
    assert!(matches!(&err, UnpackError::HardLink { .. }), "{err}");
    assert!(err.to_string().contains("outside the layer"), "{err}");
    assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);
}

#[test]
fn enforces_limits() {
    let limits = Limits {
        max_entries_per_layer: 3,
        ..Limits::default()
    };
    let tar = TarBuilder::new()
        .file("a", b"")
        .file("b", b"")
        .file("c", b"")
        .file("d", b"")
        .bytes();
    assert!(matches!(
        refused(tar, &limits),
        UnpackError::TooManyEntries(3)
    ));

    let limits = Limits {
        max_layer_bytes: 10,
        ..Limits::default()
    };
    let tar = TarBuilder::new()
        .file("a", b"123456")
        .file("b", b"123456")
        .bytes();
    assert!(matches!(
        refused(tar, &limits),
        UnpackError::TooLarge { .. }
    ));

    // A header claiming a petabyte is refused before any byte is read.
    let mut tar = TarBuilder::new().bytes();
    let header = raw(b"huge", EntryType::Regular, 1 << 50, b"");
    tar.splice(0..0, header.as_bytes().iter().copied());
    assert!(matches!(
        refused(tar, &Limits::default()),
        UnpackError::TooLarge { .. }
    ));

    // Truncated data.
    let mut tar = TarBuilder::new().file("a", &[7u8; 4096]).bytes();
    tar.truncate(1024);
    assert!(matches!(
        refused(tar, &Limits::default()),
        UnpackError::Read(_)
    ));
}

#[test]
fn refuses_trusted_xattrs() {
    let mut builder = tar::Builder::new(Vec::new());
    builder
        .append_pax_extensions([("SCHILY.xattr.trusted.overlay.redirect", &b"/etc"[..])])
        .unwrap();
    let header = raw(b"f", EntryType::Regular, 0, b"");
    builder.append(&header, &b""[..]).unwrap();
    let err = refused(builder.into_inner().unwrap(), &Limits::default());
    assert!(matches!(err, UnpackError::ForbiddenXattr { .. }), "{err}");
}

#[test]
fn pax_times() {
    assert_eq!(parse_pax_time("12.5"), Some(TimeSpec::new(12, 500_000_000)));
    assert_eq!(parse_pax_time("7"), Some(TimeSpec::new(7, 0)));
    assert_eq!(parse_pax_time("x"), None);
}

#[test]
fn keeps_user_xattrs() {
    if !is_root() {
        husk_test_skip::skip_unless_ci("unpacking with owners needs root");
        return;
    }
    let mut builder = tar::Builder::new(Vec::new());
    builder
        .append_pax_extensions([("SCHILY.xattr.user.note", &b"kept"[..])])
        .unwrap();
    builder
        .append(&raw(b"f", EntryType::Regular, 0, b""), &b""[..])
        .unwrap();
    let (dir, result) = unpack_bytes(&builder.into_inner().unwrap(), &Limits::default());
    result.unwrap();
    let path = CString::new(dir.path().join("f").as_os_str().as_bytes()).unwrap();
    let name = CString::new("user.note").unwrap();
    let mut value = [0u8; 16];
    // SAFETY: valid NUL-terminated strings and a 16-byte buffer.
    let n = unsafe {
        libc::lgetxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_mut_ptr().cast(),
            value.len(),
        )
    };
    assert_eq!(&value[..n.max(0) as usize], b"kept");
}

#[test]
fn empty_numeric_fields_read_as_zero() {
    assert_eq!(
        numeric_field(&[0; 8], Err(io::Error::other("x"))).unwrap(),
        0
    );
    assert_eq!(
        numeric_field(b"       \0", Err(io::Error::other("x"))).unwrap(),
        0
    );
    assert!(numeric_field(b"zz\0\0\0\0\0\0", Err(io::Error::other("x"))).is_err());
    assert_eq!(numeric_field(b"0001750\0", Ok(1000)).unwrap(), 1000);
}
