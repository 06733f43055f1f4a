//! OCI image layout: `oci-layout`, `index.json`, `blobs/sha256/...`.
//! Every manifest listed in index.json is one image (a nested index picks
//! this host's platform).

use super::{blob_path, parse_config, read_verified, ArchiveError, ImagePlan, LayerPlan, Source};
use crate::image::digest::Digest;
use crate::image::limits::Limits;
use crate::image::media::{self, ManifestKind};
use crate::image::reference;
use oci_spec::image::{Descriptor, ImageIndex, ImageManifest};
use std::collections::HashMap;

/// containerd / buildkit put the full name here.
const ANNOTATION_IMAGE_NAME: &str = "io.containerd.image.name";
/// The OCI name annotation: a full reference, or just a tag.
const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

/// `label` is the archive's path: a bare-tag `ref.name` names the image
/// after it (`busybox.tar` with `1.36` is `busybox:1.36`).
pub fn plans(
    source: &Source,
    label: &str,
    limits: &Limits,
) -> Result<Vec<ImagePlan>, ArchiveError> {
    let layout = source.read_small("oci-layout", 4096)?;
    let layout: serde_json::Value =
        serde_json::from_slice(&layout).map_err(|source| ArchiveError::Json {
            what: "oci-layout".into(),
            source,
        })?;
    if layout
        .get("imageLayoutVersion")
        .and_then(|v| v.as_str())
        .is_none()
    {
        return Err(ArchiveError::Invalid(
            "oci-layout has no imageLayoutVersion".into(),
        ));
    }
    let index_bytes = source.read_small("index.json", limits.max_json_bytes)?;
    let index: ImageIndex =
        serde_json::from_slice(&index_bytes).map_err(|source| ArchiveError::Json {
            what: "index.json".into(),
            source,
        })?;
    let mut plans: Vec<ImagePlan> = Vec::new();
    for descriptor in index.manifests() {
        let names = names_of(descriptor, label);
        let plan = image_from_descriptor(source, descriptor, names, limits, 0)?;
        // The same image listed twice (two tags) is one image with both names.
        match plans.iter_mut().find(|p| p.id == plan.id) {
            Some(existing) => existing.names.extend(plan.names),
            None => plans.push(plan),
        }
    }
    Ok(plans)
}

fn names_of(descriptor: &Descriptor, label: &str) -> Vec<String> {
    let empty = HashMap::new();
    let annotations = descriptor.annotations().as_ref().unwrap_or(&empty);
    let full = annotations.get(ANNOTATION_IMAGE_NAME).or_else(|| {
        annotations
            .get(ANNOTATION_REF_NAME)
            .filter(|r| r.contains(':') || r.contains('/'))
    });
    let name = match full {
        Some(name) => reference::normalize(name).ok(),
        // A bare tag ("latest", as skopeo's `oci:DIR:TAG` writes) names no
        // repository: the archive's own name is used, as its file name
        // usually is the image's.
        None => annotations.get(ANNOTATION_REF_NAME).and_then(|tag| {
            reference::normalize(&format!("{}:{tag}", repository_from_path(label)?)).ok()
        }),
    };
    name.into_iter().collect()
}

/// `/x/busybox.oci.tar` → `busybox`; None when the name is no repository.
fn repository_from_path(path: &str) -> Option<String> {
    let file = std::path::Path::new(path.trim_end_matches('/'))
        .file_name()?
        .to_str()?;
    let stem = file.split('.').next()?.to_ascii_lowercase();
    reference::normalize(&stem).ok()?;
    Some(stem)
}

fn descriptor_digest(descriptor: &Descriptor, what: &str) -> Result<Digest, ArchiveError> {
    Digest::parse(descriptor.digest().as_ref()).map_err(|source| ArchiveError::Digest {
        what: what.to_string(),
        source,
    })
}

fn image_from_descriptor(
    source: &Source,
    descriptor: &Descriptor,
    names: Vec<String>,
    limits: &Limits,
    depth: usize,
) -> Result<ImagePlan, ArchiveError> {
    let digest = descriptor_digest(descriptor, "manifest descriptor")?;
    let media_type = descriptor.media_type().to_string();
    let kind = media::manifest_kind(&media_type).map_err(|source| ArchiveError::Media {
        what: blob_path(&digest),
        source,
    })?;
    let bytes = read_verified(source, &digest, Some(descriptor.size()), limits)?;
    let what = blob_path(&digest);
    match kind {
        ManifestKind::Index => {
            if depth > 2 {
                return Err(ArchiveError::Invalid(format!(
                    "{what}: indexes nested too deep"
                )));
            }
            let index: ImageIndex =
                serde_json::from_slice(&bytes).map_err(|source| ArchiveError::Json {
                    what: what.clone(),
                    source,
                })?;
            let chosen = index
                .manifests()
                .iter()
                .find(|d| {
                    d.platform().as_ref().is_none_or(|p| {
                        p.os().to_string() == "linux"
                            && p.architecture().to_string() == host_architecture()
                    })
                })
                .ok_or_else(|| {
                    ArchiveError::Invalid(format!(
                        "{what}: no image for linux/{}",
                        host_architecture()
                    ))
                })?;
            image_from_descriptor(source, chosen, names, limits, depth + 1)
        }
        ManifestKind::Manifest => {
            let manifest: ImageManifest =
                serde_json::from_slice(&bytes).map_err(|source| ArchiveError::Json {
                    what: what.clone(),
                    source,
                })?;
            let config_descriptor = manifest.config();
            let config_digest = descriptor_digest(config_descriptor, &format!("{what}: config"))?;
            media::check_config(config_descriptor.media_type().as_ref()).map_err(|source| {
                ArchiveError::Media {
                    what: blob_path(&config_digest),
                    source,
                }
            })?;
            let config_bytes = read_verified(
                source,
                &config_digest,
                Some(config_descriptor.size()),
                limits,
            )?;
            let diff_ids = parse_config(
                &config_bytes,
                &blob_path(&config_digest),
                manifest.layers().len(),
                limits,
            )?;
            let mut layers = Vec::with_capacity(diff_ids.len());
            for (layer, diff_id) in manifest.layers().iter().zip(diff_ids) {
                let layer_digest = descriptor_digest(layer, &format!("{what}: layer"))?;
                let member = blob_path(&layer_digest);
                let format =
                    media::layer_format(layer.media_type().as_ref()).map_err(|source| {
                        ArchiveError::Media {
                            what: member.clone(),
                            source,
                        }
                    })?;
                if !source.has(&member) {
                    return Err(ArchiveError::MissingBlob(member));
                }
                layers.push(LayerPlan {
                    member,
                    blob_digest: Some(layer_digest),
                    blob_size: Some(layer.size()),
                    format,
                    diff_id,
                });
            }
            Ok(ImagePlan {
                names,
                manifest: Some((digest, bytes)),
                id: config_digest,
                config_bytes,
                layers,
            })
        }
    }
}

/// This host's architecture in OCI spelling.
pub fn host_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn descriptor(annotations: serde_json::Value) -> Descriptor {
        serde_json::from_value(serde_json::json!({
            "mediaType": media::OCI_MANIFEST,
            "digest": format!("sha256:{}", "a".repeat(64)),
            "size": 1,
            "annotations": annotations,
        }))
        .unwrap()
    }

    #[test]
    fn names_from_annotations_and_archive_name() {
        let full = descriptor(serde_json::json!({ANNOTATION_REF_NAME: "docker.io/library/x:1"}));
        assert_eq!(names_of(&full, "/tmp/whatever.tar"), ["x:1"]);
        let containerd = descriptor(serde_json::json!({
            ANNOTATION_IMAGE_NAME: "reg:5000/app:2", ANNOTATION_REF_NAME: "2"}));
        assert_eq!(names_of(&containerd, "a.tar"), ["reg:5000/app:2"]);
        let bare = descriptor(serde_json::json!({ANNOTATION_REF_NAME: "1.36"}));
        assert_eq!(names_of(&bare, "/images/BusyBox.oci.tar"), ["busybox:1.36"]);
        assert_eq!(names_of(&bare, "/images/layout/"), ["layout:1.36"]);
        assert!(names_of(&bare, "/images/@@@.tar").is_empty());
        let bad_tag = descriptor(serde_json::json!({ANNOTATION_REF_NAME: "no good"}));
        assert!(names_of(&bad_tag, "x.tar").is_empty());
        assert!(names_of(&descriptor(serde_json::json!({})), "x.tar").is_empty());
    }
}
