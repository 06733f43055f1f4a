//! Container names (the Docker-style CLI): unique under a state root, kept
//! as `<root>/.names/<name>` files holding the container's ID, created with
//! O_EXCL so that two commands cannot take one name. And the lookup of a
//! container by name, full ID or an unambiguous ID prefix.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::state::StateDir;

/// The shortest ID prefix that selects a container.
pub const MIN_PREFIX: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum NameError {
    #[error("invalid container name {0:?}: [a-zA-Z0-9][a-zA-Z0-9_.-]*")]
    Invalid(String),
    #[error("the container name {name:?} is already in use by container {id}")]
    Taken { name: String, id: String },
    #[error("no such container: {0}")]
    NotFound(String),
    #[error("{what:?} matches several containers ({}): give more of the ID", ids.join(", "))]
    Ambiguous { what: String, ids: Vec<String> },
    #[error("container names in {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

fn names_dir(root: &Path) -> PathBuf {
    root.join(".names")
}

pub fn validate(name: &str) -> Result<(), NameError> {
    let ok = name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric())
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(NameError::Invalid(name.to_string()))
    }
}

/// Takes `name` for container `id`.
pub fn claim(root: &Path, name: &str, id: &str) -> Result<(), NameError> {
    validate(name)?;
    let dir = names_dir(root);
    fs::create_dir_all(&dir).map_err(|source| NameError::Io {
        path: dir.clone(),
        source,
    })?;
    let path = dir.join(name);
    match fs::File::options().write(true).create_new(true).open(&path) {
        Ok(mut file) => file
            .write_all(id.as_bytes())
            .map_err(|source| NameError::Io { path, source }),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let holder = fs::read_to_string(&path).unwrap_or_default();
            // A name whose container is gone (removed by a crash) is free.
            if !holder.is_empty() && StateDir::open(root, &holder).is_err() {
                let _ = fs::remove_file(&path);
                return claim(root, name, id);
            }
            Err(NameError::Taken {
                name: name.to_string(),
                id: holder,
            })
        }
        Err(source) => Err(NameError::Io { path, source }),
    }
}

/// Gives `name` up if container `id` holds it.
pub fn release(root: &Path, name: &str, id: &str) {
    let path = names_dir(root).join(name);
    if fs::read_to_string(&path).is_ok_and(|holder| holder == id) {
        let _ = fs::remove_file(path);
    }
}

/// The ID of the container called `what`: a name, a full ID, or a prefix
/// of at least [`MIN_PREFIX`] characters of exactly one ID.
pub fn resolve(root: &Path, what: &str) -> Result<String, NameError> {
    if let Ok(id) = fs::read_to_string(names_dir(root).join(what)) {
        if StateDir::open(root, &id).is_ok() {
            return Ok(id);
        }
    }
    if StateDir::open(root, what).is_ok() {
        return Ok(what.to_string());
    }
    if what.len() >= MIN_PREFIX {
        let mut matches: Vec<String> = StateDir::list(root)
            .into_iter()
            .filter(|id| id.starts_with(what))
            .collect();
        matches.sort();
        match matches.len() {
            0 => {}
            1 => return Ok(matches.remove(0)),
            _ => {
                return Err(NameError::Ambiguous {
                    what: what.to_string(),
                    ids: matches,
                })
            }
        }
    }
    Err(NameError::NotFound(what.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::state::{State, Status};

    fn make(root: &Path, id: &str) {
        let dir = StateDir::create(root, id).unwrap();
        dir.save(&State {
            status: Status::Stopped,
            pid: None,
            bundle: PathBuf::new(),
            owner: String::new(),
            ..State::sample(id)
        })
        .unwrap();
    }

    #[test]
    fn names_are_unique_and_ids_resolve_by_prefix() {
        let root = tempfile::tempdir().unwrap();
        let root = root.path();
        make(root, "abcd1111");
        make(root, "abcd2222");
        make(root, "ef001234");
        claim(root, "web", "abcd1111").unwrap();
        assert!(matches!(
            claim(root, "web", "ef001234"),
            Err(NameError::Taken { .. })
        ));
        assert!(matches!(
            claim(root, "-bad", "x"),
            Err(NameError::Invalid(_))
        ));
        assert_eq!(resolve(root, "web").unwrap(), "abcd1111");
        assert_eq!(resolve(root, "ef00").unwrap(), "ef001234");
        assert_eq!(resolve(root, "abcd2222").unwrap(), "abcd2222");
        assert!(matches!(
            resolve(root, "abcd"),
            Err(NameError::Ambiguous { .. })
        ));
        // Too short to be a prefix.
        assert!(matches!(resolve(root, "ef0"), Err(NameError::NotFound(_))));
        release(root, "web", "abcd1111");
        claim(root, "web", "ef001234").unwrap();
        // A name whose container is gone is free again.
        StateDir::open(root, "ef001234").unwrap().remove().unwrap();
        claim(root, "web", "abcd2222").unwrap();
    }
}
