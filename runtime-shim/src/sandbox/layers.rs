//! An image's layers as the guest gets them: ONE read-only virtio-blk disk
//! that is the layers' erofs images one after the other, and for each layer
//! where its image lies on that disk.
//!
//! One disk per layer would need one virtio-mmio device per layer: QEMU
//! microvm has 8 of them (the agent channel takes one) and husk-vmm ~19
//! interrupt lines, while images have up to 125 layers. Concatenating the
//! existing layer files (husk-vmm reads them as one disk, QEMU through a VMDK
//! descriptor with flat extents) keeps each layer file shared by every image
//! and VM that uses it; the agent puts a loop device over each range.

use std::path::PathBuf;

use husk_protocol::LayerDisk;

use super::backend::{concat_part_sizes, DiskConfig, DiskImage};
use crate::image::ResolvedLayer as Layer;

/// The serial of the disk that holds the layers.
pub const LAYERS_DISK_SERIAL: &str = "husk-layers";
/// The most layers one image may have (the import's own limit).
pub const MAX_LAYERS: usize = 125;

#[derive(Debug, thiserror::Error)]
pub enum LayersError {
    #[error("image {image} has no layers")]
    NoLayers { image: String },
    #[error("image {image} has {count} layers; at most {MAX_LAYERS} can run")]
    TooMany { image: String, count: usize },
    #[error("layer {diff_id} of image {image}: its disk {} is missing; import the image again", disk.display())]
    DiskMissing {
        image: String,
        diff_id: String,
        disk: PathBuf,
    },
    #[error("layer disks of image {image}: {reason}")]
    Unusable { image: String, reason: String },
}

/// The file name of the layers disk's listing in a VM's run directory.
pub const LAYERS_LISTING: &str = "layers.disk";

/// The layers disk (its listing named [`LAYERS_LISTING`], relative: see
/// [`DiskConfig::in_dir`]) and the layers as the agent is told of them,
/// bottom first.
pub fn pack(image: &str, layers: &[Layer]) -> Result<(DiskConfig, Vec<LayerDisk>), LayersError> {
    if layers.is_empty() {
        return Err(LayersError::NoLayers {
            image: image.into(),
        });
    }
    if layers.len() > MAX_LAYERS {
        return Err(LayersError::TooMany {
            image: image.into(),
            count: layers.len(),
        });
    }
    for layer in layers {
        if !layer.disk.is_file() {
            return Err(LayersError::DiskMissing {
                image: image.into(),
                diff_id: layer.diff_id.clone(),
                disk: layer.disk.clone(),
            });
        }
    }
    let parts: Vec<PathBuf> = layers.iter().map(|l| l.disk.clone()).collect();
    let sizes = concat_part_sizes(&parts).map_err(|e| LayersError::Unusable {
        image: image.into(),
        reason: e.to_string(),
    })?;
    let mut offset = 0u64;
    let mut described = Vec::with_capacity(layers.len());
    for (layer, size) in layers.iter().zip(sizes) {
        described.push(LayerDisk {
            serial: LAYERS_DISK_SERIAL.into(),
            digest: layer.diff_id.clone(),
            offset,
            length: Some(size),
        });
        offset += size;
    }
    let disk = DiskConfig {
        image: DiskImage::Concat {
            parts,
            listing: PathBuf::from(LAYERS_LISTING),
        },
        read_only: true,
        serial: LAYERS_DISK_SERIAL.into(),
    };
    Ok((disk, described))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn layer(dir: &Path, name: &str, len: usize) -> Layer {
        let disk = dir.join(name);
        std::fs::write(&disk, vec![0u8; len]).unwrap();
        Layer {
            diff_id: format!("sha256:{name}"),
            chain_id: format!("sha256:chain-{name}"),
            disk,
            size: len as u64,
        }
    }

    #[test]
    fn layers_lie_one_after_the_other() {
        let dir = tempfile::tempdir().unwrap();
        let layers = vec![
            layer(dir.path(), "a", 8192),
            layer(dir.path(), "b", 4096),
            layer(dir.path(), "c", 12288),
        ];
        let (disk, described) = pack("img", &layers).unwrap();
        assert_eq!(disk.serial, LAYERS_DISK_SERIAL);
        assert!(disk.read_only);
        assert_eq!(
            disk.image,
            DiskImage::Concat {
                parts: layers.iter().map(|l| l.disk.clone()).collect(),
                listing: PathBuf::from(LAYERS_LISTING)
            }
        );
        let ranges: Vec<(u64, Option<u64>)> =
            described.iter().map(|l| (l.offset, l.length)).collect();
        assert_eq!(
            ranges,
            vec![(0, Some(8192)), (8192, Some(4096)), (12288, Some(12288))]
        );
        assert_eq!(described[1].digest, "sha256:b");
    }

    #[test]
    fn bad_layer_sets_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            pack("img", &[]),
            Err(LayersError::NoLayers { .. })
        ));
        let many: Vec<Layer> = (0..=MAX_LAYERS)
            .map(|i| layer(dir.path(), &format!("l{i}"), 512))
            .collect();
        assert!(matches!(
            pack("img", &many),
            Err(LayersError::TooMany { count: 126, .. })
        ));
        let mut gone = layer(dir.path(), "gone", 512);
        std::fs::remove_file(&gone.disk).unwrap();
        gone.disk = dir.path().join("gone");
        let err = pack("img", &[gone]).unwrap_err().to_string();
        assert!(err.contains("import the image again"), "{err}");
        let odd = layer(dir.path(), "odd", 1000);
        let err = pack("img", &[odd]).unwrap_err().to_string();
        assert!(err.contains("512"), "{err}");
    }
}
