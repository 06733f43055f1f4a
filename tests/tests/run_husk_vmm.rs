//! `husk run --backend husk`: the same container through our own VMM.
//!
//! Where `husk check` says ready, it must run like the QEMU backend. On a
//! kvm-limited host (nested PVM) guest userspace cannot run under KVM, so
//! the agent never says hello: the run must then end in a clear boot
//! timeout (shortened here with HUSK_BOOT_TIMEOUT) with the VM killed and
//! nothing left behind, not hang.

mod run_support;

use std::process::Command;
use std::time::{Duration, Instant};

use run_support::{assert_code, text};

fn verdict(husk: &std::path::Path) -> Option<String> {
    let out = Command::new(husk).args(["check", "--json"]).output().ok()?;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    json["verdict"].as_str().map(String::from)
}

#[test]
fn husk_vmm_backend_runs_or_fails_cleanly() {
    let mut env = run_env!();
    if !husk_e2e::kvm_available() {
        husk_e2e::skip_host!("/dev/kvm cannot be opened");
    }
    let vmm = husk_e2e::target_dir().join("husk-vmm");
    if !vmm.is_file() {
        husk_e2e::skip!("husk-vmm is not built (cargo build -p husk-vmm)");
    }
    let Some(verdict) = verdict(&env.store.husk) else {
        husk_e2e::skip!("husk check --json gave no verdict");
    };
    env.backend = "husk".into();
    let mut cmd = env.command(&["busybox", "echo", "hello from husk-vmm"]);
    cmd.env("HUSK_VMM", &vmm);
    if verdict != "ready" {
        cmd.env("HUSK_BOOT_TIMEOUT", "8");
    }
    let started = Instant::now();
    let out = run_support::wait_with_timeout(
        cmd.spawn().expect("spawn husk"),
        run_support::RUN_TIMEOUT,
        &["husk"],
    );
    if verdict == "ready" {
        assert_code(&out, 0);
        assert_eq!(text(&out.stdout), "hello from husk-vmm\n");
    } else {
        assert_code(&out, 125);
        let err = text(&out.stderr);
        assert!(err.contains("backend: husk-vmm"), "{err}");
        assert!(
            err.contains("timed out after 8s waiting for the guest agent"),
            "{err}"
        );
        assert!(started.elapsed() < Duration::from_secs(60));
    }
    env.assert_clean();
}
