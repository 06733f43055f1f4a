//! `husk push`: an image of the store to a registry, as it came: its
//! manifest, config and the compressed layer blobs a pull kept, byte for
//! byte, so the digests in the registry are the ones in the store. Blobs
//! the registry already has are not sent again.

use super::{classify, client_for, error_chain, parse_reference, PullError, RegistryOptions};
use crate::image::digest::Digest;
use crate::image::media;
use crate::image::store::Store;
use futures_util::StreamExt as _;
use oci_client::RegistryOperation;
use std::io;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Bytes read from a blob file per chunk sent.
const CHUNK: usize = 4 << 20;

#[derive(Debug, Clone, serde::Serialize)]
pub struct PushReport {
    pub reference: String,
    pub manifest_digest: String,
    pub layers: usize,
    /// Blobs (config and layers) sent; the others were in the registry.
    pub pushed_blobs: usize,
    pub pushed_bytes: u64,
    #[serde(skip)]
    pub elapsed: Duration,
}

/// Pushes the store's `image` to `destination` (a full reference).
pub fn push(
    store: &Store,
    image: &str,
    destination: &str,
    options: &RegistryOptions,
    progress: bool,
) -> Result<PushReport, PullError> {
    let started = Instant::now();
    let (id, _) = store.resolve_id(image)?;
    let what = |reason: &str| PullError::Invalid {
        what: format!("push {image}"),
        reason: reason.to_string(),
    };
    let manifest_digest = store
        .image_manifest_digest(&id)
        .ok_or_else(|| what("the store has no manifest for it (imported from a docker archive); only pulled images and OCI layouts keep one"))?;
    let manifest_path = store
        .blob(&manifest_digest)
        .ok_or_else(|| what("its manifest is missing from the store"))?;
    let manifest_bytes = std::fs::read(&manifest_path).map_err(|source| PullError::Io {
        path: manifest_path.clone(),
        source,
    })?;
    let manifest: serde_json::Value =
        serde_json::from_slice(&manifest_bytes).map_err(|e| what(&format!("its manifest: {e}")))?;
    let media_type = manifest["mediaType"]
        .as_str()
        .unwrap_or(media::OCI_MANIFEST)
        .to_string();
    if Digest::parse(manifest["config"]["digest"].as_str().unwrap_or_default()).ok()
        != Some(id.clone())
    {
        return Err(what("its manifest names another config"));
    }
    let config = store.image_config_bytes(&id)?;
    let layers = store.manifest_layers(&manifest_digest);

    let reference = parse_reference(destination)?;
    let registry = reference.registry().to_string();
    let (client, auth) = client_for(options, &reference)?;
    let rt = super::runtime()?;
    let note = |text: String| {
        if progress {
            eprintln!("{text}");
        }
    };
    let (pushed_blobs, pushed_bytes) = rt.block_on(async {
        client
            .auth(&reference, &auth, RegistryOperation::Push)
            .await
            .map_err(|e| classify(e, &registry, "push"))?;
        let mut pushed = (0usize, 0u64);
        // The config, then each layer; what the registry has is skipped.
        let mut blobs: Vec<(Digest, Option<PathBuf>)> = vec![(id.clone(), None)];
        blobs.extend(layers.iter().map(|d| (d.clone(), store.blob(d))));
        for (digest, path) in blobs {
            let exists = client
                .blob_exists(&reference, &digest.to_string())
                .await
                .map_err(|e| classify(e, &registry, &format!("blob {digest}")))?;
            if exists {
                note(format!("blob {}: already in {registry}", digest.short()));
                continue;
            }
            let sent = match path {
                None if digest == id => {
                    let size = config.len() as u64;
                    client
                        .push_blob(&reference, config.clone(), &digest.to_string())
                        .await
                        .map_err(|e| classify(e, &registry, &format!("blob {digest}")))?;
                    size
                }
                None => {
                    return Err(what(&format!(
                        "the store did not keep layer blob {digest} (its layer came from an archive or an image with other blobs) and {registry} does not have it"
                    )))
                }
                Some(path) => push_file(&client, &reference, &registry, &digest, path).await?,
            };
            note(format!("blob {}: pushed ({sent} bytes)", digest.short()));
            pushed.0 += 1;
            pushed.1 += sent;
        }
        let content_type = http::HeaderValue::from_str(&media_type)
            .map_err(|e| what(&format!("media type {media_type:?}: {e}")))?;
        client
            .push_manifest_raw(&reference, manifest_bytes.clone(), content_type)
            .await
            .map_err(|e| classify(e, &registry, "manifest"))?;
        Ok::<_, PullError>(pushed)
    })?;
    Ok(PushReport {
        reference: reference.whole(),
        manifest_digest: manifest_digest.to_string(),
        layers: layers.len(),
        pushed_blobs,
        pushed_bytes,
        elapsed: started.elapsed(),
    })
}

/// Streams a kept blob file to the registry in chunks.
async fn push_file(
    client: &oci_client::Client,
    reference: &oci_client::Reference,
    registry: &str,
    digest: &Digest,
    path: PathBuf,
) -> Result<u64, PullError> {
    let io_err = |source: io::Error| PullError::Io {
        path: path.clone(),
        source,
    };
    let file = tokio::fs::File::open(&path).await.map_err(io_err)?;
    let size = file.metadata().await.map_err(io_err)?.len();
    let chunks = futures_util::stream::unfold(file, |mut file| async move {
        use tokio::io::AsyncReadExt as _;
        let mut buffer = vec![0u8; CHUNK];
        match file.read(&mut buffer).await {
            Ok(0) => None,
            Ok(n) => {
                buffer.truncate(n);
                Some((Ok(bytes::Bytes::from(buffer)), file))
            }
            Err(e) => Some((
                Err(oci_client::errors::OciDistributionError::IoError(e)),
                file,
            )),
        }
    })
    .boxed();
    client
        .push_blob_stream(reference, chunks, &digest.to_string(), Some(size))
        .await
        .map_err(|e| match e {
            oci_client::errors::OciDistributionError::IoError(source) => PullError::Io {
                path: path.clone(),
                source,
            },
            other => {
                tracing::debug!("push of {digest}: {}", error_chain(&other));
                classify(other, registry, &format!("blob {digest}"))
            }
        })?;
    Ok(size)
}
