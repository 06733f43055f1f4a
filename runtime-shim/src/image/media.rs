//! Media types the store accepts, and layer compression.

use std::io::{self, BufRead};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "tar",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        }
    }
}

/// What a layer's media type says about its compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerFormat {
    /// An OCI media type: the bytes must agree with it.
    Declared(Compression),
    /// Docker's media types (and docker archives, which have none) are used
    /// loosely by tools: trust the magic bytes.
    Sniff,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MediaError {
    #[error("unknown layer media type {0:?}")]
    Layer(String),
    #[error("unknown config media type {0:?}")]
    Config(String),
    #[error("unknown manifest media type {0:?}")]
    Manifest(String),
}

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestKind {
    Index,
    Manifest,
}

pub fn manifest_kind(media_type: &str) -> Result<ManifestKind, MediaError> {
    match media_type {
        OCI_INDEX | DOCKER_MANIFEST_LIST => Ok(ManifestKind::Index),
        OCI_MANIFEST | DOCKER_MANIFEST => Ok(ManifestKind::Manifest),
        other => Err(MediaError::Manifest(other.to_string())),
    }
}

pub fn check_config(media_type: &str) -> Result<(), MediaError> {
    match media_type {
        OCI_CONFIG | DOCKER_CONFIG => Ok(()),
        other => Err(MediaError::Config(other.to_string())),
    }
}

pub fn layer_format(media_type: &str) -> Result<LayerFormat, MediaError> {
    use Compression::*;
    match media_type {
        OCI_LAYER | "application/vnd.oci.image.layer.nondistributable.v1.tar" => {
            Ok(LayerFormat::Declared(None))
        }
        OCI_LAYER_GZIP | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip" => {
            Ok(LayerFormat::Declared(Gzip))
        }
        OCI_LAYER_ZSTD | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => {
            Ok(LayerFormat::Declared(Zstd))
        }
        "application/vnd.docker.image.rootfs.diff.tar.gzip"
        | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
        | "application/vnd.docker.image.rootfs.diff.tar" => Ok(LayerFormat::Sniff),
        other => Err(MediaError::Layer(other.to_string())),
    }
}

/// Compression from the first bytes of a blob (without consuming them).
pub fn sniff(reader: &mut impl BufRead) -> io::Result<Compression> {
    let head = reader.fill_buf()?;
    Ok(if head.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        Compression::None
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_types() {
        assert_eq!(
            layer_format(OCI_LAYER_GZIP),
            Ok(LayerFormat::Declared(Compression::Gzip))
        );
        assert_eq!(
            layer_format(OCI_LAYER_ZSTD),
            Ok(LayerFormat::Declared(Compression::Zstd))
        );
        assert_eq!(
            layer_format(OCI_LAYER),
            Ok(LayerFormat::Declared(Compression::None))
        );
        assert_eq!(
            layer_format("application/vnd.docker.image.rootfs.diff.tar.gzip"),
            Ok(LayerFormat::Sniff)
        );
        assert!(layer_format("application/x-evil").is_err());
        assert!(layer_format("application/vnd.oci.image.layer.v1.tar+bzip2").is_err());
    }

    #[test]
    fn manifest_and_config_types() {
        assert_eq!(manifest_kind(OCI_INDEX), Ok(ManifestKind::Index));
        assert_eq!(manifest_kind(DOCKER_MANIFEST), Ok(ManifestKind::Manifest));
        assert!(manifest_kind("text/plain").is_err());
        assert!(check_config(OCI_CONFIG).is_ok());
        assert!(check_config("application/vnd.cncf.helm.config.v1+json").is_err());
    }

    #[test]
    fn sniffs_magic() {
        assert_eq!(sniff(&mut &[0x1f, 0x8b, 8][..]).unwrap(), Compression::Gzip);
        assert_eq!(
            sniff(&mut &[0x28, 0xb5, 0x2f, 0xfd, 0][..]).unwrap(),
            Compression::Zstd
        );
        assert_eq!(sniff(&mut &b"bin/\0\0"[..]).unwrap(), Compression::None);
    }
}
