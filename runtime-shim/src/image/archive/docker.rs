//! `docker save` archives: `manifest.json` lists each image's config,
//! tags and layer tars. Layer paths are either the legacy
//! `<id>/layer.tar` or, since Docker 25, `blobs/sha256/<hex>`.

use super::{parse_config, ArchiveError, ImagePlan, LayerPlan, Source};
use crate::image::digest::Digest;
use crate::image::limits::Limits;
use crate::image::media::LayerFormat;
use crate::image::reference;
use serde::Deserialize;

#[derive(Deserialize)]
struct Entry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

pub fn plans(source: &Source, limits: &Limits) -> Result<Vec<ImagePlan>, ArchiveError> {
    let bytes = source.read_small("manifest.json", limits.max_json_bytes)?;
    let entries: Vec<Entry> =
        serde_json::from_slice(&bytes).map_err(|source| ArchiveError::Json {
            what: "manifest.json".into(),
            source,
        })?;
    let mut plans: Vec<ImagePlan> = Vec::new();
    for mut entry in entries {
        // Paths are checked before use: a manifest pointing outside the
        // archive is refused as such, not reported as missing.
        entry.config = super::normalize_member(&entry.config)?;
        entry.layers = entry
            .layers
            .iter()
            .map(|l| super::normalize_member(l))
            .collect::<Result<_, _>>()?;
        let config_bytes = source.read_small(&entry.config, limits.max_json_bytes)?;
        let id = Digest::of_bytes(&config_bytes);
        if let Some(named) = content_address(&entry.config) {
            if named != id {
                return Err(ArchiveError::Mismatch {
                    blob: entry.config.clone(),
                    what: "sha256",
                    expected: named.to_string(),
                    actual: id.to_string(),
                });
            }
        }
        let diff_ids = parse_config(&config_bytes, &entry.config, entry.layers.len(), limits)?;
        let mut layers = Vec::with_capacity(diff_ids.len());
        for (member, diff_id) in entry.layers.iter().zip(diff_ids) {
            if !source.has(member) {
                return Err(ArchiveError::MissingBlob(member.clone()));
            }
            layers.push(LayerPlan {
                member: member.clone(),
                blob_digest: content_address(member),
                blob_size: None,
                format: LayerFormat::Sniff,
                diff_id,
            });
        }
        let mut names = Vec::new();
        for tag in entry.repo_tags.unwrap_or_default() {
            let name = reference::normalize(&tag)
                .map_err(|e| ArchiveError::Invalid(format!("manifest.json: RepoTags: {e}")))?;
            names.push(name);
        }
        match plans.iter_mut().find(|p| p.id == id) {
            Some(existing) => existing.names.extend(names),
            None => plans.push(ImagePlan {
                names,
                manifest: None,
                id,
                config_bytes,
                layers,
            }),
        }
    }
    Ok(plans)
}

/// `blobs/sha256/<hex>` and `<hex>.json` name their content's digest.
fn content_address(member: &str) -> Option<Digest> {
    let name = member
        .strip_prefix("blobs/sha256/")
        .or_else(|| member.strip_suffix(".json"))?;
    Digest::from_hex(name).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_addressed_paths() {
        let d = Digest::of_bytes(b"x");
        assert_eq!(
            content_address(&format!("blobs/sha256/{}", d.hex())),
            Some(d.clone())
        );
        assert_eq!(content_address(&format!("{}.json", d.hex())), Some(d));
        assert_eq!(content_address("abc/layer.tar"), None);
    }
}
