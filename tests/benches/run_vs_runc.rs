//! `husk run --rm busybox true` against `runc run` of the same rootfs, in
//! the same run: medians and their ratio.
//!
//! The busybox fixture is imported into a temp store; runc's bundle rootfs
//! is the same layer disks (erofs) stacked read-only with overlayfs on the
//! host, so both start exactly the same tree. Needs root, mkfs.erofs, runc,
//! the guest kernel (HUSK_KERNEL) and agent (HUSK_AGENT).
//!
//! `cargo bench -p husk-e2e --bench run_vs_runc [-- --runs N]`
//! (HUSK_BIN picks the husk binary; default target/release/husk, else
//! target/debug/husk).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use husk_e2e::fixtures::{self, Format, Mounts};

fn main() {
    if let Err(e) = run() {
        eprintln!("run_vs_runc: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> anyhow::Result<()> {
    let runs = runs_from_args()?;
    if let Some(reason) = missing_capability() {
        println!("run_vs_runc SKIPPED: {reason}");
        return Ok(());
    }
    let husk = husk_binary()?;
    let work = tempfile::tempdir()?;
    let store = work.path().join("store");

    let archive = work.path().join("busybox.tar");
    let image = fixtures::build(&fixtures::busybox(Some("busybox:latest"))?);
    fixtures::write(&[image], Format::Docker, &archive)?;
    let out = Command::new(&husk)
        .arg("--store")
        .arg(&store)
        .args(["image", "import"])
        .arg(&archive)
        .output()?;
    if !out.status.success() {
        bail!(
            "husk image import: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // The runc bundle: the same layer disks, stacked on the host.
    let disks = layer_disks(&husk, &store)?;
    let bundle = work.path().join("bundle");
    let mut mounts = Mounts::default();
    let mut lowers = Vec::new();
    for (index, disk) in disks.iter().enumerate() {
        let target = work.path().join(format!("layer{index}"));
        mounts.erofs(disk, &target)?;
        lowers.push(target);
    }
    lowers.reverse();
    mounts.overlay(&lowers, &bundle.join("rootfs"))?;
    write_runc_config(&bundle)?;

    // One warm-up each: the initramfs cache, page cache, runc's first start.
    let backend = husk_backend_line(&husk, &store)?;
    time_runc(&bundle, "husk-bench-warmup")?;

    let mut husk_times = Vec::new();
    let mut runc_times = Vec::new();
    // Interleaved, so drift in host load hits both alike.
    for i in 0..runs {
        husk_times.push(time_husk(&husk, &store)?);
        runc_times.push(time_runc(
            &bundle,
            &format!("husk-bench-{}-{i}", std::process::id()),
        )?);
    }
    let husk_median = median(&mut husk_times);
    let runc_median = median(&mut runc_times);
    println!("run_vs_runc: {runs} runs each, interleaved");
    println!("  husk run --rm busybox true   median {:>9.1} ms  (min {:.1}, max {:.1})  backend: {backend}",
        ms(husk_median), ms(husk_times[0]), ms(husk_times[husk_times.len() - 1]));
    println!(
        "  runc run (same rootfs, true) median {:>9.1} ms  (min {:.1}, max {:.1})",
        ms(runc_median),
        ms(runc_times[0]),
        ms(runc_times[runc_times.len() - 1])
    );
    println!(
        "  ratio husk/runc: {:.1}x",
        husk_median.as_secs_f64() / runc_median.as_secs_f64()
    );
    drop(mounts);
    Ok(())
}

fn runs_from_args() -> anyhow::Result<usize> {
    let args: Vec<String> = std::env::args().collect();
    match args.iter().position(|a| a == "--runs") {
        Some(i) => {
            let n: usize = args.get(i + 1).context("--runs needs a number")?.parse()?;
            anyhow::ensure!(n > 0, "--runs must be positive");
            Ok(n)
        }
        None => Ok(7),
    }
}

fn missing_capability() -> Option<String> {
    if let Some(reason) = fixtures::import_unavailable() {
        return Some(reason);
    }
    if husk_e2e::kernel().is_none() {
        return Some("HUSK_KERNEL is not set to a guest kernel (scripts/setup.sh)".into());
    }
    if !std::env::var_os("HUSK_AGENT").is_some_and(|p| Path::new(&p).is_file()) {
        return Some("HUSK_AGENT is not set to the static guest agent (scripts/setup.sh)".into());
    }
    if Command::new("runc").arg("--version").output().is_err() {
        return Some("runc is not installed (apt-get install runc)".into());
    }
    None
}

fn husk_binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("HUSK_BIN") {
        return Ok(PathBuf::from(path));
    }
    // Bench executables live in target/<profile>/deps.
    let exe = std::env::current_exe()?;
    let target = exe
        .parent()
        .and_then(Path::parent)
        .and_then(Path::parent)
        .context("locating the target directory")?;
    ["release", "debug"]
        .iter()
        .map(|profile| target.join(profile).join("husk"))
        .find(|p| p.is_file())
        .context("no husk binary: `cargo build -p husk --release` (or set HUSK_BIN)")
}

/// Layer disks of busybox, bottom first, from `husk image inspect --json`.
fn layer_disks(husk: &Path, store: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let out = Command::new(husk)
        .arg("--store")
        .arg(store)
        .args(["image", "inspect", "--json", "busybox"])
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "husk image inspect: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    json["layers"]
        .as_array()
        .context("inspect output has no layers")?
        .iter()
        .map(|l| {
            l["disk"]
                .as_str()
                .map(PathBuf::from)
                .context("layer without disk")
        })
        .collect()
}

/// `runc spec`, then: not a terminal, run `true`, read-only rootfs (the
/// overlay has no upper layer).
fn write_runc_config(bundle: &Path) -> anyhow::Result<()> {
    let out = Command::new("runc")
        .arg("spec")
        .current_dir(bundle)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "runc spec: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = bundle.join("config.json");
    let mut config: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)?;
    config["process"]["terminal"] = false.into();
    config["process"]["args"] = serde_json::json!(["true"]);
    config["root"]["readonly"] = true.into();
    std::fs::write(&path, serde_json::to_vec_pretty(&config)?)?;
    Ok(())
}

fn husk_command(husk: &Path, store: &Path, log_level: &str) -> Command {
    let mut cmd = Command::new(husk);
    cmd.arg("--store").arg(store).args([
        "--log-level",
        log_level,
        "run",
        "--rm",
        "busybox",
        "true",
    ]);
    cmd.stdin(Stdio::null());
    cmd
}

/// A warm-up run that also reports which backend `auto` picked.
fn husk_backend_line(husk: &Path, store: &Path) -> anyhow::Result<String> {
    let out = husk_command(husk, store, "info").output()?;
    anyhow::ensure!(
        out.status.success(),
        "husk run: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr
        .lines()
        .find_map(|l| l.split_once("backend: ").map(|(_, rest)| rest.to_string()))
        .unwrap_or_else(|| "unknown".into());
    Ok(line)
}

fn time_husk(husk: &Path, store: &Path) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let out = husk_command(husk, store, "warn").output()?;
    let elapsed = start.elapsed();
    anyhow::ensure!(
        out.status.success(),
        "husk run: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(elapsed)
}

fn time_runc(bundle: &Path, id: &str) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let out = Command::new("runc")
        .args(["run", "--bundle"])
        .arg(bundle)
        .arg(id)
        .stdin(Stdio::null())
        .output()?;
    let elapsed = start.elapsed();
    anyhow::ensure!(
        out.status.success(),
        "runc run: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(elapsed)
}

/// Sorts `times` and returns the median.
fn median(times: &mut [Duration]) -> Duration {
    times.sort();
    let mid = times.len() / 2;
    if times.len() % 2 == 1 {
        times[mid]
    } else {
        (times[mid - 1] + times[mid]) / 2
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
