//! Limits on what an archive may make the store do. Archives come from
//! anywhere; these bound disk, memory and time before anything is stored.

/// Documented defaults; `husk image import --max-entries/--max-layer-size`
/// override the two an operator may legitimately need to raise.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Tar entries per layer (files, directories, links, whiteouts).
    pub max_entries_per_layer: u64,
    /// Bytes of one uncompressed layer tar; also bounds decompression bombs.
    pub max_layer_bytes: u64,
    /// Bytes of one compressed layer blob as read from the archive.
    pub max_blob_bytes: u64,
    /// Bytes of a path inside a layer (Linux PATH_MAX).
    pub max_path_bytes: usize,
    /// Components of a path inside a layer.
    pub max_path_depth: usize,
    /// Layers per image (overlayfs stacks only so many lower directories).
    pub max_layers: usize,
    /// Members of an outer archive (OCI layout tar, docker save tar).
    pub max_archive_members: u64,
    /// Bytes of a JSON document (index, manifest, config, manifest.json).
    pub max_json_bytes: u64,
    /// Extended attributes on one entry, and bytes of one value (XATTR_SIZE_MAX).
    pub max_xattrs_per_entry: usize,
    pub max_xattr_value_bytes: usize,
}

pub const GIB: u64 = 1 << 30;

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_entries_per_layer: 1_000_000,
            max_layer_bytes: 64 * GIB,
            max_blob_bytes: 64 * GIB,
            max_path_bytes: 4096,
            max_path_depth: 256,
            max_layers: 125,
            max_archive_members: 1_000_000,
            max_json_bytes: super::store::MAX_JSON_BYTES,
            max_xattrs_per_entry: 128,
            max_xattr_value_bytes: 64 * 1024,
        }
    }
}
