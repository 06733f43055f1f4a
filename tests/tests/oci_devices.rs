//! OCI `linux.devices` and `linux.resources.devices`, side by side with
//! runc: a device the spec lists is created and opens (/dev/kmsg, for
//! writing: reading it needs CAP_SYSLOG); one it does not
//! list cannot even be made by container root.

mod oci_support;

#[test]
fn listed_devices_open_and_unlisted_ones_cannot_be_made() {
    let env = oci_env!();
    let script = "if (exec 3>/dev/kmsg) 2>/dev/null; then echo kmsg opened; else echo kmsg refused; fi; \
                  busybox mknod /tmp/tty c 4 64 2>/dev/null && echo ttyS0 made || echo ttyS0 refused";
    let bundle = env.bundle("devices", &["sh", "-c", script], |config| {
        config["linux"]["devices"] = serde_json::json!([{
            "path": "/dev/kmsg", "type": "c", "major": 1, "minor": 11,
            "fileMode": 0o644, "uid": 0, "gid": 0
        }]);
        // Deny everything, then allow the listed device (runc needs the
        // rule; husk allows listed devices anyway).
        config["linux"]["resources"]["devices"] = serde_json::json!([
            {"allow": false, "access": "rwm"},
            {"allow": true, "type": "c", "major": 1, "minor": 11, "access": "rwm"}
        ]);
    });
    for rt in env.runtimes() {
        let (status, out, err) =
            env.run_files(rt, &["run", "--bundle", bundle.to_str().unwrap(), "dev1"]);
        assert!(status.success(), "{rt:?}: {status}\n{out}\n{err}");
        assert_eq!(out, "kmsg opened\nttyS0 refused\n", "{rt:?}: {err}");
    }
    env.assert_clean();
}
