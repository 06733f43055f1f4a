//! Registry credentials in the docker `config.json` format:
//! `{"auths": {"HOST[:PORT]": {"auth": base64("user:password")}}}`.
//! `husk login` writes husk's own file (mode 0600); lookups read it first,
//! then docker's (`$DOCKER_CONFIG/config.json` or `~/.docker/config.json`),
//! so credentials a user already has work unchanged. Other keys of the
//! file (credHelpers, proxies, ...) are kept as they are when husk writes.

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write as _};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

/// Docker Hub's key in docker's files (a URL, for historic reasons).
const DOCKER_HUB_KEY: &str = "https://index.docker.io/v1/";

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("{}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{}: not a docker config.json file", path.display())]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{}: the entry for {registry} is not base64 of user:password", path.display())]
    BadEntry { path: PathBuf, registry: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct ConfigFile {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(flatten)]
    other: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct AuthEntry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    auth: Option<String>,
    #[serde(flatten)]
    other: serde_json::Map<String, serde_json::Value>,
}

/// husk's credentials file: `$HUSK_AUTH_FILE` is handled by the CLI; this
/// is the default, `$XDG_CONFIG_HOME/husk/auth.json` or
/// `~/.config/husk/auth.json`.
pub fn default_auth_file() -> PathBuf {
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| home().map(|h| h.join(".config")))
        .unwrap_or_else(|| PathBuf::from("/root/.config"));
    config.join("husk/auth.json")
}

fn home() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// Docker's file, if the user has one.
pub fn docker_config_file() -> Option<PathBuf> {
    match std::env::var_os("DOCKER_CONFIG").filter(|v| !v.is_empty()) {
        Some(dir) => Some(PathBuf::from(dir).join("config.json")),
        None => home().map(|h| h.join(".docker/config.json")),
    }
}

/// The keys a registry may be filed under.
fn keys_for(registry: &str) -> Vec<String> {
    let mut keys = vec![
        registry.to_string(),
        format!("https://{registry}"),
        format!("http://{registry}"),
        format!("https://{registry}/v1/"),
        format!("https://{registry}/v2/"),
    ];
    if matches!(
        registry,
        "docker.io" | "index.docker.io" | "registry-1.docker.io"
    ) {
        keys.insert(0, DOCKER_HUB_KEY.to_string());
        keys.push("docker.io".into());
        keys.push("index.docker.io".into());
    }
    keys
}

/// The key `husk login` files a registry under (docker's choice).
fn key_for(registry: &str) -> String {
    keys_for(registry).swap_remove(0)
}

fn read(path: &Path) -> Result<Option<ConfigFile>, AuthError> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(AuthError::Io {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| AuthError::Json {
            path: path.to_path_buf(),
            source,
        })
}

/// Credentials for `registry` from the first of `files` that has some.
pub fn lookup(files: &[PathBuf], registry: &str) -> Result<Option<Credentials>, AuthError> {
    for path in files {
        let Some(config) = read(path)? else { continue };
        for key in keys_for(registry) {
            let Some(encoded) = config.auths.get(&key).and_then(|e| e.auth.as_deref()) else {
                continue;
            };
            let bad = || AuthError::BadEntry {
                path: path.clone(),
                registry: registry.to_string(),
            };
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .map_err(|_| bad())?;
            let text = String::from_utf8(decoded).map_err(|_| bad())?;
            let (username, password) = text.split_once(':').ok_or_else(bad)?;
            return Ok(Some(Credentials {
                username: username.to_string(),
                password: password.to_string(),
            }));
        }
    }
    Ok(None)
}

/// Records credentials in `path` (created 0600 with its directory 0700;
/// replaced atomically, other entries kept).
pub fn store(path: &Path, registry: &str, credentials: &Credentials) -> Result<(), AuthError> {
    update(path, |config| {
        let encoded = base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", credentials.username, credentials.password));
        config.auths.entry(key_for(registry)).or_default().auth = Some(encoded);
        true
    })
}

/// Removes a registry's credentials; false when there were none.
pub fn remove(path: &Path, registry: &str) -> Result<bool, AuthError> {
    let mut removed = false;
    update(path, |config| {
        for key in keys_for(registry) {
            removed |= config.auths.remove(&key).is_some();
        }
        removed
    })?;
    Ok(removed)
}

fn update(path: &Path, change: impl FnOnce(&mut ConfigFile) -> bool) -> Result<(), AuthError> {
    let io_err = |source| AuthError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut config = read(path)?.unwrap_or_default();
    if !change(&mut config) {
        return Ok(());
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    if !dir.exists() {
        fs::create_dir_all(dir).map_err(io_err)?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io_err)?;
    }
    let bytes = serde_json::to_vec_pretty(&config).map_err(|e| io_err(io::Error::other(e)))?;
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        path.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    let written = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        // The mode given to open is masked by the umask; be explicit.
        file.set_permissions(fs::Permissions::from_mode(0o600))?;
        file.write_all(&bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written.map_err(io_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_0600_and_reads_back_keeping_other_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/auth.json");
        let creds = Credentials {
            username: "alice".into(),
            password: "p:ss".into(),
        };
        store(&path, "localhost:5000", &creds).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let text = fs::read_to_string(&path).unwrap();
        let mut value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            value["auths"]["localhost:5000"]["auth"],
            base64::engine::general_purpose::STANDARD.encode("alice:p:ss")
        );
        value["credHelpers"] = serde_json::json!({"x": "y"});
        fs::write(&path, value.to_string()).unwrap();
        store(&path, "other:1", &creds).unwrap();
        let value: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(value["credHelpers"]["x"], "y");
        assert_eq!(
            lookup(std::slice::from_ref(&path), "localhost:5000").unwrap(),
            Some(creds.clone())
        );
        assert_eq!(
            lookup(std::slice::from_ref(&path), "nowhere").unwrap(),
            None
        );
        assert!(remove(&path, "localhost:5000").unwrap());
        assert_eq!(lookup(&[path], "localhost:5000").unwrap(), None);
    }

    #[test]
    fn docker_hub_and_url_keys_and_file_order() {
        let dir = tempfile::tempdir().unwrap();
        let docker = dir.path().join("config.json");
        let encoded = base64::engine::general_purpose::STANDARD.encode("bob:pw");
        fs::write(
            &docker,
            format!(r#"{{"auths":{{"{DOCKER_HUB_KEY}":{{"auth":"{encoded}"}},"https://r.example:443":{{"auth":"{encoded}"}}}}}}"#),
        )
        .unwrap();
        let missing = dir.path().join("none.json");
        let files = [missing, docker.clone()];
        assert_eq!(
            lookup(&files, "docker.io").unwrap().unwrap().username,
            "bob"
        );
        assert!(lookup(&files, "r.example:443").unwrap().is_some());
        fs::write(&docker, r#"{"auths":{"x":{"auth":"%%%"}}}"#).unwrap();
        assert!(matches!(
            lookup(&files, "x"),
            Err(AuthError::BadEntry { .. })
        ));
    }
}
