//! `scripts/install.sh` into a temporary prefix: the installed `husk`
//! finds its kernel, agent and VMM with no HUSK_* variable, runs a
//! container from a clean environment, and `--uninstall` leaves the prefix
//! exactly as it was.

use husk_e2e::fixtures::{self, Format};
use husk_e2e::procs::{text, wait_with_timeout};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(900);

/// Every entry under `root`: relative path → kind and size.
fn listing(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let meta = entry.metadata().unwrap();
            let rel = entry.path().strip_prefix(root).unwrap().to_path_buf();
            if meta.is_dir() {
                pending.push(entry.path());
                out.insert(rel, "dir".into());
            } else {
                out.insert(rel, format!("file {}", meta.len()));
            }
        }
    }
    out
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/install.sh")
}

fn run(cmd: &mut Command, what: &[&str]) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    wait_with_timeout(child, TIMEOUT, what)
}

fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: {:?}\nstdout: {}\nstderr: {}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// A command with nothing of this environment: no HUSK_*, a bare PATH.
fn clean(program: &Path, home: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("HOME", home);
    cmd
}

#[test]
fn install_run_from_a_clean_environment_and_uninstall() {
    let Some(kernel) = husk_e2e::kernel() else {
        husk_e2e::skip!("HUSK_KERNEL is not set to a guest kernel (scripts/setup.sh)");
    };
    let Some(agent) = std::env::var_os("HUSK_AGENT")
        .map(PathBuf::from)
        .filter(|p| p.is_file())
    else {
        husk_e2e::skip!("HUSK_AGENT is not set to the static guest agent (scripts/setup.sh)");
    };
    if let Some(reason) = fixtures::import_unavailable() {
        husk_e2e::skip!("{reason}");
    }
    let prefix_dir = tempfile::tempdir().unwrap();
    let prefix = prefix_dir.path();
    // Something of someone else's already there, which must stay.
    std::fs::create_dir_all(prefix.join("bin")).unwrap();
    std::fs::write(prefix.join("bin/other-tool"), b"#!/bin/sh\n").unwrap();
    std::fs::create_dir_all(prefix.join("share/man")).unwrap();
    let before = listing(prefix);

    let prefix_arg = prefix.to_str().unwrap();
    ok(
        run(
            Command::new("bash").arg(script()).args([
                "--prefix",
                prefix_arg,
                "--debug",
                "--kernel",
                kernel.to_str().unwrap(),
                "--agent",
                agent.to_str().unwrap(),
            ]),
            &["install.sh"],
        ),
        "install.sh",
    );
    for file in [
        "bin/husk",
        "bin/husk-vmm",
        "bin/husk-runc",
        "bin/containerd-shim-husk-v2",
        "lib/husk/vmlinux",
        "lib/husk/husk-agent",
        "share/bash-completion/completions/husk",
        "share/zsh/site-functions/_husk",
        "share/fish/vendor_completions.d/husk.fish",
        "share/man/man1/husk.1",
        "share/man/man1/husk-pull.1",
        "share/man/man1/husk-image-import.1",
    ] {
        assert!(prefix.join(file).is_file(), "{file} not installed");
    }
    let completion =
        std::fs::read_to_string(prefix.join("share/bash-completion/completions/husk")).unwrap();
    assert!(completion.contains("pull") && completion.contains("--insecure-registry"));

    let home = tempfile::tempdir().unwrap();
    let husk = prefix.join("bin/husk");
    let check = ok(
        run(
            clean(&husk, home.path()).args(["check", "--json"]),
            &["check"],
        ),
        "husk check",
    );
    let check: serde_json::Value = serde_json::from_str(&check).unwrap();
    let installed = prefix.canonicalize().unwrap();
    assert_eq!(
        check["assets"]["guest kernel"]["path"],
        installed.join("lib/husk/vmlinux").to_str().unwrap(),
        "{check}"
    );
    assert_eq!(
        check["assets"]["guest kernel"]["from"],
        "the install beside husk"
    );
    assert_eq!(check["assets"]["guest agent"]["present"], true);
    assert_eq!(check["assets"]["husk-vmm"]["present"], true);

    // Runs busybox with nothing but what the install put there.
    let store = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let archive = work.path().join("busybox.tar");
    let image = fixtures::build(&fixtures::busybox(Some("busybox:latest")).unwrap());
    fixtures::write(&[image], Format::Docker, &archive).unwrap();
    let store_arg = store.path().to_str().unwrap();
    ok(
        run(
            clean(&husk, home.path()).args([
                "--store",
                store_arg,
                "image",
                "import",
                "-q",
                archive.to_str().unwrap(),
            ]),
            &["import"],
        ),
        "installed husk image import",
    );
    let mut args = vec!["--store", store_arg, "run", "--rm"];
    let backend = std::env::var("HUSK_TEST_BACKEND").ok();
    if let Some(backend) = &backend {
        args.extend(["--backend", backend]);
    }
    args.extend(["busybox", "true"]);
    ok(
        run(clean(&husk, home.path()).args(&args), &["run"]),
        "installed husk run --rm busybox true",
    );

    ok(
        run(
            Command::new("bash")
                .arg(script())
                .args(["--prefix", prefix_arg, "--uninstall"]),
            &["install.sh --uninstall"],
        ),
        "install.sh --uninstall",
    );
    assert_eq!(listing(prefix), before);
}
