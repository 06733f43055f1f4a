//! A pod through `husk-runc`: containers with the CRI annotations
//! (`io.kubernetes.cri.container-type`, `io.kubernetes.cri.sandbox-id`)
//! share their sandbox's VM, each with its own rootfs, PID namespace and
//! cgroup, the IPC and UTS namespaces named by path being the sandbox's.
//! husk alone: runc has no pods (CRI builds them from namespace paths).
//! Runs on QEMU here and on husk-vmm in the KVM test bed.

mod oci_support;

use oci_support::{text, Rt};

/// The VM programs (QEMU or husk-vmm) started under this test's root.
fn vm_programs(env: &oci_support::OciEnv) -> Vec<u32> {
    husk_e2e::procs::processes_mentioning(&env.root(Rt::Husk))
        .into_iter()
        .filter(|(_, cmd)| cmd.contains("qemu-system") || cmd.contains("husk-vmm"))
        .map(|(pid, _)| pid)
        .collect()
}

fn exec(env: &oci_support::OciEnv, id: &str, script: &str) -> String {
    env.ok(Rt::Husk, &["exec", id, "sh", "-c", script])
}

#[test]
fn a_pods_containers_share_its_sandboxs_vm_through_husk_runc() {
    let env = oci_env!();
    let annotate = |kind: &'static str| {
        move |config: &mut serde_json::Value| {
            // Each writes a file in its rootfs.
            config["root"]["readonly"] = false.into();
            config["annotations"] = serde_json::json!({
                "io.kubernetes.cri.container-type": kind,
                "io.kubernetes.cri.sandbox-id": "pod1",
            });
            if kind == "container" {
                // As CRI does: the sandbox's IPC and UTS by (host) path.
                let namespaces = config["linux"]["namespaces"].as_array_mut().unwrap();
                for ns in namespaces.iter_mut() {
                    for kind in ["ipc", "uts"] {
                        if ns["type"] == kind {
                            ns["path"] = format!("/proc/1/ns/{kind}").into();
                        }
                    }
                }
                config["hostname"] = "not-the-pods".into();
            } else {
                config["hostname"] = "pod-one".into();
            }
        }
    };
    let sandbox = env.bundle(
        "pod-sandbox",
        &["sh", "-c", "echo s > /sandbox-only && exec sleep 1000"],
        annotate("sandbox"),
    );
    let member = env.bundle(
        "pod-member",
        &["sh", "-c", "echo m > /member-only && exec sleep 1000"],
        annotate("container"),
    );
    env.create(Rt::Husk, "pod1", &sandbox, &[]);
    env.ok(Rt::Husk, &["start", "pod1"]);
    let vms = vm_programs(&env);
    assert_eq!(vms.len(), 1, "{vms:?}");

    env.create(Rt::Husk, "app1", &member, &[]);
    env.ok(Rt::Husk, &["start", "app1"]);
    assert_eq!(vm_programs(&env), vms, "the member got a VM of its own");
    assert_eq!(env.status(Rt::Husk, "app1"), "running");

    // Its own rootfs and PID 1; the sandbox's hostname (UTS namespace).
    let seen = exec(
        &env,
        "app1",
        "while ! test -e /member-only; do sleep 0.1; done; hostname; \
         test -e /sandbox-only && echo sandbox-file-visible || echo isolated; cat /proc/1/cmdline",
    );
    let lines: Vec<&str> = seen.lines().collect();
    assert_eq!(lines.len(), 3, "{seen}");
    assert_eq!(lines[0], "pod-one", "{seen}");
    assert_eq!(lines[1], "isolated", "{seen}");
    assert!(lines[2].starts_with("sleep"), "its own PID 1: {seen}");
    let seen = exec(
        &env,
        "pod1",
        "test -e /member-only && echo member-file-visible || echo isolated",
    );
    assert_eq!(seen.trim(), "isolated");

    // A member goes, the pod stays; the next member reuses the slot with
    // a fresh rootfs.
    env.ok(Rt::Husk, &["kill", "app1", "KILL"]);
    env.wait_for_status(Rt::Husk, "app1", "stopped");
    env.ok(Rt::Husk, &["delete", "app1"]);
    assert_eq!(env.status(Rt::Husk, "pod1"), "running");
    env.create(Rt::Husk, "app2", &member, &[]);
    env.ok(Rt::Husk, &["start", "app2"]);
    let seen = exec(&env, "app2", "hostname; cat /proc/1/cmdline | wc -c");
    assert!(seen.starts_with("pod-one\n"), "{seen}");
    assert_eq!(vm_programs(&env), vms, "the pod's VM changed");

    // Pausing a container of a shared VM is refused, naming why.
    let out = env.run(Rt::Husk, &["pause", "app2"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("pod"), "{}", text(&out.stderr));

    // A member whose monitor dies is removed from the VM and its slot
    // freed: then all 4 slots take members again, and a 5th is refused.
    let monitor = env.state(Rt::Husk, "app2")["pid"].as_i64().unwrap() as i32;
    // SAFETY: kill(2) on the pid the state names (the member's monitor).
    assert_eq!(unsafe { libc::kill(monitor, libc::SIGKILL) }, 0);
    assert!(oci_support::wait_pid_gone(monitor, oci_support::TIMEOUT));
    env.ok(Rt::Husk, &["delete", "--force", "app2"]);
    let members = ["app3", "app4", "app5", "app6"];
    for id in &members[..3] {
        env.create(Rt::Husk, id, &member, &[]);
    }
    // The dead member's slot comes free once the guest has removed it:
    // until then a create is refused for want of a slot.
    let deadline = std::time::Instant::now() + oci_support::TIMEOUT;
    loop {
        let (status, _, err) = env.run_files(
            Rt::Husk,
            &["create", "--bundle", member.to_str().unwrap(), "app6"],
        );
        if status.success() {
            break;
        }
        assert!(err.contains("no free layer-disk slot"), "{err}");
        assert!(
            std::time::Instant::now() < deadline,
            "the slot never came free: {err}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let (status, _, err) = env.run_files(
        Rt::Husk,
        &["create", "--bundle", member.to_str().unwrap(), "app7"],
    );
    assert!(!status.success());
    assert!(
        err.contains("at most 4 containers besides the sandbox"),
        "{err}"
    );
    env.ok(Rt::Husk, &["start", "app6"]);
    assert_eq!(exec(&env, "app6", "hostname").trim(), "pod-one");
    assert_eq!(vm_programs(&env), vms, "the pod's VM changed");

    // The sandbox's end is the VM's: the members end too.
    env.ok(Rt::Husk, &["kill", "pod1", "KILL"]);
    env.wait_for_status(Rt::Husk, "pod1", "stopped");
    for id in members {
        env.wait_for_status(Rt::Husk, id, "stopped");
        env.ok(Rt::Husk, &["delete", id]);
    }
    env.ok(Rt::Husk, &["delete", "pod1"]);
    assert!(vm_programs(&env).is_empty());
    env.assert_clean();
}
