//! The OCI command lines side by side on one busybox-static bundle, in the
//! same run: `husk-runc run` of `/bin/true` against `runc run` and `crun
//! run`, and `husk-runc exec` into a running container against `runc exec`.
//! Prints medians and ratios.
//!
//! `cargo bench -p husk-e2e --bench oci_vs_runc [-- --runs N]` as root,
//! with HUSK_KERNEL and HUSK_AGENT set (target/husk.env), runc installed
//! (crun is measured where installed). HUSK_RUNC_BIN picks the husk-runc
//! binary (default target/release/husk-runc, else target/debug/husk-runc);
//! HUSK_BACKEND the VM backend (default qemu).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

fn main() {
    if let Err(e) = run() {
        eprintln!("oci_vs_runc: {e:#}");
        std::process::exit(1);
    }
}

fn runs_from_args() -> anyhow::Result<usize> {
    let args: Vec<String> = std::env::args().collect();
    match args.iter().position(|a| a == "--runs") {
        Some(i) => Ok(args.get(i + 1).context("--runs needs a number")?.parse()?),
        None => Ok(5),
    }
}

fn husk_runc() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("HUSK_RUNC_BIN") {
        return Ok(PathBuf::from(p));
    }
    let target = husk_e2e::target_dir();
    let root = target.parent().context("target dir")?;
    for profile in ["release", "debug"] {
        let p = root.join(profile).join("husk-runc");
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!("husk-runc not built: cargo build -p husk --bins")
}

fn have(program: &str) -> bool {
    Command::new(program).arg("--version").output().is_ok()
}

fn run() -> anyhow::Result<()> {
    let runs = runs_from_args()?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("oci_vs_runc SKIPPED: needs root");
        return Ok(());
    }
    if husk_e2e::kernel().is_none() || std::env::var_os("HUSK_AGENT").is_none() {
        println!("oci_vs_runc SKIPPED: HUSK_KERNEL / HUSK_AGENT not set (source target/husk.env)");
        return Ok(());
    }
    if !have("runc") {
        println!("oci_vs_runc SKIPPED: runc is not installed");
        return Ok(());
    }
    let husk = husk_runc()?;
    let work = tempfile::tempdir()?;
    let store = work.path().join("store");
    std::fs::create_dir_all(&store)?;
    let bundle = work.path().join("bundle");
    make_bundle(&husk, &bundle)?;
    let backend = std::env::var("HUSK_BACKEND").unwrap_or_else(|_| "qemu".into());

    let mut runtimes: Vec<(&str, Command)> = Vec::new();
    let mut husk_cmd = Command::new(&husk);
    husk_cmd
        .env("HUSK_STORE", &store)
        .env("HUSK_BACKEND", &backend)
        .arg("--root")
        .arg(work.path().join("husk-root"));
    runtimes.push(("husk-runc", husk_cmd));
    let mut runc = Command::new("runc");
    runc.arg("--root").arg(work.path().join("runc-root"));
    runtimes.push(("runc", runc));
    if have("crun") {
        let mut crun = Command::new("crun");
        crun.arg("--root").arg(work.path().join("crun-root"));
        runtimes.push(("crun", crun));
    } else {
        println!("crun not installed: not measured");
    }

    let clone = |c: &Command| {
        let mut n = Command::new(c.get_program());
        n.args(c.get_args());
        for (k, v) in c.get_envs() {
            if let Some(v) = v {
                n.env(k, v);
            }
        }
        n
    };

    // run /bin/true
    let mut run_medians = Vec::new();
    for (name, base) in &runtimes {
        // One warm-up (caches the rootfs disk and the initramfs); a peer
        // that cannot run on this host is reported and left out.
        let warm = timed(
            clone(base)
                .args(["run", "--bundle"])
                .arg(&bundle)
                .arg("warm"),
        );
        if let Err(e) = warm {
            if *name == "crun" {
                println!("crun cannot run here, not measured: {e:#}");
                continue;
            }
            return Err(e);
        }
        let mut times = Vec::new();
        for i in 0..runs {
            times.push(timed(
                clone(base)
                    .args(["run", "--bundle"])
                    .arg(&bundle)
                    .arg(format!("r{i}")),
            )?);
        }
        let m = median(&mut times);
        println!(
            "run /bin/true  {name:<10} median {:>9.1} ms over {runs}",
            ms(m)
        );
        run_medians.push((*name, m));
    }
    let husk_run = run_medians[0].1;
    for (name, m) in &run_medians[1..] {
        println!("run: husk-runc / {name} = {:.1}x", ms(husk_run) / ms(*m));
    }

    // exec into a running container (husk and runc)
    let sleeper = work.path().join("sleeper");
    make_bundle(&husk, &sleeper)?;
    set_args(&sleeper, &["sleep", "1000"])?;
    let mut exec_medians = Vec::new();
    for (name, base) in runtimes.iter().take(2) {
        let status = clone(base)
            .args(["run", "--detach", "--bundle"])
            .arg(&sleeper)
            .arg("sleeper")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        if !status.success() {
            bail!("{name} run --detach failed");
        }
        let mut times = Vec::new();
        for _ in 0..runs.max(3) {
            times.push(timed(clone(base).args(["exec", "sleeper", "true"]))?);
        }
        let m = median(&mut times);
        println!("exec true      {name:<10} median {:>9.1} ms", ms(m));
        exec_medians.push(m);
        let _ = clone(base).args(["delete", "--force", "sleeper"]).status();
    }
    println!(
        "exec: husk-runc / runc = {:.1}x (backend {backend})",
        ms(exec_medians[0]) / ms(exec_medians[1])
    );
    Ok(())
}

fn make_bundle(husk: &Path, dir: &Path) -> anyhow::Result<()> {
    let bin = dir.join("rootfs/bin");
    std::fs::create_dir_all(&bin)?;
    for d in ["proc", "dev", "sys", "tmp"] {
        std::fs::create_dir_all(dir.join("rootfs").join(d))?;
    }
    std::fs::copy("/bin/busybox", bin.join("busybox")).context("busybox-static")?;
    for applet in ["sh", "true", "sleep"] {
        std::os::unix::fs::symlink("busybox", bin.join(applet))?;
    }
    let status = Command::new(husk)
        .args(["spec", "--bundle"])
        .arg(dir)
        .status()?;
    if !status.success() {
        bail!("husk-runc spec failed");
    }
    set_args(dir, &["true"])
}

fn set_args(dir: &Path, args: &[&str]) -> anyhow::Result<()> {
    let path = dir.join("config.json");
    let mut config: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)?;
    config["process"]["terminal"] = false.into();
    config["process"]["args"] = args.iter().map(|a| serde_json::Value::from(*a)).collect();
    std::fs::write(&path, serde_json::to_vec_pretty(&config)?)?;
    Ok(())
}

fn timed(cmd: &mut Command) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let out = cmd.stdin(Stdio::null()).output()?;
    let took = started.elapsed();
    if !out.status.success() {
        bail!(
            "{:?} failed: {}",
            cmd.get_program(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(took)
}

fn median(times: &mut [Duration]) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
