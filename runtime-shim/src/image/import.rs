//! `husk image import`: every image in an archive, each layer streamed once
//! (blob digest, decompression, diff ID and safe unpacking in one pass),
//! built into an erofs disk in a staging directory, and committed only when
//! every layer of the image has verified.

use super::archive::{self, ArchiveError, ImagePlan, LayerPlan, Source};
use super::digest::{chain_ids, Digest, HashingReader};
use super::erofs;
use super::external::CommandError;
use super::layout::LAYER_DISK;
use super::limits::Limits;
use super::lock;
use super::media::{self, Compression, LayerFormat};
use super::progress::Progress;
use super::reference::{self, ReferenceError};
use super::store::{Store, StoreError};
use super::unpack::{self, UnpackError};
use std::fs;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error("layer {member}")]
    Unpack { member: String, source: UnpackError },
    #[error("layer {member}")]
    Erofs {
        member: String,
        source: CommandError,
    },
    #[error("layer {member}: {what} does not match: expected {expected}, got {actual}")]
    Mismatch {
        member: String,
        what: &'static str,
        expected: String,
        actual: String,
    },
    #[error("layer {member}: corrupt or truncated {compression} data")]
    Decompress {
        member: String,
        compression: &'static str,
        source: io::Error,
    },
    #[error("layer {member}: declared as {declared} but its bytes are {actual}")]
    CompressionMismatch {
        member: String,
        declared: &'static str,
        actual: &'static str,
    },
    #[error("layer {member}: blob is larger than {limit} bytes (limit)")]
    BlobTooLarge { member: String, limit: u64 },
    #[error("--tag {tag}")]
    BadTag { tag: String, source: ReferenceError },
    #[error(
        "--tag: the archive has {0} untagged images; import them one by one or tag them first"
    )]
    AmbiguousTag(usize),
    #[error("{}", path.display())]
    Io { path: PathBuf, source: io::Error },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> ImportError + '_ {
    move |source| ImportError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// Names an untagged image (or the only image of the archive).
    pub tag: Option<String>,
    pub limits: Limits,
    /// Draw progress bars on stderr (hidden anyway when it is not a tty).
    pub progress: bool,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ImportedImage {
    pub id: String,
    pub names: Vec<String>,
    pub layers: usize,
    pub new_layers: usize,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ImportReport {
    pub images: Vec<ImportedImage>,
    pub new_layers: usize,
    pub present_layers: usize,
    /// Uncompressed layer bytes read and built into new disks.
    pub new_layer_bytes: u64,
    #[serde(skip)]
    pub elapsed: Duration,
}

pub fn import(
    store: &Store,
    path: &Path,
    options: &ImportOptions,
) -> Result<ImportReport, ImportError> {
    let started = Instant::now();
    if let Err(e) = store.sweep_staging() {
        tracing::warn!("sweeping stale staging directories: {e}");
    }
    let source = Source::open(path, &options.limits)?;
    let mut plans = archive::plans(&source, &path.display().to_string(), &options.limits)?;
    apply_tag(&mut plans, options.tag.as_deref())?;

    let progress = Progress::new(options.progress);
    let mut report = ImportReport {
        images: Vec::new(),
        new_layers: 0,
        present_layers: 0,
        new_layer_bytes: 0,
        elapsed: Duration::ZERO,
    };
    for plan in &plans {
        let (imported, bytes) = import_image(store, &source, plan, &options.limits, &progress)?;
        report.new_layers += imported.new_layers;
        report.present_layers += imported.layers - imported.new_layers;
        report.new_layer_bytes += bytes;
        report.images.push(imported);
    }
    report.elapsed = started.elapsed();
    Ok(report)
}

/// Imports one image whose plan was made elsewhere (`husk pull`, from a
/// registry's manifest and config): `source` holds the blobs of the layers
/// the store does not have yet, named by each [`LayerPlan::member`].
pub(crate) fn import_planned(
    store: &Store,
    source: &Source,
    plan: &ImagePlan,
    limits: &Limits,
    progress: bool,
) -> Result<ImportedImage, ImportError> {
    let progress = Progress::new(progress);
    import_image(store, source, plan, limits, &progress).map(|(imported, _)| imported)
}

fn apply_tag(plans: &mut [ImagePlan], tag: Option<&str>) -> Result<(), ImportError> {
    let Some(tag) = tag else { return Ok(()) };
    let name = reference::normalize(tag).map_err(|source| ImportError::BadTag {
        tag: tag.to_string(),
        source,
    })?;
    if let [only] = plans {
        if !only.names.contains(&name) {
            only.names.push(name);
        }
        return Ok(());
    }
    let mut untagged: Vec<&mut ImagePlan> =
        plans.iter_mut().filter(|p| p.names.is_empty()).collect();
    match untagged.as_mut_slice() {
        [only] => {
            only.names.push(name);
            Ok(())
        }
        others => Err(ImportError::AmbiguousTag(others.len())),
    }
}

/// Builds the image's missing layers in a staging directory, then commits
/// them and the image. Locks: every layer of the image (bottom to top) from
/// the existence check to the image commit, so nothing deletes a layer this
/// image is about to refer to, and two imports never build one layer twice
/// (shared for a layer that is there, so a run's lease on it does not block
/// the import; exclusive for one to build).
fn import_image(
    store: &Store,
    source: &Source,
    plan: &ImagePlan,
    limits: &Limits,
    progress: &Progress,
) -> Result<(ImportedImage, u64), ImportError> {
    let tmp = store.layout().tmp_dir();
    let staging = tempfile::Builder::new()
        .prefix("import-")
        .tempdir_in(&tmp)
        .map_err(io_error(&tmp))?;
    // Marks the staging directory live for sweeps by other processes.
    let _staging_lock =
        lock::try_exclusive_existing(staging.path()).map_err(io_error(staging.path()))?;

    let diff_ids: Vec<Digest> = plan.layers.iter().map(|l| l.diff_id.clone()).collect();
    let chain = chain_ids(&diff_ids);
    let mut layer_locks = Vec::with_capacity(chain.len());
    let mut staged: Vec<(PathBuf, Digest)> = Vec::new();
    let mut new_bytes = 0;
    let label = plan
        .names
        .first()
        .cloned()
        .unwrap_or_else(|| format!("sha256:{}", plan.id.short()));
    for (i, (layer, chain_id)) in plan.layers.iter().zip(&chain).enumerate() {
        let (lock, present) = store.lock_layer_for_import(chain_id)?;
        layer_locks.push(lock);
        let bar = progress.layer(&label, i + 1, plan.layers.len(), chain_id);
        if present {
            bar.present();
            continue;
        }
        let parent = i.checked_sub(1).map(|p| &chain[p]);
        let work = staging.path().join(i.to_string());
        let (dir, tar_bytes) = build_layer(source, layer, chain_id, parent, &work, limits, &bar)?;
        new_bytes += tar_bytes;
        staged.push((dir, chain_id.clone()));
    }
    for (dir, chain_id) in &staged {
        store.commit_layer(dir, chain_id)?;
    }
    let manifest = plan
        .manifest
        .as_ref()
        .map(|(digest, bytes)| (digest, bytes.as_slice()));
    let id = store.commit_image(&plan.config_bytes, manifest, &plan.names)?;
    drop(layer_locks);
    tracing::info!(%id, names = ?plan.names, new_layers = staged.len(), "image imported");
    Ok((
        ImportedImage {
            id: id.to_string(),
            names: plan.names.clone(),
            layers: plan.layers.len(),
            new_layers: staged.len(),
        },
        new_bytes,
    ))
}

/// Streams one layer blob through digest → decompression → diff ID →
/// unpacker, verifies both digests, and builds `layer.erofs` with the layer
/// database files beside it. Returns the directory to commit and the
/// uncompressed size.
fn build_layer(
    source: &Source,
    layer: &LayerPlan,
    chain_id: &Digest,
    parent: Option<&Digest>,
    work: &Path,
    limits: &Limits,
    bar: &super::progress::LayerBar,
) -> Result<(PathBuf, u64), ImportError> {
    let member = layer.member.clone();
    let tree = work.join("tree");
    let out = work.join("layer");
    for dir in [&tree, &out] {
        fs::create_dir_all(dir).map_err(io_error(dir))?;
    }
    let (reader, size) = source.open_member(&layer.member)?;
    if let Some(expected) = layer.blob_size {
        if expected != size {
            return Err(ImportError::Mismatch {
                member,
                what: "size",
                expected: expected.to_string(),
                actual: size.to_string(),
            });
        }
    }
    if size > limits.max_blob_bytes {
        return Err(ImportError::BlobTooLarge {
            member,
            limit: limits.max_blob_bytes,
        });
    }
    bar.reading(size);
    let mut buffered = BufReader::with_capacity(1 << 20, bar.wrap(reader));
    let sniffed = media::sniff(&mut buffered).map_err(io_error(Path::new(&layer.member)))?;
    let compression = match layer.format {
        LayerFormat::Sniff => sniffed,
        LayerFormat::Declared(declared) if declared == sniffed => declared,
        LayerFormat::Declared(declared) => {
            return Err(ImportError::CompressionMismatch {
                member,
                declared: declared.name(),
                actual: sniffed.name(),
            });
        }
    };
    let mut blob = HashingReader::new(buffered, limits.max_blob_bytes);
    let decompress_err = |source: io::Error| ImportError::Decompress {
        member: member.clone(),
        compression: compression.name(),
        source,
    };
    // The tar stream is unpacked in this block; whatever happens, the blob is
    // then read to its end and its digest checked first: a blob that is not
    // what its descriptor says is reported as such, not as the corruption
    // it causes further down.
    let streamed = (|| {
        let decoder: Box<dyn Read + '_> = match compression {
            Compression::None => Box::new(&mut blob),
            Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(&mut blob)),
            Compression::Zstd => {
                Box::new(zstd::stream::read::Decoder::new(&mut blob).map_err(decompress_err)?)
            }
        };
        // An uncompressed blob is the tar itself: its digest (computed by
        // `blob`) is the diff ID, so it is hashed once, not twice.
        let mut tar_stream = match compression {
            Compression::None => HashingReader::counting(decoder, limits.max_layer_bytes),
            _ => HashingReader::new(decoder, limits.max_layer_bytes),
        };
        let stats = unpack::unpack(&mut tar_stream, &tree, limits, &mut |stats| {
            bar.entries(stats.entries)
        })
        .map_err(|source| match source {
            UnpackError::Read(e) if compression != Compression::None => decompress_err(e),
            source => ImportError::Unpack {
                member: member.clone(),
                source,
            },
        })?;
        // Trailing tar padding and anything after the end-of-archive blocks
        // is part of the diff ID; the rest of the blob is part of its digest.
        tar_stream.drain().map_err(decompress_err)?;
        let (diff_id, tar_bytes) = tar_stream.finish();
        Ok::<_, ImportError>((stats, diff_id, tar_bytes))
    })();
    bar.verifying();
    blob.drain().map_err(io_error(Path::new(&layer.member)))?;
    let (blob_digest, _) = blob.finish();
    let blob_digest = blob_digest.ok_or_else(|| ImportError::Io {
        path: PathBuf::from(&layer.member),
        source: io::Error::other("blob was not hashed"),
    })?;
    if let Some(expected) = &layer.blob_digest {
        if *expected != blob_digest {
            return Err(ImportError::Mismatch {
                member,
                what: "blob sha256",
                expected: expected.to_string(),
                actual: blob_digest.to_string(),
            });
        }
    }
    let (stats, diff_id, tar_bytes) = streamed?;
    let diff_id = diff_id.unwrap_or(blob_digest);
    if diff_id != layer.diff_id {
        return Err(ImportError::Mismatch {
            member,
            what: "diff_id (sha256 of the uncompressed tar)",
            expected: layer.diff_id.to_string(),
            actual: diff_id.to_string(),
        });
    }
    tracing::debug!(%chain_id, entries = stats.entries, tar_bytes, "layer verified");

    bar.building();
    erofs::build(&tree, &out.join(LAYER_DISK), chain_id).map_err(|source| ImportError::Erofs {
        member: member.clone(),
        source,
    })?;
    fs::remove_dir_all(&tree).map_err(io_error(&tree))?;
    let cache_id = work
        .parent()
        .and_then(|p| p.file_name())
        .map(|n| {
            format!(
                "{}-{}",
                n.to_string_lossy(),
                work.file_name().unwrap_or_default().to_string_lossy()
            )
        })
        .unwrap_or_default();
    let mut files = vec![
        ("diff", diff_id.to_string()),
        ("size", tar_bytes.to_string()),
        ("cache-id", cache_id),
    ];
    if let Some(parent) = parent {
        files.push(("parent", parent.to_string()));
    }
    for (name, content) in files {
        let path = out.join(name);
        fs::write(&path, content).map_err(io_error(&path))?;
    }
    bar.done(tar_bytes);
    Ok((out, tar_bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::digest::Digest;

    fn plan(names: &[&str]) -> ImagePlan {
        ImagePlan {
            names: names.iter().map(|n| n.to_string()).collect(),
            manifest: None,
            config_bytes: Vec::new(),
            id: Digest::of_bytes(names.join(",").as_bytes()),
            layers: Vec::new(),
        }
    }

    #[test]
    fn tag_names_the_only_or_the_untagged_image() {
        let mut one = [plan(&["a:latest"])];
        apply_tag(&mut one, Some("b")).unwrap();
        assert_eq!(one[0].names, ["a:latest", "b:latest"]);
        let mut two = [plan(&["a:latest"]), plan(&[])];
        apply_tag(&mut two, Some("b:1")).unwrap();
        assert_eq!(two[1].names, ["b:1"]);
        let mut ambiguous = [plan(&[]), plan(&[])];
        assert!(matches!(
            apply_tag(&mut ambiguous, Some("b")),
            Err(ImportError::AmbiguousTag(2))
        ));
        assert!(matches!(
            apply_tag(&mut one, Some("B A D")),
            Err(ImportError::BadTag { .. })
        ));
    }
}
