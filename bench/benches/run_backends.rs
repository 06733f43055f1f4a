//! `husk run --rm busybox true` on its two backends, `--backend husk`
//! (husk-vmm) beside `--backend qemu` (QEMU microvm with KVM), in one run:
//! - the wall time of the whole `husk run`;
//! - VM start to the agent's Hello, from husk's own "agent ready" log line
//!   (`vm_to_hello_ms`);
//! - the VMM process's resident memory outside guest RAM, sampled during a
//!   second series that runs `busybox sleep` (smaps_rollup Rss minus the
//!   resident pages of the ranges the VMM gave KVM as guest memory, which
//!   the LD_PRELOAD interposer records; the same method as vmm_start).
//!
//! Runs are interleaved (who goes first alternates) after one warm-up each,
//! and the medians, min/max and husk/qemu ratios are printed. Needs a real
//! KVM (`husk check` says ready); anywhere else it prints
//! `run_backends SKIPPED: <reason>` and succeeds. On a host without VT-x,
//! run it inside the KVM test bed: tests/kvm-testbed/bench.sh. Needs root,
//! mkfs.erofs, qemu-system-x86_64, HUSK_KERNEL and HUSK_AGENT.
//!
//!   cargo bench -p husk-bench --bench run_backends -- [--runs N] [--husk PATH]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use husk_bench::husk_run::{self, find_descendant, strip_ansi};
use husk_bench::memory::{self, MemorySample};
use husk_bench::run::STAMP_FILE_ENV;
use husk_bench::stamp::parse_stamp_log;
use husk_bench::stats::{summarise, Summary};
use husk_e2e::fixtures::{self, Format};
use husk_vmm::probe::Verdict;

#[derive(Parser, Debug)]
#[command(
    about = "husk run on --backend husk vs --backend qemu: wall time, VM start to Hello, \
                   VMM memory outside guest RAM"
)]
struct Args {
    /// Measured runs per backend and series.
    #[arg(long, default_value_t = 7)]
    runs: usize,
    /// Unmeasured runs per backend and series first.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Memory is sampled this long after husk logs "agent ready".
    #[arg(long, default_value_t = 1000)]
    settle_ms: u64,
    /// How long the container of the memory series sleeps; it must outlast
    /// the container's creation plus --settle-ms.
    #[arg(long, default_value_t = 3)]
    sleep_s: u64,
    /// Longest wait for one `husk run`.
    #[arg(long, default_value_t = 300)]
    timeout_s: u64,
    /// The husk binary; default: target/release/husk, else target/debug/husk.
    #[arg(long, env = "HUSK_BIN")]
    husk: Option<PathBuf>,
    /// The husk-vmm husk runs (passed on as HUSK_VMM); default: husk's own
    /// choice (HUSK_VMM, else beside the husk binary).
    #[arg(long)]
    husk_vmm: Option<PathBuf>,
    /// Compare husk-vmm jailed (husk's default as root) with husk-vmm
    /// without its jail (HUSK_VMM_JAIL=off) instead of husk-vmm with QEMU.
    #[arg(long)]
    jail: bool,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    Husk,
    Qemu,
    /// husk-vmm without its jail (`--jail`).
    HuskNoJail,
}

impl Backend {
    /// The value of `husk run --backend`.
    fn flag(self) -> &'static str {
        match self {
            Backend::Husk | Backend::HuskNoJail => "husk",
            Backend::Qemu => "qemu",
        }
    }

    /// How it is shown.
    fn name(self) -> &'static str {
        match self {
            Backend::HuskNoJail => "husk-nojail",
            other => other.flag(),
        }
    }

    /// The file name of the VMM program husk starts for this backend.
    fn program(self) -> &'static str {
        match self {
            Backend::Husk | Backend::HuskNoJail => "husk-vmm",
            Backend::Qemu => "qemu-system-x86_64",
        }
    }
}

/// One `husk run --rm busybox true`.
#[derive(Clone, Copy, Debug)]
struct Timing {
    wall: Duration,
    vm_to_hello_ms: u64,
}

struct Contender {
    backend: Backend,
    timings: Vec<Timing>,
    memory: Vec<MemorySample>,
    failures: Vec<String>,
}

/// Kills husk however a measurement ends (its VMM dies with it: husk starts
/// it with PR_SET_PDEATHSIG).
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

const MIB: f64 = 1024.0 * 1024.0;

fn main() {
    if let Err(e) = run() {
        eprintln!("run_backends: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.runs > 0, "--runs must be positive");
    let report = husk_vmm::probe::probe_host();
    if let Some(reason) = missing_capability(&report) {
        println!("run_backends SKIPPED: {reason}");
        return Ok(());
    }
    let husk = match &args.husk {
        Some(path) => path.clone(),
        None => default_husk()?,
    };
    anyhow::ensure!(husk.is_file(), "{} does not exist", husk.display());
    let husk_vmm = match &args.husk_vmm {
        Some(path) => path.clone(),
        None => std::env::var_os("HUSK_VMM")
            .map(PathBuf::from)
            .unwrap_or_else(|| husk.with_file_name("husk-vmm")),
    };
    anyhow::ensure!(
        husk_vmm.is_file(),
        "{} does not exist: build it (cargo build --release -p husk-vmm) or pass --husk-vmm",
        husk_vmm.display()
    );

    let work = tempfile::Builder::new()
        .prefix("husk-run-backends.")
        .tempdir()
        .context("create work directory")?;
    let store = work.path().join("store");
    import_busybox(&husk, &store, work.path())?;

    let runner = Runner {
        husk: husk.clone(),
        husk_vmm: husk_vmm.clone(),
        store,
        work: work.path().to_path_buf(),
        interposer: PathBuf::from(env!("KVM_RUN_STAMP_SO")),
        settle: Duration::from_millis(args.settle_ms),
        sleep_s: args.sleep_s,
        timeout: Duration::from_secs(args.timeout_s),
    };

    println!(
        "husk run backends: {} run(s) per backend and series after {} warm-up, interleaved",
        args.runs, args.warmup
    );
    println!("  host KVM: {}", report.verdict);
    if let Some(model) = &report.cpu_model {
        println!("  CPU: {model}");
    }
    println!("  husk: {}", husk.display());
    println!("  husk-vmm: {}", husk_vmm.display());
    println!("  QEMU: {}", qemu_version());
    if let Some(kernel) = std::env::var_os("HUSK_KERNEL") {
        println!("  kernel: {}", Path::new(&kernel).display());
    }
    println!(
        "  series 1: husk --log-level info run --rm --backend B busybox true \
         (wall time; vm_to_hello_ms of husk's \"agent ready\" line)"
    );
    println!(
        "  series 2: husk run --rm --backend B busybox sleep {}: the VMM's memory {} ms after \"agent ready\"; \
         'outside guest RAM' = Rss minus resident pages of the KVM memory slots\n",
        args.sleep_s, args.settle_ms
    );

    let pair = if args.jail {
        [Backend::Husk, Backend::HuskNoJail]
    } else {
        [Backend::Husk, Backend::Qemu]
    };
    let mut contenders = pair.map(|backend| Contender {
        backend,
        timings: Vec::new(),
        memory: Vec::new(),
        failures: Vec::new(),
    });
    for round in 0..args.warmup + args.runs {
        let warm = round < args.warmup;
        let label = if warm {
            "warm-up".to_owned()
        } else {
            format!("run {}/{}", round - args.warmup + 1, args.runs)
        };
        // Alternate who goes first so drift on the host hits both alike.
        let order: [usize; 2] = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for index in order {
            let c = &mut contenders[index];
            match runner.timed(c.backend) {
                Ok(t) => {
                    eprintln!(
                        "{label} {:<4} true:  husk run {:.0} ms, VM start → Hello {} ms",
                        c.backend.name(),
                        t.wall.as_secs_f64() * 1000.0,
                        t.vm_to_hello_ms
                    );
                    if !warm {
                        c.timings.push(t);
                    }
                }
                Err(e) => {
                    eprintln!("{label} {} true: FAILED: {e:#}", c.backend.name());
                    if !warm {
                        c.failures.push(format!("true: {e:#}"));
                    }
                }
            }
        }
        for index in order {
            let c = &mut contenders[index];
            match runner.memory(c.backend) {
                Ok(m) => {
                    eprintln!(
                        "{label} {:<4} sleep: {:.2} MiB outside guest RAM ({:.2} MiB Rss, {:.2} MiB guest)",
                        c.backend.name(),
                        m.outside_guest_bytes() as f64 / MIB,
                        m.rss_bytes as f64 / MIB,
                        m.guest_resident_bytes as f64 / MIB
                    );
                    if !warm {
                        c.memory.push(m);
                    }
                }
                Err(e) => {
                    eprintln!("{label} {} sleep: FAILED: {e:#}", c.backend.name());
                    if !warm {
                        c.failures.push(format!("sleep: {e:#}"));
                    }
                }
            }
        }
    }
    println!();
    print_table(&contenders);
    if contenders
        .iter()
        .any(|c| c.timings.is_empty() || c.memory.is_empty())
    {
        bail!("a backend had no successful run in a series");
    }
    Ok(())
}

/// Why this host cannot run the benchmark, or None.
fn missing_capability(report: &husk_vmm::probe::HostReport) -> Option<String> {
    if report.verdict != Verdict::Ready {
        return Some(format!(
            "needs a real KVM: `husk check` says {} ({}); on this host run \
             tests/kvm-testbed/bench.sh",
            report.verdict,
            report
                .reasons
                .first()
                .map(String::as_str)
                .unwrap_or("no reason given")
        ));
    }
    if let Some(reason) = fixtures::import_unavailable() {
        return Some(reason);
    }
    if !std::env::var_os("HUSK_KERNEL").is_some_and(|p| Path::new(&p).is_file()) {
        return Some("HUSK_KERNEL is not set to the guest kernel (scripts/setup.sh)".into());
    }
    if !std::env::var_os("HUSK_AGENT").is_some_and(|p| Path::new(&p).is_file()) {
        return Some("HUSK_AGENT is not set to the static guest agent (scripts/setup.sh)".into());
    }
    let qemu = Command::new("qemu-system-x86_64")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if qemu.is_err() {
        return Some(
            "qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)".into(),
        );
    }
    None
}

/// husk beside this benchmark: bench executables live in
/// target/<profile>/deps; release first, then debug.
fn default_husk() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locate the benchmark executable")?;
    let target = exe
        .parent()
        .and_then(Path::parent)
        .and_then(Path::parent)
        .context("locate the target directory")?;
    ["release", "debug"]
        .iter()
        .map(|profile| target.join(profile).join("husk"))
        .find(|p| p.is_file())
        .context("no husk binary: `cargo build --release -p husk` (or pass --husk)")
}

fn qemu_version() -> String {
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.arg("--version");
    husk_bench::external::stdout_of(cmd)
        .map(|v| v.lines().next().unwrap_or("").to_owned())
        .unwrap_or_else(|e| format!("unknown ({e})"))
}

/// Writes the busybox test image and imports it into `store`.
fn import_busybox(husk: &Path, store: &Path, work: &Path) -> anyhow::Result<()> {
    let archive = work.join("busybox.tar");
    let spec = fixtures::busybox(Some("busybox:latest")).context("build the busybox image")?;
    fixtures::write(&[fixtures::build(&spec)], Format::Docker, &archive)
        .context("write the busybox image")?;
    let mut cmd = Command::new(husk);
    cmd.arg("--store")
        .arg(store)
        .args(["image", "import"])
        .arg(&archive);
    husk_bench::external::stdout_of(cmd).context("husk image import")?;
    Ok(())
}

struct Runner {
    husk: PathBuf,
    husk_vmm: PathBuf,
    store: PathBuf,
    work: PathBuf,
    interposer: PathBuf,
    settle: Duration,
    sleep_s: u64,
    timeout: Duration,
}

/// The last lines of a log, for error messages.
fn tail(lines: &[String]) -> String {
    lines[lines.len().saturating_sub(20)..].join("\n")
}

impl Runner {
    fn command(&self, backend: Backend, container: &[&str]) -> Command {
        let mut cmd = Command::new(&self.husk);
        cmd.arg("--store")
            .arg(&self.store)
            .args(["--log-level", "info", "run", "--rm", "--backend"])
            .arg(backend.flag())
            .arg("busybox")
            .args(container)
            .env("HUSK_VMM", &self.husk_vmm)
            .env(
                "HUSK_VMM_JAIL",
                if backend == Backend::HuskNoJail {
                    "off"
                } else {
                    "on"
                },
            )
            .env_remove("LD_PRELOAD")
            .env_remove(STAMP_FILE_ENV)
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        cmd
    }

    /// `husk run --rm busybox true`: wall time and VM start → Hello.
    fn timed(&self, backend: Backend) -> anyhow::Result<Timing> {
        let mut cmd = self.command(backend, &["true"]);
        cmd.stderr(Stdio::piped());
        let start = Instant::now();
        let child = KillOnDrop(cmd.spawn().context("start husk")?);
        let (status, stderr) = self.wait_with_stderr(child)?;
        let wall = start.elapsed();
        let lines: Vec<String> = stderr.lines().map(strip_ansi).collect();
        anyhow::ensure!(
            status.success(),
            "husk run exited with {status}:\n{}",
            tail(&lines)
        );
        let vm_to_hello_ms = lines
            .iter()
            .find_map(|l| husk_run::vm_to_hello_ms(l))
            .with_context(|| format!("no \"agent ready\" line in husk's log:\n{}", tail(&lines)))?;
        Ok(Timing {
            wall,
            vm_to_hello_ms,
        })
    }

    /// Waits for husk, at most the timeout, collecting its stderr.
    fn wait_with_stderr(
        &self,
        mut child: KillOnDrop,
    ) -> anyhow::Result<(std::process::ExitStatus, String)> {
        let stderr = child.0.stderr.take().context("husk's stderr")?;
        let (lines, _) = read_lines(stderr);
        let deadline = Instant::now() + self.timeout;
        let mut text = String::new();
        loop {
            match lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => {
                    text.push_str(&line);
                    text.push('\n');
                }
                // End of output: husk has exited or is about to.
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    bail!("husk run took over {:?}:\n{text}", self.timeout)
                }
            }
        }
        let status = child.0.wait().context("wait for husk")?;
        Ok((status, text))
    }

    /// `husk run --rm busybox sleep S` under the interposer: the VMM's
    /// memory once the agent is ready and the settle time has passed.
    fn memory(&self, backend: Backend) -> anyhow::Result<MemorySample> {
        let dir = tempfile::tempdir_in(&self.work).context("create run directory")?;
        let stamp = dir.path().join("stamp");
        let sleep = self.sleep_s.to_string();
        let mut cmd = self.command(backend, &["sleep", &sleep]);
        // husk passes its environment on to the VMM, where the interposer
        // records the guest memory ranges; husk itself makes no such call.
        cmd.env("LD_PRELOAD", &self.interposer)
            .env(STAMP_FILE_ENV, &stamp)
            .stderr(Stdio::piped());
        let mut child = KillOnDrop(cmd.spawn().context("start husk")?);
        let husk_pid = child.0.id();
        let stderr = child.0.stderr.take().context("husk's stderr")?;
        let (lines, _) = read_lines(stderr);

        let deadline = Instant::now() + self.timeout;
        let mut log = Vec::new();
        loop {
            match lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => {
                    let ready = husk_run::is_agent_ready(&line);
                    log.push(line);
                    if ready {
                        break;
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = child.0.wait().context("wait for husk")?;
                    bail!(
                        "husk exited ({status}) before \"agent ready\":\n{}",
                        tail(&log)
                    );
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    bail!(
                        "no \"agent ready\" within {:?}:\n{}",
                        self.timeout,
                        tail(&log)
                    )
                }
            }
        }
        let program = backend.program();
        let vm = find_descendant(husk_pid, program)
            .with_context(|| format!("husk (pid {husk_pid}) has no {program} descendant"))?;

        std::thread::sleep(self.settle);
        anyhow::ensure!(
            matches!(child.0.try_wait(), Ok(None)) && husk_run::runs(vm, program),
            "the VM ended before its memory was sampled (--sleep-s {} too short?)",
            self.sleep_s
        );
        let stamp_text = std::fs::read_to_string(&stamp)
            .with_context(|| format!("read the interposer's records {}", stamp.display()))?;
        let ranges = parse_stamp_log(&stamp_text)?.guest_host_ranges();
        anyhow::ensure!(
            !ranges.is_empty(),
            "{program} registered no guest memory with KVM (was the interposer loaded?)"
        );
        let sample = memory::sample(vm, &ranges)?;
        anyhow::ensure!(
            husk_run::runs(vm, program),
            "the VM ended while its memory was sampled"
        );

        // Let the container finish as it would, and check that it did.
        let rest: Vec<String> = {
            let deadline = Instant::now() + self.timeout;
            let mut rest = Vec::new();
            loop {
                match lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                    Ok(line) => rest.push(line),
                    Err(mpsc::RecvTimeoutError::Disconnected) => break rest,
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        bail!("husk run took over {:?} after sampling", self.timeout)
                    }
                }
            }
        };
        let status = child.0.wait().context("wait for husk")?;
        log.extend(rest);
        anyhow::ensure!(
            status.success(),
            "husk run exited with {status}:\n{}",
            tail(&log)
        );
        Ok(sample)
    }
}

/// Lines of `stream` (ANSI colours stripped) on a channel, read by a thread;
/// the channel disconnects at end of file.
fn read_lines(
    stream: impl std::io::Read + Send + 'static,
) -> (mpsc::Receiver<String>, std::thread::JoinHandle<()>) {
    let (send, receive) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if send.send(strip_ansi(&line)).is_err() {
                break;
            }
        }
    });
    (receive, reader)
}

fn column(summary: Option<Summary>, decimals: usize) -> String {
    match summary {
        Some(s) => format!(
            "{:>8.d$}  ({:.d$} – {:.d$})",
            s.median,
            s.min,
            s.max,
            d = decimals
        ),
        None => "       -".to_owned(),
    }
}

fn print_table(contenders: &[Contender]) {
    let rows: [(&str, Vec<Vec<f64>>, usize); 5] = [
        (
            "husk run --rm true (ms)",
            contenders
                .iter()
                .map(|c| {
                    c.timings
                        .iter()
                        .map(|t| t.wall.as_secs_f64() * 1000.0)
                        .collect()
                })
                .collect(),
            0,
        ),
        (
            "VM start → agent Hello (ms)",
            contenders
                .iter()
                .map(|c| c.timings.iter().map(|t| t.vm_to_hello_ms as f64).collect())
                .collect(),
            0,
        ),
        (
            "VMM RSS outside guest (MiB)",
            contenders
                .iter()
                .map(|c| {
                    c.memory
                        .iter()
                        .map(|m| m.outside_guest_bytes() as f64 / MIB)
                        .collect()
                })
                .collect(),
            2,
        ),
        (
            "VMM total RSS (MiB)",
            contenders
                .iter()
                .map(|c| c.memory.iter().map(|m| m.rss_bytes as f64 / MIB).collect())
                .collect(),
            2,
        ),
        (
            "guest RAM resident (MiB)",
            contenders
                .iter()
                .map(|c| {
                    c.memory
                        .iter()
                        .map(|m| m.guest_resident_bytes as f64 / MIB)
                        .collect()
                })
                .collect(),
            2,
        ),
    ];
    let mut header = format!("{:<30}", "metric: median (min – max)");
    for c in contenders {
        header.push_str(&format!("  {:<28}", c.backend.name()));
    }
    header.push_str(&format!(
        "  {}/{}",
        contenders[0].backend.name(),
        contenders[1].backend.name()
    ));
    println!("{header}");
    for (name, series, decimals) in rows {
        let mut line = format!("{name:<30}");
        let mut medians = Vec::new();
        for values in &series {
            let summary = summarise(values);
            medians.push(summary.map(|s| s.median));
            line.push_str(&format!("  {:<28}", column(summary, decimals)));
        }
        match (medians[0], medians[1]) {
            (Some(h), Some(q)) if q > 0.0 => line.push_str(&format!("  {:.2}", h / q)),
            _ => line.push_str("  -"),
        }
        println!("{line}");
    }
    for c in contenders {
        println!(
            "{}: {} timed and {} memory runs, {} failed",
            c.backend.name(),
            c.timings.len(),
            c.memory.len(),
            c.failures.len()
        );
        if let Some(first) = c.failures.first() {
            println!("  first failure: {first}");
        }
    }
}
