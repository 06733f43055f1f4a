//! `husk pull` of a multi-layer image (a few hundred MiB) from a loopback
//! registry beside `skopeo copy docker://… oci:DIR` of the same image, in
//! the same run: medians and their ratio. husk's time is pull to runnable
//! (every layer verified, unpacked and built into its erofs disk); skopeo's
//! is the copy into an OCI layout (blobs verified and written, nothing
//! unpacked). Also `skopeo copy` followed by `husk image import` of the
//! copied layout: the other way to the same runnable image. Each run starts
//! from an empty store / directory.
//!
//! `cargo bench -p husk-e2e --bench pull_vs_skopeo [-- --runs N]`
//! (HUSK_BIN picks the husk binary; default target/release/husk, else
//! target/debug/husk). Needs docker-registry, skopeo, curl, mkfs.erofs.

use anyhow::{bail, Context};
use husk_e2e::fixtures::{self, Compression, LayerSpec};
use husk_e2e::registry::{self, Registry};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn main() {
    if let Err(e) = run() {
        eprintln!("pull_vs_skopeo: {e:#}");
        std::process::exit(1);
    }
}

/// Reproducible bytes: `random` of them incompressible, the rest text-like.
fn content(seed: u64, size: usize, random: bool) -> Vec<u8> {
    let mut state = seed | 1;
    let mut data = Vec::with_capacity(size + 8);
    while data.len() < size {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        if random {
            data.extend_from_slice(&state.to_le_bytes());
        } else {
            let word = ["alpha ", "beta ", "gamma ", "delta\n", "epsilon "][(state % 5) as usize];
            data.extend_from_slice(word.as_bytes());
            data.extend_from_slice(format!("{} ", state % 1000).as_bytes());
        }
    }
    data.truncate(size);
    data
}

/// Busybox's base layer and five more: many small text files (gzip), a
/// binary-like blob (gzip), and so on; about 300 MiB unpacked.
fn image() -> anyhow::Result<fixtures::BuiltImage> {
    let mut layers = vec![fixtures::busybox_base_layer(Compression::Gzip)?];
    for layer in 0..5u64 {
        let mut nodes = vec![fixtures::dir(&format!("/data{layer}"), 0o755)];
        // 2000 text files of 16 KiB: 31 MiB, compresses well.
        for file in 0..2000u64 {
            nodes.push(fixtures::file(
                &format!("/data{layer}/f{file}.txt"),
                &content(layer * 10_000 + file, 16 << 10, false),
                0o644,
            ));
        }
        // One 28 MiB incompressible file.
        nodes.push(fixtures::file(
            &format!("/data{layer}/blob.bin"),
            &content(layer + 77, 28 << 20, true),
            0o644,
        ));
        let compression = if layer % 2 == 0 {
            Compression::Gzip
        } else {
            Compression::Zstd
        };
        layers.push(LayerSpec { nodes, compression });
    }
    Ok(fixtures::build(&fixtures::ImageSpec {
        name: Some("bench:latest".into()),
        layers,
        cmd: vec!["sh".into()],
    }))
}

fn run() -> anyhow::Result<()> {
    let runs = runs_from_args()?;
    if let Some(reason) = registry::unavailable().or_else(fixtures::import_unavailable) {
        println!("pull_vs_skopeo SKIPPED: {reason}");
        return Ok(());
    }
    let husk = husk_binary()?;
    let work = tempfile::tempdir()?;
    let storage = work.path().join("registry");
    let registry = Registry::plain(&storage);
    let host = registry.host();
    eprintln!("building the image...");
    let image = image()?;
    let blob_bytes: usize = image.layers.iter().map(|l| l.blob.len()).sum();
    let tar_bytes: usize = image.layers.iter().map(|l| l.tar.len()).sum();
    registry::push_raw(&host, "bench", "latest", &image);
    drop(image);
    eprintln!(
        "image: 6 layers, {:.1} MiB of blobs, {:.1} MiB unpacked; husk {}",
        blob_bytes as f64 / 1048576.0,
        tar_bytes as f64 / 1048576.0,
        husk.display()
    );

    let reference = format!("{host}/bench:latest");
    let mut husk_times = Vec::new();
    let mut skopeo_times = Vec::new();
    let mut two_step_times = Vec::new();
    for run in 0..runs {
        let store = work.path().join(format!("store{run}"));
        let started = Instant::now();
        let out = Command::new(&husk)
            .arg("--store")
            .arg(&store)
            .args(["pull", "-q", "--insecure-registry", &host, &reference])
            .output()?;
        let husk_time = started.elapsed();
        if !out.status.success() {
            bail!("husk pull: {}", String::from_utf8_lossy(&out.stderr));
        }
        std::fs::remove_dir_all(&store)?;

        let layout = work.path().join(format!("oci{run}"));
        let started = Instant::now();
        let out = Command::new("skopeo")
            .args(["--insecure-policy", "copy", "-q", "--src-tls-verify=false"])
            .arg(format!("docker://{reference}"))
            .arg(format!("oci:{}:latest", layout.display()))
            .output()?;
        let skopeo_time = started.elapsed();
        if !out.status.success() {
            bail!("skopeo copy: {}", String::from_utf8_lossy(&out.stderr));
        }
        let import_store = work.path().join(format!("import{run}"));
        let import_started = Instant::now();
        let out = Command::new(&husk)
            .arg("--store")
            .arg(&import_store)
            .args(["image", "import", "-q"])
            .arg(&layout)
            .output()?;
        let two_step_time = skopeo_time + import_started.elapsed();
        if !out.status.success() {
            bail!(
                "husk image import: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::fs::remove_dir_all(&layout)?;
        std::fs::remove_dir_all(&import_store)?;
        eprintln!(
            "run {}: husk pull {:.0} ms, skopeo copy {:.0} ms, skopeo copy + husk image import {:.0} ms",
            run + 1,
            ms(husk_time),
            ms(skopeo_time),
            ms(two_step_time)
        );
        husk_times.push(husk_time);
        skopeo_times.push(skopeo_time);
        two_step_times.push(two_step_time);
    }
    let (h, s) = (median(&mut husk_times), median(&mut skopeo_times));
    let t = median(&mut two_step_times);
    println!(
        "pull_vs_skopeo: husk pull (to runnable) {:.0} ms vs skopeo copy {:.0} ms: {:.2}x; \
         vs skopeo copy + husk image import {:.0} ms: {:.2}x ({runs} runs, medians)",
        ms(h),
        ms(s),
        h.as_secs_f64() / s.as_secs_f64(),
        ms(t),
        h.as_secs_f64() / t.as_secs_f64()
    );
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
        None => Ok(3),
    }
}

fn husk_binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("HUSK_BIN") {
        return Ok(PathBuf::from(path));
    }
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
