//! Container networking end to end: `lo`, the bridge between containers,
//! NAT to the outside, published ports (tcp and udp, from the host's
//! loopback and from another host), refused port conflicts,
//! `--network none`, and that nothing is left afterwards.
//!
//! The bridge, the taps and the nftables table are global to a network
//! namespace, so each test runs husk inside a network namespace of its own
//! (`ip netns exec`), with a veth to a second namespace that stands for
//! another host: the machine's own interfaces and rules are never touched.
//! Deleting the namespaces removes everything they held.

mod run_support;

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use run_support::{assert_code, text, RunEnv, RUN_TIMEOUT};

/// The first container on a fresh bridge (10.88.0.0/24 in an empty
/// namespace) gets .2.
const FIRST: &str = "10.88.0.2";
/// The veth between husk's namespace (.1) and the "other host" (.2).
const HOST_SIDE: &str = "10.200.0.1";
const PEER_SIDE: &str = "10.200.0.2";
const WAIT: Duration = Duration::from_secs(60);

/// Two network namespaces joined by a veth: `husk` (where husk runs and
/// makes its bridge) and `peer` (another host on the husk side's link).
struct TestNet {
    husk: String,
    peer: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        text(&out.stderr)
    );
}

impl TestNet {
    fn new() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let base = format!("hkt{}-{n}", std::process::id());
        let net = TestNet {
            husk: format!("{base}-h"),
            peer: format!("{base}-p"),
        };
        for ns in [&net.husk, &net.peer] {
            ip(&["netns", "add", ns]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        ip(&[
            "-n", &net.husk, "link", "add", "veth-h", "type", "veth", "peer", "name", "veth-p",
            "netns", &net.peer,
        ]);
        ip(&[
            "-n",
            &net.husk,
            "addr",
            "add",
            &format!("{HOST_SIDE}/24"),
            "dev",
            "veth-h",
        ]);
        ip(&[
            "-n",
            &net.peer,
            "addr",
            "add",
            &format!("{PEER_SIDE}/24"),
            "dev",
            "veth-p",
        ]);
        ip(&["-n", &net.husk, "link", "set", "veth-h", "up"]);
        ip(&["-n", &net.peer, "link", "set", "veth-p", "up"]);
        net
    }

    /// `husk --store S ARGS` inside the husk namespace.
    fn husk(&self, env: &RunEnv, args: &[&str]) -> Output {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.husk])
            .arg(&env.store.husk)
            .arg("--store")
            .arg(env.store.root())
            .args(args)
            .env("HUSK_KERNEL", &env.kernel)
            .env("HUSK_AGENT", &env.agent)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        husk_e2e::procs::wait_with_timeout(cmd.spawn().expect("spawn husk"), RUN_TIMEOUT, args)
    }

    /// `husk run --backend B ARGS` inside the husk namespace.
    fn run(&self, env: &RunEnv, args: &[&str]) -> Output {
        let mut full = vec!["run", "--backend", env.backend.as_str()];
        full.extend_from_slice(args);
        self.husk(env, &full)
    }

    /// A detached container; its ID.
    fn run_detached(&self, env: &RunEnv, args: &[&str]) -> String {
        let mut full = vec!["-d"];
        full.extend_from_slice(args);
        let out = self.run(env, &full);
        assert_code(&out, 0);
        text(&out.stdout).trim().to_owned()
    }

    /// Runs `f` on a thread inside namespace `ns` (sockets made there
    /// belong to it).
    fn inside<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
        let netns = File::open(format!("/run/netns/{ns}")).expect("open netns");
        std::thread::spawn(move || {
            // SAFETY: setns on this thread only, with an open netns fd.
            let ret = unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(ret, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("thread in netns")
    }

    /// husk's lease directory for the husk namespace (by its inode).
    fn state_dir(&self) -> std::path::PathBuf {
        use std::os::unix::fs::MetadataExt;
        let ino = std::fs::metadata(format!("/run/netns/{}", self.husk))
            .expect("netns")
            .ino();
        std::path::Path::new("/run/husk/network").join(format!("net-{ino}"))
    }

    /// Nothing of husk's is left in its namespace: no bridge, no tap, no
    /// nftables table, no lease.
    fn assert_clean(&self) {
        let out = Command::new("ip")
            .args(["-n", &self.husk, "-o", "link", "show"])
            .output()
            .unwrap();
        let links = text(&out.stdout);
        assert!(
            !links.contains("husk0") && !links.contains("husk-tap-"),
            "links left: {links}"
        );
        let out = Command::new("ip")
            .args(["netns", "exec", &self.husk, "nft", "list", "tables"])
            .output()
            .unwrap();
        assert!(out.status.success(), "nft: {}", text(&out.stderr));
        assert!(
            !text(&out.stdout).contains("husk"),
            "tables left: {}",
            text(&out.stdout)
        );
        let leases: Vec<_> = std::fs::read_dir(self.state_dir().join("leases"))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(leases.is_empty(), "leases left: {leases:?}");
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        // husk's lease directory for the namespace (a lock file and an
        // empty leases/ once clean): it dies with the namespace.
        let _ = std::fs::remove_dir_all(self.state_dir());
        for ns in [&self.husk, &self.peer] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// The environment and test namespaces, or a skip where the host cannot
/// have them (not root, no iproute2/nft: set-up provides these, so CI fails).
macro_rules! net_env {
    () => {{
        let env = run_env!();
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let tools = ["ip", "nft"]
            .iter()
            .all(|tool| Command::new(tool).arg("-V").output().is_ok());
        if !root || !tools {
            husk_test_skip::skip_unless_ci(
                "needs root, iproute2 and nftables (network namespaces)",
            );
            return;
        }
        let net = TestNet::new();
        (env, net)
    }};
}

/// An HTTP GET of `/` at `addr`, retried until the server answers (it may
/// still be starting in its VM) or `WAIT` passes; the response.
fn http_get(addr: SocketAddr) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let attempt = (|| -> std::io::Result<String> {
            let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
            stream.set_read_timeout(Some(Duration::from_secs(10)))?;
            stream.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
            let mut response = String::new();
            stream.read_to_string(&mut response)?;
            Ok(response)
        })();
        match attempt {
            Ok(response) if !response.is_empty() => return response,
            other => {
                assert!(
                    Instant::now() < deadline,
                    "no HTTP answer from {addr}: {other:?}"
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

/// A shell command serving `body` over HTTP on `port` (busybox httpd).
fn httpd(port: u16, body: &str) -> String {
    format!("mkdir -p /www && echo {body} > /www/index.html && exec httpd -f -p {port} -h /www")
}

#[test]
fn lo_is_up_and_network_none_has_only_lo() {
    let (env, net) = net_env!();
    let out = net.run(
        &env,
        &[
            "--rm",
            "--network",
            "none",
            "busybox",
            "sh",
            "-c",
            "ip -o link; ping -c 1 -W 5 127.0.0.1 >/dev/null && echo lo-works",
        ],
    );
    assert_code(&out, 0);
    let stdout = text(&out.stdout);
    let links: Vec<&str> = stdout.lines().filter(|l| l.contains(": <")).collect();
    assert_eq!(links.len(), 1, "only lo: {stdout}");
    assert!(links[0].starts_with("1: lo: <LOOPBACK,UP"), "{stdout}");
    assert!(stdout.contains("lo-works"), "{stdout}");

    // With the default bridge network: lo up too, eth0 with its address,
    // and the files docker writes.
    let out = net.run(
        &env,
        &["--rm", "--hostname", "web1", "busybox", "sh", "-c", "ip -o link show lo; ip -o -4 addr show eth0; cat /etc/hostname /etc/hosts /etc/resolv.conf"],
    );
    assert_code(&out, 0);
    let stdout = text(&out.stdout);
    assert!(stdout.contains("lo: <LOOPBACK,UP"), "{stdout}");
    assert!(stdout.contains(&format!("inet {FIRST}/24")), "{stdout}");
    assert!(stdout.contains("web1\n"), "{stdout}");
    assert!(stdout.contains("127.0.0.1\tlocalhost"), "{stdout}");
    assert!(stdout.contains(&format!("{FIRST}\tweb1")), "{stdout}");
    assert!(stdout.contains("nameserver "), "{stdout}");
    net.assert_clean();
    env.assert_clean();
}

#[test]
fn two_containers_on_the_bridge_reach_each_other() {
    let (env, net) = net_env!();
    let server = net.run_detached(&env, &["busybox", "sh", "-c", &httpd(80, "hello-from-a")]);
    // The client retries until the server's httpd is up (bounded). (Not
    // `wget -T`: Debian's busybox 1.35 crashes with it.)
    let out = net.run(
        &env,
        &["--rm", "busybox", "sh", "-c", &format!("for i in $(seq 150); do wget -q -O - http://{FIRST}/ && exit 0; sleep 0.2; done; exit 1")],
    );
    assert_code(&out, 0);
    assert_eq!(text(&out.stdout).trim(), "hello-from-a");
    assert_code(&net.husk(&env, &["rm", "-f", &server]), 0);
    net.assert_clean();
    env.assert_clean();
}

#[test]
fn a_container_reaches_another_host_through_the_nat() {
    let (env, net) = net_env!();
    // The other host has no route to the bridge's range: only a
    // masqueraded connection can be answered.
    let www = tempfile::tempdir().unwrap();
    std::fs::write(www.path().join("index.html"), "hello-from-outside\n").unwrap();
    let mut server = Command::new("ip")
        .args([
            "netns", "exec", &net.peer, "busybox", "httpd", "-f", "-p", "8000", "-h",
        ])
        .arg(www.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = net.run(
        &env,
        &["--rm", "busybox", "sh", "-c", &format!("for i in $(seq 50); do wget -q -O - http://{PEER_SIDE}:8000/ && exit 0; sleep 0.2; done; exit 1")],
    );
    let _ = server.kill();
    let _ = server.wait();
    assert_code(&out, 0);
    assert_eq!(text(&out.stdout).trim(), "hello-from-outside");
    net.assert_clean();
    env.assert_clean();
}

/// The container's count of UDP datagrams that found no socket.
fn udp_no_ports(net: &TestNet, env: &RunEnv, id: &str) -> u64 {
    let out = net.husk(env, &["exec", id, "cat", "/proc/net/snmp"]);
    assert_code(&out, 0);
    let snmp = text(&out.stdout);
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp: "));
    let (names, values) = (udp.next().unwrap(), udp.next().unwrap());
    let index = names
        .split_whitespace()
        .position(|n| n == "NoPorts")
        .unwrap();
    values
        .split_whitespace()
        .nth(index)
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn published_ports_reach_the_container_over_tcp_and_udp() {
    let (env, net) = net_env!();
    let id = net.run_detached(
        &env,
        &[
            "-p",
            "8080:80",
            "-p",
            "5353:53/udp",
            "busybox",
            "sh",
            "-c",
            &httpd(80, "published"),
        ],
    );
    // From the host's own loopback (output DNAT) and from another host
    // (prerouting DNAT).
    let local = TestNet::inside(&net.husk, || http_get("127.0.0.1:8080".parse().unwrap()));
    assert!(local.contains("published"), "{local}");
    let remote = TestNet::inside(&net.peer, || {
        http_get(format!("{HOST_SIDE}:8080").parse().unwrap())
    });
    assert!(remote.contains("published"), "{remote}");

    // busybox has no UDP server: a datagram that reaches the container's
    // port 53 finds no socket there, which the container counts.
    let before = udp_no_ports(&net, &env, &id);
    let deadline = Instant::now() + WAIT;
    loop {
        TestNet::inside(&net.peer, || {
            let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
            socket
                .send_to(b"ping", format!("{HOST_SIDE}:5353"))
                .unwrap();
        });
        if udp_no_ports(&net, &env, &id) > before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the datagram never reached the container"
        );
    }
    assert_code(&net.husk(&env, &["rm", "-f", &id]), 0);
    net.assert_clean();
    env.assert_clean();
}

#[test]
fn conflicting_ports_are_refused_before_boot() {
    let (env, net) = net_env!();
    let id = net.run_detached(&env, &["-p", "8081:80", "busybox", "sleep", "600"]);
    let started = Instant::now();
    let out = net.run(&env, &["--rm", "-p", "8081:8000", "busybox", "true"]);
    assert_ne!(out.status.code(), Some(0));
    let err = text(&out.stderr);
    assert!(err.contains("already published by container"), "{err}");
    // Refused before a VM boots (a TCG boot alone takes seconds).
    assert!(started.elapsed() < Duration::from_secs(20));

    // A port a host process holds.
    let held = TestNet::inside(&net.husk, || {
        std::net::TcpListener::bind("0.0.0.0:8082").unwrap()
    });
    let out = net.run(&env, &["--rm", "-p", "8082:80", "busybox", "true"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        text(&out.stderr).contains("not available"),
        "{}",
        text(&out.stderr)
    );
    drop(held);
    // Two -p of one run that overlap.
    let out = net.run(
        &env,
        &["--rm", "-p", "8083:80", "-p", "8083:81", "busybox", "true"],
    );
    assert_ne!(out.status.code(), Some(0));
    assert!(
        text(&out.stderr).contains("conflict"),
        "{}",
        text(&out.stderr)
    );

    assert_code(&net.husk(&env, &["rm", "-f", &id]), 0);
    net.assert_clean();
    env.assert_clean();
}

#[test]
fn a_crashed_owner_is_swept_by_the_next_run() {
    let (env, net) = net_env!();
    let id = net.run_detached(&env, &["-p", "8084:80", "busybox", "sleep", "600"]);
    // The monitor dies without cleaning up (SIGKILL); its VM dies with it.
    let state: serde_json::Value = serde_json::from_slice(
        &std::fs::read(env.store.root().join(format!("containers/{id}/state.json"))).unwrap(),
    )
    .unwrap();
    let monitor = state["pid"].as_i64().unwrap() as i32;
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(monitor, libc::SIGKILL) };
    let deadline = Instant::now() + WAIT;
    while std::path::Path::new(&format!("/proc/{monitor}")).exists() {
        assert!(Instant::now() < deadline, "monitor still alive");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The next container takes the same port: the stale lease was swept.
    let out = net.run(&env, &["--rm", "-p", "8084:80", "busybox", "true"]);
    assert_code(&out, 0);
    let _ = net.husk(&env, &["rm", "-f", &id]);
    net.assert_clean();
    env.assert_clean();
}

#[test]
fn a_detached_container_releases_its_network_when_it_exits() {
    let (env, net) = net_env!();
    let id = net.run_detached(&env, &["-p", "8085:80", "busybox", "true"]);
    // The monitor releases the lease, tap and rules once the VM is gone.
    let lease = net.state_dir().join("leases").join(format!("{id}.json"));
    let deadline = Instant::now() + WAIT;
    while lease.exists() {
        assert!(
            Instant::now() < deadline,
            "the lease outlived the container"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The release finishes (bridge and table) under the network lock.
    let lock = File::open(net.state_dir().join("lock")).unwrap();
    // SAFETY: flock on an open fd; released when `lock` closes.
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
    drop(lock);
    net.assert_clean();
    assert_code(&net.husk(&env, &["rm", &id]), 0);
    env.assert_clean();
}
