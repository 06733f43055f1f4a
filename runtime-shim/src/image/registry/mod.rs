//! `husk pull`: images from OCI distribution registries into the store.
//!
//! The registry protocol (manifests, blobs, bearer-token and basic
//! authentication, TLS) is the `oci-client` crate's. Around it, husk
//! resolves the reference (`busybox` is `docker.io/library/busybox:latest`),
//! chooses the platform's manifest from an index, fetches the config, and
//! downloads the blobs of the layers the store does not have yet, a bounded
//! number at once, each hashed while it streams and kept resumable
//! (`download`). The layers are then built exactly as `husk image import`
//! builds them (`import::import_planned`: blob digest, decompression, diff
//! ID, safe unpacking, erofs), from a plan made of the registry's manifest
//! and config.

pub mod auth;
mod download;
pub mod platform;
mod progress;
pub mod push;

use super::archive::{self, ImagePlan, LayerPlan, Source};
use super::digest::{chain_ids, Digest};
use super::import::{self, ImportError};
use super::limits::Limits;
use super::media::{self, ManifestKind};
use super::reference;
use super::store::{Store, StoreError, MAX_JSON_BYTES};
use download::BlobTask;
use futures_util::{StreamExt as _, TryStreamExt as _};
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest};
use platform::Platform;
use progress::PullProgress;
use std::fs;
use std::io;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Docker's default for `max-concurrent-downloads`.
pub const DEFAULT_CONCURRENT_DOWNLOADS: usize = 3;

const MANIFEST_TYPES: &[&str] = &[
    media::OCI_MANIFEST,
    media::DOCKER_MANIFEST,
    media::OCI_INDEX,
    media::DOCKER_MANIFEST_LIST,
];

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("invalid image reference {reference:?}: {reason}")]
    Reference { reference: String, reason: String },
    #[error("{reference}: not found in {registry} (unknown repository, tag or digest)")]
    NotFound { registry: String, reference: String },
    #[error("{registry}: unauthorized for {what} ({detail}); log in with `husk login {registry}`")]
    Unauthorized {
        registry: String,
        what: String,
        detail: String,
    },
    #[error("cannot reach registry {registry}: {cause}")]
    Unreachable { registry: String, cause: String },
    #[error("{registry}: {what}: {message}")]
    Registry {
        registry: String,
        what: String,
        message: String,
    },
    #[error("{registry}: blob {blob} does not match its digest (got sha256:{actual}): discarded, nothing of it kept", actual = actual.trim_start_matches("sha256:"))]
    DigestMismatch {
        registry: String,
        blob: String,
        actual: String,
    },
    #[error(
        "blob {blob} is larger than its descriptor says ({actual} > {expected} bytes): discarded"
    )]
    SizeMismatch {
        blob: String,
        expected: u64,
        actual: u64,
    },
    #[error("{registry}: download of blob {blob} interrupted at {received} of {size} bytes ({cause}); pull again to resume")]
    Interrupted {
        registry: String,
        blob: String,
        received: u64,
        size: u64,
        cause: String,
    },
    #[error("{reference}: no image for {platform} (the index has: {available})")]
    NoPlatform {
        reference: String,
        platform: String,
        available: String,
    },
    #[error("{what}: {reason}")]
    Invalid { what: String, reason: String },
    #[error("--ca-file {}", path.display())]
    CaFile { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Auth(#[from] auth::AuthError),
    #[error(transparent)]
    Import(#[from] ImportError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{}", path.display())]
    Io { path: PathBuf, source: io::Error },
}

/// How to talk to registries (shared by pull, push and login).
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    /// `HOST:PORT`s spoken to over plain HTTP.
    pub insecure: Vec<String>,
    /// PEM CA certificates trusted besides the system's.
    pub ca_files: Vec<PathBuf>,
    /// Credential files (docker config.json format), first match wins.
    pub auth_files: Vec<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct PullOptions {
    pub registry: RegistryOptions,
    /// Default: this host (linux/amd64 here).
    pub platform: Option<Platform>,
    /// Bars on a terminal, lines otherwise; nothing when false.
    pub progress: bool,
    pub max_concurrent_downloads: usize,
    pub limits: Limits,
}

impl Default for PullOptions {
    fn default() -> Self {
        Self {
            registry: RegistryOptions::default(),
            platform: None,
            progress: false,
            max_concurrent_downloads: DEFAULT_CONCURRENT_DOWNLOADS,
            limits: Limits::default(),
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct PullReport {
    /// The reference as resolved (`docker.io/library/busybox:latest`).
    pub reference: String,
    /// The name it is stored under, when the reference has a tag.
    pub name: Option<String>,
    pub id: String,
    /// Digest of the image manifest (the platform's, for an index).
    pub manifest_digest: String,
    /// Digest of the index the manifest was chosen from, if any.
    pub index_digest: Option<String>,
    pub layers: usize,
    /// Layers whose blobs were fetched (the others were in the store).
    pub fetched_layers: usize,
    pub downloaded_bytes: u64,
    /// Bytes an interrupted earlier pull had already fetched.
    pub resumed_bytes: u64,
    #[serde(skip)]
    pub elapsed: Duration,
}

/// `busybox` → `docker.io/library/busybox:latest`; `name@sha256:…` pins.
pub fn parse_reference(text: &str) -> Result<Reference, PullError> {
    let reference: Reference =
        text.parse()
            .map_err(|e: oci_client::ParseError| PullError::Reference {
                reference: text.to_string(),
                reason: e.to_string(),
            })?;
    if let Some(digest) = reference.digest() {
        Digest::parse(digest).map_err(|e| PullError::Reference {
            reference: text.to_string(),
            reason: e.to_string(),
        })?;
    }
    Ok(reference)
}

/// The store name of a tag reference (`busybox:latest`,
/// `localhost:5000/app:1`); none for a digest reference.
pub fn store_name(reference: &Reference) -> Option<String> {
    if reference.digest().is_some() {
        return None;
    }
    let tag = reference.tag().unwrap_or("latest");
    reference::normalize(&format!(
        "{}/{}:{tag}",
        reference.registry(),
        reference.repository()
    ))
    .ok()
}

/// A client for `reference`'s registry with the user's TLS settings and
/// credentials.
pub(crate) fn client_for(
    options: &RegistryOptions,
    reference: &Reference,
) -> Result<(Client, RegistryAuth), PullError> {
    let mut extra_roots = Vec::new();
    for path in &options.ca_files {
        let data = fs::read(path).map_err(|source| PullError::CaFile {
            path: path.clone(),
            source,
        })?;
        extra_roots.push(Certificate {
            encoding: CertificateEncoding::Pem,
            data,
        });
    }
    let registry = reference.resolve_registry().to_string();
    let insecure = options
        .insecure
        .iter()
        .any(|h| h == &registry || h == reference.registry());
    if insecure {
        tracing::info!(%registry, "plain HTTP: the registry is listed as insecure");
    }
    let config = ClientConfig {
        protocol: ClientProtocol::HttpsExcept(options.insecure.clone()),
        extra_root_certificates: extra_roots,
        connect_timeout: Some(Duration::from_secs(30)),
        read_timeout: Some(Duration::from_secs(120)),
        user_agent: concat!("husk/", env!("CARGO_PKG_VERSION")),
        ..Default::default()
    };
    let client = Client::try_from(config).map_err(|e| PullError::Invalid {
        what: "registry client".into(),
        reason: error_chain(&e),
    })?;
    let auth = match auth::lookup(&options.auth_files, reference.registry())? {
        Some(c) => RegistryAuth::Basic(c.username, c.password),
        None => RegistryAuth::Anonymous,
    };
    Ok((client, auth))
}

/// An error and its causes on one line (TLS and connection errors say
/// what went wrong only in their sources).
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Turns the client's errors into the few a user can act on.
pub(crate) fn classify(error: OciDistributionError, registry: &str, what: &str) -> PullError {
    let registry = registry.to_string();
    let not_found = || PullError::NotFound {
        registry: registry.clone(),
        reference: what.to_string(),
    };
    match error {
        OciDistributionError::UnauthorizedError { url } => PullError::Unauthorized {
            registry,
            what: what.to_string(),
            detail: format!("401 from {url}"),
        },
        OciDistributionError::AuthenticationFailure(reason) => PullError::Unauthorized {
            registry,
            what: what.to_string(),
            detail: format!("token request refused: {}", reason.trim()),
        },
        OciDistributionError::RegistryError { envelope, url } => {
            let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
            if codes.iter().any(|c| {
                matches!(
                    c,
                    OciErrorCode::ManifestUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::NotFound
                        | OciErrorCode::BlobUnknown
                )
            }) {
                not_found()
            } else if codes
                .iter()
                .any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied))
            {
                PullError::Unauthorized {
                    registry,
                    what: what.to_string(),
                    detail: format!("{envelope} from {url}"),
                }
            } else {
                PullError::Registry {
                    registry,
                    what: what.to_string(),
                    message: envelope.to_string(),
                }
            }
        }
        OciDistributionError::ServerError { code: 404, .. } => not_found(),
        OciDistributionError::ServerError {
            code: code @ (401 | 403),
            url,
            ..
        } => PullError::Unauthorized {
            registry,
            what: what.to_string(),
            detail: format!("{code} from {url}"),
        },
        OciDistributionError::RequestError(e) => PullError::Unreachable {
            registry,
            cause: error_chain(&e),
        },
        OciDistributionError::DigestError(e) => PullError::DigestMismatch {
            registry,
            blob: what.to_string(),
            actual: e.to_string(),
        },
        other => PullError::Registry {
            registry,
            what: what.to_string(),
            message: error_chain(&other),
        },
    }
}

pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, PullError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|source| PullError::Io {
            path: PathBuf::from("tokio runtime"),
            source,
        })
}

/// Pulls `reference` into the store and names it (tag references).
pub fn pull(store: &Store, text: &str, options: &PullOptions) -> Result<PullReport, PullError> {
    let started = Instant::now();
    let reference = parse_reference(text)?;
    let name = store_name(&reference);
    let (client, auth) = client_for(&options.registry, &reference)?;
    let progress = PullProgress::new(options.progress);
    let platform = options.platform.clone().unwrap_or_else(Platform::host);
    let rt = runtime()?;
    let resolved = rt.block_on(resolve(
        &client,
        &auth,
        &reference,
        &platform,
        &options.limits,
    ))?;
    progress.note(&format!(
        "{}: manifest {}{}",
        reference.whole(),
        resolved.manifest_digest,
        resolved
            .index_digest
            .as_ref()
            .map(|d| format!(" (for {platform}, from index {d})"))
            .unwrap_or_default()
    ));

    // Blobs of layers the store lacks, each once.
    let diff_ids: Vec<Digest> = resolved
        .layers
        .iter()
        .map(|l| l.plan.diff_id.clone())
        .collect();
    let chain = chain_ids(&diff_ids);
    let mut tasks: Vec<(BlobTask, String)> = Vec::new();
    for (i, (layer, chain_id)) in resolved.layers.iter().zip(&chain).enumerate() {
        let Some(blob) = layer.plan.blob_digest.clone() else {
            continue;
        };
        let size = layer.plan.blob_size.unwrap_or(0);
        let label = format!("layer {}/{} {}", i + 1, resolved.layers.len(), blob.short());
        if store.has_layer(chain_id) {
            progress.blob(label, 0).present();
            continue;
        }
        if tasks.iter().any(|(t, _)| t.digest == blob) {
            continue;
        }
        if size > options.limits.max_blob_bytes {
            return Err(ImportError::BlobTooLarge {
                member: blob.to_string(),
                limit: options.limits.max_blob_bytes,
            }
            .into());
        }
        tasks.push((
            BlobTask {
                digest: blob,
                size,
                media_type: layer.media_type.clone(),
            },
            label,
        ));
    }
    let layout = store.layout().clone();
    let fetched = rt.block_on(async {
        futures_util::stream::iter(tasks.iter())
            .map(|(task, label)| {
                let bar = progress.blob(label.clone(), task.size);
                let (client, reference, layout) = (&client, &reference, &layout);
                async move { download::fetch(client, reference, layout, task, &bar).await }
            })
            .buffer_unordered(options.max_concurrent_downloads.max(1))
            .try_collect::<Vec<_>>()
            .await
    })?;
    drop(rt);

    let plan = ImagePlan {
        names: name.iter().cloned().collect(),
        manifest: Some((resolved.manifest_digest.clone(), resolved.manifest_bytes)),
        config_bytes: resolved.config_bytes,
        id: resolved.config_digest,
        layers: resolved.layers.into_iter().map(|l| l.plan).collect(),
    };
    let source = Source::Dir(layout.downloads_dir());
    let imported = import::import_planned(store, &source, &plan, &options.limits, options.progress);
    // Built: the blobs stay in the store as the registry sent them (for
    // `husk push`). Not built: a failed build starts over.
    for (task, _) in &tasks {
        let path = download::complete_path(&layout, &task.digest);
        let kept = match &imported {
            Ok(_) => store
                .keep_blob(&path, &task.digest)
                .map_err(|e| e.to_string()),
            Err(_) => fs::remove_file(&path).or_else(|e| match e.kind() {
                io::ErrorKind::NotFound => Ok(()),
                _ => Err(e.to_string()),
            }),
        };
        if let Err(e) = kept {
            tracing::warn!(path = %path.display(), "a downloaded blob: {e}");
        }
    }
    let imported = imported?;
    Ok(PullReport {
        reference: reference.whole(),
        name,
        id: imported.id,
        manifest_digest: resolved.manifest_digest.to_string(),
        index_digest: resolved.index_digest.map(|d| d.to_string()),
        layers: imported.layers,
        fetched_layers: tasks.len(),
        downloaded_bytes: fetched.iter().map(|f| f.downloaded).sum(),
        resumed_bytes: fetched.iter().map(|f| f.resumed).sum(),
        elapsed: started.elapsed(),
    })
}

/// An image as the registry describes it, verified, before any layer.
struct Resolved {
    manifest_digest: Digest,
    manifest_bytes: Vec<u8>,
    index_digest: Option<Digest>,
    config_digest: Digest,
    config_bytes: Vec<u8>,
    layers: Vec<ResolvedLayer>,
}

struct ResolvedLayer {
    plan: LayerPlan,
    media_type: String,
}

fn invalid(what: impl Into<String>, reason: impl std::fmt::Display) -> PullError {
    PullError::Invalid {
        what: what.into(),
        reason: reason.to_string(),
    }
}

/// Fetches a manifest (by tag or digest) and checks it against `expected`
/// (a digest and size from an index) when given.
async fn fetch_manifest(
    client: &Client,
    auth: &RegistryAuth,
    reference: &Reference,
    expected: Option<(&Digest, u64)>,
) -> Result<(Vec<u8>, Digest, ManifestKind), PullError> {
    let registry = reference.registry();
    let (body, _) = client
        .pull_manifest_raw(reference, auth, MANIFEST_TYPES)
        .await
        .map_err(|e| classify(e, registry, &reference.whole()))?;
    let what = format!("manifest of {}", reference.whole());
    if body.len() as u64 > MAX_JSON_BYTES {
        return Err(invalid(what, format!("larger than {MAX_JSON_BYTES} bytes")));
    }
    let digest = Digest::of_bytes(&body);
    if let Some(pinned) = reference.digest() {
        if pinned != digest.to_string() {
            return Err(PullError::DigestMismatch {
                registry: registry.to_string(),
                blob: pinned.to_string(),
                actual: digest.to_string(),
            });
        }
    }
    if let Some((want, size)) = expected {
        if *want != digest || size != body.len() as u64 {
            return Err(PullError::DigestMismatch {
                registry: registry.to_string(),
                blob: want.to_string(),
                actual: digest.to_string(),
            });
        }
    }
    // mediaType is optional in OCI manifests: then the fields tell.
    let value: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| invalid(what.clone(), e))?;
    let kind = match value.get("mediaType").and_then(|m| m.as_str()) {
        Some(media_type) => media::manifest_kind(media_type).map_err(|e| invalid(what, e))?,
        None if value.get("manifests").is_some() => ManifestKind::Index,
        None => ManifestKind::Manifest,
    };
    Ok((body.to_vec(), digest, kind))
}

async fn resolve(
    client: &Client,
    auth: &RegistryAuth,
    reference: &Reference,
    platform: &Platform,
    limits: &Limits,
) -> Result<Resolved, PullError> {
    let registry = reference.registry().to_string();
    let (mut bytes, mut digest, kind) = fetch_manifest(client, auth, reference, None).await?;
    let mut index_digest = None;
    if kind == ManifestKind::Index {
        let index: ImageIndex =
            serde_json::from_slice(&bytes).map_err(|e| invalid(format!("index {digest}"), e))?;
        let chosen = platform.choose(index.manifests()).ok_or_else(|| {
            let available: Vec<String> = index
                .manifests()
                .iter()
                .filter_map(|d| d.platform().as_ref())
                .map(|p| format!("{}/{}", p.os(), p.architecture()))
                .collect();
            PullError::NoPlatform {
                reference: reference.whole(),
                platform: platform.to_string(),
                available: if available.is_empty() {
                    "no platforms".into()
                } else {
                    available.join(", ")
                },
            }
        })?;
        let child_digest = Digest::parse(chosen.digest().as_ref())
            .map_err(|e| invalid(format!("index {digest}"), e))?;
        let child = reference.clone_with_digest(child_digest.to_string());
        let (child_bytes, child_found, child_kind) =
            fetch_manifest(client, auth, &child, Some((&child_digest, chosen.size()))).await?;
        if child_kind != ManifestKind::Manifest {
            return Err(invalid(
                format!("index {digest}"),
                "its entry for this platform is another index",
            ));
        }
        index_digest = Some(digest);
        bytes = child_bytes;
        digest = child_found;
    }
    let what = format!("manifest {digest}");
    let manifest: ImageManifest =
        serde_json::from_slice(&bytes).map_err(|e| invalid(what.clone(), e))?;
    let config_descriptor = manifest.config();
    media::check_config(config_descriptor.media_type().as_ref())
        .map_err(|e| invalid(what.clone(), e))?;
    let config_digest =
        Digest::parse(config_descriptor.digest().as_ref()).map_err(|e| invalid(what.clone(), e))?;
    if config_descriptor.size() > limits.max_json_bytes {
        return Err(invalid(what, "config larger than the JSON limit"));
    }
    let config_bytes = fetch_small(
        client,
        reference,
        &config_digest,
        config_descriptor.size(),
        config_descriptor.media_type().as_ref(),
    )
    .await?;
    let diff_ids = archive::parse_config(
        &config_bytes,
        &format!("config {config_digest}"),
        manifest.layers().len(),
        limits,
    )
    .map_err(|e| invalid(format!("config {config_digest}"), error_chain(&e)))?;
    if index_digest.is_none() {
        // A single-platform image must still be for the wanted platform.
        let config: ImageConfiguration = serde_json::from_slice(&config_bytes)
            .map_err(|e| invalid(format!("config {config_digest}"), e))?;
        let (os, arch) = (config.os().to_string(), config.architecture().to_string());
        if !platform.matches(&os, &arch, config.variant().as_deref()) {
            return Err(PullError::NoPlatform {
                reference: reference.whole(),
                platform: platform.to_string(),
                available: format!("{os}/{arch}"),
            });
        }
    }
    let mut layers = Vec::with_capacity(diff_ids.len());
    for (descriptor, diff_id) in manifest.layers().iter().zip(diff_ids) {
        let blob =
            Digest::parse(descriptor.digest().as_ref()).map_err(|e| invalid(what.clone(), e))?;
        let media_type = descriptor.media_type().to_string();
        let format = media::layer_format(&media_type).map_err(|e| invalid(what.clone(), e))?;
        layers.push(ResolvedLayer {
            plan: LayerPlan {
                member: blob.hex().to_string(),
                blob_digest: Some(blob),
                blob_size: Some(descriptor.size()),
                format,
                diff_id,
            },
            media_type,
        });
    }
    tracing::debug!(%registry, manifest = %digest, layers = layers.len(), "resolved");
    Ok(Resolved {
        manifest_digest: digest,
        manifest_bytes: bytes,
        index_digest,
        config_digest,
        config_bytes,
        layers,
    })
}

/// A small blob (a config) read whole, bounded by its descriptor's size,
/// and verified.
async fn fetch_small(
    client: &Client,
    reference: &Reference,
    digest: &Digest,
    size: u64,
    media_type: &str,
) -> Result<Vec<u8>, PullError> {
    let registry = reference.registry();
    let what = format!("blob {digest}");
    let descriptor = oci_client::manifest::OciDescriptor {
        media_type: media_type.to_string(),
        digest: digest.to_string(),
        size: size as i64,
        ..Default::default()
    };
    let mut stream = client
        .pull_blob_stream(reference, &descriptor)
        .await
        .map_err(|e| classify(e, registry, &what))?
        .stream;
    let mut bytes = Vec::with_capacity(size as usize);
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            // The client's own digest check fails the last chunk; ours
            // below says it the same way for every blob.
            Err(_) if bytes.len() as u64 == size => break,
            Err(e) => {
                return Err(PullError::Unreachable {
                    registry: registry.to_string(),
                    cause: error_chain(&e),
                })
            }
        };
        if (bytes.len() + chunk.len()) as u64 > size {
            return Err(PullError::SizeMismatch {
                blob: digest.to_string(),
                expected: size,
                actual: (bytes.len() + chunk.len()) as u64,
            });
        }
        bytes.extend_from_slice(&chunk);
    }
    let actual = Digest::of_bytes(&bytes);
    if actual != *digest || bytes.len() as u64 != size {
        return Err(PullError::DigestMismatch {
            registry: registry.to_string(),
            blob: digest.to_string(),
            actual: actual.to_string(),
        });
    }
    Ok(bytes)
}

/// Checks credentials against a registry before `husk login` records them:
/// a bearer-token registry must issue a token for them, a basic-auth one
/// must accept them on an authenticated request.
pub fn check_login(
    options: &mut RegistryOptions,
    registry: &str,
    credentials: &auth::Credentials,
) -> Result<(), PullError> {
    // The credentials being checked, not any already on file.
    options.auth_files.clear();
    let reference = Reference::with_tag(registry.to_string(), "husk/login".into(), "latest".into());
    let (client, _) = client_for(options, &reference)?;
    let basic = RegistryAuth::Basic(credentials.username.clone(), credentials.password.clone());
    let what = "login";
    runtime()?.block_on(async {
        let token = client
            .auth(&reference, &basic, oci_client::RegistryOperation::Pull)
            .await
            .map_err(|e| classify(e, registry, what))?;
        if token.is_some() {
            return Ok(());
        }
        match client.catalog(&reference, &basic, Some(1), None).await {
            Ok(_) => Ok(()),
            // Some registries do not serve the catalog; the credentials
            // were not refused.
            Err(e) => match classify(e, registry, what) {
                PullError::NotFound { .. } => Ok(()),
                other => Err(other),
            },
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_are_docker_hub_and_names_are_stored_short() {
        let r = parse_reference("busybox").unwrap();
        assert_eq!(r.whole(), "docker.io/library/busybox:latest");
        assert_eq!(store_name(&r).as_deref(), Some("busybox:latest"));
        let r = parse_reference("me/app:2").unwrap();
        assert_eq!(r.whole(), "docker.io/me/app:2");
        assert_eq!(store_name(&r).as_deref(), Some("me/app:2"));
        let r = parse_reference("localhost:5000/team/app").unwrap();
        assert_eq!(r.registry(), "localhost:5000");
        assert_eq!(
            store_name(&r).as_deref(),
            Some("localhost:5000/team/app:latest")
        );
        let pinned = format!("quay.io/x/y@sha256:{}", "b".repeat(64));
        let r = parse_reference(&pinned).unwrap();
        assert_eq!(
            r.digest(),
            Some(format!("sha256:{}", "b".repeat(64)).as_str())
        );
        assert_eq!(store_name(&r), None);
        for bad in ["busybox/Case", "x@sha256:short", "a b", ""] {
            assert!(parse_reference(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn errors_are_classified() {
        let unauthorized = OciDistributionError::UnauthorizedError { url: "u".into() };
        assert!(matches!(
            classify(unauthorized, "r", "x"),
            PullError::Unauthorized { .. }
        ));
        let not_found = OciDistributionError::ServerError {
            code: 404,
            url: "u".into(),
            message: String::new(),
        };
        let e = classify(not_found, "r:1", "r:1/x:y");
        assert_eq!(
            e.to_string(),
            "r:1/x:y: not found in r:1 (unknown repository, tag or digest)"
        );
        let envelope: oci_client::errors::OciEnvelope = serde_json::from_str(
            r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#,
        )
        .unwrap();
        let e = classify(
            OciDistributionError::RegistryError {
                envelope,
                url: "u".into(),
            },
            "r",
            "x",
        );
        assert!(matches!(e, PullError::NotFound { .. }));
        let e = classify(
            OciDistributionError::AuthenticationFailure("no".into()),
            "r",
            "x",
        );
        assert!(e.to_string().contains("husk login r"), "{e}");
    }
}
