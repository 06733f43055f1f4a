//! Spec fields the agent does not implement are refused with an error
//! naming the field, rather than silently ignored: a container that asked
//! for an I/O limit, a CPU scheduler or ID mappings must not run believing
//! it has them. (AppArmor and SELinux labels are not here: the guest
//! kernel has neither LSM, and Docker and podman set them by default.)

use oci_spec::runtime::Spec;

/// The first unsupported field `spec` sets, by its JSON path.
pub fn first_unsupported(spec: &Spec) -> Option<&'static str> {
    if let Some(process) = spec.process() {
        if process.io_priority().is_some() {
            return Some("process.ioPriority");
        }
        if process.scheduler().is_some() {
            return Some("process.scheduler");
        }
        if process.exec_cpu_affinity().is_some() {
            return Some("process.execCPUAffinity");
        }
    }
    let linux = spec.linux().as_ref()?;
    let non_empty = |mappings: &Option<Vec<_>>| mappings.as_ref().is_some_and(|m| !m.is_empty());
    if non_empty(linux.uid_mappings()) {
        return Some("linux.uidMappings");
    }
    if non_empty(linux.gid_mappings()) {
        return Some("linux.gidMappings");
    }
    if linux.intel_rdt().is_some() {
        return Some("linux.intelRdt");
    }
    if linux.memory_policy().is_some() {
        return Some("linux.memoryPolicy");
    }
    if linux.personality().is_some() {
        return Some("linux.personality");
    }
    if linux.time_offsets().as_ref().is_some_and(|t| !t.is_empty()) {
        return Some("linux.timeOffsets");
    }
    if let Some(resources) = linux.resources() {
        if resources.block_io().is_some() {
            return Some("linux.resources.blockIO");
        }
        if resources
            .hugepage_limits()
            .as_ref()
            .is_some_and(|h| !h.is_empty())
        {
            return Some("linux.resources.hugepageLimits");
        }
        if resources.network().is_some() {
            return Some("linux.resources.network");
        }
        if resources.rdma().as_ref().is_some_and(|r| !r.is_empty()) {
            return Some("linux.resources.rdma");
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> Spec {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn fields_we_do_not_implement_are_named() {
        let base = r#""ociVersion":"1.0.2","root":{"path":"rootfs"},"process":{"cwd":"/","user":{"uid":0,"gid":0}"#;
        assert_eq!(first_unsupported(&spec(&format!("{{{base}}}}}"))), None);
        for (extra_process, extra_linux, field) in [
            (
                r#","ioPriority":{"class":"IOPRIO_CLASS_RT","priority":1}"#,
                "",
                "process.ioPriority",
            ),
            (
                "",
                r#""uidMappings":[{"containerID":0,"hostID":1000,"size":1}]"#,
                "linux.uidMappings",
            ),
            (
                "",
                r#""personality":{"domain":"LINUX32"}"#,
                "linux.personality",
            ),
            (
                "",
                r#""resources":{"blockIO":{"weight":10}}"#,
                "linux.resources.blockIO",
            ),
            (
                "",
                r#""resources":{"hugepageLimits":[{"pageSize":"2MB","limit":1}]}"#,
                "linux.resources.hugepageLimits",
            ),
        ] {
            let json = format!("{{{base}{extra_process}}},\"linux\":{{{extra_linux}}}}}");
            assert_eq!(first_unsupported(&spec(&json)), Some(field), "{json}");
        }
        // Empty lists and what we implement pass.
        let fine = format!(
            "{{{base}}},\"linux\":{{\"uidMappings\":[],\"resources\":{{\"pids\":{{\"limit\":5}},\"devices\":[]}}}}}}"
        );
        assert_eq!(first_unsupported(&spec(&fine)), None);
    }
}
