//! Test images built from Debian's busybox-static, byte for byte
//! reproducible: layer tars with fixed times and owners, compressed with
//! gzip, zstd or not at all, written as an OCI image layout (directory or
//! tar) or a `docker save` archive (legacy `<id>/layer.tar` layout).
//!
//! The `busybox` image (also the README demo's, via `husk-fixtures`) has
//! three layers:
//! 1. (gzip) busybox and a symlink per applet in /bin, /etc/passwd and
//!    /etc/group (root, nobody, user 1000), /tmp, /root, /home/user, ...;
//! 2. (zstd) /etc/motd, a doc file and a hard link to it, /var/lib/todelete,
//!    /opt/data/{a,b,sub/c}, a fifo and a character device;
//! 3. (plain) deletes /var/lib/todelete (whiteout), makes /opt/data opaque
//!    and adds /opt/data/new, adds /etc/release.

use sha2::{Digest as _, Sha256};
use std::fs;
use std::io::{self, Write};
use std::path::Path;

/// Every timestamp in the fixtures.
pub const MTIME: u64 = 1_700_000_000;
pub const BUSYBOX: &str = "/bin/busybox";

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(bytes))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    pub fn media_type(self) -> &'static str {
        match self {
            Compression::None => "application/vnd.oci.image.layer.v1.tar",
            Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }

    pub fn compress(self, tar: &[u8]) -> Vec<u8> {
        match self {
            Compression::None => tar.to_vec(),
            Compression::Gzip => {
                let mut encoder = flate2::GzBuilder::new()
                    .mtime(0)
                    .write(Vec::new(), flate2::Compression::default());
                encoder.write_all(tar).expect("gzip into memory");
                encoder.finish().expect("gzip into memory")
            }
            Compression::Zstd => zstd::stream::encode_all(tar, 3).expect("zstd into memory"),
        }
    }
}

/// One entry of a layer tar.
#[derive(Debug, Clone)]
pub enum Node {
    Dir {
        path: String,
        mode: u32,
        owner: u32,
    },
    File {
        path: String,
        data: Vec<u8>,
        mode: u32,
        owner: u32,
    },
    Symlink {
        path: String,
        target: String,
    },
    HardLink {
        path: String,
        target: String,
    },
    CharDevice {
        path: String,
        major: u32,
        minor: u32,
        mode: u32,
    },
    Fifo {
        path: String,
        mode: u32,
    },
    /// `.wh.<name>` next to the deleted path.
    Whiteout {
        path: String,
    },
    /// `.wh..wh..opq` inside the directory.
    Opaque {
        dir: String,
    },
}

pub fn dir(path: &str, mode: u32) -> Node {
    Node::Dir {
        path: path.into(),
        mode,
        owner: 0,
    }
}
pub fn file(path: &str, data: &[u8], mode: u32) -> Node {
    Node::File {
        path: path.into(),
        data: data.to_vec(),
        mode,
        owner: 0,
    }
}
pub fn symlink(path: &str, target: &str) -> Node {
    Node::Symlink {
        path: path.into(),
        target: target.into(),
    }
}
pub fn hardlink(path: &str, target: &str) -> Node {
    Node::HardLink {
        path: path.into(),
        target: target.into(),
    }
}

/// A tar of the nodes, in order, with fixed times; `./`-prefixed names as
/// `docker save` writes them.
pub fn layer_tar(nodes: &[Node]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    builder.mode(tar::HeaderMode::Deterministic);
    for node in nodes {
        let mut header = tar::Header::new_gnu();
        header.set_mtime(MTIME);
        header.set_uid(0);
        header.set_gid(0);
        header.set_size(0);
        let (path, data): (String, &[u8]) = match node {
            Node::Dir { path, mode, owner } => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(*mode);
                header.set_uid(u64::from(*owner));
                header.set_gid(u64::from(*owner));
                (format!("{}/", path.trim_end_matches('/')), &[])
            }
            Node::File {
                path,
                data,
                mode,
                owner,
            } => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(*mode);
                header.set_uid(u64::from(*owner));
                header.set_gid(u64::from(*owner));
                header.set_size(data.len() as u64);
                (path.clone(), data)
            }
            Node::Symlink { path, target } => {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_mode(0o777);
                header.set_link_name(target).expect("symlink target fits");
                (path.clone(), &[])
            }
            Node::HardLink { path, target } => {
                header.set_entry_type(tar::EntryType::Link);
                header.set_mode(0o644);
                header
                    .set_link_name(format!("./{}", target.trim_start_matches('/')))
                    .expect("link target fits");
                (path.clone(), &[])
            }
            Node::CharDevice {
                path,
                major,
                minor,
                mode,
            } => {
                header.set_entry_type(tar::EntryType::Char);
                header.set_mode(*mode);
                header
                    .set_device_major(*major)
                    .expect("gnu header has device fields");
                header
                    .set_device_minor(*minor)
                    .expect("gnu header has device fields");
                (path.clone(), &[])
            }
            Node::Fifo { path, mode } => {
                header.set_entry_type(tar::EntryType::Fifo);
                header.set_mode(*mode);
                (path.clone(), &[])
            }
            Node::Whiteout { path } => {
                let (parent, name) = path.rsplit_once('/').unwrap_or(("", path));
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(0o644);
                (format!("{parent}/.wh.{name}"), &[])
            }
            Node::Opaque { dir } => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(0o644);
                (format!("{}/.wh..wh..opq", dir.trim_end_matches('/')), &[])
            }
        };
        let name = format!("./{}", path.trim_start_matches('/'));
        builder
            .append_data(&mut header, name, data)
            .expect("tar into memory");
    }
    builder.into_inner().expect("tar into memory")
}

#[derive(Debug, Clone)]
pub struct LayerSpec {
    pub nodes: Vec<Node>,
    pub compression: Compression,
}

#[derive(Debug, Clone)]
pub struct ImageSpec {
    /// `busybox:latest`; `None` for an untagged image.
    pub name: Option<String>,
    pub layers: Vec<LayerSpec>,
    pub cmd: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct BuiltLayer {
    /// The uncompressed tar (its sha256 is the diff ID).
    pub tar: Vec<u8>,
    /// The blob as stored in an OCI layout (compressed per `compression`).
    pub blob: Vec<u8>,
    pub compression: Compression,
    /// What the config and manifest say; tests may set these to lie.
    pub media_type: String,
    pub diff_id: String,
    pub digest: String,
}

impl BuiltLayer {
    pub fn new(tar: Vec<u8>, compression: Compression) -> Self {
        let blob = compression.compress(&tar);
        BuiltLayer {
            diff_id: sha256_digest(&tar),
            digest: sha256_digest(&blob),
            media_type: compression.media_type().to_string(),
            tar,
            blob,
            compression,
        }
    }
}

#[derive(Debug, Clone)]
pub struct BuiltImage {
    pub name: Option<String>,
    pub cmd: Vec<String>,
    pub config: Vec<u8>,
    /// Image ID: the config's digest.
    pub id: String,
    pub manifest: Vec<u8>,
    pub manifest_digest: String,
    pub layers: Vec<BuiltLayer>,
}

impl BuiltImage {
    pub fn from_layers(name: Option<&str>, layers: Vec<BuiltLayer>, cmd: Vec<String>) -> Self {
        let mut image = BuiltImage {
            name: name.map(String::from),
            cmd,
            config: Vec::new(),
            id: String::new(),
            manifest: Vec::new(),
            manifest_digest: String::new(),
            layers,
        };
        image.refresh();
        image
    }

    /// Rewrites the config and manifest from the layers' fields (as they
    /// are, so a test can make them lie).
    pub fn refresh(&mut self) {
        let layers = &self.layers;
        self.config = serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "created": "2023-11-14T22:13:20Z",
            "config": {
                "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                "Cmd": self.cmd,
                "WorkingDir": "/",
            },
            "rootfs": {
                "type": "layers",
                "diff_ids": layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>(),
            },
            "history": layers.iter().enumerate().map(|(i, _)| serde_json::json!({
                "created": "2023-11-14T22:13:20Z",
                "created_by": format!("husk-fixtures layer {}", i + 1),
            })).collect::<Vec<_>>(),
        }))
        .expect("config JSON");
        self.manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": { "mediaType": OCI_CONFIG, "digest": sha256_digest(&self.config), "size": self.config.len() },
            "layers": layers.iter().map(|l| serde_json::json!({
                "mediaType": l.media_type,
                "digest": l.digest,
                "size": l.blob.len(),
            })).collect::<Vec<_>>(),
        }))
        .expect("manifest JSON");
        self.id = sha256_digest(&self.config);
        self.manifest_digest = sha256_digest(&self.manifest);
    }
}

pub fn build(spec: &ImageSpec) -> BuiltImage {
    let layers = spec
        .layers
        .iter()
        .map(|layer| BuiltLayer::new(layer_tar(&layer.nodes), layer.compression))
        .collect();
    BuiltImage::from_layers(spec.name.as_deref(), layers, spec.cmd.clone())
}

/// A tar entry written with a raw header, so it can be anything a hostile
/// archive may hold (`tar::Builder` refuses `..` and absolute names).
#[derive(Debug, Clone)]
pub struct RawEntry {
    pub name: Vec<u8>,
    pub kind: tar::EntryType,
    pub data: Vec<u8>,
    pub link: Vec<u8>,
    /// Size to claim in the header (defaults to the data's length).
    pub claimed_size: Option<u64>,
}

impl RawEntry {
    pub fn file(name: &str, data: &[u8]) -> Self {
        RawEntry {
            name: name.into(),
            kind: tar::EntryType::Regular,
            data: data.to_vec(),
            link: Vec::new(),
            claimed_size: None,
        }
    }
    pub fn dir(name: &str) -> Self {
        RawEntry {
            name: name.into(),
            kind: tar::EntryType::Directory,
            data: Vec::new(),
            link: Vec::new(),
            claimed_size: None,
        }
    }
    pub fn symlink(name: &str, target: &str) -> Self {
        RawEntry {
            name: name.into(),
            kind: tar::EntryType::Symlink,
            data: Vec::new(),
            link: target.into(),
            claimed_size: None,
        }
    }
    pub fn hardlink(name: &str, target: &str) -> Self {
        RawEntry {
            name: name.into(),
            kind: tar::EntryType::Link,
            data: Vec::new(),
            link: target.into(),
            claimed_size: None,
        }
    }
}

pub fn raw_tar(entries: &[RawEntry]) -> Vec<u8> {
    let mut out = Vec::new();
    for entry in entries {
        let mut header = tar::Header::new_gnu();
        let old = header.as_old_mut();
        let name_len = entry.name.len().min(old.name.len());
        old.name[..name_len].copy_from_slice(&entry.name[..name_len]);
        let link_len = entry.link.len().min(old.linkname.len());
        old.linkname[..link_len].copy_from_slice(&entry.link[..link_len]);
        header.set_entry_type(entry.kind);
        header.set_size(entry.claimed_size.unwrap_or(entry.data.len() as u64));
        header.set_mode(if entry.kind.is_dir() { 0o755 } else { 0o644 });
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(MTIME);
        header.set_cksum();
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(&entry.data);
        let padding = (512 - entry.data.len() % 512) % 512;
        out.extend_from_slice(&vec![0u8; padding]);
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

/// The files of an OCI image layout, in a fixed order.
pub fn oci_layout_files(images: &[BuiltImage]) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = vec![(
        "oci-layout".into(),
        br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
    )];
    let manifests: Vec<serde_json::Value> = images
        .iter()
        .map(|image| {
            let mut descriptor = serde_json::json!({
                "mediaType": OCI_MANIFEST,
                "digest": image.manifest_digest,
                "size": image.manifest.len(),
            });
            if let Some(name) = &image.name {
                let tag = name.rsplit_once(':').map_or("latest", |(_, t)| t);
                descriptor["annotations"] = serde_json::json!({
                    "io.containerd.image.name": format!("docker.io/library/{name}"),
                    "org.opencontainers.image.ref.name": tag,
                });
            }
            descriptor
        })
        .collect();
    let index =
        serde_json::json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests });
    files.push((
        "index.json".into(),
        serde_json::to_vec(&index).expect("index JSON"),
    ));
    let mut blobs: Vec<(String, Vec<u8>)> = Vec::new();
    for image in images {
        blobs.push((image.manifest_digest.clone(), image.manifest.clone()));
        blobs.push((image.id.clone(), image.config.clone()));
        for layer in &image.layers {
            blobs.push((layer.digest.clone(), layer.blob.clone()));
        }
    }
    blobs.sort_by(|a, b| a.0.cmp(&b.0));
    blobs.dedup_by(|a, b| a.0 == b.0);
    for (digest, bytes) in blobs {
        files.push((
            format!("blobs/sha256/{}", digest.trim_start_matches("sha256:")),
            bytes,
        ));
    }
    files
}

/// The files of a legacy `docker save` archive: `<id>/layer.tar`
/// (uncompressed), `<config hex>.json`, `manifest.json`, `repositories`.
pub fn docker_archive_files(images: &[BuiltImage]) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    let mut manifest = Vec::new();
    let mut repositories = serde_json::Map::new();
    for image in images {
        let config_name = format!("{}.json", image.id.trim_start_matches("sha256:"));
        files.push((config_name.clone(), image.config.clone()));
        let mut layer_paths = Vec::new();
        for layer in &image.layers {
            let id = layer.diff_id.trim_start_matches("sha256:").to_string();
            files.push((format!("{id}/VERSION"), b"1.0".to_vec()));
            files.push((format!("{id}/layer.tar"), layer.tar.clone()));
            layer_paths.push(format!("{id}/layer.tar"));
        }
        let tags: Vec<String> = image.name.iter().cloned().collect();
        if let (Some(name), Some(top)) = (&image.name, layer_paths.last()) {
            let (repo, tag) = name.rsplit_once(':').unwrap_or((name, "latest"));
            let top_id = top.trim_end_matches("/layer.tar").to_string();
            repositories.insert(repo.to_string(), serde_json::json!({ tag: top_id }));
        }
        manifest.push(
            serde_json::json!({ "Config": config_name, "RepoTags": tags, "Layers": layer_paths }),
        );
    }
    files.sort_by(|a, b| a.0.cmp(&b.0));
    files.dedup_by(|a, b| a.0 == b.0);
    files.push((
        "manifest.json".into(),
        serde_json::to_vec(&manifest).expect("manifest JSON"),
    ));
    files.push((
        "repositories".into(),
        serde_json::to_vec(&repositories).expect("repositories JSON"),
    ));
    files
}

pub fn write_dir(files: &[(String, Vec<u8>)], dir: &Path) -> io::Result<()> {
    for (name, bytes) in files {
        let path = dir.join(name);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::write(path, bytes)?;
    }
    Ok(())
}

/// A tar of the files (and their directories), deterministic.
pub fn tar_bytes(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut dirs_done: Vec<String> = Vec::new();
    for (name, bytes) in files {
        let mut prefix = String::new();
        let parts: Vec<&str> = name.split('/').collect();
        for part in &parts[..parts.len() - 1] {
            prefix = if prefix.is_empty() {
                part.to_string()
            } else {
                format!("{prefix}/{part}")
            };
            if !dirs_done.contains(&prefix) {
                let mut header = tar::Header::new_gnu();
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(0o755);
                header.set_mtime(MTIME);
                header.set_size(0);
                builder
                    .append_data(&mut header, format!("{prefix}/"), &[][..])
                    .expect("tar into memory");
                dirs_done.push(prefix.clone());
            }
        }
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_mode(0o644);
        header.set_mtime(MTIME);
        header.set_size(bytes.len() as u64);
        builder
            .append_data(&mut header, name, bytes.as_slice())
            .expect("tar into memory");
    }
    builder.into_inner().expect("tar into memory")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Docker,
    Oci,
    OciDir,
}

/// Writes images as an archive of the given format at `out`.
pub fn write(images: &[BuiltImage], format: Format, out: &Path) -> io::Result<()> {
    match format {
        Format::Docker => fs::write(out, tar_bytes(&docker_archive_files(images))),
        Format::Oci => fs::write(out, tar_bytes(&oci_layout_files(images))),
        Format::OciDir => {
            fs::create_dir_all(out)?;
            write_dir(&oci_layout_files(images), out)
        }
    }
}

const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n\
user:x:1000:1000:user:/home/user:/bin/sh\n";
const GROUP: &str = "root:x:0:\nnogroup:x:65534:\nuser:x:1000:\n";

/// Applet names of the installed busybox (`busybox --list`), sorted.
fn applets() -> io::Result<Vec<String>> {
    let output = std::process::Command::new(BUSYBOX).arg("--list").output()?;
    if !output.status.success() {
        return Err(io::Error::other("busybox --list failed"));
    }
    let mut applets: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::trim)
        .filter(|a| !a.is_empty() && *a != "busybox" && !a.contains('/'))
        .map(String::from)
        .collect();
    applets.sort();
    applets.dedup();
    Ok(applets)
}

/// Layer 1: busybox, its applets, the base filesystem tree.
pub fn busybox_base_layer(compression: Compression) -> io::Result<LayerSpec> {
    let busybox = fs::read(BUSYBOX)?;
    let mut nodes = vec![
        dir("/", 0o755),
        dir("/bin", 0o755),
        file("/bin/busybox", &busybox, 0o755),
    ];
    for applet in applets()? {
        nodes.push(symlink(&format!("/bin/{applet}"), "busybox"));
    }
    nodes.extend([
        dir("/dev", 0o755),
        dir("/etc", 0o755),
        file("/etc/passwd", PASSWD.as_bytes(), 0o644),
        file("/etc/group", GROUP.as_bytes(), 0o644),
        file("/etc/hostname", b"husk\n", 0o644),
        Node::Dir {
            path: "/home".into(),
            mode: 0o755,
            owner: 0,
        },
        Node::Dir {
            path: "/home/user".into(),
            mode: 0o750,
            owner: 1000,
        },
        Node::File {
            path: "/home/user/.profile".into(),
            data: b"export PS1='$ '\n".to_vec(),
            mode: 0o640,
            owner: 1000,
        },
        dir("/proc", 0o555),
        dir("/root", 0o700),
        dir("/sys", 0o555),
        dir("/tmp", 0o1777),
        dir("/usr", 0o755),
        dir("/usr/bin", 0o755),
        symlink("/usr/bin/env", "/bin/busybox"),
        dir("/var", 0o755),
        dir("/var/lib", 0o755),
    ]);
    Ok(LayerSpec { nodes, compression })
}

/// Layer 2: files, a hard link, a file deleted later, a directory made
/// opaque later, a fifo and a character device.
pub fn busybox_second_layer(compression: Compression) -> LayerSpec {
    LayerSpec {
        compression,
        nodes: vec![
            file("/etc/motd", b"Welcome to a husk microVM.\n", 0o644),
            dir("/usr/share", 0o755),
            dir("/usr/share/doc", 0o755),
            dir("/usr/share/doc/husk", 0o755),
            file("/usr/share/doc/husk/README", b"husk test image\n", 0o644),
            hardlink(
                "/usr/share/doc/husk/README.link",
                "/usr/share/doc/husk/README",
            ),
            file("/var/lib/todelete", b"deleted by layer 3\n", 0o600),
            dir("/opt", 0o755),
            dir("/opt/data", 0o755),
            file("/opt/data/a", b"a\n", 0o644),
            file("/opt/data/b", b"b\n", 0o4755),
            dir("/opt/data/sub", 0o700),
            file("/opt/data/sub/c", b"c\n", 0o644),
            dir("/opt/dev", 0o755),
            Node::CharDevice {
                path: "/opt/dev/null".into(),
                major: 1,
                minor: 3,
                mode: 0o666,
            },
            Node::Fifo {
                path: "/opt/dev/fifo".into(),
                mode: 0o620,
            },
        ],
    }
}

/// Layer 3: a whiteout, an opaque directory with new content, a new file.
pub fn busybox_third_layer(compression: Compression) -> LayerSpec {
    LayerSpec {
        compression,
        nodes: vec![
            Node::Whiteout {
                path: "/var/lib/todelete".into(),
            },
            dir("/opt/data", 0o755),
            Node::Opaque {
                dir: "/opt/data".into(),
            },
            file("/opt/data/new", b"new in layer 3\n", 0o644),
            file("/etc/release", b"husk-fixtures 1\n", 0o644),
        ],
    }
}

/// The three-layer busybox image (gzip, zstd, plain).
pub fn busybox(name: Option<&str>) -> io::Result<ImageSpec> {
    Ok(ImageSpec {
        name: name.map(String::from),
        layers: vec![
            busybox_base_layer(Compression::Gzip)?,
            busybox_second_layer(Compression::Zstd),
            busybox_third_layer(Compression::None),
        ],
        cmd: vec!["sh".into()],
    })
}

/// An image sharing busybox's base layer with one different layer on top.
pub fn busybox_derived(name: Option<&str>, marker: &str) -> io::Result<ImageSpec> {
    Ok(ImageSpec {
        name: name.map(String::from),
        layers: vec![
            busybox_base_layer(Compression::Gzip)?,
            LayerSpec {
                compression: Compression::Zstd,
                nodes: vec![file("/etc/derived", marker.as_bytes(), 0o644)],
            },
        ],
        cmd: vec!["cat".into(), "/etc/derived".into()],
    })
}

/// ChainID(L1) = DiffID(L1); ChainID(Ln) = sha256(ChainID(Ln-1) + " " + DiffID(Ln)).
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut chain: Vec<String> = Vec::new();
    for diff_id in diff_ids {
        let next = match chain.last() {
            None => diff_id.clone(),
            Some(parent) => sha256_digest(format!("{parent} {diff_id}").as_bytes()),
        };
        chain.push(next);
    }
    chain
}

// ---------------------------------------------------------------------------
// Helpers for the image end-to-end tests: a husk store in a temp dir, a
// listing of it to compare, and mounts that are always undone.

/// A scratch image store driven through the real `husk` binary.
pub struct TestStore {
    pub dir: tempfile::TempDir,
    pub husk: std::path::PathBuf,
}

impl TestStore {
    pub fn new() -> Self {
        TestStore {
            dir: tempfile::tempdir().expect("temp dir"),
            husk: crate::bin("husk"),
        }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// Runs `husk --store <dir> ARGS`.
    pub fn husk(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new(&self.husk)
            .arg("--store")
            .arg(self.dir.path())
            .args(args)
            .output()
            .expect("running husk")
    }

    /// Runs husk and requires success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.husk(args);
        assert!(
            out.status.success(),
            "husk {args:?} failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn import(&self, archive: &Path, extra: &[&str]) -> serde_json::Value {
        let path = archive.to_str().expect("UTF-8 path");
        let mut args = vec!["image", "import", "--json", path];
        args.extend_from_slice(extra);
        serde_json::from_str(&self.ok(&args)).expect("import --json output")
    }

    pub fn inspect(&self, name: &str) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["image", "inspect", "--json", name]))
            .expect("inspect --json output")
    }

    /// Every entry under the store: path, kind, size (and, for files, a
    /// content hash), sorted. `locks/` only ever holds empty lock files,
    /// which are bookkeeping and left out (checked to be empty).
    pub fn listing(&self) -> Vec<String> {
        let mut entries = Vec::new();
        let mut pending = vec![self.root().to_path_buf()];
        while let Some(dir) = pending.pop() {
            for entry in fs::read_dir(&dir).expect("read store dir") {
                let entry = entry.expect("dir entry");
                let path = entry.path();
                let relative = path
                    .strip_prefix(self.root())
                    .expect("under root")
                    .display()
                    .to_string();
                let meta = fs::symlink_metadata(&path).expect("stat");
                if relative.starts_with("locks/") {
                    assert!(
                        meta.is_file() && meta.len() == 0,
                        "unexpected entry in locks/: {relative}"
                    );
                    continue;
                }
                if meta.is_dir() {
                    entries.push(format!("{relative}/ dir"));
                    pending.push(path);
                } else {
                    let hash = if meta.is_file() {
                        sha256_hex(&fs::read(&path).expect("read"))
                    } else {
                        String::new()
                    };
                    entries.push(format!("{relative} {} {hash}", meta.len()));
                }
            }
        }
        entries.sort();
        entries
    }
}

impl Default for TestStore {
    fn default() -> Self {
        Self::new()
    }
}

/// Why this host cannot mount erofs images and overlayfs, if it cannot.
pub fn mount_unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("mounting needs root".into());
    }
    let filesystems = fs::read_to_string("/proc/filesystems").unwrap_or_default();
    for fs_name in ["erofs", "overlay"] {
        if !filesystems
            .lines()
            .any(|l| l.split_whitespace().last() == Some(fs_name))
        {
            return Some(format!(
                "the kernel has no {fs_name} support (modprobe {fs_name})"
            ));
        }
    }
    None
}

/// Why this host cannot import images (unpacking needs root for owners and
/// device nodes, and mkfs.erofs), if it cannot.
pub fn import_unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("importing images needs root (owners, device nodes, trusted xattrs)".into());
    }
    if std::process::Command::new("mkfs.erofs")
        .arg("--help")
        .output()
        .is_err()
    {
        return Some("mkfs.erofs is not installed (apt-get install erofs-utils)".into());
    }
    None
}

/// Mount points unmounted (in reverse order) when dropped, even when the
/// test fails.
#[derive(Default)]
pub struct Mounts {
    points: Vec<std::path::PathBuf>,
}

impl Mounts {
    pub fn erofs(&mut self, disk: &Path, target: &Path) -> io::Result<()> {
        fs::create_dir_all(target)?;
        self.mount(
            &["-t", "erofs", "-o", "ro,loop"],
            &[disk.as_os_str(), target.as_os_str()],
            target,
        )
    }

    /// Overlay of read-only lowers (top first), no upper.
    pub fn overlay(
        &mut self,
        lowers_top_first: &[std::path::PathBuf],
        target: &Path,
    ) -> io::Result<()> {
        fs::create_dir_all(target)?;
        let lowers: Vec<String> = lowers_top_first
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        let options = format!("ro,lowerdir={}", lowers.join(":"));
        self.mount(
            &["-t", "overlay", "-o", &options],
            &["overlay".as_ref(), target.as_os_str()],
            target,
        )
    }

    fn mount(
        &mut self,
        flags: &[&str],
        args: &[&std::ffi::OsStr],
        target: &Path,
    ) -> io::Result<()> {
        let out = std::process::Command::new("mount")
            .args(flags)
            .args(args)
            .output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "mount {flags:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        self.points.push(target.to_path_buf());
        Ok(())
    }
}

impl Drop for Mounts {
    fn drop(&mut self) {
        while let Some(point) = self.points.pop() {
            let ok = std::process::Command::new("umount")
                .arg(&point)
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                let _ = std::process::Command::new("umount")
                    .arg("-l")
                    .arg(&point)
                    .status();
            }
        }
    }
}
