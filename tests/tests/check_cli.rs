//! `husk check` end to end: the real binary's JSON must agree with what this
//! test reads from the host itself, independently of husk's probe code.

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// KVM_GET_API_VERSION = _IO(KVMIO, 0x00).
const KVM_GET_API_VERSION: libc::c_ulong = 0xAE00;

/// "vmx"/"svm" from the first `flags` line of /proc/cpuinfo.
fn cpuinfo_virt_flag() -> Option<String> {
    let text = std::fs::read_to_string("/proc/cpuinfo").expect("read /proc/cpuinfo");
    let flags = text
        .lines()
        .find(|l| l.starts_with("flags"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("");
    flags
        .split_whitespace()
        .find(|f| *f == "vmx" || *f == "svm")
        .map(str::to_owned)
}

/// Opens /dev/kvm read-write and asks its API version (None if it won't open).
fn kvm_api_version() -> Option<i32> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .ok()?;
    // SAFETY: KVM_GET_API_VERSION takes no argument and only returns an int.
    let version = unsafe { libc::ioctl(file.as_raw_fd(), KVM_GET_API_VERSION) };
    Some(version)
}

fn run_check(json: bool) -> (i32, String) {
    let mut cmd = Command::new(husk_e2e::bin("husk"));
    cmd.arg("check");
    if json {
        cmd.arg("--json");
    }
    let out = cmd.output().expect("run husk check");
    let code = out.status.code().expect("husk check exited by a signal");
    (
        code,
        String::from_utf8(out.stdout).expect("stdout is UTF-8"),
    )
}

#[test]
fn json_agrees_with_the_host() {
    let (code, stdout) = run_check(true);
    let report: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("husk check --json printed no JSON object ({e}): {stdout}"));
    assert!(report.is_object(), "{report}");

    let flag = cpuinfo_virt_flag();
    assert_eq!(
        report["cpu_virt_flag"],
        flag.clone().map_or(Value::Null, Value::from),
        "{report}"
    );

    let api = kvm_api_version();
    assert_eq!(report["kvm_device"], Value::Bool(api.is_some()), "{report}");
    assert_eq!(
        report["kvm_api_version"],
        api.map_or(Value::Null, Value::from),
        "{report}"
    );
    let missing = report["missing_capabilities"]
        .as_array()
        .expect("missing_capabilities is a list");
    let reasons = report["reasons"].as_array().expect("reasons is a list");
    assert!(report["nested_pvm"].is_boolean(), "{report}");

    let verdict = report["verdict"].as_str().expect("verdict is a string");
    match verdict {
        "ready" => {
            assert_eq!(code, 0);
            assert!(flag.is_some(), "ready without vmx/svm: {report}");
            assert_eq!(api, Some(12));
            assert!(missing.is_empty());
            assert_eq!(report["nested_pvm"], false);
        }
        "kvm-limited" => {
            assert_eq!(code, 0);
            assert!(api.is_some(), "kvm-limited needs a working /dev/kvm");
            assert_eq!(report["nested_pvm"], true);
            assert!(!reasons.is_empty());
        }
        "unavailable" => {
            assert_eq!(code, 1);
            assert!(!reasons.is_empty());
        }
        other => panic!("unknown verdict {other:?}"),
    }
    for reason in reasons {
        let text = reason.as_str().expect("each reason is a string");
        assert!(text.ends_with('.'), "not a sentence: {text}");
    }

    // These machines: KVM is kvm_pvm, no vmx/svm flag. Say so explicitly.
    let pvm_loaded = Path::new("/sys/module/kvm_pvm").is_dir();
    if pvm_loaded && api.is_some() && missing.is_empty() {
        assert_eq!(verdict, "kvm-limited", "{report}");
        assert_eq!(code, 0);
        assert_eq!(report["nested_pvm"], true);
        let all = reasons
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(" ");
        assert!(all.contains("kvm_pvm"), "{all}");
        assert!(all.contains("QEMU TCG"), "{all}");
    }
    if api.is_none() {
        assert_eq!(verdict, "unavailable", "{report}");
    }
}

#[test]
fn text_report_leads_with_the_same_verdict() {
    let (json_code, stdout) = run_check(true);
    let report: Value = serde_json::from_str(&stdout).expect("JSON");
    let verdict = report["verdict"].as_str().expect("verdict");

    let (code, text) = run_check(false);
    assert_eq!(code, json_code);
    let first = text.lines().next().unwrap_or("");
    assert!(
        first.starts_with(&format!("husk check: {verdict} (")),
        "headline: {first}"
    );
    assert!(text.contains("/dev/kvm"), "{text}");
    for reason in report["reasons"].as_array().expect("reasons") {
        let reason = reason.as_str().expect("string");
        assert!(text.contains(reason), "text lacks reason {reason:?}");
    }
}
