//! One blob from a registry into the store's downloads area, hashed while
//! it streams. An interrupted download stays as `<hex>.partial` and the next
//! pull asks the registry for the rest (an HTTP range request), after
//! hashing what is already there; a complete blob whose digest is wrong is
//! deleted at once. Each blob is downloaded under its lock in `locks/`, so
//! two pulls never write one file.

use super::progress::BlobProgress;
use super::{classify, PullError};
use crate::image::digest::Digest;
use crate::image::layout::Layout;
use crate::image::lock::{self, LockGuard};
use futures_util::StreamExt as _;
use oci_client::client::BlobResponse;
use oci_client::manifest::OciDescriptor;
use oci_client::{Client, Reference};
use sha2::{Digest as _, Sha256};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read as _, Write as _};
use std::path::{Path, PathBuf};

/// A blob to fetch: its digest and the size its descriptor gives.
#[derive(Debug, Clone)]
pub struct BlobTask {
    pub digest: Digest,
    pub size: u64,
    pub media_type: String,
}

/// What a finished download did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Fetched {
    /// Bytes that came over the network.
    pub downloaded: u64,
    /// Bytes a previous, interrupted pull had already fetched.
    pub resumed: u64,
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> PullError + '_ {
    move |source| PullError::Io {
        path: path.to_path_buf(),
        source,
    }
}

pub fn complete_path(layout: &Layout, blob: &Digest) -> PathBuf {
    layout.downloads_dir().join(blob.hex())
}

fn partial_path(layout: &Layout, blob: &Digest) -> PathBuf {
    layout
        .downloads_dir()
        .join(format!("{}.partial", blob.hex()))
}

async fn lock_blob(layout: &Layout, blob: &Digest) -> Result<LockGuard, PullError> {
    let path = layout.download_lock(blob);
    tokio::task::spawn_blocking(move || lock::exclusive(&path).map_err(|e| (path, e)))
        .await
        .map_err(|e| PullError::Io {
            path: PathBuf::from("download lock"),
            source: io::Error::other(e),
        })?
        .map_err(|(path, source)| PullError::Io { path, source })
}

/// Fetches `task` into `<downloads>/<hex>` (verified), resuming a partial
/// file if one is there.
pub async fn fetch(
    client: &Client,
    reference: &Reference,
    layout: &Layout,
    task: &BlobTask,
    progress: &BlobProgress,
) -> Result<Fetched, PullError> {
    let dir = layout.downloads_dir();
    fs::create_dir_all(&dir).map_err(io_error(&dir))?;
    let _lock = lock_blob(layout, &task.digest).await?;
    let done = complete_path(layout, &task.digest);
    if done.is_file() {
        progress.present();
        return Ok(Fetched::default());
    }
    let partial = partial_path(layout, &task.digest);
    let result = download(client, reference, task, &partial, progress).await;
    match result {
        Ok(fetched) => {
            fs::rename(&partial, &done).map_err(io_error(&done))?;
            progress.done();
            Ok(fetched)
        }
        Err(e) => {
            progress.failed();
            // A blob that is not what its digest says is worthless: nothing
            // of it is kept. Anything else (the network) leaves the partial
            // file for the next pull to resume.
            if matches!(
                e,
                PullError::DigestMismatch { .. } | PullError::SizeMismatch { .. }
            ) {
                let _ = fs::remove_file(&partial);
            }
            Err(e)
        }
    }
}

/// Hashes what an earlier pull left in `partial`; 0 bytes (file emptied)
/// when it is unusable (larger than the blob).
fn resume_point(partial: &Path, size: u64, hasher: &mut Sha256) -> Result<u64, PullError> {
    let mut file = match File::open(partial) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io_error(partial)(e)),
    };
    let len = file.metadata().map_err(io_error(partial))?.len();
    if len >= size {
        // A complete-sized partial file was never verified (the pull died
        // between the last byte and the rename): start over.
        drop(file);
        File::create(partial).map_err(io_error(partial))?;
        return Ok(0);
    }
    let mut buffer = vec![0u8; 1 << 20];
    let mut read = 0u64;
    loop {
        let n = file.read(&mut buffer).map_err(io_error(partial))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        read += n as u64;
    }
    Ok(read)
}

async fn download(
    client: &Client,
    reference: &Reference,
    task: &BlobTask,
    partial: &Path,
    progress: &BlobProgress,
) -> Result<Fetched, PullError> {
    let registry = reference.registry().to_string();
    let mut hasher = Sha256::new();
    let mut offset = resume_point(partial, task.size, &mut hasher)?;
    let descriptor = OciDescriptor {
        media_type: task.media_type.clone(),
        digest: task.digest.to_string(),
        size: task.size as i64,
        ..Default::default()
    };
    let what = format!("blob {}", task.digest);
    let stream = if offset > 0 {
        match client
            .pull_blob_stream_partial(reference, &descriptor, offset, None)
            .await
            .map_err(|e| classify(e, &registry, &what))?
        {
            BlobResponse::Partial(stream) => stream,
            BlobResponse::Full(stream) => {
                // No range support: what we had is thrown away.
                progress.restart();
                hasher = Sha256::new();
                offset = 0;
                File::create(partial).map_err(io_error(partial))?;
                stream
            }
        }
    } else {
        client
            .pull_blob_stream(reference, &descriptor)
            .await
            .map_err(|e| classify(e, &registry, &what))?
    };
    let resumed = offset;
    progress.start(offset);
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(partial)
        .map_err(io_error(partial))?;
    let mut stream = stream.stream;
    let mut received = offset;
    let mut stream_error = None;
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(e) => {
                stream_error = Some(e);
                break;
            }
        };
        received += chunk.len() as u64;
        if received > task.size {
            return Err(PullError::SizeMismatch {
                blob: task.digest.to_string(),
                expected: task.size,
                actual: received,
            });
        }
        hasher.update(&chunk);
        file.write_all(&chunk).map_err(io_error(partial))?;
        progress.advance(chunk.len() as u64);
    }
    file.sync_data().map_err(io_error(partial))?;
    if received < task.size {
        let cause = stream_error
            .map(|e| super::error_chain(&e))
            .unwrap_or_else(|| "the connection ended early".into());
        return Err(PullError::Interrupted {
            registry,
            blob: task.digest.to_string(),
            received,
            size: task.size,
            cause,
        });
    }
    // All bytes are here: the digest decides (oci-client's own check of a
    // full response may have reported the mismatch as a stream error).
    let actual = Digest::from_hex(&hex::encode(hasher.finalize())).map_err(|e| PullError::Io {
        path: partial.to_path_buf(),
        source: io::Error::other(e),
    })?;
    if actual != task.digest {
        return Err(PullError::DigestMismatch {
            registry,
            blob: task.digest.to_string(),
            actual: actual.to_string(),
        });
    }
    Ok(Fetched {
        downloaded: received - resumed,
        resumed,
    })
}
