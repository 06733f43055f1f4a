//! End to end: `husk-vmm` boots the guest kernel from
//! guest-kernel-config/build.sh with two virtio-blk disks (one read-only)
//! and a virtio console bridged to a Unix socket, and the serial log shows
//! the kernel found all of them and reached init.
//!
//! On a nested-PVM host (our dev machines) this takes one to three minutes
//! (most of it emulated kernel init; less on an idle machine) and
//! guest userspace dies at its first syscall, so the VM never powers off:
//! the test stops at "Run /init" and kills the VMM. Needs HUSK_KERNEL and a
//! usable /dev/kvm; skips with the reason otherwise.

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use husk_e2e::{bin, kernel, kvm_available, skip};

/// Generous: 1-3 minutes here under emulation (measured 160-190 s while
/// a kernel build loaded both cores), seconds on real KVM.
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);
const DISK_A_SECTORS: u64 = 16 * 2048; // 16 MiB
const DISK_B_SECTORS: u64 = 3 * 2048; // 3 MiB

/// Kills the VMM however the test ends.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn sparse_disk(path: &Path, sectors: u64) {
    let file = std::fs::File::create(path).unwrap();
    file.set_len(sectors * 512).unwrap();
}

/// A one-file newc initramfs holding `/init` (busybox when the host has a
/// static one, else a shell script: here userspace dies at its first
/// syscall anyway, and the kernel prints "Run /init" before exec'ing it).
/// Written by hand to keep this test free of the cpio tool and crates.
fn initramfs(path: &Path) {
    let init = std::fs::read("/bin/busybox").unwrap_or_else(|_| b"#!/bin/sh\nexec sh\n".to_vec());
    let mut out = Vec::new();
    let mut entry = |name: &str, mode: u32, data: &[u8]| {
        let fields = [
            1,
            mode,
            0,
            0,
            1,
            0,
            data.len() as u32,
            0,
            0,
            0,
            0,
            name.len() as u32 + 1,
            0,
        ];
        out.extend_from_slice(b"070701");
        for field in fields {
            out.extend_from_slice(format!("{field:08x}").as_bytes());
        }
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        while out.len() % 4 != 0 {
            out.push(0);
        }
        out.extend_from_slice(data);
        while out.len() % 4 != 0 {
            out.push(0);
        }
    };
    entry("init", 0o100_755, &init);
    entry("TRAILER!!!", 0, &[]);
    std::fs::write(path, out).unwrap();
}

/// Reads whatever the guest sends on the console socket, in the background.
fn collect_console(socket: &Path, deadline: Instant) -> std::thread::JoinHandle<Vec<u8>> {
    let socket = socket.to_path_buf();
    std::thread::spawn(move || {
        let mut stream = loop {
            match UnixStream::connect(&socket) {
                Ok(s) => break s,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Err(_) => return Vec::new(),
            }
        };
        stream
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    got.extend_from_slice(&buf[..n]);
                    if String::from_utf8_lossy(&got).contains("Run /init") {
                        break;
                    }
                }
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(_) => break,
            }
        }
        got
    })
}

#[test]
fn vmm_boots_kernel_with_disks_and_console() {
    let Some(kernel) = kernel() else {
        skip!("HUSK_KERNEL is not set to a built guest kernel (guest-kernel-config/build.sh prints its path)");
    };
    if !kvm_available() {
        husk_e2e::skip_host!("/dev/kvm cannot be opened read-write");
    }
    let dir = tempfile::tempdir().unwrap();
    let disk_a = dir.path().join("a.img");
    let disk_b = dir.path().join("b.img");
    sparse_disk(&disk_a, DISK_A_SECTORS);
    sparse_disk(&disk_b, DISK_B_SECTORS);
    let socket = dir.path().join("console.sock");
    let serial_log = dir.path().join("serial.log");
    let initrd = dir.path().join("initrd.cpio");
    initramfs(&initrd);

    let start = Instant::now();
    let deadline = start + BOOT_TIMEOUT;
    let child = Command::new(bin("husk-vmm"))
        .arg("--kernel")
        .arg(&kernel)
        .arg("--initrd")
        .arg(&initrd)
        // Kernel messages also go to hvc0, so the socket proves the virtio
        // console carries data, not only that it was probed.
        .args([
            "--cmdline",
            "console=ttyS0 console=hvc0 reboot=k panic=1 pci=off",
        ])
        .arg("--disk")
        .arg(&disk_a)
        .arg("--disk")
        .arg(format!("{}:ro", disk_b.display()))
        .arg("--console-socket")
        .arg(&socket)
        .arg("--serial-log")
        .arg(&serial_log)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start husk-vmm");
    let mut vmm = KillOnDrop(child);
    let console = collect_console(&socket, deadline);

    let mut log = String::new();
    let mut exited = None;
    while Instant::now() < deadline {
        log = String::from_utf8_lossy(&std::fs::read(&serial_log).unwrap_or_default()).into_owned();
        if log.contains("Run /init") {
            break;
        }
        if let Some(status) = vmm.0.try_wait().unwrap() {
            exited = Some(status);
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let elapsed = start.elapsed();
    let _ = vmm.0.kill();
    let _ = vmm.0.wait();
    let mut stderr = String::new();
    if let Some(mut err) = vmm.0.stderr.take() {
        let _ = err.read_to_string(&mut stderr);
    }
    let context =
        format!("after {elapsed:?}, exit {exited:?}\n--- stderr\n{stderr}\n--- serial log\n{log}");

    assert!(log.contains("Linux version"), "no kernel banner {context}");
    assert!(
        log.contains(&format!(
            "virtio_blk virtio0: [vda] {DISK_A_SECTORS} 512-byte logical blocks"
        )),
        "vda missing or wrong size {context}"
    );
    assert!(
        log.contains(&format!(
            "virtio_blk virtio1: [vdb] {DISK_B_SECTORS} 512-byte logical blocks"
        )),
        "vdb missing or wrong size {context}"
    );
    assert!(
        log.contains("console [hvc0] enabled"),
        "virtio console not registered {context}"
    );
    assert!(log.contains("Run /init"), "init not reached {context}");
    eprintln!("reached \"Run /init\" after {elapsed:?}");

    let console = String::from_utf8_lossy(&console.join().unwrap()).into_owned();
    assert!(
        console.contains("Run /init")
            || console.contains("Linux version")
            || console.contains("virtio_blk"),
        "nothing from the kernel on the console socket: {console:?} {context}"
    );
}
