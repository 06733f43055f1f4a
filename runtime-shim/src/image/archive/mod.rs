//! Reading an image archive: an OCI image layout (directory or tar) or a
//! `docker save` tar. `Source` gives access to the archive's members by
//! name; `oci` and `docker` turn them into [`ImagePlan`]s that say what to
//! import and what every blob must hash to.

pub mod docker;
pub mod oci;

use super::digest::{Digest, DigestError};
use super::fsutil::read_all_bounded;
use super::limits::Limits;
use super::media::{LayerFormat, MediaError};
use oci_spec::image::ImageConfiguration;
use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("{}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{0} is neither an OCI image layout nor a docker archive (no oci-layout/index.json or manifest.json)")]
    UnknownFormat(String),
    #[error("{0} is not a tar archive (nor a directory): expected an OCI image layout or a docker archive")]
    NotATar(String),
    #[error("{path}: the tar archive is truncated or corrupt after member {after:?}")]
    TruncatedTar {
        path: String,
        after: String,
        source: io::Error,
    },
    #[error("blob {0:?} is missing from the archive")]
    MissingBlob(String),
    #[error("member name {0:?} is not a plain relative path")]
    BadMemberName(String),
    #[error("archive has more than {0} members (limit)")]
    TooManyMembers(u64),
    #[error("archive is truncated: member {0:?} ends past the end of the file")]
    Truncated(String),
    #[error("blob {blob}: {what} does not match: expected {expected}, got {actual}")]
    Mismatch {
        blob: String,
        what: &'static str,
        expected: String,
        actual: String,
    },
    #[error("{what}")]
    Digest { what: String, source: DigestError },
    #[error("{what}")]
    Media { what: String, source: MediaError },
    #[error("{what}: invalid JSON")]
    Json {
        what: String,
        source: serde_json::Error,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("reading {what}")]
    Read { what: String, source: io::Error },
}

/// One image to import, fully described before anything is written.
#[derive(Debug)]
pub struct ImagePlan {
    /// Normalized names (`busybox:latest`) the archive gives it.
    pub names: Vec<String>,
    /// The manifest it came with (OCI layouts), already verified.
    pub manifest: Option<(Digest, Vec<u8>)>,
    /// Config bytes, their digest (the image ID) and parsed form.
    pub config_bytes: Vec<u8>,
    pub id: Digest,
    pub layers: Vec<LayerPlan>,
}

#[derive(Debug, Clone)]
pub struct LayerPlan {
    /// Archive member holding the (maybe compressed) layer tar.
    pub member: String,
    /// What the blob must hash to, when the archive says (OCI descriptors,
    /// content-addressed docker paths).
    pub blob_digest: Option<Digest>,
    /// Its size in bytes, when a descriptor says.
    pub blob_size: Option<u64>,
    pub format: LayerFormat,
    /// What the uncompressed tar must hash to (the config's diff ID).
    pub diff_id: Digest,
}

/// Where an archive's members are read from.
pub enum Source {
    Dir(PathBuf),
    Tar(TarIndex),
}

/// Member name → where its bytes sit in the tar file (read with seeks, so
/// nothing is extracted before it is verified).
pub struct TarIndex {
    path: PathBuf,
    members: HashMap<String, Member>,
}

enum Member {
    File {
        offset: u64,
        size: u64,
    },
    /// Symlinks and hard links between members (docker save links repeated
    /// layers), resolved at lookup.
    Alias(String),
}

impl Source {
    pub fn open(path: &Path, limits: &Limits) -> Result<Source, ArchiveError> {
        let io_err = |source| ArchiveError::Io {
            path: path.to_path_buf(),
            source,
        };
        let metadata = std::fs::metadata(path).map_err(io_err)?;
        if metadata.is_dir() {
            return Ok(Source::Dir(path.to_path_buf()));
        }
        Ok(Source::Tar(TarIndex::build(path, metadata.len(), limits)?))
    }

    pub fn has(&self, name: &str) -> bool {
        self.locate(name).is_ok()
    }

    /// Opens a member; returns its reader and size.
    pub fn open_member(&self, name: &str) -> Result<(Box<dyn Read + Send>, u64), ArchiveError> {
        match self {
            Source::Dir(root) => {
                let relative = normalize_member(name)?;
                let path = root.join(&relative);
                let file = File::open(&path).map_err(|e| match e.kind() {
                    io::ErrorKind::NotFound => ArchiveError::MissingBlob(name.to_string()),
                    _ => ArchiveError::Io {
                        path: path.clone(),
                        source: e,
                    },
                })?;
                let metadata = file.metadata().map_err(|source| ArchiveError::Io {
                    path: path.clone(),
                    source,
                })?;
                if !metadata.is_file() {
                    return Err(ArchiveError::MissingBlob(name.to_string()));
                }
                Ok((Box::new(file), metadata.len()))
            }
            Source::Tar(index) => {
                let (offset, size) = self.locate(name)?;
                let mut file = File::open(&index.path).map_err(|source| ArchiveError::Io {
                    path: index.path.clone(),
                    source,
                })?;
                file.seek(SeekFrom::Start(offset))
                    .map_err(|source| ArchiveError::Io {
                        path: index.path.clone(),
                        source,
                    })?;
                Ok((Box::new(file.take(size)), size))
            }
        }
    }

    /// A small member read whole (JSON documents), bounded.
    pub fn read_small(&self, name: &str, limit: u64) -> Result<Vec<u8>, ArchiveError> {
        let (reader, size) = self.open_member(name)?;
        if size > limit {
            return Err(ArchiveError::Invalid(format!(
                "{name} is larger than {limit} bytes (limit)"
            )));
        }
        read_all_bounded(reader, limit).map_err(|source| ArchiveError::Read {
            what: name.to_string(),
            source,
        })
    }

    fn locate(&self, name: &str) -> Result<(u64, u64), ArchiveError> {
        match self {
            Source::Dir(root) => {
                let path = root.join(normalize_member(name)?);
                match std::fs::metadata(&path) {
                    Ok(m) if m.is_file() => Ok((0, m.len())),
                    _ => Err(ArchiveError::MissingBlob(name.to_string())),
                }
            }
            Source::Tar(index) => {
                let mut current = normalize_member(name)?;
                // Bounded: a cycle of links must not loop forever.
                for _ in 0..16 {
                    match index.members.get(&current) {
                        Some(Member::File { offset, size }) => return Ok((*offset, *size)),
                        Some(Member::Alias(target)) => current = target.clone(),
                        None => break,
                    }
                }
                Err(ArchiveError::MissingBlob(name.to_string()))
            }
        }
    }
}

impl TarIndex {
    fn build(path: &Path, file_len: u64, limits: &Limits) -> Result<TarIndex, ArchiveError> {
        let io_err = |source| ArchiveError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io_err)?;
        let mut archive = tar::Archive::new(file);
        let mut members = HashMap::new();
        let mut count = 0u64;
        let mut last_name = String::new();
        let read_err = |source| ArchiveError::Read {
            what: path.display().to_string(),
            source,
        };
        for entry in archive.entries_with_seek().map_err(read_err)? {
            // A file that fails at its first header is not a tar at all;
            // the tar crate's message would quote its garbage.
            let entry = match entry {
                Ok(entry) => entry,
                Err(_) if count == 0 => {
                    return Err(ArchiveError::NotATar(path.display().to_string()))
                }
                Err(source) => {
                    return Err(ArchiveError::TruncatedTar {
                        path: path.display().to_string(),
                        after: last_name,
                        source,
                    })
                }
            };
            count += 1;
            if count > limits.max_archive_members {
                return Err(ArchiveError::TooManyMembers(limits.max_archive_members));
            }
            let raw_name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            last_name.clone_from(&raw_name);
            // Members with odd names cannot be referenced by a manifest we
            // accept, so they are simply not indexed.
            let Ok(name) = normalize_member(&raw_name) else {
                continue;
            };
            let kind = entry.header().entry_type();
            let member = if kind.is_file() {
                let (offset, size) = (entry.raw_file_position(), entry.size());
                if offset.checked_add(size).is_none_or(|end| end > file_len) {
                    return Err(ArchiveError::Truncated(name));
                }
                Member::File { offset, size }
            } else if kind.is_symlink() || kind.is_hard_link() {
                let Some(target) = entry.link_name_bytes() else {
                    continue;
                };
                let target = String::from_utf8_lossy(&target).into_owned();
                let joined = if kind.is_symlink() {
                    // Relative to the link's directory.
                    match name.rsplit_once('/') {
                        Some((dir, _)) => format!("{dir}/{target}"),
                        None => target,
                    }
                } else {
                    target
                };
                match normalize_member(&joined) {
                    Ok(target) => Member::Alias(target),
                    Err(_) => continue,
                }
            } else {
                continue;
            };
            members.insert(name, member);
        }
        Ok(TarIndex {
            path: path.to_path_buf(),
            members,
        })
    }
}

/// `./a/../b` style names are resolved lexically; anything climbing out of
/// the archive, absolute, or empty is refused.
pub fn normalize_member(name: &str) -> Result<String, ArchiveError> {
    let bad = || ArchiveError::BadMemberName(name.to_string());
    if name.starts_with('/') || name.contains('\0') {
        return Err(bad());
    }
    let mut parts: Vec<&str> = Vec::new();
    for part in name.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop().ok_or_else(bad)?;
            }
            _ => parts.push(part),
        }
    }
    if parts.is_empty() {
        return Err(bad());
    }
    Ok(parts.join("/"))
}

/// Reads a blob named by a descriptor and checks its size and digest.
pub fn read_verified(
    source: &Source,
    digest: &Digest,
    size: Option<u64>,
    limits: &Limits,
) -> Result<Vec<u8>, ArchiveError> {
    let name = blob_path(digest);
    let bytes = source.read_small(&name, limits.max_json_bytes)?;
    if let Some(size) = size {
        if bytes.len() as u64 != size {
            return Err(ArchiveError::Mismatch {
                blob: name,
                what: "size",
                expected: size.to_string(),
                actual: bytes.len().to_string(),
            });
        }
    }
    let actual = Digest::of_bytes(&bytes);
    if actual != *digest {
        return Err(ArchiveError::Mismatch {
            blob: name,
            what: "sha256",
            expected: digest.to_string(),
            actual: actual.to_string(),
        });
    }
    Ok(bytes)
}

pub fn blob_path(digest: &Digest) -> String {
    format!("blobs/sha256/{}", digest.hex())
}

/// Reads every image an archive holds.
pub fn plans(
    source: &Source,
    label: &str,
    limits: &Limits,
) -> Result<Vec<ImagePlan>, ArchiveError> {
    let plans = if source.has("oci-layout") && source.has("index.json") {
        oci::plans(source, label, limits)?
    } else if source.has("manifest.json") {
        docker::plans(source, limits)?
    } else {
        return Err(ArchiveError::UnknownFormat(label.to_string()));
    };
    if plans.is_empty() {
        return Err(ArchiveError::Invalid(format!("{label} holds no image")));
    }
    Ok(plans)
}

/// Parses a config, checks it against the layers the manifest lists, and
/// returns its diff IDs.
pub fn parse_config(
    bytes: &[u8],
    what: &str,
    layers: usize,
    limits: &Limits,
) -> Result<Vec<Digest>, ArchiveError> {
    let config: ImageConfiguration =
        serde_json::from_slice(bytes).map_err(|source| ArchiveError::Json {
            what: what.to_string(),
            source,
        })?;
    let diff_ids = config
        .rootfs()
        .diff_ids()
        .iter()
        .map(|d| {
            Digest::parse(d).map_err(|source| ArchiveError::Digest {
                what: format!("{what}: diff_id"),
                source,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if diff_ids.len() != layers {
        return Err(ArchiveError::Invalid(format!(
            "{what}: config lists {} diff_ids but the manifest has {layers} layers",
            diff_ids.len()
        )));
    }
    if diff_ids.is_empty() {
        return Err(ArchiveError::Invalid(format!(
            "{what}: image has no layers"
        )));
    }
    if diff_ids.len() > limits.max_layers {
        return Err(ArchiveError::Invalid(format!(
            "{what}: more than {} layers (limit)",
            limits.max_layers
        )));
    }
    Ok(diff_ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_names() {
        assert_eq!(
            normalize_member("./blobs/sha256/ab").unwrap(),
            "blobs/sha256/ab"
        );
        assert_eq!(normalize_member("a/../b/layer.tar").unwrap(), "b/layer.tar");
        assert!(normalize_member("../x").is_err());
        assert!(normalize_member("/etc/passwd").is_err());
        assert!(normalize_member("./").is_err());
    }
}
