//! Image names as Docker spells them: `busybox` means `busybox:latest`, and
//! `docker.io/library/busybox:1.36` is shown and stored as `busybox:1.36`.

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReferenceError {
    #[error("invalid image name {0:?}: expected [registry/]repository[:tag] in lowercase")]
    Invalid(String),
    #[error(
        "image name {0:?} uses a digest (@sha256:...): refer to the image by its ID or tag instead"
    )]
    DigestReference(String),
}

const DEFAULT_TAG: &str = "latest";

/// The canonical `repository:tag` form of a user-given image name.
pub fn normalize(name: &str) -> Result<String, ReferenceError> {
    if name.contains('@') {
        return Err(ReferenceError::DigestReference(name.to_string()));
    }
    let invalid = || ReferenceError::Invalid(name.to_string());
    // A colon after the last slash separates the tag; one before it belongs
    // to a registry host's port (localhost:5000/app).
    let last_segment_start = name.rfind('/').map_or(0, |i| i + 1);
    let (repository, tag) = match name[last_segment_start..].rfind(':') {
        Some(i) => {
            let split = last_segment_start + i;
            (&name[..split], &name[split + 1..])
        }
        None => (name, DEFAULT_TAG),
    };
    let repository = repository
        .strip_prefix("docker.io/library/")
        .or_else(|| repository.strip_prefix("docker.io/"))
        .unwrap_or(repository);
    let repository_ok = !repository.is_empty()
        && repository.len() <= 255
        && repository.split('/').all(|part| {
            part.bytes().any(|b| b.is_ascii_alphanumeric())
                && part
                    .bytes()
                    .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-' | b':'))
        });
    let tag_ok = !tag.is_empty()
        && tag.len() <= 128
        && !tag.starts_with(['.', '-'])
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if !repository_ok || !tag_ok {
        return Err(invalid());
    }
    Ok(format!("{repository}:{tag}"))
}

/// The repository part of a normalized `repository:tag`.
pub fn repository_of(normalized: &str) -> &str {
    let last_segment_start = normalized.rfind('/').map_or(0, |i| i + 1);
    match normalized[last_segment_start..].rfind(':') {
        Some(i) => &normalized[..last_segment_start + i],
        None => normalized,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_latest_and_strips_docker_hub_prefixes() {
        assert_eq!(normalize("busybox").unwrap(), "busybox:latest");
        assert_eq!(normalize("busybox:1.36").unwrap(), "busybox:1.36");
        assert_eq!(
            normalize("docker.io/library/busybox").unwrap(),
            "busybox:latest"
        );
        assert_eq!(normalize("docker.io/me/app:v1").unwrap(), "me/app:v1");
        assert_eq!(
            normalize("localhost:5000/app").unwrap(),
            "localhost:5000/app:latest"
        );
        assert_eq!(
            normalize("localhost:5000/app:2").unwrap(),
            "localhost:5000/app:2"
        );
    }

    #[test]
    fn refuses_bad_names() {
        for bad in [
            "",
            "Busybox",
            "busybox:",
            "a//b",
            "../x",
            "x:y z",
            "x:-a",
            "a@sha256:00",
        ] {
            assert!(normalize(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn repository_part() {
        assert_eq!(repository_of("busybox:latest"), "busybox");
        assert_eq!(repository_of("localhost:5000/app:2"), "localhost:5000/app");
    }
}
