//! husk-vmm against `qemu-system-x86_64 -M microvm`: time from process start
//! to the first KVM_RUN, and resident memory outside guest RAM. Both VMMs
//! boot the same kernel with the same command line, memory, vCPUs and
//! devices, interleaved run by run, and are measured by the same LD_PRELOAD
//! interposer. Prints medians, min/max and husk/qemu ratios.
//!
//!   cargo build --release -p husk-vmm
//!   HUSK_KERNEL=$(guest-kernel-config/build.sh | tail -n 1) cargo bench -p husk-bench -- [--runs N]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};
use husk_bench::external;
use husk_bench::run::{measure, Measurement, RunSettings};
use husk_bench::stats::{summarise, Summary};
use husk_bench::vmms::{write_layer_listings, GuestSpec, Vmm, BASE_CMDLINE};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Which {
    Husk,
    Qemu,
}

#[derive(Parser, Debug)]
#[command(about = "husk-vmm vs QEMU microvm: start to first KVM_RUN, and memory outside guest RAM")]
struct Args {
    /// Measured runs per VMM.
    #[arg(long, default_value_t = 10)]
    runs: usize,
    /// Unmeasured runs per VMM first (warms the page cache).
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    #[arg(long, default_value_t = 256)]
    mem_mib: u64,
    #[arg(long, default_value_t = 1)]
    vcpus: u8,
    /// Memory is sampled this long after the first KVM_RUN.
    #[arg(long, default_value_t = 1000)]
    settle_ms: u64,
    /// Longest wait for a VMM's first KVM_RUN.
    #[arg(long, default_value_t = 60)]
    timeout_s: u64,
    /// Guest vmlinux; default: build or reuse guest-kernel-config/build.sh's.
    #[arg(long, env = "HUSK_KERNEL")]
    kernel: Option<PathBuf>,
    /// husk-vmm binary; default: the release build next to this benchmark.
    #[arg(long, env = "HUSK_VMM")]
    husk_vmm: Option<PathBuf>,
    #[arg(long, default_value = "qemu-system-x86_64")]
    qemu: PathBuf,
    /// Measure only one of the two.
    #[arg(long, value_enum)]
    only: Option<Which>,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn guest_kernel(args: &Args) -> anyhow::Result<PathBuf> {
    if let Some(kernel) = &args.kernel {
        return Ok(kernel.clone());
    }
    let script = workspace_root().join("guest-kernel-config/build.sh");
    eprintln!(
        "HUSK_KERNEL not set: running {} (minutes on a first build)",
        script.display()
    );
    let stdout = external::stdout_of(Command::new(&script))?;
    let last = stdout.lines().last().unwrap_or("").trim();
    if last.is_empty() {
        bail!("{} printed no vmlinux path", script.display());
    }
    Ok(PathBuf::from(last))
}

/// The release husk-vmm beside this benchmark (target/release/deps/..).
fn default_husk_vmm() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locate the benchmark executable")?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("benchmark executable has no target directory")?;
    Ok(profile_dir.join("husk-vmm"))
}

/// The kernel command line: the nested-PVM parameters husk-vmm would add on
/// this host are given to both VMMs, so both guests get the same one.
fn guest_cmdline() -> String {
    let mut cmdline = BASE_CMDLINE.to_owned();
    if husk_vmm::probe::probe_host().nested_pvm {
        for param in husk_vmm::boot::nested_pvm::NESTED_PVM_KERNEL_PARAMS {
            cmdline.push(' ');
            cmdline.push_str(param);
        }
    }
    cmdline
}

fn sparse_disk(path: &Path, bytes: u64) -> anyhow::Result<PathBuf> {
    let file = std::fs::File::create(path).with_context(|| format!("create {}", path.display()))?;
    file.set_len(bytes)
        .with_context(|| format!("size {}", path.display()))?;
    Ok(path.to_path_buf())
}

struct Contender {
    vmm: Vmm,
    program: PathBuf,
    results: Vec<Measurement>,
    failures: Vec<String>,
}

const MIB: f64 = 1024.0 * 1024.0;

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
    type Metric = (&'static str, fn(&Measurement) -> f64, usize);
    let metrics: [Metric; 4] = [
        (
            "start → first KVM_RUN (ms)",
            |m| m.start_to_first_run.as_secs_f64() * 1000.0,
            1,
        ),
        (
            "RSS outside guest RAM (MiB)",
            |m| m.memory.outside_guest_bytes() as f64 / MIB,
            2,
        ),
        ("total RSS (MiB)", |m| m.memory.rss_bytes as f64 / MIB, 2),
        (
            "guest RAM resident (MiB)",
            |m| m.memory.guest_resident_bytes as f64 / MIB,
            2,
        ),
    ];
    let mut header = format!("{:<30}", "metric: median (min – max)");
    for c in contenders {
        header.push_str(&format!("  {:<28}", c.vmm.name()));
    }
    let ratio = contenders.len() == 2;
    if ratio {
        header.push_str("  husk/qemu");
    }
    println!("{header}");
    for (name, value, decimals) in metrics {
        let mut line = format!("{name:<30}");
        let mut medians = Vec::new();
        for c in contenders {
            let values: Vec<f64> = c.results.iter().map(value).collect();
            let summary = summarise(&values);
            medians.push(summary.map(|s| s.median));
            line.push_str(&format!("  {:<28}", column(summary, decimals)));
        }
        if ratio {
            match (medians[0], medians[1]) {
                (Some(h), Some(q)) if q > 0.0 => line.push_str(&format!("  {:.2}", h / q)),
                _ => line.push_str("  -"),
            }
        }
        println!("{line}");
    }
    for c in contenders {
        println!(
            "{}: {} measured runs, {} failed",
            c.vmm.name(),
            c.results.len(),
            c.failures.len()
        );
        if let Some(first) = c.failures.first() {
            println!("  first failure: {first}");
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let kernel = guest_kernel(&args)?;
    if !kernel.is_file() {
        bail!("guest kernel {} does not exist", kernel.display());
    }
    let work = tempfile::Builder::new()
        .prefix("husk-bench.")
        .tempdir()
        .context("create work directory")?;
    // Three "layers" behind one concatenated disk, as husk run gives them.
    let layers = (0..3)
        .map(|i| sparse_disk(&work.path().join(format!("layer{i}.img")), 16 << 20))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let (layers_list, layers_vmdk) = write_layer_listings(&layers, work.path())?;
    let guest = GuestSpec {
        kernel: kernel.clone(),
        cmdline: guest_cmdline(),
        mem_mib: args.mem_mib,
        vcpus: args.vcpus,
        disk_rw: sparse_disk(&work.path().join("rw.img"), 64 << 20)?,
        layers_list,
        layers_vmdk,
    };
    let settings = RunSettings {
        interposer: PathBuf::from(env!("KVM_RUN_STAMP_SO")),
        settle: Duration::from_millis(args.settle_ms),
        timeout: Duration::from_secs(args.timeout_s),
    };

    let mut contenders = Vec::new();
    if args.only != Some(Which::Qemu) {
        let program = match &args.husk_vmm {
            Some(p) => p.clone(),
            None => default_husk_vmm()?,
        };
        if !program.is_file() {
            bail!(
                "{} not found: build it with `cargo build --release -p husk-vmm`, \
                 pass --husk-vmm PATH, or measure QEMU alone with --only qemu",
                program.display()
            );
        }
        contenders.push(Contender {
            vmm: Vmm::HuskVmm,
            program,
            results: Vec::new(),
            failures: Vec::new(),
        });
    }
    if args.only != Some(Which::Husk) {
        contenders.push(Contender {
            vmm: Vmm::Qemu,
            program: args.qemu.clone(),
            results: Vec::new(),
            failures: Vec::new(),
        });
    }

    let qemu_version = {
        let mut cmd = Command::new(&args.qemu);
        cmd.arg("--version");
        external::stdout_of(cmd)
            .map(|v| v.lines().next().unwrap_or("").to_owned())
            .unwrap_or_else(|e| format!("unknown ({e})"))
    };
    let nested = husk_vmm::probe::probe_host();
    println!(
        "VMM start-up benchmark: {} run(s) per VMM after {} warm-up, interleaved",
        args.runs, args.warmup
    );
    println!(
        "  host KVM: {}{}",
        nested.verdict,
        if nested.nested_pvm {
            " (nested PVM)"
        } else {
            ""
        }
    );
    println!("  QEMU: {qemu_version}");
    println!("  kernel: {}", kernel.display());
    println!("  cmdline: {}", guest.cmdline);
    println!(
        "  guest: {} MiB, {} vCPU, 2 virtio-blk (one read-only), virtio-console on a socket, serial to a file",
        args.mem_mib, args.vcpus
    );
    println!(
        "  memory sampled {} ms after the first KVM_RUN; 'outside guest RAM' = Rss minus resident pages of the KVM memory slots\n",
        args.settle_ms
    );

    for round in 0..args.warmup + args.runs {
        let warm = round < args.warmup;
        // Alternate who goes first so drift on the host hits both alike.
        let order: Vec<usize> = if round % 2 == 0 {
            (0..contenders.len()).collect()
        } else {
            (0..contenders.len()).rev().collect()
        };
        for index in order {
            let c = &mut contenders[index];
            let label = if warm {
                "warm-up".to_owned()
            } else {
                format!("run {}/{}", round - args.warmup + 1, args.runs)
            };
            match measure(c.vmm, &c.program, &guest, &settings, work.path()) {
                Ok(m) => {
                    eprintln!(
                        "{label} {}: first KVM_RUN after {:.1} ms, {:.2} MiB outside guest RAM",
                        c.vmm.name(),
                        m.start_to_first_run.as_secs_f64() * 1000.0,
                        m.memory.outside_guest_bytes() as f64 / MIB
                    );
                    if !warm {
                        c.results.push(m);
                    }
                }
                Err(e) => {
                    eprintln!("{label} {}: FAILED: {e}", c.vmm.name());
                    if !warm {
                        c.failures.push(e.to_string());
                    }
                }
            }
        }
    }
    println!();
    print_table(&contenders);
    if contenders.iter().any(|c| c.results.is_empty()) {
        bail!("a VMM had no successful run");
    }
    Ok(())
}
