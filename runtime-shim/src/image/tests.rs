//! Store tests on hand-built stores (no archives, no mkfs.erofs).

use super::digest::{chain_ids, Digest};
use super::store::{Store, StoreError};
use std::fs;
use std::path::Path;

fn config_json(diff_ids: &[Digest], marker: &str) -> Vec<u8> {
    let diff_ids: Vec<String> = diff_ids.iter().map(Digest::to_string).collect();
    serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "created": "2024-01-01T00:00:00Z",
        "config": { "Env": [format!("MARKER={marker}")] },
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
    }))
    .unwrap()
}

/// Stages and commits fake layers (the "disk" is a small file).
fn add_layers(store: &Store, diff_ids: &[Digest]) {
    let chain = chain_ids(diff_ids);
    for (i, (chain_id, diff_id)) in chain.iter().zip(diff_ids).enumerate() {
        if store.has_layer(chain_id) {
            continue;
        }
        let staged = tempfile::tempdir_in(store.layout().tmp_dir())
            .unwrap()
            .keep();
        fs::write(staged.join("diff"), diff_id.to_string()).unwrap();
        fs::write(staged.join("size"), format!("{}", 100 + i)).unwrap();
        fs::write(staged.join("cache-id"), "test").unwrap();
        if i > 0 {
            fs::write(staged.join("parent"), chain[i - 1].to_string()).unwrap();
        }
        fs::write(staged.join("layer.erofs"), b"disk").unwrap();
        store.commit_layer(&staged, chain_id).unwrap();
    }
}

fn add_image(store: &Store, diff_ids: &[Digest], marker: &str, names: &[&str]) -> Digest {
    add_layers(store, diff_ids);
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    store
        .commit_image(&config_json(diff_ids, marker), None, &names)
        .unwrap()
}

fn open(dir: &Path) -> Store {
    Store::open(dir).unwrap()
}

#[test]
fn resolve_by_name_short_and_full_id() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let diff_ids = [Digest::of_bytes(b"base"), Digest::of_bytes(b"top")];
    let id = add_image(&store, &diff_ids, "a", &["busybox:latest"]);

    for name in ["busybox", "busybox:latest", "docker.io/library/busybox"] {
        let image = store.resolve(name).unwrap();
        assert_eq!(image.id, id.to_string());
        assert_eq!(image.name, "busybox:latest");
    }
    let by_short = store.resolve(id.short()).unwrap();
    assert_eq!(by_short.id, id.to_string());
    let by_full = store.resolve(&id.to_string()).unwrap();
    assert_eq!(by_full.layers.len(), 2);

    let chain = chain_ids(&diff_ids);
    let image = store.resolve("busybox").unwrap();
    assert_eq!(image.layers[0].chain_id, chain[0].to_string());
    assert_eq!(image.layers[1].chain_id, chain[1].to_string());
    assert_eq!(image.layers[1].diff_id, diff_ids[1].to_string());
    assert_eq!(image.layers[1].size, 101);
    assert_eq!(
        image.layers[0].disk,
        dir.path()
            .join("layerdb/sha256")
            .join(chain[0].hex())
            .join("layer.erofs")
    );
    assert!(matches!(
        store.resolve("nothere"),
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store.resolve("Bad Name"),
        Err(StoreError::Reference(_))
    ));
}

#[test]
fn remove_keeps_shared_layers_and_prune_removes_orphans() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let base = Digest::of_bytes(b"base");
    let one = [base.clone(), Digest::of_bytes(b"one")];
    let two = [base.clone(), Digest::of_bytes(b"two")];
    add_image(&store, &one, "one", &["one:latest"]);
    let id_two = add_image(&store, &two, "two", &["two:latest", "two:v2"]);
    assert_eq!(store.layer_ids().unwrap().len(), 3);

    let report = store.remove("one").unwrap();
    assert!(report.deleted_image.is_some());
    assert_eq!(report.deleted_layers, vec![chain_ids(&one)[1].to_string()]);
    assert!(store.has_layer(&base));
    assert!(store.resolve("two").is_ok());

    // Removing one of two tags keeps the image.
    let report = store.remove("two:v2").unwrap();
    assert!(report.deleted_image.is_none());
    assert_eq!(store.resolve("two").unwrap().id, id_two.to_string());

    // A layer without any image goes on prune.
    let orphan = [Digest::of_bytes(b"orphan")];
    add_layers(&store, &orphan);
    let report = store.prune().unwrap();
    assert_eq!(report.deleted_layers, vec![orphan[0].to_string()]);
    assert_eq!(store.layer_ids().unwrap().len(), 2);

    store.remove(&id_two.to_string()).unwrap();
    assert!(store.layer_ids().unwrap().is_empty());
    assert!(store.images().unwrap().is_empty());
}

#[test]
fn prune_sweeps_lock_files_of_layers_that_are_gone() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let kept = [Digest::of_bytes(b"kept")];
    add_image(&store, &kept, "kept", &["kept:latest"]);
    let kept_lock = store.layout().layer_lock(&chain_ids(&kept)[0]);
    drop(store.lock_layer(&chain_ids(&kept)[0]).unwrap());
    // What a refused import leaves: a lock file and no layer.
    let gone = Digest::of_bytes(b"refused");
    let gone_lock = store.layout().layer_lock(&gone);
    drop(store.lock_layer(&gone).unwrap());
    // A lock an import holds right now stays, layer or not.
    let busy = Digest::of_bytes(b"importing");
    let busy_lock = store.layout().layer_lock(&busy);
    let held = store.lock_layer(&busy).unwrap();
    let report = store.prune().unwrap();
    assert_eq!(report.swept_locks, 1);
    assert!(!gone_lock.exists());
    assert!(kept_lock.exists());
    assert!(busy_lock.exists());
    drop(held);
    assert_eq!(store.prune().unwrap().swept_locks, 1);
    assert!(!busy_lock.exists());
}

#[test]
fn ambiguous_and_missing_layers_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let diff_ids = [Digest::of_bytes(b"x")];
    let id = add_image(&store, &diff_ids, "x", &["x:latest"]);
    fs::remove_dir_all(store.layout().layer_dir(&chain_ids(&diff_ids)[0])).unwrap();
    assert!(matches!(
        store.resolve("x"),
        Err(StoreError::LayerMissing { .. })
    ));
    // A config whose bytes no longer match its ID is corruption, not an image.
    fs::write(store.layout().image_config(&id), b"{}").unwrap();
    assert!(matches!(store.resolve("x"), Err(StoreError::Corrupt(_))));
}

#[test]
fn a_lease_keeps_rm_and_prune_off_the_layers_until_it_drops() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let base = Digest::of_bytes(b"base");
    let running = [base.clone(), Digest::of_bytes(b"running")];
    let other = [base.clone(), Digest::of_bytes(b"other")];
    add_image(&store, &running, "running", &["running:latest"]);
    add_image(&store, &other, "other", &["other:latest"]);
    let chain = chain_ids(&running);
    let disks: Vec<_> = chain.iter().map(|c| store.layout().layer_disk(c)).collect();

    let image = store.resolve("running").unwrap();
    let lease = store.lease(&image).unwrap();
    // A second run of the same image leases the same layers at once.
    let second = store.lease(&image).unwrap();
    drop(second);

    // rm refuses: the image's own top layer is leased.
    match store.remove("running") {
        Err(e @ StoreError::Leased { .. }) => {
            let text = e.to_string();
            assert!(text.contains("in use by a running container"), "{text}");
            assert!(text.contains(&chain[1].to_string()), "{text}");
        }
        other => panic!("rm of a leased image: {other:?}"),
    }
    assert!(store.resolve("running").is_ok(), "the image is still there");
    // An image that only shares the leased base goes, and keeps the base.
    let report = store.remove("other").unwrap();
    assert_eq!(
        report.deleted_layers,
        vec![chain_ids(&other)[1].to_string()]
    );
    assert!(report.kept_leased.is_empty());

    // The image record removed under the run (as an rm racing the lease
    // would leave it): prune keeps the leased layers and says so.
    let id = Digest::parse(&image.id).unwrap();
    fs::remove_file(store.layout().image_config(&id)).unwrap();
    let report = store.prune().unwrap();
    assert!(report.deleted_layers.is_empty(), "{report:?}");
    let mut kept = report.kept_leased.clone();
    kept.sort();
    let mut expected: Vec<String> = chain.iter().map(Digest::to_string).collect();
    expected.sort();
    assert_eq!(kept, expected);
    for disk in &disks {
        assert!(disk.is_file(), "{} deleted under a lease", disk.display());
    }

    drop(lease);
    let report = store.prune().unwrap();
    assert!(report.kept_leased.is_empty());
    assert_eq!(report.deleted_layers.len(), 2, "{report:?}");
    for disk in &disks {
        assert!(!disk.exists());
    }
}

#[test]
fn rm_works_once_the_lease_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let layers = [Digest::of_bytes(b"solo")];
    add_image(&store, &layers, "solo", &["solo:latest", "solo:v1"]);
    let lease = store.lease(&store.resolve("solo").unwrap()).unwrap();
    // Untagging while other tags remain deletes nothing: allowed.
    let report = store.remove("solo:v1").unwrap();
    assert!(report.deleted_image.is_none());
    assert!(matches!(
        store.remove("solo"),
        Err(StoreError::Leased { .. })
    ));
    drop(lease);
    let report = store.remove("solo").unwrap();
    assert!(report.deleted_image.is_some());
    assert_eq!(report.deleted_layers, vec![layers[0].to_string()]);
}

#[test]
fn leasing_a_layer_deleted_after_resolve_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let layers = [Digest::of_bytes(b"low"), Digest::of_bytes(b"high")];
    add_image(&store, &layers, "gone", &["gone:latest"]);
    let image = store.resolve("gone").unwrap();
    let top = chain_ids(&layers)[1].clone();
    fs::remove_dir_all(store.layout().layer_dir(&top)).unwrap();
    match store.lease(&image) {
        Err(e @ StoreError::LayerMissing { .. }) => {
            let text = e.to_string();
            assert!(text.contains(&top.to_string()), "{text}");
            assert!(text.contains("gone:latest"), "{text}");
        }
        other => panic!("lease of a deleted layer: {other:?}"),
    }
    // The refused lease holds nothing: the remaining layer can go.
    let bottom = chain_ids(&layers)[0].clone();
    let lock = store.layout().layer_lock(&bottom);
    assert!(super::lock::try_exclusive(&lock).unwrap().is_some());
}

#[test]
fn an_import_does_not_wait_for_a_lease_on_a_layer_it_reuses() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let layers = [Digest::of_bytes(b"reused")];
    add_image(&store, &layers, "r", &["r:latest"]);
    let _lease = store.lease(&store.resolve("r").unwrap()).unwrap();
    // Would block forever if imports took the exclusive lock on it.
    let (_held, present) = store.lock_layer_for_import(&layers[0]).unwrap();
    assert!(present);
    let missing = Digest::of_bytes(b"new");
    let (_held, present) = store.lock_layer_for_import(&missing).unwrap();
    assert!(!present);
}
