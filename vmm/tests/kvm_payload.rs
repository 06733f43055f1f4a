//! Runs tiny hand-assembled guests in the real `husk-vmm` binary under KVM
//! and checks what the VMM does with them: serial output and a clean exit
//! through the i8042 reset, and a clear non-zero exit for a guest that
//! crashes. Skipped (with the reason printed) where /dev/kvm is unusable.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const VMM: &str = env!("CARGO_BIN_EXE_husk-vmm");
/// Where `--raw-payload` code is loaded and entered (memory::RAW_PAYLOAD_ADDRESS).
const LOAD_ADDRESS: u32 = 0x10_0000;
const TIMEOUT: Duration = Duration::from_secs(30);

fn kvm_usable() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

/// 32-bit protected-mode code (the PVH entry state: flat segments, paging
/// off) that prints `message` on COM1 and asks the i8042 for a CPU reset.
fn hello_payload(message: &[u8]) -> Vec<u8> {
    const MESSAGE_OFFSET: u32 = 0x19;
    let msg_addr = (LOAD_ADDRESS + MESSAGE_OFFSET).to_le_bytes();
    let mut code = vec![
        0xba,
        0xf8,
        0x03,
        0x00,
        0x00, // 00: mov edx, 0x3f8      ; COM1 data port
        0xbe,
        msg_addr[0],
        msg_addr[1],
        msg_addr[2],
        msg_addr[3], // 05: mov esi, message
        0xac,        //                         0a: lodsb              ; al = [esi++]
        0x84,
        0xc0, //                   0b: test al, al
        0x74,
        0x03, //                   0d: jz 0x12            ; NUL: done
        0xee, //                         0f: out dx, al         ; transmit
        0xeb,
        0xf8, //                   10: jmp 0x0a
        0xb0,
        0xfe, //                   12: mov al, 0xfe       ; i8042 "pulse reset"
        0xe6,
        0x64, //                   14: out 0x64, al
        0xf4, //                         16: hlt                ; in-kernel irqchip: no exit
        0xeb,
        0xfd, //                   17: jmp 0x16           ; until the VMM stops us
    ];
    assert_eq!(code.len() as u32, MESSAGE_OFFSET);
    code.extend_from_slice(message);
    code.push(0);
    code
}

/// Runs the VMM on `payload` with a deadline; a hang fails the test.
fn run_payload(payload: &[u8], extra_args: &[&str]) -> Output {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(payload).unwrap();
    run_vmm(file.path(), extra_args)
}

fn run_vmm(payload: &Path, extra_args: &[&str]) -> Output {
    let mut child = Command::new(VMM)
        .arg("--raw-payload")
        .arg(payload)
        .args(["--mem-mib", "64", "--log-level", "info"])
        .args(extra_args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start husk-vmm");
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > TIMEOUT {
            child.kill().unwrap();
            let _ = child.wait();
            panic!("husk-vmm did not exit within {TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_end(&mut stdout)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_end(&mut stderr)
        .unwrap();
    Output {
        status,
        stdout,
        stderr,
    }
}

#[test]
fn payload_prints_on_serial_and_resets_cleanly() {
    if !kvm_usable() {
        eprintln!("SKIPPED: /dev/kvm cannot be opened read-write");
        return;
    }
    let out = run_payload(&hello_payload(b"hello from the guest\n"), &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello from the guest\n",
        "stderr: {stderr}"
    );
    assert!(
        out.status.success(),
        "exit {:?}, stderr: {stderr}",
        out.status
    );
    assert!(stderr.contains("first KVM_RUN after "), "stderr: {stderr}");
}

#[test]
fn waiting_secondary_vcpus_are_stopped_too() {
    if !kvm_usable() {
        eprintln!("SKIPPED: /dev/kvm cannot be opened read-write");
        return;
    }
    // vCPUs 1..3 sit in KVM_RUN waiting for an INIT/SIPI that never comes:
    // the VMM must kick them out, or this run would hang.
    let out = run_payload(&hello_payload(b"smp"), &["--vcpus", "4"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "smp",
        "stderr: {stderr}"
    );
    assert!(
        out.status.success(),
        "exit {:?}, stderr: {stderr}",
        out.status
    );
    assert!(!stderr.contains("did not stop"), "stderr: {stderr}");
}

#[test]
fn reset_after_a_kernel_panic_line_is_a_failure() {
    if !kvm_usable() {
        eprintln!("SKIPPED: /dev/kvm cannot be opened read-write");
        return;
    }
    // What Linux does with panic=1: print the panic line, then reset.
    let out = run_payload(&hello_payload(b"Kernel panic - not syncing: test\n"), &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert_eq!(
        stderr.lines().last(),
        Some("husk-vmm: guest kernel panicked (the panic message is in the serial log)")
    );
}

#[test]
fn serial_log_file_receives_the_output() {
    if !kvm_usable() {
        eprintln!("SKIPPED: /dev/kvm cannot be opened read-write");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("serial.log");
    let out = run_payload(
        &hello_payload(b"to the log"),
        &["--serial-log", log.to_str().unwrap()],
    );
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty());
    assert_eq!(std::fs::read(&log).unwrap(), b"to the log");
}

#[test]
fn undefined_instruction_is_a_triple_fault_and_a_failure() {
    if !kvm_usable() {
        eprintln!("SKIPPED: /dev/kvm cannot be opened read-write");
        return;
    }
    // ud2 with no IDT: #UD cannot be delivered (#GP, then #DF), so the CPU
    // shuts down: KVM_EXIT_SHUTDOWN. Under an emulating hypervisor it may
    // surface as an internal error instead; both must be a clear failure.
    let out = run_payload(&[0x0f, 0x0b], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("husk-vmm: vCPU 0: triple fault")
            || last.starts_with("husk-vmm: vCPU 0: KVM internal error"),
        "last stderr line: {last:?}"
    );
}

#[test]
fn sigterm_stops_a_spinning_guest() {
    if !kvm_usable() {
        eprintln!("SKIPPED: /dev/kvm cannot be opened read-write");
        return;
    }
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(&[0xeb, 0xfe]).unwrap(); // jmp $ : never exits by itself
    let mut child = Command::new(VMM)
        .arg("--raw-payload")
        .arg(file.path())
        .args(["--mem-mib", "64"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the guest spins until told to stop"
    );
    // SAFETY: plain kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > TIMEOUT {
            child.kill().unwrap();
            panic!("husk-vmm ignored SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(status.code(), Some(128 + libc::SIGTERM), "stderr: {stderr}");
    assert_eq!(
        stderr.lines().last(),
        Some("husk-vmm: stopped by signal 15")
    );
}

#[test]
fn missing_payload_is_a_clear_config_error() {
    let out = run_vmm(Path::new("/nonexistent/payload.bin"), &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("raw payload /nonexistent/payload.bin"),
        "stderr: {stderr}"
    );
}
