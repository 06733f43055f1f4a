//! Shared set-up of the `husk run` end-to-end tests: a temp store with the
//! busybox fixture imported, the guest kernel and agent from the
//! environment, `husk run` with a hard timeout, and the "nothing left
//! behind" checks.

#![allow(dead_code)] // each test binary uses a different subset

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use husk_e2e::fixtures::{self, Format, TestStore};

/// A VM boot under TCG takes seconds; a loaded CI host is slower.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(240);

pub struct RunEnv {
    pub store: TestStore,
    pub kernel: PathBuf,
    pub agent: PathBuf,
    pub backend: String,
}

/// The test environment, or why this host cannot run the tests.
pub fn setup() -> Result<RunEnv, String> {
    let kernel = husk_e2e::kernel()
        .ok_or("HUSK_KERNEL is not set to a guest kernel (run guest-kernel-config/build.sh; scripts/setup.sh writes target/husk.env)")?;
    let agent = std::env::var_os("HUSK_AGENT")
        .map(PathBuf::from)
        .filter(|p| p.is_file())
        .ok_or("HUSK_AGENT is not set to the static guest agent (scripts/setup.sh builds it)")?;
    if let Some(reason) = fixtures::import_unavailable() {
        return Err(reason);
    }
    // QEMU is what runs guests on hosts without usable KVM (this one); a
    // ready host can run the same tests on husk-vmm with HUSK_TEST_BACKEND.
    let backend = std::env::var("HUSK_TEST_BACKEND").unwrap_or_else(|_| "qemu".into());
    if backend != "husk"
        && Command::new("qemu-system-x86_64")
            .arg("--version")
            .output()
            .is_err()
    {
        return Err("qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)".into());
    }
    let store = TestStore::new();
    copy_tree(template_store()?, store.root())?;
    Ok(RunEnv {
        store,
        kernel,
        agent,
        backend,
    })
}

/// The busybox image is imported once per test binary, into this template
/// store, and each test gets a copy of it (`cp -a` keeps the owners, modes
/// and xattrs of the layer files; the store holds no absolute paths): an
/// import under the KVM test bed's emulation takes about 20 s, and every
/// test needs the image. The template is removed when the binary exits.
fn template_store() -> Result<&'static Path, String> {
    static TEMPLATE: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    TEMPLATE
        .get_or_init(|| {
            let store = TestStore::new();
            let work = tempfile::tempdir().map_err(|e| e.to_string())?;
            let archive = work.path().join("busybox.tar");
            let image = fixtures::build(
                &fixtures::busybox(Some("busybox:latest")).map_err(|e| e.to_string())?,
            );
            fixtures::write(&[image], Format::Docker, &archive).map_err(|e| e.to_string())?;
            store.import(&archive, &[]);
            let path = store.dir.keep();
            remove_at_exit(&path);
            Ok(path)
        })
        .as_ref()
        .map(PathBuf::as_path)
        .map_err(Clone::clone)
}

fn copy_tree(from: &Path, to: &Path) -> Result<(), String> {
    let out = Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", from.display()))
        .arg(to)
        .output()
        .map_err(|e| format!("cp: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "copying the template store: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

/// Removes `path` when the process exits (the test harness ends with
/// exit(), which runs atexit handlers; statics are never dropped).
fn remove_at_exit(path: &Path) {
    static TO_REMOVE: OnceLock<PathBuf> = OnceLock::new();
    extern "C" fn remove() {
        if let Some(path) = TO_REMOVE.get() {
            let _ = std::fs::remove_dir_all(path);
        }
    }
    if TO_REMOVE.set(path.to_path_buf()).is_ok() {
        // SAFETY: `remove` is a plain extern "C" fn without arguments.
        unsafe { libc::atexit(remove) };
    }
}

impl Drop for RunEnv {
    /// A test that failed half-way (e.g. with a `run -d` container still
    /// up) takes its containers down: every process that names this test's
    /// store (monitors, VMs, husk runs) is killed; a VM dies with its
    /// monitor. After a passing test, `assert_clean` found none.
    fn drop(&mut self) {
        for (pid, _) in processes_mentioning(self.store.root()) {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
}

impl RunEnv {
    /// `husk --store S run --backend B ARGS` with the kernel and agent set.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = self.husk_command(&["--log-level", "info", "run", "--backend"]);
        cmd.arg(&self.backend).args(args);
        cmd
    }

    /// `husk --store S ARGS` (any command), with the kernel and agent set.
    pub fn husk_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.store.husk);
        cmd.arg("--store")
            .arg(self.store.root())
            .args(args)
            .env("HUSK_KERNEL", &self.kernel)
            .env("HUSK_AGENT", &self.agent)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.run_with_input(args, None)
    }

    pub fn run_with_input(&self, args: &[&str], input: Option<&[u8]>) -> Output {
        let mut cmd = self.command(args);
        if input.is_some() {
            cmd.stdin(Stdio::piped());
        }
        let mut child = cmd.spawn().expect("spawn husk");
        let feeder = input.map(|data| {
            let mut stdin = child.stdin.take().expect("stdin pipe");
            let data = data.to_vec();
            std::thread::spawn(move || {
                let _ = stdin.write_all(&data);
            })
        });
        let out = wait_with_timeout(child, RUN_TIMEOUT, args);
        if let Some(f) = feeder {
            let _ = f.join();
        }
        out
    }

    pub fn run_dir(&self) -> PathBuf {
        self.store.root().join("run")
    }

    /// Nothing of a finished run is left: no run directory entry (socket,
    /// logs), no VM process (any process naming this store on its
    /// command line, as the VM's socket path does).
    pub fn assert_clean(&self) {
        let leftovers: Vec<_> = std::fs::read_dir(self.run_dir())
            .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(leftovers.is_empty(), "left in the run dir: {leftovers:?}");
        let procs = processes_mentioning(self.store.root());
        assert!(procs.is_empty(), "processes left behind: {procs:?}");
    }
}

pub use husk_e2e::procs::{processes_mentioning, text, wait_with_timeout};

/// Asserts the run exited with `code`, showing its output otherwise.
pub fn assert_code(out: &Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "status {:?}\nstdout: {}\nstderr: {}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// Skips the calling test (with the reason) when the host cannot run VMs.
#[macro_export]
macro_rules! run_env {
    () => {
        match run_support::setup() {
            Ok(env) => env,
            // On CI, set-up provides everything: a missing piece is a failure.
            Err(reason) if std::env::var("CI").as_deref() == Ok("true") => {
                panic!("CI=true and a prerequisite is missing: {reason}")
            }
            Err(reason) => husk_e2e::skip!("{reason}"),
        }
    };
}
