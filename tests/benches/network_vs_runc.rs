//! Network throughput and request latency from the host into a container:
//! husk through a published port (`-p`, DNAT to the VM's virtio-net NIC on
//! the bridge) beside runc in a network namespace with a veth, in the same
//! run. Both serve busybox: `nc -l` as a TCP sink (throughput: 32 MiB sent,
//! timed until the sink closes) and `httpd` (latency: sequential `GET /`).
//!
//! Everything runs in network namespaces of the bench's own (the host's
//! interfaces and rules are untouched). Needs root, iproute2, nftables,
//! runc, the guest kernel (HUSK_KERNEL) and agent (HUSK_AGENT).
//!
//! `cargo bench -p husk-e2e --bench network_vs_runc [-- --requests N]`
//! (HUSK_BIN picks the husk binary; default target/release/husk, else
//! target/debug/husk).

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use husk_e2e::fixtures::{self, Format};

const NS: &str = "hkbench-host";
const RUNC_NS: &str = "hkbench-runc";
const RUNC_ADDRESS: &str = "10.203.0.2";
const SINK_PORT: u16 = 5001;
const HTTP_PORT: u16 = 8081;
const PAYLOAD: usize = 32 << 20;
const WAIT: Duration = Duration::from_secs(120);

fn main() {
    if let Err(e) = run() {
        eprintln!("network_vs_runc: {e:#}");
        cleanup();
        std::process::exit(1);
    }
    cleanup();
}

fn sh(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn cleanup() {
    let _ = Command::new("runc")
        .args(["delete", "--force", "hkbench"])
        .stderr(Stdio::null())
        .status();
    for ns in [NS, RUNC_NS] {
        let _ = Command::new("ip")
            .args(["netns", "del", ns])
            .stderr(Stdio::null())
            .status();
    }
}

fn husk_binary() -> anyhow::Result<PathBuf> {
    if let Some(bin) = std::env::var_os("HUSK_BIN") {
        return Ok(bin.into());
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
        .find(|path| path.is_file())
        .context("no husk binary: cargo build -p husk")
}

/// Runs `f` on a thread inside the bench's host namespace.
fn inside<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let netns = File::open(format!("/run/netns/{NS}")).expect("open netns");
    std::thread::spawn(move || {
        // SAFETY: setns on this thread only, with an open netns fd.
        let ret = unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(ret, 0, "setns: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .expect("thread in netns")
}

fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let deadline = Instant::now() + WAIT;
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
            Ok(stream) => return Ok(stream),
            Err(e) if Instant::now() >= deadline => return Err(e),
            // The server may still be starting (a VM boots first).
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// MiB/s of `PAYLOAD` bytes into the sink at `addr`, timed until it closes.
fn throughput(addr: SocketAddr) -> std::io::Result<f64> {
    let mut stream = connect(addr)?;
    let chunk = vec![0x5au8; 256 << 10];
    let started = Instant::now();
    let mut sent = 0;
    while sent < PAYLOAD {
        stream.write_all(&chunk)?;
        sent += chunk.len();
    }
    stream.shutdown(Shutdown::Write)?;
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest)?;
    Ok(PAYLOAD as f64 / (1 << 20) as f64 / started.elapsed().as_secs_f64())
}

/// Median and p90 milliseconds of `n` sequential `GET /` at `addr`.
fn latency(addr: SocketAddr, n: usize) -> std::io::Result<(f64, f64)> {
    // One request first: the server is up and caches are warm.
    get(addr)?;
    let mut times = Vec::new();
    for _ in 0..n {
        let started = Instant::now();
        get(addr)?;
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    Ok((times[n / 2], times[n * 9 / 10]))
}

/// User + system CPU seconds of process `pid` (all its threads).
fn cpu_seconds(pid: i64) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let Some(close) = stat.rfind(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i).and_then(|f| f.parse::<f64>().ok()))
        .sum();
    // SAFETY: sysconf has no preconditions.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

fn get(addr: SocketAddr) -> std::io::Result<()> {
    let mut stream = connect(addr)?;
    stream.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    if !response.starts_with(b"HTTP/1.") {
        return Err(std::io::Error::other("not an HTTP answer"));
    }
    Ok(())
}

/// The servers both containers run.
const SERVERS: &str = "mkdir -p /www && echo ok > /www/index.html && httpd -p 80 -h /www && \
                       while true; do nc -l -p 5001 > /dev/null; done";

fn runc_bundle(dir: &Path) -> anyhow::Result<()> {
    let bin = dir.join("rootfs/bin");
    std::fs::create_dir_all(&bin)?;
    for d in ["proc", "dev", "sys", "tmp", "etc"] {
        std::fs::create_dir_all(dir.join("rootfs").join(d))?;
    }
    std::fs::copy("/bin/busybox", bin.join("busybox"))?;
    for applet in ["sh", "mkdir", "echo", "httpd", "nc", "true"] {
        std::os::unix::fs::symlink("busybox", bin.join(applet))?;
    }
    sh("runc", &["spec", "--bundle", dir.to_str().unwrap()])?;
    let path = dir.join("config.json");
    let mut config: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)?;
    config["process"]["terminal"] = false.into();
    config["process"]["args"] = serde_json::json!(["sh", "-c", SERVERS]);
    config["root"]["readonly"] = false.into();
    for ns in config["linux"]["namespaces"].as_array_mut().unwrap() {
        if ns["type"] == "network" {
            ns["path"] = format!("/run/netns/{RUNC_NS}").into();
        }
    }
    std::fs::write(&path, serde_json::to_vec_pretty(&config)?)?;
    Ok(())
}

fn run() -> anyhow::Result<()> {
    let mut requests = 50usize;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--requests" {
            requests = args.next().context("--requests N")?.parse()?;
        }
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0
        || Command::new("runc").arg("--version").output().is_err()
        || husk_e2e::kernel().is_none()
    {
        println!("network_vs_runc SKIPPED: needs root, runc, HUSK_KERNEL and HUSK_AGENT");
        return Ok(());
    }
    cleanup();
    let husk = husk_binary()?;
    let work = tempfile::tempdir()?;
    let store = work.path().join("store");
    let archive = work.path().join("busybox.tar");
    let image = fixtures::build(&fixtures::busybox(Some("busybox:latest"))?);
    fixtures::write(&[image], Format::Docker, &archive)?;
    sh(
        husk.to_str().unwrap(),
        &[
            "--store",
            store.to_str().unwrap(),
            "image",
            "import",
            archive.to_str().unwrap(),
        ],
    )?;

    for ns in [NS, RUNC_NS] {
        sh("ip", &["netns", "add", ns])?;
        sh("ip", &["-n", ns, "link", "set", "lo", "up"])?;
    }
    sh(
        "ip",
        &[
            "-n", NS, "link", "add", "veth-b", "type", "veth", "peer", "name", "eth0", "netns",
            RUNC_NS,
        ],
    )?;
    sh(
        "ip",
        &["-n", NS, "addr", "add", "10.203.0.1/24", "dev", "veth-b"],
    )?;
    sh("ip", &["-n", NS, "link", "set", "veth-b", "up"])?;
    sh(
        "ip",
        &[
            "-n",
            RUNC_NS,
            "addr",
            "add",
            &format!("{RUNC_ADDRESS}/24"),
            "dev",
            "eth0",
        ],
    )?;
    sh("ip", &["-n", RUNC_NS, "link", "set", "eth0", "up"])?;

    // husk: the servers behind published ports.
    let sink = format!("{SINK_PORT}:5001");
    let http = format!("{HTTP_PORT}:80");
    let id = sh(
        "ip",
        &[
            "netns",
            "exec",
            NS,
            husk.to_str().unwrap(),
            "--store",
            store.to_str().unwrap(),
            "run",
            "-d",
            "-p",
            &sink,
            "-p",
            &http,
            "busybox",
            "sh",
            "-c",
            SERVERS,
        ],
    )?;
    let state: serde_json::Value = serde_json::from_slice(&std::fs::read(
        store.join("containers").join(id.trim()).join("state.json"),
    )?)?;
    let backend = state["backend"].as_str().unwrap_or("?").to_owned();
    let vmm_pid = state["vmm_pid"].as_i64().context("no vmm_pid")?;

    // runc: the same servers in a namespace with a veth.
    let bundle = work.path().join("bundle");
    runc_bundle(&bundle)?;
    let runc = Command::new("runc")
        .args(["run", "-d", "--bundle", bundle.to_str().unwrap(), "hkbench"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    if !runc.success() {
        bail!("runc run -d failed");
    }

    let husk_sink: SocketAddr = format!("127.0.0.1:{SINK_PORT}").parse()?;
    let husk_http: SocketAddr = format!("127.0.0.1:{HTTP_PORT}").parse()?;
    let runc_sink: SocketAddr = format!("{RUNC_ADDRESS}:5001").parse()?;
    let runc_http: SocketAddr = format!("{RUNC_ADDRESS}:80").parse()?;
    let results = inside(move || -> std::io::Result<_> {
        // Warm both sinks, then interleave.
        let mut husk_mib = Vec::new();
        let mut runc_mib = Vec::new();
        let mut vmm_busy = Vec::new();
        for _ in 0..3 {
            let (cpu, wall) = (cpu_seconds(vmm_pid), Instant::now());
            husk_mib.push(throughput(husk_sink)?);
            vmm_busy.push((cpu_seconds(vmm_pid) - cpu) / wall.elapsed().as_secs_f64());
            runc_mib.push(throughput(runc_sink)?);
        }
        vmm_busy.sort_by(f64::total_cmp);
        husk_mib.sort_by(f64::total_cmp);
        runc_mib.sort_by(f64::total_cmp);
        let husk_latency = latency(husk_http, requests)?;
        let runc_latency = latency(runc_http, requests)?;
        Ok((
            husk_mib[1],
            runc_mib[1],
            husk_latency,
            runc_latency,
            vmm_busy[1],
        ))
    })?;
    let (husk_mib, runc_mib, (husk_ms, husk_p90), (runc_ms, runc_p90), busy) = results;
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "throughput (median of 3 x {} MiB): husk -p {husk_mib:.1} MiB/s vs runc veth {runc_mib:.1} MiB/s: {:.3}x",
        PAYLOAD >> 20,
        husk_mib / runc_mib
    );
    println!(
        "GET / latency ({requests} sequential): husk -p median {husk_ms:.2} ms (p90 {husk_p90:.2}) vs runc median {runc_ms:.2} ms (p90 {runc_p90:.2}): {:.1}x",
        husk_ms / runc_ms
    );
    println!(
        "husk backend: {backend}; the VM program used {busy:.2} CPU cores during the husk transfers (1 vCPU); load average {}",
        load.split_whitespace().next().unwrap_or("?")
    );
    let _ = sh(
        "ip",
        &[
            "netns",
            "exec",
            NS,
            husk.to_str().unwrap(),
            "--store",
            store.to_str().unwrap(),
            "rm",
            "-f",
            id.trim(),
        ],
    );
    Ok(())
}
