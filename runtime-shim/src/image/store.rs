//! The image store: which images exist, what they are called, and where
//! their layer disks are. Import writes into it (`import.rs`); `husk run`
//! reads it through [`Store::resolve`].

use super::digest::{chain_ids, Digest};
use super::fsutil::{self, read_bounded, write_atomic};
use super::layout::Layout;
use super::lock;
use super::reference::{self, ReferenceError};
use oci_spec::image::ImageConfiguration;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Largest JSON document (config, manifest, index) the store reads.
pub const MAX_JSON_BYTES: u64 = 16 << 20;

/// Staging entries younger than this are left alone by sweeps even when
/// unlocked: their importer may not have taken its lock yet.
const STALE_STAGING_AGE: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("no such image: {0}")]
    NotFound(String),
    #[error("image reference {name:?} is ambiguous: it is a prefix of {count} image IDs")]
    Ambiguous { name: String, count: usize },
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error("store is corrupt: {0}")]
    Corrupt(String),
    #[error("layer {chain_id} of image {image} is missing from the store: import the image again")]
    LayerMissing { image: String, chain_id: String },
    #[error("image {image} is in use: its layer {chain_id} is used by container {container} (remove the container first: husk rm)")]
    InUse {
        image: String,
        chain_id: String,
        container: String,
    },
    #[error("image {image} is in use: its layer {chain_id} is in use by a running container (stop it first)")]
    Leased { image: String, chain_id: String },
}

pub(crate) fn io_error(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// An image ready to run: its config and its layer disks, bottom to top.
#[derive(Debug, Clone)]
pub struct ResolvedImage {
    /// Image ID, `sha256:<hex>` (the digest of the config).
    pub id: String,
    /// The name it was resolved by (`busybox:latest`), or its ID.
    pub name: String,
    pub config: ImageConfiguration,
    pub layers: Vec<ResolvedLayer>,
}

#[derive(Debug, Clone)]
pub struct ResolvedLayer {
    pub chain_id: String,
    pub diff_id: String,
    /// Bytes of the uncompressed layer tar.
    pub size: u64,
    /// The read-only erofs image of this layer, shared by every image and VM
    /// that uses the layer.
    pub disk: PathBuf,
}

/// A run's hold on its image's layers, from [`Store::lease`] until it drops
/// (or the holder dies): a shared lock on each layer's lock file, so that
/// `image rm` and `prune` (which delete only under the exclusive lock, and
/// never wait for it) leave those layer disks alone while a VM reads them.
/// Any number of runs lease a layer at once.
#[derive(Debug)]
pub struct LayerLease {
    locks: Vec<lock::LockGuard>,
}

impl LayerLease {
    /// The locked descriptors (close-on-exec): a child that is given copies
    /// of them (the container's monitor) holds the lease until it exits.
    pub fn fds(&self) -> Vec<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        self.locks.iter().map(AsRawFd::as_raw_fd).collect()
    }
}

/// What became of one layer a deletion was asked for.
enum Deletion {
    Deleted(u64),
    /// Still referenced, gone already, or busy with an import.
    Kept,
    /// Held by a run's lease.
    Leased,
}

/// One row of `husk image ls`.
#[derive(Debug, Clone, Serialize)]
pub struct ImageSummary {
    pub id: String,
    pub tags: Vec<String>,
    pub created: Option<String>,
    pub layers: usize,
    /// Sum of the uncompressed layer sizes.
    pub size: u64,
}

/// What is recorded about a layer in the layer database.
#[derive(Debug, Clone, Serialize)]
pub struct LayerRecord {
    pub chain_id: String,
    pub diff_id: String,
    pub parent: Option<String>,
    pub size: u64,
    pub cache_id: String,
    pub disk: PathBuf,
    pub disk_size: u64,
}

#[derive(Debug, Default, Serialize)]
pub struct RemoveReport {
    pub untagged: Vec<String>,
    pub deleted_image: Option<String>,
    pub deleted_layers: Vec<String>,
    /// Layers a run leased after the check that refuses such removals:
    /// kept, and `prune` takes them once the run is over.
    pub kept_leased: Vec<String>,
}

#[derive(Debug, Default, Serialize)]
pub struct PruneReport {
    pub deleted_layers: Vec<String>,
    /// Layers no image uses but a container does: (chain ID, container).
    pub kept_in_use: Vec<(String, String)>,
    /// Layers no image uses that a running container has leased.
    pub kept_leased: Vec<String>,
    pub deleted_blobs: Vec<String>,
    pub swept_staging: usize,
    /// Lock files of layers that no longer exist (every import, refused
    /// ones included, leaves one per chain ID).
    pub swept_locks: usize,
    pub reclaimed_bytes: u64,
}

/// `repositories.json`, in Docker's shape.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Repositories {
    #[serde(rename = "Repositories", default)]
    repositories: BTreeMap<String, BTreeMap<String, String>>,
}

impl Repositories {
    pub fn lookup(&self, normalized: &str) -> Option<&str> {
        self.repositories
            .get(reference::repository_of(normalized))
            .and_then(|tags| tags.get(normalized))
            .map(String::as_str)
    }

    pub fn tags_of(&self, id: &Digest) -> Vec<String> {
        let id = id.to_string();
        self.repositories
            .values()
            .flat_map(|tags| tags.iter())
            .filter(|(_, target)| **target == id)
            .map(|(tag, _)| tag.clone())
            .collect()
    }

    pub fn set(&mut self, normalized: &str, id: &Digest) {
        self.repositories
            .entry(reference::repository_of(normalized).to_string())
            .or_default()
            .insert(normalized.to_string(), id.to_string());
    }

    pub fn remove_tag(&mut self, normalized: &str) {
        let repository = reference::repository_of(normalized);
        if let Some(tags) = self.repositories.get_mut(repository) {
            tags.remove(normalized);
            if tags.is_empty() {
                self.repositories.remove(repository);
            }
        }
    }

    pub fn remove_image(&mut self, id: &Digest) {
        for tag in self.tags_of(id) {
            self.remove_tag(&tag);
        }
    }
}

pub struct Store {
    layout: Layout,
}

impl Store {
    /// Opens the store at `root`, creating its directories if needed.
    pub fn open(root: &Path) -> Result<Store, StoreError> {
        let layout = Layout::new(root);
        for dir in layout.directories() {
            fs::create_dir_all(&dir).map_err(io_error(&dir))?;
        }
        Ok(Store { layout })
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Finds an image by name (`busybox` = `busybox:latest`) or by full or
    /// short image ID, like `docker run` does.
    pub fn resolve(&self, name: &str) -> Result<ResolvedImage, StoreError> {
        let (id, display_name) = self.resolve_id(name)?;
        let config = self.image_config(&id)?;
        let diff_ids = diff_ids_of(&config, &id)?;
        let mut layers = Vec::with_capacity(diff_ids.len());
        for (chain_id, diff_id) in chain_ids(&diff_ids).into_iter().zip(&diff_ids) {
            let record = self.layer(&chain_id).map_err(|e| match e {
                StoreError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound => {
                    StoreError::LayerMissing {
                        image: display_name.clone(),
                        chain_id: chain_id.to_string(),
                    }
                }
                other => other,
            })?;
            if record.diff_id != diff_id.to_string() {
                return Err(StoreError::Corrupt(format!(
                    "layer {chain_id} records diff ID {} but image {id} expects {diff_id}",
                    record.diff_id
                )));
            }
            layers.push(ResolvedLayer {
                chain_id: record.chain_id,
                diff_id: record.diff_id,
                size: record.size,
                disk: record.disk,
            });
        }
        Ok(ResolvedImage {
            id: id.to_string(),
            name: display_name,
            config,
            layers,
        })
    }

    /// The image ID a name refers to, and the name to show for it.
    pub fn resolve_id(&self, name: &str) -> Result<(Digest, String), StoreError> {
        let repositories = self.repositories()?;
        if let Ok(normalized) = reference::normalize(name) {
            if let Some(id) = repositories.lookup(&normalized) {
                let id = Digest::parse(id)
                    .map_err(|e| StoreError::Corrupt(format!("repositories.json: {e}")))?;
                return Ok((id, normalized));
            }
        }
        let prefix = name.strip_prefix("sha256:").unwrap_or(name);
        let is_id_prefix = !prefix.is_empty()
            && prefix
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !is_id_prefix {
            // Report a malformed name as such rather than as "not found".
            reference::normalize(name)?;
            return Err(StoreError::NotFound(name.to_string()));
        }
        let matches: Vec<Digest> = self
            .image_ids()?
            .into_iter()
            .filter(|id| id.hex().starts_with(prefix))
            .collect();
        match matches.as_slice() {
            [id] => {
                let display = repositories
                    .tags_of(id)
                    .into_iter()
                    .next()
                    .unwrap_or_else(|| id.to_string());
                Ok((id.clone(), display))
            }
            [] => Err(StoreError::NotFound(name.to_string())),
            many => Err(StoreError::Ambiguous {
                name: name.to_string(),
                count: many.len(),
            }),
        }
    }

    pub fn repositories(&self) -> Result<Repositories, StoreError> {
        let path = self.layout.repositories();
        match read_bounded(&path, MAX_JSON_BYTES) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| StoreError::Corrupt(format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Repositories::default()),
            Err(e) => Err(StoreError::Io { path, source: e }),
        }
    }

    /// Replaces `repositories.json`; the caller holds the store lock.
    pub fn write_repositories(&self, repositories: &Repositories) -> Result<(), StoreError> {
        let path = self.layout.repositories();
        let bytes = serde_json::to_vec_pretty(repositories)
            .map_err(|e| StoreError::Corrupt(format!("serialising repositories: {e}")))?;
        write_atomic(&self.layout.tmp_dir(), &path, &bytes).map_err(io_error(&path))
    }

    pub fn lock_store(&self) -> Result<lock::LockGuard, StoreError> {
        let path = self.layout.store_lock();
        lock::exclusive(&path).map_err(io_error(&path))
    }

    pub fn lock_layer(&self, chain_id: &Digest) -> Result<lock::LockGuard, StoreError> {
        let path = self.layout.layer_lock(chain_id);
        lock::exclusive(&path).map_err(io_error(&path))
    }

    /// The lock an import holds on one of its image's layers until the
    /// image is committed, and whether the layer is there: shared when it is
    /// (nothing deletes it meanwhile, and a run's lease does not make the
    /// import wait), exclusive to build it when it is not.
    pub fn lock_layer_for_import(
        &self,
        chain_id: &Digest,
    ) -> Result<(lock::LockGuard, bool), StoreError> {
        let path = self.layout.layer_lock(chain_id);
        let shared = lock::shared(&path).map_err(io_error(&path))?;
        if self.has_layer(chain_id) {
            return Ok((shared, true));
        }
        drop(shared);
        let exclusive = self.lock_layer(chain_id)?;
        // Another import may have built it between the two locks.
        let present = self.has_layer(chain_id);
        Ok((exclusive, present))
    }

    /// Leases the layers of a resolved image for a run (see [`LayerLease`]),
    /// bottom to top as every locker goes. A layer deleted between the
    /// resolve and its lock is reported as missing, by name.
    pub fn lease(&self, image: &ResolvedImage) -> Result<LayerLease, StoreError> {
        let mut locks = Vec::with_capacity(image.layers.len());
        for layer in &image.layers {
            let chain_id = Digest::parse(&layer.chain_id)
                .map_err(|e| StoreError::Corrupt(format!("image {}: {e}", image.name)))?;
            let path = self.layout.layer_lock(&chain_id);
            locks.push(lock::shared(&path).map_err(io_error(&path))?);
            if !layer.disk.is_file() {
                return Err(StoreError::LayerMissing {
                    image: image.name.clone(),
                    chain_id: layer.chain_id.clone(),
                });
            }
        }
        Ok(LayerLease { locks })
    }

    /// Whether a run holds a lease on the layer right now: its lock is held,
    /// and held shared (an import building the layer holds it exclusive).
    fn layer_leased(&self, chain_id: &Digest) -> Result<bool, StoreError> {
        let path = self.layout.layer_lock(chain_id);
        if lock::try_exclusive(&path)
            .map_err(io_error(&path))?
            .is_some()
        {
            return Ok(false);
        }
        Ok(lock::try_shared(&path).map_err(io_error(&path))?.is_some())
    }

    /// IDs of every image in the image database.
    pub fn image_ids(&self) -> Result<Vec<Digest>, StoreError> {
        hex_entries(&self.layout.image_configs_dir())
    }

    /// An image's config, checked against its ID.
    pub fn image_config(&self, id: &Digest) -> Result<ImageConfiguration, StoreError> {
        let path = self.layout.image_config(id);
        let bytes = read_bounded(&path, MAX_JSON_BYTES).map_err(io_error(&path))?;
        if Digest::of_bytes(&bytes) != *id {
            return Err(StoreError::Corrupt(format!(
                "{} does not hash to its name",
                path.display()
            )));
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| StoreError::Corrupt(format!("{}: {e}", path.display())))
    }

    /// Raw config bytes (for `inspect --json`).
    pub fn image_config_bytes(&self, id: &Digest) -> Result<Vec<u8>, StoreError> {
        let path = self.layout.image_config(id);
        read_bounded(&path, MAX_JSON_BYTES).map_err(io_error(&path))
    }

    /// The digest of the manifest an image was imported with, if it had one.
    pub fn image_manifest_digest(&self, id: &Digest) -> Option<Digest> {
        let path = self.layout.image_metadata(id).join("manifest");
        let text = fs::read_to_string(path).ok()?;
        Digest::parse(text.trim()).ok()
    }

    /// The image imported with this manifest (a digest-pinned pull).
    pub fn image_by_manifest(&self, manifest: &Digest) -> Result<Option<Digest>, StoreError> {
        Ok(self
            .image_ids()?
            .into_iter()
            .find(|id| self.image_manifest_digest(id).as_ref() == Some(manifest)))
    }

    /// The layer blob digests a stored manifest lists (empty when the
    /// manifest is missing or unreadable).
    pub fn manifest_layers(&self, manifest: &Digest) -> Vec<Digest> {
        let path = self.layout.blob(manifest);
        let Ok(bytes) = read_bounded(&path, MAX_JSON_BYTES) else {
            return Vec::new();
        };
        let Ok(value) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
            return Vec::new();
        };
        value["layers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|l| Digest::parse(l["digest"].as_str()?).ok())
            .collect()
    }

    /// Keeps a verified blob (a pulled layer as the registry sent it) for
    /// `husk push`, moved into `blobs/`.
    pub fn keep_blob(&self, from: &Path, digest: &Digest) -> Result<(), StoreError> {
        let target = self.layout.blob(digest);
        if target.exists() {
            return fs::remove_file(from).map_err(io_error(from));
        }
        fs::rename(from, &target).map_err(io_error(&target))
    }

    /// A kept blob, if the store has it.
    pub fn blob(&self, digest: &Digest) -> Option<PathBuf> {
        Some(self.layout.blob(digest)).filter(|p| p.is_file())
    }

    pub fn has_layer(&self, chain_id: &Digest) -> bool {
        self.layout.layer_disk(chain_id).is_file()
    }

    /// IDs of every layer in the layer database.
    pub fn layer_ids(&self) -> Result<Vec<Digest>, StoreError> {
        hex_entries(&self.layout.layers_dir())
    }

    pub fn layer(&self, chain_id: &Digest) -> Result<LayerRecord, StoreError> {
        let dir = self.layout.layer_dir(chain_id);
        let read = |name: &str| -> Result<String, StoreError> {
            let path = dir.join(name);
            let bytes = read_bounded(&path, 4096).map_err(io_error(&path))?;
            String::from_utf8(bytes)
                .map(|s| s.trim().to_string())
                .map_err(|_| StoreError::Corrupt(format!("{} is not UTF-8", path.display())))
        };
        let diff_id = read("diff")?;
        let size_text = read("size")?;
        let size = size_text.parse().map_err(|_| {
            StoreError::Corrupt(format!("{}: bad size {size_text:?}", dir.display()))
        })?;
        let parent = match read("parent") {
            Ok(parent) => Some(parent),
            Err(StoreError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        let cache_id = read("cache-id")?;
        let disk = self.layout.layer_disk(chain_id);
        let disk_size = fs::metadata(&disk).map_err(io_error(&disk))?.len();
        Ok(LayerRecord {
            chain_id: chain_id.to_string(),
            diff_id,
            parent,
            size,
            cache_id,
            disk,
            disk_size,
        })
    }

    /// Every image with its tags, for `husk image ls`.
    pub fn images(&self) -> Result<Vec<ImageSummary>, StoreError> {
        let repositories = self.repositories()?;
        let mut images = Vec::new();
        for id in self.image_ids()? {
            let config = self.image_config(&id)?;
            let diff_ids = diff_ids_of(&config, &id)?;
            let mut size = 0;
            for chain_id in chain_ids(&diff_ids) {
                size += self.layer(&chain_id).map(|layer| layer.size).unwrap_or(0);
            }
            images.push(ImageSummary {
                id: id.to_string(),
                tags: repositories.tags_of(&id),
                created: config.created().clone(),
                layers: diff_ids.len(),
                size,
            });
        }
        images.sort_by(|a, b| a.tags.first().cmp(&b.tags.first()).then(a.id.cmp(&b.id)));
        Ok(images)
    }

    /// Moves a fully built layer directory (diff, parent, size, cache-id,
    /// layer.erofs) into the layer database with one rename. The caller
    /// holds the layer's lock and has checked it is not there yet.
    pub fn commit_layer(&self, staged: &Path, chain_id: &Digest) -> Result<(), StoreError> {
        let target = self.layout.layer_dir(chain_id);
        fs::rename(staged, &target).map_err(io_error(&target))?;
        let parent = self.layout.layers_dir();
        fs::File::open(&parent)
            .and_then(|dir| dir.sync_all())
            .map_err(io_error(&parent))
    }

    /// Records an image whose layers are all committed: its config (the ID
    /// is its digest), the manifest it came with, and its names. The caller
    /// still holds the layer locks, so nothing deletes those layers before
    /// the image refers to them.
    pub fn commit_image(
        &self,
        config: &[u8],
        manifest: Option<(&Digest, &[u8])>,
        names: &[String],
    ) -> Result<Digest, StoreError> {
        let id = Digest::of_bytes(config);
        let tmp = self.layout.tmp_dir();
        let _store = self.lock_store()?;
        if let Some((digest, bytes)) = manifest {
            let blob = self.layout.blob(digest);
            if !blob.exists() {
                write_atomic(&tmp, &blob, bytes).map_err(io_error(&blob))?;
            }
            let metadata = self.layout.image_metadata(&id);
            fs::create_dir_all(&metadata).map_err(io_error(&metadata))?;
            let path = metadata.join("manifest");
            write_atomic(&tmp, &path, digest.to_string().as_bytes()).map_err(io_error(&path))?;
        }
        let path = self.layout.image_config(&id);
        if !path.exists() {
            write_atomic(&tmp, &path, config).map_err(io_error(&path))?;
        }
        if !names.is_empty() {
            let mut repositories = self.repositories()?;
            for name in names {
                repositories.set(name, &id);
            }
            self.write_repositories(&repositories)?;
        }
        Ok(id)
    }

    /// Chain IDs used by any image in the database.
    fn referenced_layers(&self) -> Result<BTreeSet<Digest>, StoreError> {
        self.referenced_layers_except(None)
    }

    /// Chain IDs used by the images other than `except`.
    fn referenced_layers_except(
        &self,
        except: Option<&Digest>,
    ) -> Result<BTreeSet<Digest>, StoreError> {
        let mut referenced = BTreeSet::new();
        for id in self.image_ids()? {
            if Some(&id) == except {
                continue;
            }
            let config = self.image_config(&id)?;
            referenced.extend(chain_ids(&diff_ids_of(&config, &id)?));
        }
        Ok(referenced)
    }

    /// Layers that containers (running or stopped, not removed) use, with
    /// the first container using each: read from each container's monitor
    /// configuration (`containers/<id>/monitor.json`, its `disks`), by the
    /// layer directory its disks live in.
    pub fn container_layers(&self) -> Result<BTreeMap<Digest, String>, StoreError> {
        let mut used = BTreeMap::new();
        let containers = self.layout.root().join("containers");
        let Ok(entries) = fs::read_dir(&containers) else {
            return Ok(used);
        };
        let mut disks: Vec<(PathBuf, String)> = Vec::new();
        for entry in entries.flatten() {
            let id = entry.file_name().to_string_lossy().into_owned();
            let Ok(bytes) = fs::read(entry.path().join("monitor.json")) else {
                continue;
            };
            let Ok(config) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
                continue;
            };
            // A disk is one image file or the concatenated layer files
            // (sandbox::backend::DiskImage as JSON).
            for disk in config["disks"].as_array().into_iter().flatten() {
                let image = &disk["image"];
                let parts = image["concat"]["parts"].as_array().into_iter().flatten();
                for path in std::iter::once(&image["file"])
                    .chain(parts)
                    .filter_map(|p| p.as_str())
                {
                    disks.push((PathBuf::from(path), id.clone()));
                }
            }
        }
        for chain_id in self.layer_ids()? {
            let dir = self.layout.layer_dir(&chain_id);
            if let Some((_, container)) = disks.iter().find(|(p, _)| p.starts_with(&dir)) {
                used.insert(chain_id, container.clone());
            }
        }
        Ok(used)
    }

    /// Removes a tag, or with an ID all of an image's tags; the image goes
    /// when no tag is left, and then its layers that no other image uses.
    /// An image whose layers a container uses, or whose own layers (those
    /// no other image shares) a running container has leased, is not
    /// removed.
    pub fn remove(&self, name: &str) -> Result<RemoveReport, StoreError> {
        let (id, _) = self.resolve_id(name)?;
        let last_tag = {
            let repositories = self.repositories()?;
            let by_tag = reference::normalize(name)
                .ok()
                .filter(|n| repositories.lookup(n).is_some());
            by_tag.is_none() || repositories.tags_of(&id).len() <= 1
        };
        if last_tag {
            let chain = chain_ids(&diff_ids_of(&self.image_config(&id)?, &id)?);
            let in_use = self.container_layers()?;
            for chain_id in &chain {
                if let Some(container) = in_use.get(chain_id) {
                    return Err(StoreError::InUse {
                        image: name.to_string(),
                        chain_id: chain_id.to_string(),
                        container: container.clone(),
                    });
                }
            }
            let shared = self.referenced_layers_except(Some(&id))?;
            for chain_id in chain.iter().filter(|c| !shared.contains(c)) {
                if self.layer_leased(chain_id)? {
                    return Err(StoreError::Leased {
                        image: name.to_string(),
                        chain_id: chain_id.to_string(),
                    });
                }
            }
        }
        let by_tag = {
            let repositories = self.repositories()?;
            reference::normalize(name)
                .ok()
                .filter(|n| repositories.lookup(n).is_some())
        };
        let mut report = RemoveReport::default();
        let layers = {
            let _store = self.lock_store()?;
            let mut repositories = self.repositories()?;
            match &by_tag {
                Some(tag) => {
                    repositories.remove_tag(tag);
                    report.untagged.push(tag.clone());
                }
                None => {
                    report.untagged = repositories.tags_of(&id);
                    repositories.remove_image(&id);
                }
            }
            let delete_image = repositories.tags_of(&id).is_empty();
            let layers = if delete_image {
                chain_ids(&diff_ids_of(&self.image_config(&id)?, &id)?)
            } else {
                Vec::new()
            };
            self.write_repositories(&repositories)?;
            if delete_image {
                let config = self.layout.image_config(&id);
                fs::remove_file(&config).map_err(io_error(&config))?;
                let metadata = self.layout.image_metadata(&id);
                if metadata.exists() {
                    fs::remove_dir_all(&metadata).map_err(io_error(&metadata))?;
                }
                report.deleted_image = Some(id.to_string());
            }
            layers
        };
        // Top first: a layer's children go before it.
        for chain_id in layers.iter().rev() {
            match self.delete_layer_if_unreferenced(chain_id)? {
                Deletion::Deleted(_) => report.deleted_layers.push(chain_id.to_string()),
                Deletion::Leased => report.kept_leased.push(chain_id.to_string()),
                Deletion::Kept => {}
            }
        }
        self.delete_unreferenced_blobs()?;
        Ok(report)
    }

    /// Deletes layers no image uses, stale staging directories and blobs no
    /// image refers to.
    pub fn prune(&self) -> Result<PruneReport, StoreError> {
        let mut report = PruneReport {
            swept_staging: self.sweep_staging()? + self.sweep_downloads()?,
            ..Default::default()
        };
        let mut layers = self.layer_ids()?;
        // Deleting children before parents keeps every parent file valid.
        layers.sort_by_key(|chain_id| std::cmp::Reverse(self.layer_depth(chain_id)));
        let in_use = self.container_layers()?;
        let referenced = self.referenced_layers()?;
        for chain_id in layers {
            if let Some(container) = in_use.get(&chain_id) {
                if !referenced.contains(&chain_id) {
                    report
                        .kept_in_use
                        .push((chain_id.to_string(), container.clone()));
                }
                continue;
            }
            match self.delete_layer_if_unreferenced(&chain_id)? {
                Deletion::Deleted(bytes) => {
                    report.reclaimed_bytes += bytes;
                    report.deleted_layers.push(chain_id.to_string());
                }
                Deletion::Leased => report.kept_leased.push(chain_id.to_string()),
                Deletion::Kept => {}
            }
        }
        report.deleted_blobs = self.delete_unreferenced_blobs()?;
        report.swept_locks = self.sweep_lock_files()?;
        Ok(report)
    }

    /// Removes `locks/<chain id>.lock` files whose layer does not exist,
    /// each under its own lock (busy ones are kept), with the store lock
    /// held so that no import commits the layer meanwhile.
    fn sweep_lock_files(&self) -> Result<usize, StoreError> {
        let locks = self.layout.locks_dir();
        let mut swept = 0;
        for entry in fs::read_dir(&locks).map_err(io_error(&locks))? {
            let entry = entry.map_err(io_error(&locks))?;
            let Some(chain_id) = entry
                .file_name()
                .to_str()
                .and_then(|name| name.strip_suffix(".lock"))
                .and_then(|hex| Digest::from_hex(hex).ok())
            else {
                continue;
            };
            let path = self.layout.layer_lock(&chain_id);
            if self.layout.layer_dir(&chain_id).exists() {
                continue;
            }
            let Some(held) = lock::try_exclusive(&path).map_err(io_error(&path))? else {
                continue;
            };
            let _store = self.lock_store()?;
            if self.layout.layer_dir(&chain_id).exists() {
                continue;
            }
            held.remove(&path).map_err(io_error(&path))?;
            swept += 1;
        }
        Ok(swept)
    }

    fn layer_depth(&self, chain_id: &Digest) -> usize {
        let mut depth = 0;
        let mut current = self.layer(chain_id).ok().and_then(|l| l.parent);
        while let Some(parent) = current {
            depth += 1;
            if depth > 1024 {
                break;
            }
            current = Digest::parse(&parent)
                .ok()
                .and_then(|p| self.layer(&p).ok())
                .and_then(|l| l.parent);
        }
        depth
    }

    /// Lock order everywhere: layer locks (bottom to top) before the store
    /// lock. The layer's lock is only tried, never waited for: a layer an
    /// import is building or committing, or a run has leased, is kept.
    fn delete_layer_if_unreferenced(&self, chain_id: &Digest) -> Result<Deletion, StoreError> {
        let lock_path = self.layout.layer_lock(chain_id);
        let Some(_layer) = lock::try_exclusive(&lock_path).map_err(io_error(&lock_path))? else {
            // An image still uses it: not a deletion anyone asked for.
            if self.referenced_layers()?.contains(chain_id) {
                return Ok(Deletion::Kept);
            }
            if lock::try_shared(&lock_path)
                .map_err(io_error(&lock_path))?
                .is_some()
            {
                tracing::info!(%chain_id, "layer in use by a running container: kept");
                return Ok(Deletion::Leased);
            }
            tracing::info!(%chain_id, "layer busy (an import is using it): kept");
            return Ok(Deletion::Kept);
        };
        let _store = self.lock_store()?;
        if self.referenced_layers()?.contains(chain_id) {
            return Ok(Deletion::Kept);
        }
        let dir = self.layout.layer_dir(chain_id);
        if !dir.exists() {
            return Ok(Deletion::Kept);
        }
        let bytes = fsutil::tree_size(&dir).map_err(io_error(&dir))?;
        fsutil::remove_tree_atomically(&self.layout.tmp_dir(), &dir).map_err(io_error(&dir))?;
        tracing::info!(%chain_id, "layer deleted");
        Ok(Deletion::Deleted(bytes))
    }

    fn delete_unreferenced_blobs(&self) -> Result<Vec<String>, StoreError> {
        let _store = self.lock_store()?;
        // An image's manifest, and the layer blobs a pull kept beside it.
        let mut referenced = BTreeSet::new();
        for manifest in self
            .image_ids()?
            .iter()
            .filter_map(|id| self.image_manifest_digest(id))
        {
            referenced.extend(self.manifest_layers(&manifest));
            referenced.insert(manifest);
        }
        let mut deleted = Vec::new();
        for blob in hex_entries(&self.layout.blobs_dir())? {
            if !referenced.contains(&blob) {
                let path = self.layout.blob(&blob);
                fs::remove_file(&path).map_err(io_error(&path))?;
                deleted.push(blob.to_string());
            }
        }
        Ok(deleted)
    }

    /// Removes the blobs interrupted pulls left to resume from, except those
    /// a pull is downloading now (it holds their download lock).
    pub fn sweep_downloads(&self) -> Result<usize, StoreError> {
        let dir = self.layout.downloads_dir();
        let Ok(entries) = fs::read_dir(&dir) else {
            return Ok(0);
        };
        let mut swept = 0;
        for entry in entries {
            let entry = entry.map_err(io_error(&dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let hex = name.strip_suffix(".partial").unwrap_or(&name);
            let Ok(blob) = Digest::from_hex(hex) else {
                continue;
            };
            let lock_path = self.layout.download_lock(&blob);
            let Some(_held) = lock::try_exclusive(&lock_path).map_err(io_error(&lock_path))? else {
                continue;
            };
            let path = entry.path();
            fs::remove_file(&path).map_err(io_error(&path))?;
            tracing::info!(path = %path.display(), "removed an interrupted download");
            swept += 1;
        }
        Ok(swept)
    }

    /// Removes staging directories left by interrupted imports: those no
    /// live import holds a lock on, and old enough not to be brand new.
    pub fn sweep_staging(&self) -> Result<usize, StoreError> {
        let tmp = self.layout.tmp_dir();
        let downloads = self.layout.downloads_dir();
        let mut swept = 0;
        for entry in fs::read_dir(&tmp).map_err(io_error(&tmp))? {
            let entry = entry.map_err(io_error(&tmp))?;
            let path = entry.path();
            // Partial downloads are what a later pull resumes from; only
            // `prune` drops them.
            if path == downloads {
                continue;
            }
            let Ok(metadata) = fs::symlink_metadata(&path) else {
                continue;
            };
            let age = metadata
                .modified()
                .ok()
                .and_then(|m| SystemTime::now().duration_since(m).ok());
            if age.is_none_or(|age| age < STALE_STAGING_AGE) {
                continue;
            }
            if metadata.is_dir() {
                let Ok(Some(_held)) = lock::try_exclusive_existing(&path) else {
                    continue;
                };
                fs::remove_dir_all(&path).map_err(io_error(&path))?;
            } else {
                fs::remove_file(&path).map_err(io_error(&path))?;
            }
            tracing::info!(path = %path.display(), "swept stale staging entry");
            swept += 1;
        }
        Ok(swept)
    }
}

/// The config's diff IDs, parsed.
pub fn diff_ids_of(config: &ImageConfiguration, id: &Digest) -> Result<Vec<Digest>, StoreError> {
    config
        .rootfs()
        .diff_ids()
        .iter()
        .map(|d| Digest::parse(d).map_err(|e| StoreError::Corrupt(format!("image {id}: {e}"))))
        .collect()
}

/// Entries of a directory named by 64-digit hex (others are ignored).
fn hex_entries(dir: &Path) -> Result<Vec<Digest>, StoreError> {
    let mut ids = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_error(dir))? {
        let entry = entry.map_err(io_error(dir))?;
        if let Some(id) = entry
            .file_name()
            .to_str()
            .and_then(|n| Digest::from_hex(n).ok())
        {
            ids.push(id);
        }
    }
    ids.sort();
    Ok(ids)
}
