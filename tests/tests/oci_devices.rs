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

/// A guest that writes to its serial console without end (here 4 MiB as
/// fast as the emulated UART takes it, from a container given ttyS0)
/// leaves the serial log at its 1 MiB cap, with one note saying so.
#[test]
fn a_serial_flood_leaves_the_log_under_its_cap() {
    use oci_support::Rt;
    let env = oci_env!();
    let script =
        "busybox head -c 4194304 /dev/zero | busybox tr '\\0' x > /dev/ttyS0; echo written";
    let bundle = env.bundle("serial", &["sh", "-c", script], |config| {
        config["linux"]["devices"] = serde_json::json!([{
            "path": "/dev/ttyS0", "type": "c", "major": 4, "minor": 64,
            "fileMode": 0o620, "uid": 0, "gid": 0
        }]);
        config["linux"]["resources"]["devices"] = serde_json::json!([
            {"allow": false, "access": "rwm"},
            {"allow": true, "type": "c", "major": 4, "minor": 64, "access": "rwm"}
        ]);
    });
    env.create(Rt::Husk, "ser1", &bundle, &[]);
    // The VM's run directory is somewhere under the test's directory
    // (store or state root): find its serial log.
    fn find(dir: &std::path::Path) -> Option<std::path::PathBuf> {
        for entry in std::fs::read_dir(dir).ok()?.flatten() {
            let path = entry.path();
            if path.file_name().is_some_and(|name| name == "serial.log") {
                return Some(path);
            }
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                if let Some(found) = find(&path) {
                    return Some(found);
                }
            }
        }
        None
    }
    let serial_log = || find(env.dir.path());
    let log = serial_log().expect("the VM's serial log");
    env.ok(Rt::Husk, &["start", "ser1"]);
    // The run directory goes with the VM: watch the log while the guest
    // writes, until the cap's note is in it (or the VM is gone).
    let deadline = std::time::Instant::now() + oci_support::TIMEOUT;
    let mut bytes = Vec::new();
    while let Ok(now) = std::fs::read(&log) {
        bytes = now;
        if String::from_utf8_lossy(&bytes).contains("serial log reached its cap")
            || std::time::Instant::now() > deadline
        {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    env.wait_for_status(Rt::Husk, "ser1", "stopped");
    env.ok(Rt::Husk, &["delete", "ser1"]);
    let text = String::from_utf8_lossy(&bytes);
    assert!(
        bytes.len() <= (1 << 20) + 200,
        "serial log of {} bytes",
        bytes.len()
    );
    assert_eq!(
        text.matches("serial log reached its cap").count(),
        1,
        "{}",
        &text[text.len().saturating_sub(300)..]
    );
    env.assert_clean();
}
