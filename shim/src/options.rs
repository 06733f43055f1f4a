//! The shim's settings: where the guest kernel is, which backend runs the
//! VMs, default vCPUs and memory, where state and caches live.
//!
//! containerd hands a non-runc runtime its options as a
//! `runtimeoptions.v1.Options` message (`ConfigPath`, `ConfigBody`): from
//! the CRI plugin's `[...runtimes.husk.options]` table, or from
//! `ctr run --runtime-config-path FILE`. Either names a TOML file (or holds
//! its text) with the keys of [`ShimOptions`]. What the file leaves out
//! comes from the environment (`HUSK_KERNEL`, `HUSK_BACKEND`, `HUSK_STORE`,
//! as for `husk`), then from the defaults `husk check` implies (backend
//! `auto`: husk-vmm where KVM is ready, else QEMU).

use std::path::PathBuf;

use anyhow::{bail, Context};
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::CodedInputStream;
use husk::sandbox::select::BackendChoice;
use serde::Deserialize;

/// The type URL containerd gives runtime options of non-runc runtimes.
const RUNTIME_OPTIONS_TYPE: &str = "runtimeoptions.v1.Options";

/// Where a shim keeps containers and caches unless configured.
pub const DEFAULT_STATE_ROOT: &str = "/run/husk/containerd";
pub const DEFAULT_STORE: &str = "/var/lib/husk";

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShimOptions {
    /// Guest kernel (vmlinux).
    pub kernel: Option<PathBuf>,
    /// `auto`, `husk` or `qemu`.
    pub backend: Option<String>,
    /// vCPUs per VM (default 1; a CPU limit in the spec asks for more).
    pub vcpus: Option<u32>,
    /// Guest memory per VM in MiB when the spec sets no memory limit.
    pub memory_mib: Option<u32>,
    /// husk's store (initramfs and rootfs disk caches).
    pub store: Option<PathBuf>,
    /// Where container state lives (one directory per namespace below).
    pub state_root: Option<PathBuf>,
}

/// The options with every default filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub kernel: Option<PathBuf>,
    pub backend: BackendChoice,
    pub vcpus: u32,
    pub memory_mib: Option<u32>,
    pub store: PathBuf,
    pub state_root: PathBuf,
}

impl ShimOptions {
    /// Parses the TOML text of a configuration file.
    pub fn from_toml(text: &str, origin: &str) -> anyhow::Result<Self> {
        toml::from_str(text).with_context(|| format!("husk shim options in {origin}"))
    }

    /// Reads the options containerd attached to a task (none: defaults).
    pub fn from_any(any: Option<&Any>) -> anyhow::Result<Self> {
        let Some(any) = any.filter(|a| !a.type_url.is_empty() || !a.value.is_empty()) else {
            return Ok(Self::default());
        };
        let type_name = any.type_url.rsplit('/').next().unwrap_or("");
        if type_name != RUNTIME_OPTIONS_TYPE {
            bail!(
                "runtime options of type {:?}: husk takes {RUNTIME_OPTIONS_TYPE} (ConfigPath / ConfigBody)",
                any.type_url
            );
        }
        let (path, body) = decode_runtime_options(&any.value)?;
        if !body.is_empty() {
            return Self::from_toml(&body, "the runtime options' ConfigBody");
        }
        if path.is_empty() {
            return Ok(Self::default());
        }
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading husk shim options {path}"))?;
        Self::from_toml(&text, &path)
    }

    pub fn settings(&self, env: impl Fn(&str) -> Option<String>) -> anyhow::Result<Settings> {
        let backend_name = self
            .backend
            .clone()
            .or_else(|| env("HUSK_BACKEND"))
            .unwrap_or_else(|| "auto".into());
        let backend = match backend_name.as_str() {
            "auto" => BackendChoice::Auto,
            "husk" => BackendChoice::Husk,
            "qemu" => BackendChoice::Qemu,
            other => bail!("husk shim options: backend {other:?}: use auto, husk or qemu"),
        };
        if self.vcpus == Some(0) {
            bail!("husk shim options: vcpus must be at least 1");
        }
        if self.memory_mib.is_some_and(|m| m < 64) {
            bail!("husk shim options: memory_mib must be at least 64");
        }
        Ok(Settings {
            kernel: self.kernel.clone(),
            backend,
            vcpus: self.vcpus.unwrap_or(1),
            memory_mib: self.memory_mib,
            store: self
                .store
                .clone()
                .or_else(|| env("HUSK_STORE").map(PathBuf::from))
                .unwrap_or_else(|| PathBuf::from(DEFAULT_STORE)),
            state_root: self
                .state_root
                .clone()
                .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_ROOT)),
        })
    }
}

impl Settings {
    /// The state directory of a containerd namespace.
    pub fn namespace_root(&self, namespace: &str) -> PathBuf {
        self.state_root.join(namespace)
    }

    /// The cache of rootfs disks built from containerd snapshots.
    pub fn snapshot_cache(&self) -> PathBuf {
        self.store.join("containerd-snapshots")
    }
}

/// `runtimeoptions.v1.Options`: 1 type_url, 2 config_path, 3 config_body
/// (all strings). Decoded field by field with protobuf's reader: the
/// message is not among the shim crate's generated types.
fn decode_runtime_options(bytes: &[u8]) -> anyhow::Result<(String, String)> {
    let mut input = CodedInputStream::from_bytes(bytes);
    let (mut path, mut body) = (String::new(), String::new());
    while let Some(tag) = input.read_raw_tag_or_eof()? {
        match tag {
            // Field number << 3 | wire type 2 (length-delimited).
            0x12 => path = input.read_string()?,
            0x1a => body = input.read_string()?,
            _ => {
                let wire_type = containerd_shim::protos::protobuf::rt::WireType::new(tag & 7)
                    .context("runtime options: a field of an unknown wire type")?;
                input.skip_field(wire_type)?
            }
        }
    }
    Ok((path, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime_options(path: &str, body: &str) -> Any {
        // Encoded by hand the way containerd's Go protobuf does it.
        let mut value = vec![0x0a, 0x00];
        for (tag, s) in [(0x12u8, path), (0x1a, body)] {
            if !s.is_empty() {
                value.push(tag);
                value.push(s.len() as u8);
                value.extend_from_slice(s.as_bytes());
            }
        }
        Any {
            type_url: format!("type.googleapis.com/{RUNTIME_OPTIONS_TYPE}"),
            value,
            ..Default::default()
        }
    }

    #[test]
    fn options_come_from_the_config_file_or_body() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("husk.toml");
        std::fs::write(&file, "backend = \"qemu\"\nvcpus = 2\nmemory_mib = 256\n").unwrap();
        let opts =
            ShimOptions::from_any(Some(&runtime_options(file.to_str().unwrap(), ""))).unwrap();
        assert_eq!(opts.backend.as_deref(), Some("qemu"));
        assert_eq!(opts.vcpus, Some(2));
        assert_eq!(opts.memory_mib, Some(256));

        let opts =
            ShimOptions::from_any(Some(&runtime_options("", "kernel = \"/k/vmlinux\"\n"))).unwrap();
        assert_eq!(
            opts.kernel.as_deref(),
            Some(std::path::Path::new("/k/vmlinux"))
        );
        assert_eq!(ShimOptions::from_any(None).unwrap(), ShimOptions::default());
    }

    #[test]
    fn bad_options_are_errors_that_say_what() {
        let e = ShimOptions::from_toml("vcpu = 2", "x").unwrap_err();
        assert!(format!("{e:#}").contains("vcpu"), "{e:#}");
        let e = ShimOptions::from_any(Some(&runtime_options("/nonexistent/husk.toml", "")))
            .unwrap_err();
        assert!(format!("{e:#}").contains("/nonexistent/husk.toml"), "{e:#}");
        let other = Any {
            type_url: "containerd.runc.v1.Options".into(),
            ..Default::default()
        };
        let e = ShimOptions::from_any(Some(&other)).unwrap_err().to_string();
        assert!(e.contains("runc"), "{e}");
        let bad = ShimOptions {
            backend: Some("xen".into()),
            ..Default::default()
        };
        assert!(bad.settings(|_| None).is_err());
    }

    #[test]
    fn the_environment_fills_what_the_file_leaves_out() {
        let env = |k: &str| match k {
            "HUSK_BACKEND" => Some("husk".to_string()),
            "HUSK_STORE" => Some("/s".to_string()),
            _ => None,
        };
        let s = ShimOptions::default().settings(env).unwrap();
        assert_eq!(s.backend, BackendChoice::Husk);
        assert_eq!(s.store, PathBuf::from("/s"));
        assert_eq!(s.vcpus, 1);
        assert_eq!(s.state_root, PathBuf::from(DEFAULT_STATE_ROOT));
        let file = ShimOptions {
            backend: Some("qemu".into()),
            ..Default::default()
        };
        assert_eq!(file.settings(env).unwrap().backend, BackendChoice::Qemu);
    }
}
