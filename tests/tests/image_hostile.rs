//! Hostile archives are refused with a clear error and leave the store
//! exactly as it was (a recursive listing with sizes and content hashes is
//! compared before and after). Each hostile layer sits on top of a valid
//! one, so "nothing of that image stored" is checked too.

use husk_e2e::fixtures::{self, BuiltImage, BuiltLayer, Compression, Format, RawEntry, TestStore};
use husk_e2e::skip;
use sha2::{Digest, Sha256};
use std::fs;
use std::path::{Path, PathBuf};

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn valid_layer() -> BuiltLayer {
    let nodes = vec![
        fixtures::dir("/etc", 0o755),
        fixtures::file("/etc/hostname", b"ok\n", 0o644),
    ];
    BuiltLayer::new(fixtures::layer_tar(&nodes), Compression::Gzip)
}

/// An image whose second layer is `hostile` (an uncompressed raw tar).
fn image_with(hostile: Vec<RawEntry>) -> BuiltImage {
    let bad = BuiltLayer::new(fixtures::raw_tar(&hostile), Compression::None);
    BuiltImage::from_layers(
        Some("hostile:latest"),
        vec![valid_layer(), bad],
        vec!["sh".into()],
    )
}

fn oci_tar(dir: &Path, name: &str, image: &BuiltImage) -> PathBuf {
    let path = dir.join(name);
    fs::write(
        &path,
        fixtures::tar_bytes(&fixtures::oci_layout_files(std::slice::from_ref(image))),
    )
    .unwrap();
    path
}

struct Case {
    name: &'static str,
    archive: PathBuf,
    extra: Vec<&'static str>,
    /// Words the error message must contain.
    expect: Vec<&'static str>,
}

fn cases(dir: &Path) -> Vec<Case> {
    let mut cases = Vec::new();
    let layer_case = |name: &'static str, entries: Vec<RawEntry>, expect: Vec<&'static str>| {
        let archive = oci_tar(dir, name, &image_with(entries));
        Case {
            name,
            archive,
            extra: vec![],
            expect,
        }
    };
    cases.push(layer_case(
        "absolute",
        vec![RawEntry::file("/etc/evil", b"x")],
        vec!["/etc/evil", "absolute path"],
    ));
    cases.push(layer_case(
        "dotdot",
        vec![RawEntry::file("../evil", b"x")],
        vec!["'..'"],
    ));
    cases.push(layer_case(
        "dotdot-nested",
        vec![RawEntry::file("a/../../evil", b"x")],
        vec!["'..'"],
    ));
    cases.push(layer_case(
        "symlink-escape",
        vec![RawEntry::symlink("link", "../../../../etc")],
        vec!["points outside the layer"],
    ));
    cases.push(layer_case(
        "hardlink-escape",
        vec![RawEntry::hardlink("h", "../../etc/passwd")],
        vec!["hard link", "'..'"],
    ));
    cases.push(layer_case(
        "hardlink-absolute",
        vec![RawEntry::hardlink("h", "/etc/passwd")],
        vec!["hard link", "absolute"],
    ));
    // A symlinked parent is resolved inside the layer (as Docker does), so
    // only one that climbs out, loops or names a file is refused.
    cases.push(layer_case(
        "symlinked-parent-escapes",
        vec![
            RawEntry::dir("d/"),
            RawEntry::symlink("d/up", ".."),
            RawEntry::symlink("esc", "d/up/.."),
            RawEntry::file("esc/pwned", b"pwned"),
        ],
        vec!["esc/pwned", "outside the layer"],
    ));
    cases.push(layer_case(
        "symlinked-parent-loop",
        vec![
            RawEntry::symlink("a", "b"),
            RawEntry::symlink("b", "a"),
            RawEntry::file("a/x", b"x"),
        ],
        vec!["a/x", "symlinks"],
    ));
    cases.push(layer_case(
        "symlinked-parent-is-a-file",
        vec![
            RawEntry::file("real", b"a file"),
            RawEntry::symlink("alias", "real"),
            RawEntry::file("alias/x", b"x"),
        ],
        vec!["alias/x", "not a directory"],
    ));
    let mut huge = RawEntry::file("huge", b"");
    huge.claimed_size = Some(1 << 50);
    cases.push(layer_case("absurd-size", vec![huge], vec!["limit"]));
    let many: Vec<RawEntry> = (0..50)
        .map(|i| RawEntry::file(&format!("f{i}"), b""))
        .collect();
    let mut many_case = layer_case("absurd-entry-count", many, vec!["more than 10 entries"]);
    many_case.extra = vec!["--max-entries", "10"];
    cases.push(many_case);

    // Blob-level corruption of a valid two-layer image.
    let base = || {
        BuiltImage::from_layers(
            Some("hostile:latest"),
            vec![valid_layer(), {
                let nodes = vec![fixtures::file("/data", &[7u8; 100_000], 0o644)];
                BuiltLayer::new(fixtures::layer_tar(&nodes), Compression::Gzip)
            }],
            vec![],
        )
    };
    let blob_case =
        |name: &'static str, change: &dyn Fn(&mut BuiltImage), expect: Vec<&'static str>| {
            let mut image = base();
            change(&mut image);
            image.refresh();
            Case {
                name,
                archive: oci_tar(dir, name, &image),
                extra: vec![],
                expect,
            }
        };
    cases.push(blob_case(
        "truncated-gzip",
        &|image| {
            let layer = &mut image.layers[1];
            layer.blob.truncate(layer.blob.len() / 2);
            layer.digest = sha256(&layer.blob);
        },
        vec!["corrupt or truncated gzip"],
    ));
    cases.push(blob_case(
        "corrupt-zstd",
        &|image| {
            let layer = &mut image.layers[1];
            layer.blob = zstd::stream::encode_all(&layer.tar[..], 3).unwrap();
            layer.media_type = Compression::Zstd.media_type().into();
            let middle = layer.blob.len() / 2;
            for byte in &mut layer.blob[middle..middle + 16] {
                *byte ^= 0x5a;
            }
            layer.digest = sha256(&layer.blob);
        },
        vec!["zstd"],
    ));
    cases.push(blob_case(
        "unknown-media-type",
        &|image| image.layers[1].media_type = "application/vnd.example.evil".into(),
        vec!["unknown layer media type", "application/vnd.example.evil"],
    ));
    cases.push(blob_case(
        "blob-digest-mismatch",
        &|image| {
            let layer = &mut image.layers[1];
            let last = layer.blob.len() - 20;
            layer.blob[last] ^= 1;
        },
        vec!["blobs/sha256/", "does not match"],
    ));
    cases.push(blob_case(
        "diff-id-mismatch",
        &|image| image.layers[1].diff_id = sha256(b"something else"),
        vec!["diff_id", "does not match"],
    ));
    cases.push(blob_case(
        "declared-gzip-but-plain",
        &|image| {
            let layer = &mut image.layers[1];
            layer.blob = layer.tar.clone();
            layer.digest = sha256(&layer.blob);
        },
        vec!["declared as gzip"],
    ));

    // Missing blob: the manifest lists a layer the archive does not hold.
    let image = base();
    let missing = format!(
        "blobs/sha256/{}",
        image.layers[1].digest.trim_start_matches("sha256:")
    );
    let files: Vec<(String, Vec<u8>)> = fixtures::oci_layout_files(std::slice::from_ref(&image))
        .into_iter()
        .filter(|(n, _)| *n != missing)
        .collect();
    let archive = dir.join("missing-blob");
    fs::write(&archive, fixtures::tar_bytes(&files)).unwrap();
    cases.push(Case {
        name: "missing-blob",
        archive,
        extra: vec![],
        expect: vec!["missing", "blobs/sha256/"],
    });

    // An archive cut short in the middle of a layer blob.
    let mut bytes = fixtures::tar_bytes(&fixtures::oci_layout_files(std::slice::from_ref(&image)));
    let cut = bytes.len() * 3 / 4;
    bytes.truncate(cut);
    let archive = dir.join("truncated-archive");
    fs::write(&archive, bytes).unwrap();
    cases.push(Case {
        name: "truncated-archive",
        archive,
        extra: vec![],
        expect: vec!["truncated"],
    });

    // Garbage index.json.
    let mut files = fixtures::oci_layout_files(std::slice::from_ref(&image));
    for (name, bytes) in &mut files {
        if name == "index.json" {
            *bytes = b"{\"schemaVersion\": 2, \"manifests\": [".to_vec();
        }
    }
    let archive = dir.join("bad-index");
    fs::write(&archive, fixtures::tar_bytes(&files)).unwrap();
    cases.push(Case {
        name: "bad-index",
        archive,
        extra: vec![],
        expect: vec!["index.json", "invalid JSON"],
    });

    // Docker archive whose manifest points outside the archive.
    let image = base();
    let mut files = fixtures::docker_archive_files(std::slice::from_ref(&image));
    for (name, bytes) in &mut files {
        if name == "manifest.json" {
            let mut manifest: serde_json::Value = serde_json::from_slice(bytes).unwrap();
            manifest[0]["Layers"][1] = "../../../../etc/passwd".into();
            *bytes = serde_json::to_vec(&manifest).unwrap();
        }
    }
    let archive = dir.join("docker-escape");
    fs::write(&archive, fixtures::tar_bytes(&files)).unwrap();
    cases.push(Case {
        name: "docker-escape",
        archive,
        extra: vec![],
        expect: vec!["not a plain relative path"],
    });

    // Docker archive (legacy layer.tar) with an absolute member.
    let archive = dir.join("docker-absolute");
    fixtures::write(
        &[image_with(vec![RawEntry::file("/etc/evil", b"x")])],
        Format::Docker,
        &archive,
    )
    .unwrap();
    cases.push(Case {
        name: "docker-absolute",
        archive,
        extra: vec![],
        expect: vec!["absolute path"],
    });
    cases
}

#[test]
fn hostile_archives_are_refused_and_leave_the_store_unchanged() {
    if let Some(reason) = fixtures::import_unavailable() {
        skip!("{reason}");
    }
    let work = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let store = TestStore::new();
    // A store with content: a valid image (sharing the valid base layer).
    let good = BuiltImage::from_layers(Some("good:latest"), vec![valid_layer()], vec![]);
    store.import(&oci_tar(work.path(), "good.tar", &good), &[]);
    let before = store.listing();
    assert!(before.iter().any(|e| e.starts_with("layerdb/sha256/")));

    let mut failures = Vec::new();
    for case in cases(work.path()) {
        let archive = case.archive.to_str().unwrap();
        let mut args = vec!["image", "import", "--quiet", archive];
        args.extend(case.extra.iter().copied());
        let out = store.husk(&args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        eprintln!("{}: {}", case.name, stderr.trim());
        if out.status.success() {
            failures.push(format!("{}: accepted", case.name));
        } else if let Some(missing) = case.expect.iter().find(|w| !stderr.contains(**w)) {
            failures.push(format!("{}: error lacks {missing:?}: {stderr}", case.name));
        }
        let after = store.listing();
        if after != before {
            failures.push(format!(
                "{}: store changed:\nbefore {before:#?}\nafter {after:#?}",
                case.name
            ));
        }
    }
    assert_eq!(
        fs::read_dir(outside.path()).unwrap().count(),
        0,
        "something was written outside the store"
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The valid image is still usable.
    assert_eq!(store.inspect("good")["id"], sha256(&good.config));
}

/// The accepting side of the symlinked-parent rule: entries under an in-layer
/// symlink (relative, and absolute naming a host directory) land where the
/// link leads inside the layer, as Docker puts them; nothing reaches the host.
#[test]
fn symlinked_parents_inside_the_layer_are_resolved_within_it() {
    if let Some(reason) = fixtures::import_unavailable() {
        skip!("{reason}");
    }
    if let Some(reason) = fixtures::mount_unavailable() {
        skip!("{reason}");
    }
    let work = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let host_dir = outside.path().display().to_string();
    let layer = BuiltLayer::new(
        fixtures::raw_tar(&[
            RawEntry::dir("usr/"),
            RawEntry::dir("usr/lib/"),
            RawEntry::symlink("lib", "usr/lib"),
            RawEntry::file("lib/libc.so", b"relative"),
            RawEntry::symlink("abs", "/usr/lib"),
            RawEntry::file("abs/libm.so", b"absolute"),
            RawEntry::symlink("hostdir", &host_dir),
            RawEntry::file("hostdir/pwned", b"inside"),
        ]),
        Compression::None,
    );
    let image = BuiltImage::from_layers(
        Some("links:latest"),
        vec![valid_layer(), layer],
        vec!["sh".into()],
    );
    let store = TestStore::new();
    store.import(&oci_tar(work.path(), "links.tar", &image), &[]);
    assert_eq!(
        fs::read_dir(outside.path()).unwrap().count(),
        0,
        "an entry reached the host"
    );
    let disk = PathBuf::from(
        store.inspect("links")["layers"][1]["disk"]
            .as_str()
            .unwrap(),
    );
    let mut mounts = fixtures::Mounts::default();
    let point = work.path().join("top");
    mounts
        .erofs(&disk, &point)
        .expect("mounting the layer disk");
    assert_eq!(
        fs::read(point.join("usr/lib/libc.so")).unwrap(),
        b"relative"
    );
    assert_eq!(
        fs::read(point.join("usr/lib/libm.so")).unwrap(),
        b"absolute"
    );
    let landed = point.join(host_dir.trim_start_matches('/')).join("pwned");
    assert_eq!(fs::read(&landed).unwrap(), b"inside");
    assert!(fs::symlink_metadata(point.join("lib"))
        .unwrap()
        .file_type()
        .is_symlink());
}
