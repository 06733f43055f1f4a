//! A network namespace prepared as CNI would (a veth whose container end
//! is `eth0` with an address and a default route), named in the OCI spec:
//! `husk-runc` joins the VM to it through a tap and tc redirects, and the
//! container sees the address and routes a runc container there would see,
//! and reaches a server on the other end. Nothing of husk's stays in the
//! namespace afterwards.

mod oci_support;

use std::process::{Command, Stdio};

use oci_support::{text, Rt};

const CONTAINER_ADDRESS: &str = "10.201.0.2";
const GATEWAY: &str = "10.201.0.1";

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        text(&out.stderr)
    );
}

/// The pod's namespace (`eth0`, as CNI's bridge/ptp plugins leave it) and
/// the other end of its veth in a second namespace standing for the host.
struct CniNet {
    pod: String,
    host: String,
}

impl CniNet {
    fn new() -> Self {
        let base = format!("hkc{}", std::process::id());
        let net = CniNet {
            pod: format!("{base}-pod"),
            host: format!("{base}-host"),
        };
        for ns in [&net.pod, &net.host] {
            ip(&["netns", "add", ns]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        ip(&[
            "-n",
            &net.host,
            "link",
            "add",
            "veth-host",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &net.pod,
        ]);
        ip(&[
            "-n",
            &net.host,
            "addr",
            "add",
            &format!("{GATEWAY}/24"),
            "dev",
            "veth-host",
        ]);
        ip(&["-n", &net.host, "link", "set", "veth-host", "up"]);
        ip(&[
            "-n",
            &net.pod,
            "addr",
            "add",
            &format!("{CONTAINER_ADDRESS}/24"),
            "dev",
            "eth0",
        ]);
        ip(&["-n", &net.pod, "link", "set", "eth0", "up"]);
        ip(&["-n", &net.pod, "route", "add", "default", "via", GATEWAY]);
        net
    }

    fn path(&self) -> String {
        format!("/run/netns/{}", self.pod)
    }
}

impl Drop for CniNet {
    fn drop(&mut self) {
        for ns in [&self.pod, &self.host] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

#[test]
fn a_cni_namespace_gives_the_container_its_address_routes_and_link() {
    let env = oci_env!();
    if Command::new("tc").arg("-V").output().is_err() {
        husk_test_skip::skip_unless_ci("tc (iproute2) is not installed");
        return;
    }
    let net = CniNet::new();
    // A server on the "host" end of the veth.
    let www = tempfile::tempdir().unwrap();
    std::fs::write(www.path().join("index.html"), "hello-from-the-cni-host\n").unwrap();
    let mut server = Command::new("ip")
        .args([
            "netns", "exec", &net.host, "busybox", "httpd", "-f", "-p", "8000", "-h",
        ])
        .arg(www.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    let script = format!(
        "ip -o -4 addr show eth0; ip route; ip -o link show eth0; \
         for i in $(seq 50); do wget -q -O - http://{GATEWAY}:8000/ && exit 0; sleep 0.2; done; exit 1"
    );
    let path = net.path();
    let bundle = env.bundle("cni", &["sh", "-c", &script], |config| {
        let namespaces = config["linux"]["namespaces"].as_array_mut().unwrap();
        for ns in namespaces.iter_mut() {
            if ns["type"] == "network" {
                ns["path"] = path.clone().into();
            }
        }
    });
    for applet in ["ip", "wget", "seq"] {
        std::os::unix::fs::symlink("busybox", bundle.join("rootfs/bin").join(applet)).unwrap();
    }
    let (status, stdout, stderr) = env.run_files(
        Rt::Husk,
        &["run", "--bundle", bundle.to_str().unwrap(), "cni1"],
    );
    let _ = server.kill();
    let _ = server.wait();
    assert!(status.success(), "run: {status}\n{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!("inet {CONTAINER_ADDRESS}/24")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("default via {GATEWAY} dev eth0")),
        "{stdout}"
    );
    // The guest NIC took the veth's MAC, so the other end's ARP answers
    // reach it.
    let mac_out = Command::new("ip")
        .args(["-n", &net.pod, "-o", "link", "show", "eth0"])
        .output()
        .unwrap();
    let veth = text(&mac_out.stdout);
    let mac = veth
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .unwrap()
        .to_owned();
    assert!(
        stdout.contains(&mac),
        "guest MAC is the veth's {mac}: {stdout}"
    );
    assert!(stdout.contains("hello-from-the-cni-host"), "{stdout}");

    // Nothing of husk's is left in the pod's namespace.
    let links = Command::new("ip")
        .args(["-n", &net.pod, "-o", "link"])
        .output()
        .unwrap();
    assert!(
        !text(&links.stdout).contains("husk-tap-"),
        "{}",
        text(&links.stdout)
    );
    let qdiscs = Command::new("ip")
        .args([
            "netns", "exec", &net.pod, "tc", "qdisc", "show", "dev", "eth0",
        ])
        .output()
        .unwrap();
    assert!(
        !text(&qdiscs.stdout).contains("ingress"),
        "{}",
        text(&qdiscs.stdout)
    );
    env.assert_clean();
}
