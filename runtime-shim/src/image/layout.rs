//! Where everything lives under the store root. Modelled on Docker's
//! `/var/lib/docker/image/<driver>/` so the tree is familiar:
//!
//! ```text
//! <root>/blobs/sha256/<hex>                  manifests as imported (content-addressed)
//! <root>/imagedb/content/sha256/<id>         image config JSON; image ID = its sha256
//! <root>/imagedb/metadata/sha256/<id>/manifest  digest of the manifest it came with
//! <root>/repositories.json                   {"Repositories": {repo: {"repo:tag": id}}}
//! <root>/layerdb/sha256/<chain id>/diff      diff ID (sha256 of the uncompressed tar)
//!                                 /parent    parent chain ID (absent for a base layer)
//!                                 /size      bytes of the uncompressed tar
//!                                 /cache-id  random name the layer was built under
//!                                 /layer.erofs  the read-only disk image VMs attach
//! <root>/tmp/                                staging (same filesystem: renames are atomic)
//! <root>/tmp/downloads/<hex>[.partial]        registry blobs being pulled (kept to resume)
//! <root>/locks/                              flock files: store.lock, <chain id>.lock
//!                                            (exclusive to build, commit or delete a layer;
//!                                            shared: a run's lease, an import reusing it)
//! ```

use super::digest::Digest;
use std::path::{Path, PathBuf};

pub const LAYER_DISK: &str = "layer.erofs";

#[derive(Clone, Debug)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
        }
    }

    /// Directories `Store::open` creates.
    pub fn directories(&self) -> [PathBuf; 6] {
        [
            self.blobs_dir(),
            self.image_configs_dir(),
            self.image_metadata_dir(),
            self.layers_dir(),
            self.tmp_dir(),
            self.locks_dir(),
        ]
    }

    pub fn blobs_dir(&self) -> PathBuf {
        self.root.join("blobs/sha256")
    }

    pub fn blob(&self, digest: &Digest) -> PathBuf {
        self.blobs_dir().join(digest.hex())
    }

    pub fn image_configs_dir(&self) -> PathBuf {
        self.root.join("imagedb/content/sha256")
    }

    pub fn image_config(&self, id: &Digest) -> PathBuf {
        self.image_configs_dir().join(id.hex())
    }

    pub fn image_metadata_dir(&self) -> PathBuf {
        self.root.join("imagedb/metadata/sha256")
    }

    pub fn image_metadata(&self, id: &Digest) -> PathBuf {
        self.image_metadata_dir().join(id.hex())
    }

    pub fn repositories(&self) -> PathBuf {
        self.root.join("repositories.json")
    }

    pub fn layers_dir(&self) -> PathBuf {
        self.root.join("layerdb/sha256")
    }

    pub fn layer_dir(&self, chain_id: &Digest) -> PathBuf {
        self.layers_dir().join(chain_id.hex())
    }

    pub fn layer_disk(&self, chain_id: &Digest) -> PathBuf {
        self.layer_dir(chain_id).join(LAYER_DISK)
    }

    /// The store root itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// Blobs `husk pull` is downloading (`<hex>.partial`, resumed by the
    /// next pull) or has verified (`<hex>`, until their layer is built).
    /// Inside the staging area, but not swept with it.
    pub fn downloads_dir(&self) -> PathBuf {
        self.tmp_dir().join("downloads")
    }

    /// Held while a blob is downloaded into [`Self::downloads_dir`].
    pub fn download_lock(&self, blob: &Digest) -> PathBuf {
        self.locks_dir()
            .join(format!("download-{}.lock", blob.hex()))
    }

    pub fn locks_dir(&self) -> PathBuf {
        self.root.join("locks")
    }

    /// Serialises writers of `repositories.json` and the image database.
    pub fn store_lock(&self) -> PathBuf {
        self.locks_dir().join("store.lock")
    }

    /// Held exclusive while a layer is built, committed, or deleted; shared
    /// by the runs that lease it and the imports that reuse it.
    pub fn layer_lock(&self, chain_id: &Digest) -> PathBuf {
        self.locks_dir().join(format!("{}.lock", chain_id.hex()))
    }
}
