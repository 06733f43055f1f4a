//! `--platform os/arch[/variant]` and the choice of one manifest from an
//! image index (manifest list).

use crate::image::archive::oci::host_architecture;
use oci_spec::image::Descriptor;
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    /// What this host runs: linux and its architecture in OCI spelling.
    pub fn host() -> Self {
        Self {
            os: "linux".into(),
            architecture: host_architecture().into(),
            variant: None,
        }
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let parts: Vec<&str> = text.split('/').collect();
        let valid = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        };
        match parts.as_slice() {
            [os, arch] | [os, arch, _] if valid(os) && valid(arch) => {
                let variant = parts.get(2).map(|v| v.to_string());
                if variant.as_deref().is_some_and(|v| !valid(v)) {
                    return Err(format!("invalid platform {text:?}"));
                }
                Ok(Self {
                    os: os.to_string(),
                    architecture: normalize_arch(arch).to_string(),
                    variant,
                })
            }
            _ => Err(format!(
                "invalid platform {text:?}: expected OS/ARCH[/VARIANT], e.g. linux/amd64"
            )),
        }
    }

    /// Whether an index entry's platform is this one. A variant is compared
    /// only when both name one (arm64 images rarely say v8).
    pub fn matches(&self, os: &str, architecture: &str, variant: Option<&str>) -> bool {
        os == self.os
            && normalize_arch(architecture) == self.architecture
            && match (&self.variant, variant) {
                (Some(wanted), Some(given)) => wanted == given,
                _ => true,
            }
    }

    /// The entry of an index for this platform: the first that matches.
    pub fn choose<'a>(&self, manifests: &'a [Descriptor]) -> Option<&'a Descriptor> {
        manifests.iter().find(|d| {
            d.platform().as_ref().is_some_and(|p| {
                self.matches(
                    &p.os().to_string(),
                    &p.architecture().to_string(),
                    p.variant().as_deref(),
                )
            })
        })
    }
}

/// Architecture aliases Go and Docker accept.
fn normalize_arch(arch: &str) -> &str {
    match arch {
        "x86_64" | "x86-64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(variant) = &self.variant {
            write!(f, "/{variant}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(entries: &[(&str, &str)]) -> Vec<Descriptor> {
        let manifests: Vec<serde_json::Value> = entries
            .iter()
            .enumerate()
            .map(|(i, (os, arch))| {
                serde_json::json!({
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": format!("sha256:{:064x}", i),
                    "size": 10,
                    "platform": {"os": os, "architecture": arch},
                })
            })
            .collect();
        serde_json::from_value(serde_json::Value::Array(manifests)).unwrap()
    }

    #[test]
    fn parses_and_normalizes() {
        let p = Platform::parse("linux/x86_64").unwrap();
        assert_eq!(p.to_string(), "linux/amd64");
        assert_eq!(
            Platform::parse("linux/arm/v7").unwrap().variant.as_deref(),
            Some("v7")
        );
        for bad in ["linux", "linux/", "/amd64", "Linux/AMD64", "a/b/c/d"] {
            assert!(Platform::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn chooses_the_requested_platform() {
        let manifests = index(&[
            ("unknown", "unknown"),
            ("linux", "arm64"),
            ("linux", "amd64"),
        ]);
        let amd64 = Platform::parse("linux/amd64").unwrap();
        assert_eq!(
            amd64.choose(&manifests).unwrap().digest().to_string(),
            format!("sha256:{:064x}", 2)
        );
        let riscv = Platform::parse("linux/riscv64").unwrap();
        assert!(riscv.choose(&manifests).is_none());
    }
}
