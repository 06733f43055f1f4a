//! The guest-side hardening of `husk run`, end to end in a microVM: the
//! device policy that keeps container root away from the agent channel
//! (virtio console, `hvc`) and the serial port, and the seccomp profiles.

mod run_support;

use run_support::{assert_code, text};

/// Container root has CAP_MKNOD, but may neither create nor open the
/// agent channel's device (the virtio console: `hvc` on husk-vmm, a
/// `virtio-portsdev` port on QEMU, majors from the guest's /proc/devices)
/// or ttyS0 (4:64): the cgroup device program refuses both (EPERM). A node
/// of an allowed device that it makes on the rootfs or in /dev does not
/// open either (`nodev`), while the /dev/null it was given works.
#[test]
fn container_root_cannot_create_or_open_the_console_devices() {
    let env = run_env!();
    let script = r#"
channels=0
for name in hvc virtio-portsdev ttyS; do
  major=$(awk -v n="$name" '$2==n{print $1; exit}' /proc/devices)
  [ -n "$major" ] || continue
  [ "$name" = ttyS ] && minor=64 || minor=0
  [ "$name" = ttyS ] || channels=$((channels+1))
  if mknod /tmp/node c $major $minor 2>/dev/null; then echo "$name: mknod made"; else echo "$name: mknod refused"; fi
  if [ -e /tmp/node ] && (exec 3<>/tmp/node) 2>/dev/null; then echo "$name: open opened"; else echo "$name: open refused"; fi
  rm -f /tmp/node
done
echo "channels: $channels"
mknod /tmp/null c 1 3 && echo "rootfs null made"
if (exec 3</tmp/null) 2>/dev/null; then echo "rootfs null opened"; else echo "rootfs null refused"; fi
mknod /dev/null2 c 1 3 && echo "dev null made"
if (exec 3</dev/null2) 2>/dev/null; then echo "dev null opened"; else echo "dev null refused"; fi
echo data > /dev/null && echo "given null works"
"#;
    let out = env.run(&["--rm", "busybox", "sh", "-c", script]);
    assert_code(&out, 0);
    let stdout = text(&out.stdout);
    let (devices, mut rest): (Vec<&str>, Vec<&str>) = stdout
        .lines()
        .partition(|line| line.contains(": mknod ") || line.contains(": open "));
    // hvc (husk-vmm's console port) and/or virtio-portsdev (any port).
    let channels = rest
        .first()
        .and_then(|line| line.strip_prefix("channels: "))
        .and_then(|n| n.parse::<u32>().ok());
    assert!(channels.is_some_and(|n| n >= 1), "{stdout}");
    rest.remove(0);
    assert!(
        devices.iter().all(|line| line.ends_with(" refused")),
        "stdout: {stdout}\nstderr: {}",
        text(&out.stderr)
    );
    assert!(devices.contains(&"ttyS: mknod refused"), "{stdout}");
    assert_eq!(
        rest,
        [
            "rootfs null made",
            "rootfs null refused",
            "dev null made",
            "dev null refused",
            "given null works",
        ],
        "{stdout}"
    );
    env.assert_clean();
}

/// The default profile refuses what Docker's does (here `unshare`, which a
/// user namespace would otherwise allow without any capability), and
/// `--security-opt seccomp=unconfined` lifts it.
#[test]
fn default_seccomp_profile_applies_and_unconfined_lifts_it() {
    let env = run_env!();
    let script = "unshare -U true && echo unshared || echo refused";
    let out = env.run(&["--rm", "busybox", "sh", "-c", script]);
    assert_code(&out, 0);
    assert_eq!(text(&out.stdout), "refused\n", "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("Operation not permitted"),
        "{}",
        text(&out.stderr)
    );
    let out = env.run(&[
        "--rm",
        "--security-opt",
        "seccomp=unconfined",
        "busybox",
        "sh",
        "-c",
        script,
    ]);
    assert_code(&out, 0);
    assert_eq!(text(&out.stdout), "unshared\n", "{}", text(&out.stderr));
    env.assert_clean();
}

/// The default profile with `mkdir`/`mkdirat` taken out of its allow list
/// and given `rule` instead.
fn profile_with_mkdir_rule(rule: serde_json::Value) -> serde_json::Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../runtime-shim/src/sandbox/seccomp_default.json"
    );
    let mut profile: serde_json::Value =
        serde_json::from_slice(&std::fs::read(path).expect("default profile")).expect("JSON");
    let syscalls = profile["syscalls"].as_array_mut().expect("syscalls");
    for entry in syscalls.iter_mut() {
        if let Some(names) = entry["names"].as_array_mut() {
            names.retain(|name| name != "mkdir" && name != "mkdirat");
        }
    }
    let mut rule = rule;
    rule["names"] = serde_json::json!(["mkdir", "mkdirat"]);
    syscalls.push(rule);
    profile
}

/// Behaviour of custom profiles given with `--security-opt seccomp=FILE`,
/// each against the default action EPERM: an allowed syscall works, an
/// ERRNO rule fails with its errno, a KILL rule kills with SIGSYS, and a
/// LOG rule (less strict than the default) lets its syscall through.
#[test]
fn seccomp_profile_rules_allow_fail_kill_and_log() {
    let env = run_env!();
    let dir = tempfile::tempdir().unwrap();
    // In a child shell, so that a kill ends only it.
    let script = "sh -c 'mkdir /tmp/made'; echo status=$?; ls -d /tmp/made";
    let cases = [
        (
            "allow",
            serde_json::json!({"action": "SCMP_ACT_ALLOW"}),
            "status=0\n/tmp/made\n",
            None,
        ),
        (
            "errno",
            serde_json::json!({"action": "SCMP_ACT_ERRNO", "errnoRet": 13}),
            "status=1\n",
            Some("Permission denied"),
        ),
        (
            "kill",
            serde_json::json!({"action": "SCMP_ACT_KILL_PROCESS"}),
            // busybox runs mkdir in a child: 128 + SIGSYS (31).
            "status=159\n",
            None,
        ),
        (
            "log",
            serde_json::json!({"action": "SCMP_ACT_LOG"}),
            "status=0\n/tmp/made\n",
            None,
        ),
    ];
    for (name, rule, expected, stderr_has) in cases {
        let file = dir.path().join(format!("{name}.json"));
        std::fs::write(&file, profile_with_mkdir_rule(rule).to_string()).unwrap();
        let opt = format!("seccomp={}", file.display());
        let out = env.run(&[
            "--rm",
            "--security-opt",
            &opt,
            "busybox",
            "sh",
            "-c",
            script,
        ]);
        assert_eq!(
            text(&out.stdout),
            expected,
            "{name}: status {:?}, stderr: {}",
            out.status,
            text(&out.stderr)
        );
        if let Some(needle) = stderr_has {
            assert!(
                text(&out.stderr).contains(needle),
                "{name}: {}",
                text(&out.stderr)
            );
        }
    }
    env.assert_clean();
}
