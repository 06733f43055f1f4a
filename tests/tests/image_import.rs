//! `husk image import/ls/inspect/rm/prune` on the busybox fixtures: IDs
//! computed independently here, idempotent imports, shared layers.

use husk_e2e::fixtures::{self, BuiltImage, Format, TestStore};
use husk_e2e::skip;
use sha2::{Digest, Sha256};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The chain ID formula, written out: ChainID(L1) = DiffID(L1);
/// ChainID(Ln) = sha256(ChainID(Ln-1) + " " + DiffID(Ln)).
fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for diff_id in diff_ids {
        let next = match out.last() {
            None => diff_id.clone(),
            Some(parent) => sha256(format!("{parent} {diff_id}").as_bytes()),
        };
        out.push(next);
    }
    out
}

fn write_archive(dir: &Path, images: &[BuiltImage], format: Format, name: &str) -> PathBuf {
    let path = dir.join(name);
    fixtures::write(images, format, &path).expect("writing the fixture archive");
    path
}

fn busybox() -> BuiltImage {
    fixtures::build(&fixtures::busybox(Some("busybox:latest")).expect("busybox fixture"))
}

#[test]
fn ids_equal_those_computed_independently_for_every_format() {
    if let Some(reason) = fixtures::import_unavailable() {
        skip!("{reason}");
    }
    let work = tempfile::tempdir().unwrap();
    let image = busybox();
    let diff_ids: Vec<String> = image.layers.iter().map(|l| sha256(&l.tar)).collect();
    let expected_chain = chain_ids(&diff_ids);
    assert_eq!(expected_chain.len(), 3);
    assert_ne!(expected_chain[1], diff_ids[1]);

    for (format, name) in [
        (Format::Docker, "docker.tar"),
        (Format::Oci, "oci.tar"),
        (Format::OciDir, "oci-dir"),
    ] {
        let archive = write_archive(work.path(), std::slice::from_ref(&image), format, name);
        let store = TestStore::new();
        let report = store.import(&archive, &[]);
        assert_eq!(report["new_layers"], 3, "{name}: {report}");
        let inspect = store.inspect("busybox");
        assert_eq!(
            inspect["id"],
            sha256(&image.config),
            "{name}: image ID is the config digest"
        );
        assert_eq!(inspect["tags"], serde_json::json!(["busybox:latest"]));
        let layers = inspect["layers"].as_array().expect("layers");
        assert_eq!(layers.len(), 3);
        for (i, layer) in layers.iter().enumerate() {
            assert_eq!(layer["diff_id"], diff_ids[i], "{name} layer {i} diff_id");
            assert_eq!(
                layer["chain_id"], expected_chain[i],
                "{name} layer {i} chain_id"
            );
            assert_eq!(
                layer["size"],
                image.layers[i].tar.len() as u64,
                "{name} layer {i} size"
            );
            let disk = PathBuf::from(layer["disk"].as_str().expect("disk path"));
            let hex = expected_chain[i].trim_start_matches("sha256:");
            assert_eq!(
                disk,
                store
                    .root()
                    .join("layerdb/sha256")
                    .join(hex)
                    .join("layer.erofs")
            );
            assert!(fs::metadata(&disk).unwrap().len() > 0);
            let dir = disk.parent().unwrap();
            assert_eq!(fs::read_to_string(dir.join("diff")).unwrap(), diff_ids[i]);
            match i {
                0 => assert!(!dir.join("parent").exists()),
                _ => assert_eq!(
                    fs::read_to_string(dir.join("parent")).unwrap(),
                    expected_chain[i - 1]
                ),
            }
        }
        // The config stored under its ID hashes to it.
        let id_hex = sha256(&image.config)
            .trim_start_matches("sha256:")
            .to_string();
        let stored = fs::read(store.root().join("imagedb/content/sha256").join(&id_hex)).unwrap();
        assert_eq!(sha256(&stored), format!("sha256:{id_hex}"));
        if format != Format::Docker {
            assert_eq!(
                inspect["manifest"],
                sha256(&image.manifest),
                "{name}: manifest digest"
            );
            let blob = store
                .root()
                .join("blobs/sha256")
                .join(sha256(&image.manifest).trim_start_matches("sha256:"));
            assert_eq!(fs::read(blob).unwrap(), image.manifest);
        }
        // Short ID and full ID resolve to the same image.
        assert_eq!(store.inspect(&id_hex[..12])["id"], inspect["id"]);
    }
}

#[test]
fn importing_twice_stores_nothing_new() {
    if let Some(reason) = fixtures::import_unavailable() {
        skip!("{reason}");
    }
    let work = tempfile::tempdir().unwrap();
    let image = busybox();
    let oci = write_archive(
        work.path(),
        std::slice::from_ref(&image),
        Format::Oci,
        "oci.tar",
    );
    let docker = write_archive(work.path(), &[image], Format::Docker, "docker.tar");
    let store = TestStore::new();
    store.import(&oci, &[]);
    let before = store.listing();
    let again = store.import(&oci, &[]);
    assert_eq!(again["new_layers"], 0);
    assert_eq!(again["present_layers"], 3);
    assert_eq!(store.listing(), before, "second import changed the store");
    // The same image from a docker archive is the same image: nothing new
    // but its manifest is not part of docker archives, so still nothing.
    let from_docker = store.import(&docker, &[]);
    assert_eq!(from_docker["new_layers"], 0);
    assert_eq!(
        store.listing(),
        before,
        "docker-archive import of the same image changed the store"
    );
}

#[test]
fn images_sharing_a_base_layer_share_its_disk_and_rm_keeps_the_other() {
    if let Some(reason) = fixtures::import_unavailable() {
        skip!("{reason}");
    }
    let work = tempfile::tempdir().unwrap();
    let busybox = busybox();
    let derived =
        fixtures::build(&fixtures::busybox_derived(Some("derived:1"), "derived\n").unwrap());
    let untagged = fixtures::build(&fixtures::busybox_derived(None, "untagged\n").unwrap());
    // Several images in one archive are all imported; --tag names the untagged one.
    let archive = write_archive(
        work.path(),
        &[busybox.clone(), derived.clone(), untagged.clone()],
        Format::Oci,
        "three.tar",
    );
    let store = TestStore::new();
    let report = store.import(&archive, &["--tag", "named"]);
    assert_eq!(report["images"].as_array().unwrap().len(), 3);
    // Base layer once, then 2 + 1 + 1 distinct layers.
    assert_eq!(report["new_layers"], 5, "{report}");

    let listed: serde_json::Value =
        serde_json::from_str(&store.ok(&["image", "ls", "--json"])).unwrap();
    let mut tags: Vec<String> = listed
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|i| {
            i["tags"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_str().unwrap().to_string())
        })
        .collect();
    tags.sort();
    assert_eq!(tags, ["busybox:latest", "derived:1", "named:latest"]);

    let base_of =
        |name: &str| PathBuf::from(store.inspect(name)["layers"][0]["disk"].as_str().unwrap());
    let busybox_base = base_of("busybox");
    let derived_base = base_of("derived:1");
    assert_eq!(busybox_base, derived_base);
    assert_eq!(
        fs::metadata(&busybox_base).unwrap().ino(),
        fs::metadata(&derived_base).unwrap().ino()
    );

    let busybox_layers: Vec<PathBuf> = store.inspect("busybox")["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| PathBuf::from(l["disk"].as_str().unwrap()))
        .collect();
    let rm = store.ok(&["image", "rm", "busybox"]);
    assert!(rm.contains("deleted: sha256:"), "{rm}");
    assert!(!store
        .husk(&["image", "inspect", "busybox"])
        .status
        .success());
    assert!(
        busybox_base.exists(),
        "the shared base layer went with busybox"
    );
    assert!(
        !busybox_layers[1].exists() && !busybox_layers[2].exists(),
        "busybox's own layers stayed"
    );
    let derived_inspect = store.inspect("derived:1");
    assert_eq!(derived_inspect["id"], sha256(&derived.config));
    for layer in derived_inspect["layers"].as_array().unwrap() {
        assert!(Path::new(layer["disk"].as_str().unwrap()).exists());
    }
    // Re-importing busybox reuses the base and rebuilds only its own layers.
    let report = store.import(
        &write_archive(work.path(), &[busybox], Format::Docker, "bb.tar"),
        &[],
    );
    assert_eq!(report["new_layers"], 2, "{report}");
    assert_eq!(
        fs::metadata(base_of("busybox")).unwrap().ino(),
        fs::metadata(&derived_base).unwrap().ino()
    );
}

#[test]
fn prune_removes_unreferenced_layers_and_stale_staging() {
    if let Some(reason) = fixtures::import_unavailable() {
        skip!("{reason}");
    }
    let work = tempfile::tempdir().unwrap();
    let store = TestStore::new();
    store.import(
        &write_archive(work.path(), &[busybox()], Format::Oci, "oci.tar"),
        &[],
    );
    let before = store.listing();
    // An orphan layer (as a crash between layer and image commits leaves)
    // and a staging directory of an import killed an hour ago.
    let orphan = store.root().join("layerdb/sha256").join("ab".repeat(32));
    fs::create_dir_all(&orphan).unwrap();
    for (name, content) in [
        ("diff", format!("sha256:{}", "ab".repeat(32))),
        ("size", "1".into()),
        ("cache-id", "x".into()),
    ] {
        fs::write(orphan.join(name), content).unwrap();
    }
    fs::write(orphan.join("layer.erofs"), b"disk").unwrap();
    let stale = store.root().join("tmp/import-killed");
    fs::create_dir_all(stale.join("0/tree")).unwrap();
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    fs::File::open(&stale).unwrap().set_modified(old).unwrap();
    let out = store.ok(&["image", "prune"]);
    assert!(out.contains("pruned 1 layer"), "{out}");
    assert!(!orphan.exists() && !stale.exists());
    assert_eq!(store.listing(), before);
    assert!(store
        .husk(&["image", "inspect", "busybox"])
        .status
        .success());
}

#[test]
fn concurrent_imports_of_images_sharing_a_layer() {
    if let Some(reason) = fixtures::import_unavailable() {
        skip!("{reason}");
    }
    let work = tempfile::tempdir().unwrap();
    let one = write_archive(work.path(), &[busybox()], Format::Oci, "one.tar");
    let derived = fixtures::build(&fixtures::busybox_derived(Some("derived:1"), "x\n").unwrap());
    let two = write_archive(work.path(), &[derived], Format::Docker, "two.tar");
    let store = TestStore::new();
    let spawn = |archive: &Path| {
        std::process::Command::new(&store.husk)
            .arg("--store")
            .arg(store.root())
            .args(["image", "import", "--json"])
            .arg(archive)
            .output()
            .unwrap()
    };
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| spawn(&one));
        let b = s.spawn(|| spawn(&two));
        (a.join().unwrap(), b.join().unwrap())
    });
    for out in [&a, &b] {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let reports: Vec<serde_json::Value> = [&a, &b]
        .iter()
        .map(|o| serde_json::from_slice(&o.stdout).unwrap())
        .collect();
    let new: u64 = reports
        .iter()
        .map(|r| r["new_layers"].as_u64().unwrap())
        .sum();
    assert_eq!(new, 4, "the shared base layer was built once: {reports:?}");
    assert_eq!(
        fs::read_dir(store.root().join("layerdb/sha256"))
            .unwrap()
            .count(),
        4
    );
    assert_eq!(fs::read_dir(store.root().join("tmp")).unwrap().count(), 0);
    store.inspect("busybox");
    store.inspect("derived:1");
}

#[test]
fn an_interrupted_import_leaves_no_half_layer() {
    if let Some(reason) = fixtures::import_unavailable() {
        skip!("{reason}");
    }
    let work = tempfile::tempdir().unwrap();
    let mut image = busybox();
    let big = fixtures::layer_tar(&[fixtures::file("/big", &vec![0u8; 96 << 20], 0o644)]);
    image
        .layers
        .push(fixtures::BuiltLayer::new(big, fixtures::Compression::None));
    image.refresh();
    let archive = write_archive(
        work.path(),
        std::slice::from_ref(&image),
        Format::Oci,
        "big.tar",
    );
    let store = TestStore::new();
    store.ok(&["image", "ls"]);
    let mut child = std::process::Command::new(&store.husk)
        .arg("--store")
        .arg(store.root())
        .args(["image", "import", "--quiet"])
        .arg(&archive)
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(400));
    child.kill().unwrap();
    child.wait().unwrap();

    // Every layer in the database is complete; no image refers to a
    // missing layer.
    for entry in fs::read_dir(store.root().join("layerdb/sha256")).unwrap() {
        let dir = entry.unwrap().path();
        for name in ["diff", "size", "cache-id", "layer.erofs"] {
            assert!(
                dir.join(name).exists(),
                "half layer: {} lacks {name}",
                dir.display()
            );
        }
    }
    assert!(
        store
            .husk(&["image", "inspect", &image.id])
            .status
            .success()
            == store
                .root()
                .join("imagedb/content/sha256")
                .join(image.id.trim_start_matches("sha256:"))
                .exists()
    );
    // The staging directory left behind is swept once stale.
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    for entry in fs::read_dir(store.root().join("tmp")).unwrap() {
        fs::File::open(entry.unwrap().path())
            .unwrap()
            .set_modified(old)
            .unwrap();
    }
    store.ok(&["image", "prune"]);
    assert_eq!(fs::read_dir(store.root().join("tmp")).unwrap().count(), 0);
    // And the import completes when run again.
    let report = store.import(&archive, &[]);
    assert_eq!(report["images"][0]["id"], image.id);
    assert_eq!(
        store.inspect("busybox")["layers"].as_array().unwrap().len(),
        4
    );
}
