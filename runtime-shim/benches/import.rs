//! Import throughput: `husk image import` of a generated single-layer image
//! (a few hundred MB of mixed files, plain tar) against `mkfs.erofs` alone on
//! the same unpacked tree, and against the naive pipeline `tar -x` +
//! `mkfs.erofs`, in the same run. Prints medians over several runs and the
//! ratio of husk's time to the tool it wraps.
//!
//! Run as root (import keeps owners and makes device nodes):
//!     cargo bench -p husk --bench import
//! Knobs: HUSK_BENCH_MB (default 300), HUSK_BENCH_RUNS (default 5),
//! HUSK_BENCH_DIR (default the system temp dir; use a disk, not tmpfs, to
//! measure what a real store sees).

use sha2::{Digest, Sha256};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;

/// xorshift64*: deterministic, cheap, incompressible enough.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let bytes = self.next().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}

/// A layer tar of `total` bytes of file data: about a fifth in small files
/// (1-16 KiB), two fifths in medium ones (64 KiB-1 MiB), the rest in large
/// ones (8-32 MiB), spread over nested directories, plus symlinks and hard
/// links.
fn generate_layer(path: &Path, total: u64) -> std::io::Result<(u64, usize)> {
    let file = fs::File::create(path)?;
    let mut builder = tar::Builder::new(std::io::BufWriter::with_capacity(4 << 20, file));
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut buf = vec![0u8; 32 << 20];
    let mut written = 0u64;
    let mut files = 0usize;
    let mut dirs_made = std::collections::BTreeSet::new();
    let classes = [
        (total / 5, 1024, 16 * 1024),
        (total * 2 / 5, 64 * 1024, MIB),
        (total * 2 / 5, 8 * MIB, 32 * MIB),
    ];
    for (class, (budget, low, high)) in classes.into_iter().enumerate() {
        let mut spent = 0;
        while spent < budget {
            let size = (low + rng.below(high - low)).min(budget - spent).max(1);
            let dir = format!("data/c{class}/d{:02}/e{:02}", rng.below(32), rng.below(16));
            for depth in 1..=4 {
                let prefix: Vec<&str> = dir.split('/').take(depth).collect();
                let prefix = prefix.join("/");
                if dirs_made.insert(prefix.clone()) {
                    let mut header = tar::Header::new_gnu();
                    header.set_entry_type(tar::EntryType::Directory);
                    header.set_mode(0o755);
                    header.set_uid(0);
                    header.set_gid(0);
                    header.set_mtime(1_700_000_000);
                    header.set_size(0);
                    builder.append_data(&mut header, format!("{prefix}/"), &[][..])?;
                }
            }
            let name = format!("{dir}/f{files}");
            rng.fill(&mut buf[..size as usize]);
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(tar::EntryType::Regular);
            header.set_mode(0o644);
            header.set_uid(1000);
            header.set_gid(1000);
            header.set_mtime(1_700_000_000);
            header.set_size(size);
            builder.append_data(&mut header, &name, &buf[..size as usize])?;
            if rng.below(50) == 0 {
                let mut link = tar::Header::new_gnu();
                link.set_entry_type(tar::EntryType::Symlink);
                link.set_mode(0o777);
                link.set_mtime(1_700_000_000);
                link.set_uid(0);
                link.set_gid(0);
                link.set_size(0);
                builder.append_link(&mut link, format!("{name}.sym"), format!("f{files}"))?;
                let mut hard = tar::Header::new_gnu();
                hard.set_entry_type(tar::EntryType::Link);
                hard.set_mode(0o644);
                hard.set_mtime(1_700_000_000);
                hard.set_uid(0);
                hard.set_gid(0);
                hard.set_size(0);
                builder.append_link(&mut hard, format!("{name}.hard"), &name)?;
            }
            spent += size;
            written += size;
            files += 1;
        }
    }
    builder
        .into_inner()?
        .into_inner()
        .map_err(|e| e.into_error())?
        .sync_all()?;
    Ok((written, files))
}

fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut hasher = Sha256::new();
    std::io::copy(&mut fs::File::open(path)?, &mut hasher)?;
    Ok(format!("sha256:{}", hex::encode(hasher.finalize())))
}

/// An OCI layout holding one image whose single layer is `layer_tar`.
fn write_oci_layout(dir: &Path, layer_tar: &Path) -> std::io::Result<()> {
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs)?;
    let diff_id = sha256_file(layer_tar)?;
    let layer_size = fs::metadata(layer_tar)?.len();
    fs::hard_link(layer_tar, blobs.join(diff_id.trim_start_matches("sha256:")))?;
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }))?;
    let config_digest = format!("sha256:{}", hex::encode(Sha256::digest(&config)));
    fs::write(
        blobs.join(config_digest.trim_start_matches("sha256:")),
        &config,
    )?;
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": diff_id, "size": layer_size}],
    }))?;
    let manifest_digest = format!("sha256:{}", hex::encode(Sha256::digest(&manifest)));
    fs::write(
        blobs.join(manifest_digest.trim_start_matches("sha256:")),
        &manifest,
    )?;
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_digest, "size": manifest.len(),
                           "annotations": {"org.opencontainers.image.ref.name": "bench:latest"}}],
        }))?,
    )?;
    Ok(())
}

fn run(command: &mut Command) -> Duration {
    let start = Instant::now();
    let out = command.output().expect("spawning a benchmark command");
    let elapsed = start.elapsed();
    assert!(
        out.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    elapsed
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn mbps(bytes: u64, time: Duration) -> f64 {
    bytes as f64 / MIB as f64 / time.as_secs_f64()
}

/// mkfs.erofs exactly as husk calls it (image/erofs.rs).
fn mkfs(tree: &Path, image: &Path) -> Command {
    let mut command = Command::new("mkfs.erofs");
    command
        .args([
            "--quiet",
            "--preserve-mtime",
            "-U12345678-1234-1234-1234-123456789abc",
        ])
        .arg(image)
        .arg(tree);
    command
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!(
            "import benchmark SKIPPED: needs root (import keeps owners and makes device nodes)"
        );
        return;
    }
    let megabytes: u64 = std::env::var("HUSK_BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let runs: usize = std::env::var("HUSK_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
        .max(1);
    let base = std::env::var_os("HUSK_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let husk = PathBuf::from(env!("CARGO_BIN_EXE_husk"));
    let work = tempfile::tempdir_in(&base).expect("bench temp dir");
    let layer = work.path().join("layer.tar");
    let (data_bytes, files) =
        generate_layer(&layer, megabytes * MIB).expect("generating the layer");
    let tar_bytes = fs::metadata(&layer).expect("layer size").len();
    let layout = work.path().join("oci");
    write_oci_layout(&layout, &layer).expect("writing the OCI layout");
    // The unpacked tree mkfs.erofs alone is given.
    let tree = work.path().join("tree");
    fs::create_dir(&tree).expect("tree dir");
    run(Command::new("tar")
        .args(["--same-owner", "-xpf"])
        .arg(&layer)
        .arg("-C")
        .arg(&tree));
    println!(
        "import benchmark: {files} files, {:.0} MiB of file data, {:.0} MiB uncompressed tar, {runs} runs, in {}",
        data_bytes as f64 / MIB as f64,
        tar_bytes as f64 / MIB as f64,
        base.display()
    );

    let (mut husk_times, mut mkfs_times, mut naive_times) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..runs {
        let store = work.path().join(format!("store{i}"));
        husk_times.push(run(Command::new(&husk)
            .arg("--store")
            .arg(&store)
            .args(["image", "import", "--quiet"])
            .arg(&layout)));
        fs::remove_dir_all(&store).expect("cleaning the store");

        let image = work.path().join(format!("mkfs{i}.erofs"));
        mkfs_times.push(run(&mut mkfs(&tree, &image)));
        fs::remove_file(&image).expect("cleaning the image");

        let naive_tree = work.path().join(format!("naive{i}"));
        fs::create_dir(&naive_tree).expect("naive tree dir");
        let start = Instant::now();
        run(Command::new("tar")
            .args(["--same-owner", "-xpf"])
            .arg(&layer)
            .arg("-C")
            .arg(&naive_tree));
        run(&mut mkfs(&naive_tree, &image));
        naive_times.push(start.elapsed());
        fs::remove_dir_all(&naive_tree).expect("cleaning the naive tree");
        fs::remove_file(&image).expect("cleaning the image");
        // Every variant starts from the same cache state: flush the writes.
        run(&mut Command::new("sync"));
    }
    let (husk_median, mkfs_median, naive_median) =
        (median(husk_times), median(mkfs_times), median(naive_times));
    println!(
        "husk image import        median {:>8.2?}  {:>7.1} MB/s of uncompressed layer data",
        husk_median,
        mbps(tar_bytes, husk_median)
    );
    println!(
        "mkfs.erofs alone (tree)  median {:>8.2?}  {:>7.1} MB/s",
        mkfs_median,
        mbps(tar_bytes, mkfs_median)
    );
    println!(
        "tar -x + mkfs.erofs      median {:>8.2?}  {:>7.1} MB/s",
        naive_median,
        mbps(tar_bytes, naive_median)
    );
    println!(
        "ratio husk / mkfs.erofs alone: {:.2}x; husk / (tar -x + mkfs.erofs): {:.2}x",
        husk_median.as_secs_f64() / mkfs_median.as_secs_f64(),
        husk_median.as_secs_f64() / naive_median.as_secs_f64()
    );
}
