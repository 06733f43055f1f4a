//! The KVM test bed (tests/kvm-testbed) works: a command's output, status,
//! arguments, environment and directory make the trip into L1 and back; L1's
//! /dev/kvm is a real KVM (`husk check` of this checkout says ready); and the
//! hard timeout ends a run leaving no process and no file behind.
//!
//! Each test boots its own L1 under QEMU TCG: tens of seconds each.

mod run_support;

use std::ffi::OsString;
use std::time::{Duration, Instant};

use husk_e2e::testbed::{self, BedOutput, Options, Outcome};
use serde_json::Value;

fn show(out: &BedOutput) -> String {
    format!(
        "{:?} (status {:?})\nstdout:\n{}\nstderr:\n{}",
        out.outcome,
        out.status,
        out.stdout_text(),
        out.stderr_text()
    )
}

#[test]
fn command_output_status_and_environment_come_back() {
    if let Some(reason) = testbed::unavailable() {
        return husk_e2e::skip_unless_ci(reason);
    }
    let opts = Options {
        timeout: Duration::from_secs(900),
        mem_mib: 1024,
        env: vec!["TESTBED_EXTRA".into()],
        script_env: vec![
            ("TESTBED_EXTRA".into(), "x 'y'".into()),
            ("HUSK_E2E_PROBE".into(), "z".into()),
            ("TESTBED_HIDDEN".into(), "not passed".into()),
        ],
        ..Options::default()
    };
    let script = r#"printf '%s|' "$@"; echo
        echo "extra=$TESTBED_EXTRA husk=$HUSK_E2E_PROBE hidden=${TESTBED_HIDDEN-unset}"
        pwd
        echo hi from L1 stderr >&2
        exit 7"#;
    let out = testbed::run(
        &opts,
        &["sh", "-c", script, "sh", "a b", "it's", "$HOME", ""],
    )
    .unwrap_or_else(|e| panic!("{e}"));

    assert_eq!(out.outcome, Outcome::Exited(7), "{}", show(&out));
    assert_eq!(out.code(), Some(7), "{}", show(&out));
    let cwd = std::env::current_dir()
        .and_then(|d| d.canonicalize())
        .expect("current dir");
    assert_eq!(
        out.stdout_text(),
        format!(
            "a b|it's|$HOME||\nextra=x 'y' husk=z hidden=unset\n{}\n",
            cwd.display()
        ),
        "{}",
        show(&out)
    );
    assert!(
        out.stderr_text().contains("hi from L1 stderr"),
        "{}",
        show(&out)
    );
}

#[test]
fn l1_has_a_real_kvm_and_husk_check_says_ready() {
    if let Some(reason) = testbed::unavailable() {
        return husk_e2e::skip_unless_ci(reason);
    }
    let husk = husk_e2e::bin("husk");
    let opts = Options {
        timeout: Duration::from_secs(900),
        mem_mib: 1024,
        ..Options::default()
    };
    let cmd: Vec<OsString> = vec![husk.into(), "check".into(), "--json".into()];
    let out = testbed::run(&opts, &cmd).unwrap_or_else(|e| panic!("{e}"));

    assert_eq!(out.outcome, Outcome::Exited(0), "{}", show(&out));
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("husk check --json printed no JSON ({e}): {}", show(&out)));
    assert_eq!(report["verdict"], "ready", "{report:#}");
    assert_eq!(report["cpu_virt_flag"], "svm", "{report:#}");
    assert_eq!(report["nested_pvm"], false, "{report:#}");
    assert_eq!(report["kvm_device"], true, "{report:#}");
    assert_eq!(report["kvm_api_version"], 12, "{report:#}");
    let modules = report["kvm_modules"].as_array().expect("kvm_modules");
    assert!(modules.iter().any(|m| m == "kvm_amd"), "{report:#}");
}

#[test]
fn hard_timeout_ends_the_run_and_leaves_nothing_behind() {
    if let Some(reason) = testbed::unavailable() {
        return husk_e2e::skip_unless_ci(reason);
    }
    // The script's per-run directory (QEMU's shares and FIFOs) goes here,
    // so QEMU's command line names it.
    let scratch = tempfile::tempdir().expect("tempdir");
    let limit = Duration::from_secs(15);
    let opts = Options {
        timeout: limit,
        mem_mib: 512,
        script_env: vec![("TMPDIR".into(), scratch.path().display().to_string())],
        ..Options::default()
    };
    // Prepare first, so the time measured below is the run's alone.
    testbed::prepare().unwrap_or_else(|e| panic!("{e}"));
    let started = Instant::now();
    let out = testbed::run(&opts, &["sleep", "600"]).unwrap_or_else(|e| panic!("{e}"));
    let took = started.elapsed();

    assert_eq!(out.outcome, Outcome::TimedOut, "{}", show(&out));
    assert_eq!(out.code(), Some(testbed::EXIT_TIMEOUT), "{}", show(&out));
    assert!(
        out.stderr_text().contains("testbed: timed out after 15 s"),
        "{}",
        show(&out)
    );
    // QEMU gets TERM at the limit and KILL 10 s later at worst.
    assert!(
        took < limit + Duration::from_secs(60),
        "took {took:?}: {}",
        show(&out)
    );
    let procs = run_support::processes_mentioning(scratch.path());
    assert!(procs.is_empty(), "left running: {procs:?}");
    let files: Vec<_> = std::fs::read_dir(scratch.path())
        .expect("read scratch")
        .map(|e| e.map(|e| e.path()))
        .collect();
    assert!(files.is_empty(), "left behind: {files:?}");
}
