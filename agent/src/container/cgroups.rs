//! The container's cgroup v2: limits from the spec's resources.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use oci_spec::runtime::LinuxResources;

/// Where the agent mounts cgroup2.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Controllers the container cgroup uses.
const CONTROLLERS: &[&str] = &["cpu", "memory", "pids"];

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("write {file}: {source}")]
    Write {
        file: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("create {dir}: {source}")]
    Create {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("unified cgroup key {0:?} is not a plain file name")]
    BadUnifiedKey(String),
    #[error("memory swap limit {swap} is below the memory limit {memory}")]
    SwapBelowMemory { swap: i64, memory: i64 },
}

/// `max` for "unlimited" (negative or absent in the spec).
fn limit_or_max(value: i64) -> String {
    if value < 0 {
        "max".to_owned()
    } else {
        value.to_string()
    }
}

/// cgroup v1 cpu.shares (2..262144) → v2 cpu.weight (1..10000), the
/// conversion runc and crun use.
fn shares_to_weight(shares: u64) -> u64 {
    let shares = shares.clamp(2, 262_144);
    1 + ((shares - 2) * 9999) / 262_142
}

/// The (file, content) pairs to write into the container's cgroup, in order.
pub fn resource_files(resources: &LinuxResources) -> Result<Vec<(String, String)>, CgroupError> {
    let mut files = Vec::new();
    if let Some(memory) = resources.memory() {
        if let Some(limit) = memory.limit() {
            files.push(("memory.max".to_owned(), limit_or_max(limit)));
        }
        if let Some(reservation) = memory.reservation() {
            files.push(("memory.low".to_owned(), limit_or_max(reservation)));
        }
        // OCI swap is memory+swap (v1 memsw); v2 limits swap alone.
        if let Some(swap) = memory.swap() {
            let value = match memory.limit() {
                _ if swap < 0 => "max".to_owned(),
                Some(limit) if limit >= 0 => {
                    if swap < limit {
                        return Err(CgroupError::SwapBelowMemory {
                            swap,
                            memory: limit,
                        });
                    }
                    (swap - limit).to_string()
                }
                _ => swap.to_string(),
            };
            files.push(("memory.swap.max".to_owned(), value));
        }
    }
    if let Some(cpu) = resources.cpu() {
        if let Some(shares) = cpu.shares() {
            files.push((
                "cpu.weight".to_owned(),
                shares_to_weight(shares).to_string(),
            ));
        }
        if cpu.quota().is_some() || cpu.period().is_some() {
            let quota = cpu.quota().map_or_else(|| "max".to_owned(), limit_or_max);
            let period = cpu.period().unwrap_or(100_000);
            files.push(("cpu.max".to_owned(), format!("{quota} {period}")));
        }
    }
    if let Some(pids) = resources.pids() {
        let limit = pids.limit();
        let value = if limit <= 0 {
            "max".to_owned()
        } else {
            limit.to_string()
        };
        files.push(("pids.max".to_owned(), value));
    }
    if let Some(unified) = resources.unified() {
        let mut keys: Vec<_> = unified.iter().collect();
        keys.sort();
        for (key, value) in keys {
            if key.is_empty() || key.contains('/') || key.starts_with('.') {
                return Err(CgroupError::BadUnifiedKey(key.clone()));
            }
            files.push((key.clone(), value.clone()));
        }
    }
    Ok(files)
}

fn write_file(file: PathBuf, content: &str) -> Result<(), CgroupError> {
    fs::write(&file, content).map_err(|source| CgroupError::Write { file, source })
}

/// Enables our controllers for children of `root`; controllers the kernel
/// lacks are skipped (their limit files then fail with a clear error).
pub fn enable_controllers(root: &Path) -> Result<(), CgroupError> {
    let available = fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
    for controller in CONTROLLERS {
        if available
            .split_whitespace()
            .any(|known| known == *controller)
        {
            write_file(
                root.join("cgroup.subtree_control"),
                &format!("+{controller}"),
            )?;
        }
    }
    Ok(())
}

/// Creates `root/name` and writes the limits; returns its path.
pub fn create(
    root: &Path,
    name: &str,
    resources: Option<&LinuxResources>,
) -> Result<PathBuf, CgroupError> {
    let dir = root.join(name);
    match fs::create_dir(&dir) {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
        Err(source) => return Err(CgroupError::Create { dir, source }),
    }
    if let Some(resources) = resources {
        apply(&dir, resources)?;
    }
    Ok(dir)
}

/// Writes the limit files of `resources` into the cgroup `dir` (at
/// creation, and again for an update of a running container).
pub fn apply(dir: &Path, resources: &LinuxResources) -> Result<(), CgroupError> {
    for (file, content) in resource_files(resources)? {
        let path = dir.join(&file);
        // A kernel without swap support has no swap files: nothing to limit.
        if file == "memory.swap.max" && !path.exists() && dir.join("memory.max").exists() {
            tracing::debug!("no swap accounting in this kernel: {file} skipped");
            continue;
        }
        write_file(path, &content)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resources(json: &str) -> LinuxResources {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn memory_cpu_and_pids_limits_map_to_v2_files() {
        let files = resource_files(&resources(
            r#"{"memory":{"limit":268435456,"swap":268435456},
                "cpu":{"quota":50000,"period":100000,"shares":1024},
                "pids":{"limit":64}}"#,
        ))
        .unwrap();
        assert_eq!(
            files,
            vec![
                ("memory.max".into(), "268435456".into()),
                ("memory.swap.max".into(), "0".into()),
                ("cpu.weight".into(), "39".into()),
                ("cpu.max".into(), "50000 100000".into()),
                ("pids.max".into(), "64".into()),
            ]
        );
    }

    #[test]
    fn unlimited_values_become_max() {
        let files = resource_files(&resources(
            r#"{"memory":{"limit":-1,"swap":-1},"cpu":{"quota":-1},"pids":{"limit":0}}"#,
        ))
        .unwrap();
        assert_eq!(
            files,
            vec![
                ("memory.max".into(), "max".into()),
                ("memory.swap.max".into(), "max".into()),
                ("cpu.max".into(), "max 100000".into()),
                ("pids.max".into(), "max".into()),
            ]
        );
    }

    #[test]
    fn swap_below_memory_and_bad_unified_keys_are_errors() {
        assert!(matches!(
            resource_files(&resources(r#"{"memory":{"limit":100,"swap":50}}"#)),
            Err(CgroupError::SwapBelowMemory { .. })
        ));
        assert!(matches!(
            resource_files(&resources(r#"{"unified":{"../escape":"1"}}"#)),
            Err(CgroupError::BadUnifiedKey(_))
        ));
    }

    #[test]
    fn create_writes_the_files_into_the_cgroup_dir() {
        let root = tempfile::tempdir().unwrap();
        let dir = create(
            root.path(),
            "c1",
            Some(&resources(
                r#"{"memory":{"limit":1048576},"pids":{"limit":10}}"#,
            )),
        )
        .unwrap();
        assert_eq!(
            fs::read_to_string(dir.join("memory.max")).unwrap(),
            "1048576"
        );
        assert_eq!(fs::read_to_string(dir.join("pids.max")).unwrap(), "10");
    }

    #[test]
    fn enable_controllers_writes_only_available_ones() {
        let root = tempfile::tempdir().unwrap();
        fs::write(
            root.path().join("cgroup.controllers"),
            "cpuset memory pids\n",
        )
        .unwrap();
        enable_controllers(root.path()).unwrap();
        // A regular file keeps only the last write: pids came after memory.
        assert_eq!(
            fs::read_to_string(root.path().join("cgroup.subtree_control")).unwrap(),
            "+pids"
        );
    }
}
