//! `husk pull` against a real registry: Debian's docker-registry on a
//! loopback port (plain, and with TLS and htpasswd basic auth), images put
//! there with skopeo, then pulled into an empty store and run.

use husk_e2e::fixtures::{self, Compression, Format, LayerSpec, TestStore};
use husk_e2e::procs::{text, wait_with_timeout};
use husk_e2e::registry::{self, Registry, Relay};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const RUN_TIMEOUT: Duration = Duration::from_secs(240);
const PULL_TIMEOUT: Duration = Duration::from_secs(300);

macro_rules! need_registry {
    () => {
        if let Some(reason) = registry::unavailable() {
            husk_e2e::skip!("{reason}");
        }
        if let Some(reason) = fixtures::import_unavailable() {
            husk_e2e::skip!("{reason}");
        }
    };
}

/// `husk --store S ARGS` with a hard timeout; HOME is the store's parent
/// temp dir so no user's credentials are read.
fn husk(store: &TestStore, home: &Path, args: &[&str]) -> Output {
    let child = Command::new(&store.husk)
        .arg("--store")
        .arg(store.root())
        .args(args)
        .env("HOME", home)
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("DOCKER_CONFIG")
        .env_remove("HUSK_AUTH_FILE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn husk");
    wait_with_timeout(child, PULL_TIMEOUT, args)
}

fn ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed: {:?}\nstdout: {}\nstderr: {}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

fn failed(out: &Output, what: &str) -> String {
    assert!(
        !out.status.success(),
        "{what} should have failed\nstdout: {}\nstderr: {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stderr)
}

/// `husk pull --json` through a plain registry; the parsed report.
fn pull(store: &TestStore, home: &Path, host: &str, reference: &str) -> serde_json::Value {
    let out = husk(
        store,
        home,
        &["pull", "--json", "--insecure-registry", host, reference],
    );
    serde_json::from_str(&ok(&out, reference)).expect("pull --json output")
}

fn busybox_image() -> fixtures::BuiltImage {
    fixtures::build(&fixtures::busybox(Some("busybox:latest")).expect("busybox fixture"))
}

/// Five layers: busybox's three (gzip, zstd, plain) and two more.
fn multi_image() -> fixtures::BuiltImage {
    let mut spec = fixtures::busybox(Some("multi:latest")).expect("busybox fixture");
    spec.layers.push(LayerSpec {
        compression: Compression::Gzip,
        nodes: vec![fixtures::file("/etc/multi-4", b"four\n", 0o644)],
    });
    spec.layers.push(LayerSpec {
        compression: Compression::Zstd,
        nodes: vec![fixtures::file("/etc/multi-5", b"five\n", 0o644)],
    });
    fixtures::build(&spec)
}

/// Busybox's base layer and one plain layer of `size` incompressible bytes.
fn big_image(size: usize) -> fixtures::BuiltImage {
    let mut data = Vec::with_capacity(size);
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    while data.len() < size {
        // xorshift64: reproducible bytes no compressor shrinks.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        data.extend_from_slice(&state.to_le_bytes());
    }
    let spec = fixtures::ImageSpec {
        name: Some("big:latest".into()),
        layers: vec![
            fixtures::busybox_base_layer(Compression::Gzip).expect("busybox layer"),
            LayerSpec {
                compression: Compression::None,
                nodes: vec![fixtures::file("/big.bin", &data, 0o644)],
            },
        ],
        cmd: vec!["sh".into()],
    };
    fixtures::build(&spec)
}

/// Writes `image` as an OCI layout and pushes it as `name` (e.g. `busybox:latest`).
fn push(image: &fixtures::BuiltImage, host: &str, name: &str) {
    let dir = tempfile::tempdir().expect("temp dir");
    let layout = dir.path().join("layout");
    fixtures::write(std::slice::from_ref(image), Format::OciDir, &layout).expect("layout");
    registry::push_layout(&layout, "latest", host, name);
}

fn layer_count(store: &TestStore) -> usize {
    std::fs::read_dir(store.root().join("layerdb/sha256"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn downloads(store: &TestStore) -> Vec<String> {
    std::fs::read_dir(store.root().join("tmp/downloads"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The guest kernel and agent, or why containers cannot run here.
fn vm_assets() -> Result<(PathBuf, PathBuf), String> {
    let kernel = husk_e2e::kernel().ok_or("HUSK_KERNEL is not set to a guest kernel")?;
    let agent = std::env::var_os("HUSK_AGENT")
        .map(PathBuf::from)
        .filter(|p| p.is_file())
        .ok_or("HUSK_AGENT is not set to the static guest agent")?;
    Ok((kernel, agent))
}

fn run(store: &TestStore, assets: &(PathBuf, PathBuf), args: &[&str]) -> Output {
    let backend = std::env::var("HUSK_TEST_BACKEND").unwrap_or_else(|_| "qemu".into());
    let child = Command::new(&store.husk)
        .arg("--store")
        .arg(store.root())
        .args(["run", "--rm", "--backend", &backend])
        .args(args)
        .env("HUSK_KERNEL", &assets.0)
        .env("HUSK_AGENT", &assets.1)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn husk run");
    wait_with_timeout(child, RUN_TIMEOUT, args)
}

#[test]
fn pull_then_run_and_a_second_pull_downloads_nothing() {
    need_registry!();
    let storage = tempfile::tempdir().unwrap();
    let registry = Registry::plain(storage.path());
    let host = registry.host();
    let (busybox, multi) = (busybox_image(), multi_image());
    // skopeo stores busybox's plain third layer gzip-compressed; the
    // multi-layer image goes in byte for byte, its plain layer plain.
    push(&busybox, &host, "busybox:latest");
    registry::push_raw(&host, "tools/multi", "1.0", &multi);
    let busybox_manifest = registry::skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{host}/busybox:latest"),
    ]);
    let pushed: serde_json::Value = serde_json::from_str(&busybox_manifest).unwrap();
    let busybox_manifest_digest = fixtures::sha256_digest(busybox_manifest.as_bytes());

    let store = TestStore::new();
    let home = tempfile::tempdir().unwrap();
    let report = pull(&store, home.path(), &host, &format!("{host}/busybox"));
    assert_eq!(report["id"], busybox.id.as_str(), "{report}");
    assert_eq!(report["name"], format!("{host}/busybox:latest"));
    assert_eq!(report["layers"], 3);
    assert_eq!(report["fetched_layers"], 3);
    let blob_bytes: u64 = pushed["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["size"].as_u64().unwrap())
        .sum();
    assert_eq!(report["downloaded_bytes"], blob_bytes);
    assert_eq!(report["manifest_digest"], busybox_manifest_digest.as_str());

    // Shares busybox's three layers (same diff IDs, whatever their
    // compression): only the two others are fetched.
    let report = pull(
        &store,
        home.path(),
        &host,
        &format!("{host}/tools/multi:1.0"),
    );
    assert_eq!(report["id"], multi.id.as_str());
    assert_eq!(report["manifest_digest"], multi.manifest_digest.as_str());
    assert_eq!(report["layers"], 5);
    assert_eq!(report["fetched_layers"], 2, "{report}");
    let fetched = (multi.layers[3].blob.len() + multi.layers[4].blob.len()) as u64;
    assert_eq!(report["downloaded_bytes"], fetched);

    // An image whose layers are gzip, zstd and plain in the registry, into
    // a store that has none of them.
    let other = TestStore::new();
    let report = pull(
        &other,
        home.path(),
        &host,
        &format!("{host}/tools/multi:1.0"),
    );
    assert_eq!(report["fetched_layers"], 5, "{report}");
    let compressions: Vec<Compression> = multi.layers.iter().map(|l| l.compression).collect();
    for c in [Compression::Gzip, Compression::Zstd, Compression::None] {
        assert!(compressions.contains(&c), "{c:?} missing from the fixture");
    }
    assert_eq!(
        other.inspect(&format!("{host}/tools/multi:1.0"))["layers"][2]["diff_id"],
        multi.layers[2].diff_id.as_str()
    );

    // husk push sends the store's manifest and the blobs the pull kept, byte
    // for byte: skopeo sees the same digests.
    let out = husk(
        &other,
        home.path(),
        &[
            "push",
            "--json",
            "--insecure-registry",
            &host,
            &format!("{host}/tools/multi:1.0"),
            &format!("{host}/pushed/multi:2"),
        ],
    );
    let pushed_report: serde_json::Value = serde_json::from_str(&ok(&out, "push")).unwrap();
    assert_eq!(
        pushed_report["pushed_blobs"], 6,
        "config and 5 layers: {pushed_report}"
    );
    let raw = registry::skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{host}/pushed/multi:2"),
    ]);
    assert_eq!(
        fixtures::sha256_digest(raw.as_bytes()),
        multi.manifest_digest
    );
    let inspected: serde_json::Value = serde_json::from_str(&registry::skopeo(&[
        "inspect",
        "--tls-verify=false",
        &format!("docker://{host}/pushed/multi:2"),
    ]))
    .unwrap();
    assert_eq!(inspected["Digest"], multi.manifest_digest.as_str());
    let layers: Vec<&str> = multi.layers.iter().map(|l| l.digest.as_str()).collect();
    assert_eq!(inspected["Layers"], serde_json::json!(layers));
    // Pushed again: the registry has every blob, only the manifest goes.
    let out = husk(
        &other,
        home.path(),
        &[
            "push",
            "--json",
            "--insecure-registry",
            &host,
            &format!("{host}/tools/multi:1.0"),
            &format!("{host}/pushed/multi:3"),
        ],
    );
    let again: serde_json::Value = serde_json::from_str(&ok(&out, "push again")).unwrap();
    assert_eq!(again["pushed_blobs"], 0, "{again}");
    assert_eq!(layer_count(&store), 5);

    // Again: nothing is downloaded, nothing changes.
    let before = store.listing();
    let report = pull(
        &store,
        home.path(),
        &host,
        &format!("{host}/busybox:latest"),
    );
    assert_eq!(report["fetched_layers"], 0);
    assert_eq!(report["downloaded_bytes"], 0);
    assert_eq!(store.listing(), before);

    // A digest pin resolves to the same image.
    let pinned = format!("{host}/busybox@{busybox_manifest_digest}");
    let report = pull(&store, home.path(), &host, &pinned);
    assert_eq!(report["id"], busybox.id.as_str());
    assert_eq!(report["manifest_digest"], busybox_manifest_digest.as_str());
    assert_eq!(report["name"], serde_json::Value::Null);
    assert!(downloads(&store).is_empty(), "{:?}", downloads(&store));

    let listed = ok(&store.husk(&["image", "ls"]), "image ls");
    assert!(listed.contains(&format!("{host}/busybox")), "{listed}");
    assert!(listed.contains(&format!("{host}/tools/multi")), "{listed}");

    let assets = match vm_assets() {
        Ok(assets) => assets,
        Err(reason) => husk_e2e::skip!("{reason}"),
    };
    let out = run(
        &store,
        &assets,
        &[&format!("{host}/busybox"), "cat", "/etc/motd"],
    );
    assert_eq!(ok(&out, "run busybox"), "Welcome to a husk microVM.\n");
    let out = run(
        &store,
        &assets,
        &[
            &format!("{host}/tools/multi:1.0"),
            "cat",
            "/etc/multi-4",
            "/etc/multi-5",
            "/etc/release",
        ],
    );
    let stdout = ok(&out, "run multi");
    assert!(stdout.starts_with("four\nfive\n"), "{stdout}");

    // `husk run` pulls an image the store lacks (--pull missing, the
    // default), and with --pull never does not.
    let fresh = TestStore::new();
    let image = format!("{host}/busybox");
    let out = run(&fresh, &assets, &["--pull", "never", &image, "true"]);
    let err = failed(&out, "run --pull never of a missing image");
    assert!(err.contains("no such image"), "{err}");
    let out = run(
        &fresh,
        &assets,
        &["--insecure-registry", &host, &image, "cat", "/etc/motd"],
    );
    assert_eq!(
        ok(&out, "run pulling busybox"),
        "Welcome to a husk microVM.\n"
    );
    assert!(
        text(&out.stderr).contains("pulling it"),
        "{}",
        text(&out.stderr)
    );
    let pinned = format!("{host}/busybox@{busybox_manifest_digest}");
    let out = run(&fresh, &assets, &["--pull", "never", &pinned, "true"]);
    ok(&out, "run by digest, found by its manifest");
}

/// An OCI index with an amd64 and an arm64 entry (the arm64 one differs
/// only in its config), pushed with `skopeo copy --all`.
#[test]
fn an_index_chooses_the_platform() {
    need_registry!();
    let storage = tempfile::tempdir().unwrap();
    let registry = Registry::plain(storage.path());
    let host = registry.host();
    let amd64 = busybox_image();
    let mut arm64_config: serde_json::Value = serde_json::from_slice(&amd64.config).unwrap();
    arm64_config["architecture"] = "arm64".into();
    let arm64_config = serde_json::to_vec(&arm64_config).unwrap();
    let mut arm64_manifest: serde_json::Value = serde_json::from_slice(&amd64.manifest).unwrap();
    arm64_manifest["config"]["digest"] = fixtures::sha256_digest(&arm64_config).into();
    arm64_manifest["config"]["size"] = arm64_config.len().into();
    let arm64_manifest = serde_json::to_vec(&arm64_manifest).unwrap();
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": fixtures::OCI_INDEX,
        "manifests": [
            {"mediaType": fixtures::OCI_MANIFEST, "digest": fixtures::sha256_digest(&arm64_manifest),
             "size": arm64_manifest.len(), "platform": {"os": "linux", "architecture": "arm64"}},
            {"mediaType": fixtures::OCI_MANIFEST, "digest": amd64.manifest_digest,
             "size": amd64.manifest.len(), "platform": {"os": "linux", "architecture": "amd64"}},
        ],
    }))
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    fixtures::write(std::slice::from_ref(&amd64), Format::OciDir, &layout).unwrap();
    let blobs = layout.join("blobs/sha256");
    for bytes in [&arm64_config, &arm64_manifest, &index] {
        std::fs::write(blobs.join(fixtures::sha256_hex(bytes)), bytes).unwrap();
    }
    let top = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": fixtures::OCI_INDEX, "digest": fixtures::sha256_digest(&index),
        "size": index.len(), "annotations": {"org.opencontainers.image.ref.name": "latest"}}]});
    std::fs::write(layout.join("index.json"), top.to_string()).unwrap();
    registry::push_layout(&layout, "latest", &host, "multiarch:latest");

    let store = TestStore::new();
    let home = tempfile::tempdir().unwrap();
    let reference = format!("{host}/multiarch");
    let report = pull(&store, home.path(), &host, &reference);
    assert_eq!(report["id"], amd64.id.as_str(), "{report}");
    // skopeo rewrote the manifests (it compresses the plain layer): what
    // the registry has is what counts.
    let stored: serde_json::Value = serde_json::from_str(&registry::skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{reference}"),
    ]))
    .unwrap();
    let amd64_entry = stored["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["platform"]["architecture"] == "amd64")
        .expect("an amd64 entry");
    assert_eq!(report["manifest_digest"], amd64_entry["digest"]);
    assert!(report["index_digest"].is_string(), "{report}");

    let out = husk(
        &store,
        home.path(),
        &[
            "pull",
            "--json",
            "--insecure-registry",
            &host,
            "--platform",
            "linux/arm64",
            &reference,
        ],
    );
    let report: serde_json::Value = serde_json::from_str(&ok(&out, "pull arm64")).unwrap();
    assert_eq!(report["id"], fixtures::sha256_digest(&arm64_config));
    assert_eq!(report["fetched_layers"], 0, "same layers: {report}");

    let out = husk(
        &store,
        home.path(),
        &[
            "pull",
            "--insecure-registry",
            &host,
            "--platform",
            "linux/s390x",
            &reference,
        ],
    );
    let err = failed(&out, "pull s390x");
    assert!(err.contains("no image for linux/s390x"), "{err}");
    assert!(
        err.contains("linux/amd64") && err.contains("linux/arm64"),
        "{err}"
    );
}

#[test]
fn unknown_images_and_unreachable_registries_say_so() {
    need_registry!();
    let storage = tempfile::tempdir().unwrap();
    let registry = Registry::plain(storage.path());
    let host = registry.host();
    push(&busybox_image(), &host, "busybox:latest");
    let store = TestStore::new();
    let home = tempfile::tempdir().unwrap();
    for reference in [
        format!("{host}/nothing-here"),
        format!("{host}/busybox:nope"),
    ] {
        let out = husk(
            &store,
            home.path(),
            &["pull", "--insecure-registry", &host, &reference],
        );
        let err = failed(&out, &reference);
        assert!(err.contains("not found in"), "{err}");
    }
    let closed = format!("127.0.0.1:{}", registry::free_port());
    let out = husk(
        &store,
        home.path(),
        &[
            "pull",
            "--insecure-registry",
            &closed,
            &format!("{closed}/busybox"),
        ],
    );
    let err = failed(&out, "pull from a closed port");
    assert!(
        err.contains(&format!("cannot reach registry {closed}")),
        "{err}"
    );
    // Without --insecure-registry, a plain-HTTP registry is not spoken to
    // in plain text: TLS fails.
    let out = husk(&store, home.path(), &["pull", &format!("{host}/busybox")]);
    let err = failed(&out, "pull without --insecure-registry");
    assert!(err.contains("cannot reach registry"), "{err}");
    assert_eq!(layer_count(&store), 0);
}

#[test]
fn a_tampered_blob_is_refused_and_nothing_of_it_kept() {
    need_registry!();
    let storage = tempfile::tempdir().unwrap();
    let registry = Registry::plain(storage.path());
    let host = registry.host();
    let image = busybox_image();
    push(&image, &host, "busybox:latest");
    // Same size, one byte different, in the registry's own storage.
    let base = &image.layers[0];
    let data = registry.blob_data(&base.digest);
    let mut bytes = std::fs::read(&data).expect("the registry stored the blob");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x55;
    std::fs::write(&data, &bytes).unwrap();

    let store = TestStore::new();
    let home = tempfile::tempdir().unwrap();
    let out = husk(
        &store,
        home.path(),
        &[
            "pull",
            "--insecure-registry",
            &host,
            &format!("{host}/busybox"),
        ],
    );
    let err = failed(&out, "pull of a tampered blob");
    assert!(err.contains(&base.digest), "{err}");
    assert!(err.contains("does not match its digest"), "{err}");
    let hex = base.digest.trim_start_matches("sha256:");
    let kept: Vec<String> = downloads(&store)
        .into_iter()
        .filter(|n| n.starts_with(hex))
        .collect();
    assert!(kept.is_empty(), "kept: {kept:?}");
    assert_eq!(layer_count(&store), 0);
    assert!(!ok(&store.husk(&["image", "ls"]), "ls").contains("busybox"));
}

#[test]
fn an_interrupted_pull_resumes_and_ends_verified() {
    need_registry!();
    let storage = tempfile::tempdir().unwrap();
    let mut registry = Registry::plain(storage.path());
    let host = registry.host();
    let image = big_image(48 << 20);
    registry::push_raw(&host, "big", "latest", &image);

    // The client goes through a relay that stops the big blob after 8 MiB;
    // then the registry is killed, as a crash mid-blob.
    let relay = Relay::start(registry.config.port, 8 << 20);
    let via = format!("127.0.0.1:{}", relay.port);
    let store = TestStore::new();
    let home = tempfile::tempdir().unwrap();
    let child = Command::new(&store.husk)
        .arg("--store")
        .arg(store.root())
        // One blob at a time: the small base layer is complete before the
        // big one starts.
        .args([
            "pull",
            "--max-concurrent-downloads",
            "1",
            "--insecure-registry",
            &via,
            &format!("{via}/big"),
        ])
        .env("HOME", home.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let passed = relay
        .cut
        .recv_timeout(PULL_TIMEOUT)
        .expect("the relay saw the big blob");
    registry.kill();
    relay.release();
    let out = wait_with_timeout(child, PULL_TIMEOUT, &["pull", "big"]);
    let err = failed(&out, "interrupted pull");
    assert!(
        err.contains("interrupted") || err.contains("cannot reach"),
        "{err}"
    );
    let big = &image.layers[1];
    let partial = store.root().join("tmp/downloads").join(format!(
        "{}.partial",
        big.digest.trim_start_matches("sha256:")
    ));
    let kept = std::fs::metadata(&partial)
        .expect("the partial blob is kept")
        .len();
    assert!(
        kept > 0 && kept <= passed,
        "kept {kept} of {passed} relayed bytes"
    );
    // Nothing is built before every blob is here; the small base layer's
    // blob is complete and verified, kept for the next pull.
    assert_eq!(layer_count(&store), 0);
    let base_hex = image.layers[0].digest.trim_start_matches("sha256:");
    assert!(
        downloads(&store).iter().any(|n| n == base_hex),
        "{:?}",
        downloads(&store)
    );

    // The registry comes back; the pull resumes where it stopped.
    registry.restart();
    relay.disarm();
    let out = husk(
        &store,
        home.path(),
        &[
            "pull",
            "--json",
            "--insecure-registry",
            &via,
            &format!("{via}/big"),
        ],
    );
    let report: serde_json::Value = serde_json::from_str(&ok(&out, "resumed pull")).unwrap();
    assert_eq!(report["id"], image.id.as_str());
    assert_eq!(report["resumed_bytes"], kept, "{report}");
    assert_eq!(report["downloaded_bytes"], big.blob.len() as u64 - kept);
    assert!(downloads(&store).is_empty(), "{:?}", downloads(&store));
    // Verified: the layer was built from exactly the blob's bytes.
    let inspect = store.inspect(&format!("{via}/big"));
    assert_eq!(inspect["layers"][1]["diff_id"], big.diff_id.as_str());
}

#[test]
fn tls_registry_with_basic_auth() {
    need_registry!();
    let dir = tempfile::tempdir().unwrap();
    let tls = registry::make_tls(dir.path());
    let htpasswd = registry::make_htpasswd(dir.path(), "husk", "s3cret");
    let storage = dir.path().join("storage");
    let registry = Registry::start(registry::RegistryConfig {
        storage: storage.clone(),
        port: registry::free_port(),
        tls: Some((tls.cert.clone(), tls.key.clone())),
        htpasswd: Some(htpasswd),
        token: None,
    });
    let host = registry.host();
    let image = busybox_image();
    let layout_dir = tempfile::tempdir().unwrap();
    let layout = layout_dir.path().join("layout");
    fixtures::write(std::slice::from_ref(&image), Format::OciDir, &layout).unwrap();
    // skopeo's cert dir holds CA certificates (*.crt) only.
    let certs = dir.path().join("certs");
    std::fs::create_dir(&certs).unwrap();
    std::fs::copy(&tls.ca_cert, certs.join("ca.crt")).unwrap();
    registry::skopeo(&[
        "copy",
        "--dest-creds",
        "husk:s3cret",
        "--dest-cert-dir",
        certs.to_str().unwrap(),
        &format!("oci:{}:latest", layout.display()),
        &format!("docker://{host}/private/busybox:latest"),
    ]);
    let reference = format!("{host}/private/busybox");
    let ca = tls.ca_cert.to_str().unwrap();
    let store = TestStore::new();
    let home = tempfile::tempdir().unwrap();

    // Without the CA: the certificate is not trusted.
    let err = failed(
        &husk(&store, home.path(), &["pull", &reference]),
        "pull without CA",
    );
    assert!(
        err.contains("cannot reach registry") && err.to_lowercase().contains("certificate"),
        "{err}"
    );
    // With the CA but no credentials, then wrong ones: unauthorized.
    let err = failed(
        &husk(&store, home.path(), &["pull", "--ca-file", ca, &reference]),
        "anonymous pull",
    );
    assert!(err.contains("unauthorized"), "{err}");
    let out = husk(
        &store,
        home.path(),
        &["login", "--ca-file", ca, "-u", "husk", "-p", "wrong", &host],
    );
    let err = failed(&out, "login with a wrong password");
    assert!(err.contains("unauthorized"), "{err}");
    let auth_file = home.path().join(".config/husk/auth.json");
    assert!(!auth_file.exists(), "refused credentials were stored");
    // Wrong credentials on file are refused by the registry too.
    let docker_dir = home.path().join(".docker");
    std::fs::create_dir_all(&docker_dir).unwrap();
    let encode = |s: &str| {
        let out = Command::new("base64")
            .arg("-w0")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        let mut child = out;
        child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
        text(&child.wait_with_output().unwrap().stdout)
    };
    let docker_config = docker_dir.join("config.json");
    std::fs::write(
        &docker_config,
        format!(
            r#"{{"auths":{{"{host}":{{"auth":"{}"}}}}}}"#,
            encode("husk:nope")
        ),
    )
    .unwrap();
    let err = failed(
        &husk(&store, home.path(), &["pull", "--ca-file", ca, &reference]),
        "pull with wrong credentials",
    );
    assert!(err.contains("unauthorized"), "{err}");
    // Docker's own file is read when husk has none.
    std::fs::write(
        &docker_config,
        format!(
            r#"{{"auths":{{"{host}":{{"auth":"{}"}}}}}}"#,
            encode("husk:s3cret")
        ),
    )
    .unwrap();
    let out = husk(
        &store,
        home.path(),
        &["pull", "--json", "--ca-file", ca, &reference],
    );
    let report: serde_json::Value =
        serde_json::from_str(&ok(&out, "pull with docker's credentials")).unwrap();
    assert_eq!(report["id"], image.id.as_str());
    std::fs::remove_file(&docker_config).unwrap();

    // husk login checks and stores them (0600); a new store pulls with them.
    let out = husk(
        &store,
        home.path(),
        &[
            "login",
            "--ca-file",
            ca,
            "-u",
            "husk",
            "--password-stdin",
            &host,
        ],
    );
    // --password-stdin with stdin closed reads an empty password: refused.
    failed(&out, "login with an empty password");
    let mut child = Command::new(&store.husk)
        .args([
            "login",
            "--ca-file",
            ca,
            "-u",
            "husk",
            "--password-stdin",
            &host,
        ])
        .env("HOME", home.path())
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("HUSK_AUTH_FILE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(b"s3cret\n").unwrap();
    }
    ok(&wait_with_timeout(child, PULL_TIMEOUT, &["login"]), "login");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&auth_file)
        .expect("credentials stored")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let fresh = TestStore::new();
    let out = husk(
        &fresh,
        home.path(),
        &["pull", "--json", "--ca-file", ca, &reference],
    );
    let report: serde_json::Value = serde_json::from_str(&ok(&out, "pull after login")).unwrap();
    assert_eq!(report["id"], image.id.as_str());
    assert_eq!(report["fetched_layers"], 3);
    ok(&husk(&fresh, home.path(), &["logout", &host]), "logout");
    let err = failed(
        &husk(
            &TestStore::new(),
            home.path(),
            &["pull", "--ca-file", ca, &reference],
        ),
        "pull after logout",
    );
    assert!(err.contains("unauthorized"), "{err}");
}

/// A registry with bearer-token auth (its WWW-Authenticate challenge names
/// a token server, as Docker Hub's does): husk gets a token for its basic
/// credentials, pulls and pushes with it; without or with wrong credentials
/// it is refused, and `husk login` checks them against the token server.
#[test]
fn bearer_token_registry() {
    need_registry!();
    let dir = tempfile::tempdir().unwrap();
    let tls = registry::make_tls(dir.path());
    let tokens =
        registry::TokenServer::start(&tls.ca_cert, &dir.path().join("ca.key"), "husk", "t0ken");
    let registry = Registry::start(registry::RegistryConfig {
        storage: dir.path().join("storage"),
        port: registry::free_port(),
        tls: None,
        htpasswd: None,
        token: Some((tokens.realm(), tls.ca_cert.clone())),
    });
    let host = registry.host();
    let image = busybox_image();
    let layout_dir = tempfile::tempdir().unwrap();
    let layout = layout_dir.path().join("layout");
    fixtures::write(std::slice::from_ref(&image), Format::OciDir, &layout).unwrap();
    registry::skopeo(&[
        "copy",
        "--dest-creds",
        "husk:t0ken",
        "--dest-tls-verify=false",
        &format!("oci:{}:latest", layout.display()),
        &format!("docker://{host}/private/busybox:latest"),
    ]);
    let reference = format!("{host}/private/busybox");
    let store = TestStore::new();
    let home = tempfile::tempdir().unwrap();
    let pull_args = ["pull", "--json", "--insecure-registry", &host, &reference];

    let err = failed(&husk(&store, home.path(), &pull_args), "anonymous pull");
    assert!(err.contains("unauthorized"), "{err}");
    let out = husk(
        &store,
        home.path(),
        &[
            "login",
            "--insecure-registry",
            &host,
            "-u",
            "husk",
            "-p",
            "wrong",
            &host,
        ],
    );
    let err = failed(&out, "login with a wrong password");
    assert!(
        err.contains("unauthorized") && err.contains("token request refused"),
        "{err}"
    );
    ok(
        &husk(
            &store,
            home.path(),
            &[
                "login",
                "--insecure-registry",
                &host,
                "-u",
                "husk",
                "-p",
                "t0ken",
                &host,
            ],
        ),
        "login",
    );
    let report: serde_json::Value = serde_json::from_str(&ok(
        &husk(&store, home.path(), &pull_args),
        "pull with a token",
    ))
    .unwrap();
    assert_eq!(report["id"], image.id.as_str());
    assert_eq!(report["fetched_layers"], 3);
    // A push asks for a pull,push token.
    let out = husk(
        &store,
        home.path(),
        &[
            "push",
            "--json",
            "--insecure-registry",
            &host,
            &reference,
            &format!("{host}/private/copy:1"),
        ],
    );
    let pushed: serde_json::Value = serde_json::from_str(&ok(&out, "push with a token")).unwrap();
    assert_eq!(pushed["manifest_digest"], report["manifest_digest"]);
}
