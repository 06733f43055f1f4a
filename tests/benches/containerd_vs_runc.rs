//! containerd with husk's shim beside containerd's runc shim, in one run:
//! `ctr run --rm` of busybox `true` through each (interleaved, medians and
//! their ratio), and the resident memory of the host processes that a
//! running container costs: husk's shim, monitor and VM program against
//! runc's shim.
//!
//! `cargo bench -p husk-e2e --bench containerd_vs_runc [-- --runs N]` as
//! root with target/husk.env sourced; HUSK_TEST_BACKEND picks the VM
//! backend (default auto: QEMU TCG on this platform).

use std::time::{Duration, Instant};

use husk_e2e::containerd::{env, Containerd, HUSK, IMAGE, RUNC};

fn runs_from_args() -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == "--runs")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(7)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// VmRSS of a process in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// Pids whose command line contains all of `words`.
fn pids_with(words: &[&str]) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&raw).replace('\0', " ");
        if words.iter().all(|w| cmd.contains(w)) {
            found.push(pid);
        }
    }
    found
}

fn main() {
    let Some(env) = env() else {
        println!("containerd_vs_runc SKIPPED: prerequisites missing (see above)");
        return;
    };
    let runs = runs_from_args();
    let ctrd = Containerd::start(&env);
    let config = ctrd.husk_config();
    let mut times = [(RUNC, Vec::new()), (HUSK, Vec::new())];
    // One warm-up each (image unpack, initramfs and snapshot disk caches).
    for i in 0..=runs {
        for (runtime, samples) in times.iter_mut() {
            let id = format!(
                "bench-{}-{i}",
                if *runtime == HUSK { "husk" } else { "runc" }
            );
            let mut args = ctrd.run_args(runtime, &config);
            args.extend(["--rm", IMAGE, &id, "true"]);
            let start = Instant::now();
            ctrd.ok(&args);
            if i > 0 {
                samples.push(start.elapsed());
            }
        }
    }
    let runc = median(times[0].1.clone());
    let husk = median(times[1].1.clone());
    println!("ctr run --rm busybox true, median of {runs} (interleaved):");
    println!("  runc shim: {:8.1} ms", runc.as_secs_f64() * 1e3);
    println!(
        "  husk shim: {:8.1} ms  ({:.1}x runc)",
        husk.as_secs_f64() * 1e3,
        husk.as_secs_f64() / runc.as_secs_f64()
    );

    // Memory of one running container's host processes.
    let dir = ctrd.dir.path().display().to_string();
    for (runtime, id) in [(RUNC, "mem-runc"), (HUSK, "mem-husk")] {
        let mut args = ctrd.run_args(runtime, &config);
        args.extend(["-d", IMAGE, id, "sleep", "1000"]);
        ctrd.ok(&args);
        ctrd.wait_status(id, "RUNNING");
    }
    let runc_shim: u64 = pids_with(&["containerd-shim-runc-v2", &dir, "mem-runc"])
        .into_iter()
        .map(rss_kib)
        .sum();
    let husk_shim: u64 = pids_with(&["containerd-shim-husk-v2", &dir, "-id mem-husk"])
        .into_iter()
        .map(rss_kib)
        .sum();
    let monitor: u64 = pids_with(&["__monitor", &dir, "mem-husk"])
        .into_iter()
        .map(rss_kib)
        .sum();
    let state: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            ctrd.dir
                .path()
                .join("husk-state")
                .join(&ctrd.namespace)
                .join("mem-husk")
                .join("state.json"),
        )
        .unwrap_or_default(),
    )
    .unwrap_or_default();
    let vmm = state["vmm_pid"]
        .as_u64()
        .map(|p| rss_kib(p as u32))
        .unwrap_or(0);
    println!("resident memory per running container (sleep):");
    println!("  runc: shim {:6.1} MiB", runc_shim as f64 / 1024.0);
    println!(
        "  husk: shim {:6.1} MiB, monitor {:6.1} MiB, VM program {:6.1} MiB (includes the guest RAM it touched); shim {:.2}x runc's",
        husk_shim as f64 / 1024.0,
        monitor as f64 / 1024.0,
        vmm as f64 / 1024.0,
        husk_shim as f64 / runc_shim.max(1) as f64
    );
    for id in ["mem-runc", "mem-husk"] {
        ctrd.remove(id);
    }
    ctrd.finish();
}
