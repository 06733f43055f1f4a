//! Spec capabilities → the five capability sets, and applying them.

use caps::{CapSet, Capability, CapsHashSet};
use oci_spec::runtime::{Capabilities, LinuxCapabilities};

#[derive(Debug, thiserror::Error)]
pub enum CapabilityError {
    #[error("unknown capability {0}")]
    Unknown(String),
    #[error("{set} capabilities: {source}")]
    Apply {
        set: &'static str,
        #[source]
        source: caps::errors::CapsError,
    },
}

/// The sets the process ends up with (absent in the spec = empty).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CapabilityPlan {
    pub bounding: CapsHashSet,
    pub effective: CapsHashSet,
    pub permitted: CapsHashSet,
    pub inheritable: CapsHashSet,
    pub ambient: CapsHashSet,
}

fn convert(set: &Option<Capabilities>) -> Result<CapsHashSet, CapabilityError> {
    let mut out = CapsHashSet::new();
    for cap in set.iter().flatten() {
        // oci-spec and caps agree on the "CAP_*" names; serde gives ours.
        let name = serde_json::to_value(cap)
            .ok()
            .and_then(|value| value.as_str().map(str::to_owned))
            .unwrap_or_else(|| format!("{cap:?}"));
        let parsed: Capability = name
            .parse()
            .map_err(|_| CapabilityError::Unknown(name.clone()))?;
        out.insert(parsed);
    }
    Ok(out)
}

pub fn plan(spec: Option<&LinuxCapabilities>) -> Result<CapabilityPlan, CapabilityError> {
    let Some(spec) = spec else {
        return Ok(CapabilityPlan::default());
    };
    Ok(CapabilityPlan {
        bounding: convert(spec.bounding())?,
        effective: convert(spec.effective())?,
        permitted: convert(spec.permitted())?,
        inheritable: convert(spec.inheritable())?,
        ambient: convert(spec.ambient())?,
    })
}

/// Drops what is not in the bounding set. Needs CAP_SETPCAP, so it runs
/// while the process is still root with all capabilities.
pub fn drop_bounding(plan: &CapabilityPlan) -> Result<(), CapabilityError> {
    for cap in caps::runtime::thread_all_supported() {
        if !plan.bounding.contains(&cap) {
            caps::drop(None, CapSet::Bounding, cap).map_err(|source| CapabilityError::Apply {
                set: "bounding",
                source,
            })?;
        }
    }
    Ok(())
}

/// Sets effective/permitted/inheritable then raises ambient; after the
/// uid switch (with PR_SET_KEEPCAPS so permitted survived it).
pub fn apply(plan: &CapabilityPlan) -> Result<(), CapabilityError> {
    let supported = caps::runtime::thread_all_supported();
    let only_supported =
        |set: &CapsHashSet| -> CapsHashSet { set.intersection(&supported).copied().collect() };
    // Order matters for capset(2): inheritable while effective still holds
    // CAP_SETPCAP, then effective (a subset of the still-full permitted),
    // then permitted (which must keep covering effective).
    let steps: [(CapSet, &'static str, &CapsHashSet); 3] = [
        (CapSet::Inheritable, "inheritable", &plan.inheritable),
        (CapSet::Effective, "effective", &plan.effective),
        (CapSet::Permitted, "permitted", &plan.permitted),
    ];
    for (set, name, wanted) in steps {
        caps::set(None, set, &only_supported(wanted))
            .map_err(|source| CapabilityError::Apply { set: name, source })?;
    }
    caps::clear(None, CapSet::Ambient).map_err(|source| CapabilityError::Apply {
        set: "ambient",
        source,
    })?;
    for cap in only_supported(&plan.ambient) {
        // The kernel only raises an ambient capability that is permitted
        // and inheritable; runc's default spec lists ambient ones without
        // inheritable, and runc then goes on: so do we. (No log line: this
        // runs in the container's process, whose stderr is the container's.)
        if !(plan.inheritable.contains(&cap) && plan.permitted.contains(&cap)) {
            continue;
        }
        caps::raise(None, CapSet::Ambient, cap).map_err(|source| CapabilityError::Apply {
            set: "ambient",
            source,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_names_convert_to_caps_sets() {
        let spec: LinuxCapabilities = serde_json::from_str(
            r#"{"bounding":["CAP_CHOWN","CAP_NET_BIND_SERVICE"],
                "effective":["CAP_CHOWN"],"permitted":["CAP_CHOWN"]}"#,
        )
        .unwrap();
        let plan = plan(Some(&spec)).unwrap();
        assert_eq!(
            plan.bounding,
            [Capability::CAP_CHOWN, Capability::CAP_NET_BIND_SERVICE]
                .into_iter()
                .collect()
        );
        assert_eq!(plan.effective.len(), 1);
        assert!(plan.inheritable.is_empty());
        assert!(plan.ambient.is_empty());
    }

    #[test]
    fn no_capabilities_section_means_none() {
        assert_eq!(plan(None).unwrap(), CapabilityPlan::default());
    }
}
