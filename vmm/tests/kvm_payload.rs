//! Runs tiny hand-assembled guests in the real `husk-vmm` binary under KVM
//! and checks what the VMM does with them: serial output and a clean exit
//! through the i8042 reset, a clear non-zero exit for a guest that
//! crashes, and a bounded exit on SIGTERM whatever state the vCPUs are in.
//! Skipped (with the reason printed) where /dev/kvm is unusable.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
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
        husk_test_skip::skip("/dev/kvm cannot be opened read-write");
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
        husk_test_skip::skip("/dev/kvm cannot be opened read-write");
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
        husk_test_skip::skip("/dev/kvm cannot be opened read-write");
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
        husk_test_skip::skip("/dev/kvm cannot be opened read-write");
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
        husk_test_skip::skip("/dev/kvm cannot be opened read-write");
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

/// husk-vmm's stated bound from a stop signal to the end of the process
/// (`STOP_BOUND` in main.rs, also in `--help`).
const STOP_BOUND: Duration = Duration::from_secs(2);
/// What the tests allow on top for the host to reap a process (2 shared
/// cores, other builds running).
const REAP_SLACK: Duration = Duration::from_secs(1);

const SPIN: &[u8] = &[0xeb, 0xfe]; // jmp $
const HALT: &[u8] = &[0xfa, 0xf4, 0xeb, 0xfd]; // cli; hlt; jmp back to hlt

/// 32-bit BSP code: prints `B` on COM1, then runs `tail`.
fn bsp_payload(tail: &[u8]) -> Vec<u8> {
    // mov edx, 0x3f8; mov al, 'B'; out dx, al
    let mut code = vec![0xba, 0xf8, 0x03, 0x00, 0x00, 0xb0, b'B', 0xee];
    code.extend_from_slice(tail);
    code
}

/// Where the AP trampoline is copied; the SIPI vector is its page number.
const TRAMPOLINE: u32 = 0x8000;

/// A two-vCPU guest: the BSP copies a real-mode trampoline below 1 MiB,
/// enables its local APIC, starts vCPU 1 with INIT + SIPI, prints `B` and
/// runs `bsp_tail`; vCPU 1 prints `A` and runs `ap_tail` (16-bit code).
fn smp_payload(bsp_tail: &[u8], ap_tail: &[u8]) -> Vec<u8> {
    // Real mode: mov dx, 0x3f8; mov al, 'A'; out dx, al
    let mut trampoline = vec![0xba, 0xf8, 0x03, 0xb0, b'A', 0xee];
    trampoline.extend_from_slice(ap_tail);

    let mov_imm32 = |opcode: u8, value: u32| {
        let mut i = vec![opcode];
        i.extend_from_slice(&value.to_le_bytes());
        i
    };
    // mov dword [addr], value
    let store = |addr: u32, value: u32| {
        let mut i = vec![0xc7, 0x05];
        i.extend_from_slice(&addr.to_le_bytes());
        i.extend_from_slice(&value.to_le_bytes());
        i
    };
    let body = |trampoline_at: u32| -> Vec<u8> {
        let mut code = Vec::new();
        code.extend(mov_imm32(0xbe, LOAD_ADDRESS + trampoline_at)); // mov esi, src
        code.extend(mov_imm32(0xbf, TRAMPOLINE)); // mov edi, dst
        code.extend(mov_imm32(0xb9, trampoline.len() as u32)); // mov ecx, len
        code.extend([0xfc, 0xf3, 0xa4]); // cld; rep movsb
        code.extend(store(0xfee0_00f0, 0x1ff)); // SVR: APIC enabled, vector 0xff
        code.extend(store(0xfee0_0310, 1 << 24)); // ICR high: APIC ID 1
        code.extend(store(0xfee0_0300, 0x4500)); // ICR low: INIT, assert
        code.extend(store(0xfee0_0300, 0x4600 | (TRAMPOLINE >> 12))); // SIPI
        code.extend(bsp_payload(bsp_tail));
        code
    };
    let len = body(0).len() as u32;
    let mut code = body(len);
    code.extend_from_slice(&trampoline);
    code
}

fn start_vmm(
    payload: &[u8],
    extra_args: &[&str],
    stdout: Stdio,
    stderr: Stdio,
) -> (Child, tempfile::NamedTempFile) {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(payload).unwrap();
    let child = Command::new(VMM)
        .arg("--raw-payload")
        .arg(file.path())
        .args(["--mem-mib", "64"])
        .args(extra_args)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .expect("start husk-vmm");
    (child, file)
}

/// Waits until `ready` or the deadline; false on timeout or if the child ended.
fn wait_for(child: &mut Child, within: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < within {
        if ready() {
            return true;
        }
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Sends SIGTERM and waits for the process to end (killing it past
/// `TIMEOUT`); returns its status and how long it took.
fn terminate(child: &mut Child) -> (ExitStatus, Duration) {
    // SAFETY: plain kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return (status, start.elapsed());
        }
        if start.elapsed() > TIMEOUT {
            child.kill().unwrap();
            let _ = child.wait();
            panic!("husk-vmm ignored SIGTERM for {TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn read_all(pipe: Option<impl Read>) -> String {
    let mut text = String::new();
    pipe.unwrap().read_to_string(&mut text).unwrap();
    text
}

/// Runs `payload` on `vcpus` vCPUs until every byte of `markers` is on the
/// serial port (the vCPUs have reached their final loops), lets them sit
/// there, then checks that SIGTERM ends husk-vmm within the bound, by the
/// normal path, with status 128+15.
fn check_sigterm(payload: &[u8], vcpus: &str, markers: &[u8]) {
    if !kvm_usable() {
        husk_test_skip::skip("/dev/kvm cannot be opened read-write");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("serial.log");
    let (mut child, _payload) = start_vmm(
        payload,
        &["--vcpus", vcpus, "--serial-log", log.to_str().unwrap()],
        Stdio::null(),
        Stdio::piped(),
    );
    let reached = wait_for(&mut child, Duration::from_secs(10), || {
        let out = std::fs::read(&log).unwrap_or_default();
        markers.iter().all(|m| out.contains(m))
    });
    assert!(
        reached,
        "the guest did not print {:?} (serial: {:?}); stderr: {}",
        String::from_utf8_lossy(markers),
        String::from_utf8_lossy(&std::fs::read(&log).unwrap_or_default()),
        {
            let _ = child.kill();
            let _ = child.wait();
            read_all(child.stderr.take())
        }
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the guest runs until told to stop"
    );
    let (status, took) = terminate(&mut child);
    let stderr = read_all(child.stderr.take());
    assert_eq!(status.code(), Some(128 + libc::SIGTERM), "stderr: {stderr}");
    assert!(
        took < STOP_BOUND + REAP_SLACK,
        "took {took:?} to stop; stderr: {stderr}"
    );
    assert_eq!(
        stderr.lines().last(),
        Some("husk-vmm: stopped by signal 15"),
        "stderr: {stderr}"
    );
    assert!(!stderr.contains("did not stop"), "stderr: {stderr}");
}

#[test]
fn sigterm_stops_a_spinning_guest() {
    check_sigterm(&bsp_payload(SPIN), "1", b"B");
}

/// The BSP never exits to user space; vCPU 1 sits in KVM_RUN waiting for
/// an INIT/SIPI that never comes.
#[test]
fn sigterm_stops_a_spinning_bsp_and_a_never_started_ap() {
    check_sigterm(&bsp_payload(SPIN), "2", b"B");
}

/// An in-kernel-irqchip HLT with interrupts off never wakes by itself.
#[test]
fn sigterm_stops_a_halted_bsp_and_a_never_started_ap() {
    check_sigterm(&bsp_payload(HALT), "2", b"B");
}

#[test]
fn sigterm_stops_a_halted_bsp_and_a_spinning_ap() {
    check_sigterm(&smp_payload(HALT, SPIN), "2", b"AB");
}

#[test]
fn sigterm_stops_a_spinning_bsp_and_a_halted_ap() {
    check_sigterm(&smp_payload(SPIN, HALT), "2", b"AB");
}

#[test]
fn sigterm_stops_two_spinning_vcpus() {
    check_sigterm(&smp_payload(SPIN, SPIN), "2", b"AB");
}

/// A pipe whose buffer is one page, and its two ends.
fn small_pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two fds into the array.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both fds were just created and are owned by nobody else.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: F_SETPIPE_SZ on a pipe we own.
    assert!(unsafe { libc::fcntl(read.as_raw_fd(), libc::F_SETPIPE_SZ, 4096) } >= 4096);
    (read, write)
}

/// A writer of lines (atomic writes under PIPE_BUF) blocks once the room
/// left is smaller than its next line.
fn pipe_is_full(read: &OwnedFd) -> bool {
    bytes_in_pipe(read) >= 4096 - 512
}

fn bytes_in_pipe(read: &OwnedFd) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int.
    unsafe { libc::ioctl(read.as_raw_fd(), libc::FIONREAD, &mut n) };
    n as usize
}

/// The guest fills the stdout pipe, which nobody reads: vCPU 0 blocks in
/// write(2), outside KVM_RUN, where no kick can reach it. husk-vmm must
/// still exit, once `VCPU_STOP_TIMEOUT` is over.
#[test]
fn sigterm_ends_the_vmm_when_a_vcpu_is_stuck_writing_serial_output() {
    if !kvm_usable() {
        husk_test_skip::skip("/dev/kvm cannot be opened read-write");
        return;
    }
    // loop: mov edx, 0x3f8; mov al, 'x'; out dx, al; jmp loop
    let chatter = [0xba, 0xf8, 0x03, 0x00, 0x00, 0xb0, b'x', 0xee, 0xeb, 0xf6];
    let (read, write) = small_pipe();
    let (mut child, _payload) = start_vmm(
        &chatter,
        &["--vcpus", "2"],
        Stdio::from(write),
        Stdio::piped(),
    );
    let full = wait_for(&mut child, Duration::from_secs(20), || pipe_is_full(&read));
    if !full {
        let _ = child.kill();
        let _ = child.wait();
        panic!("the serial output did not fill the pipe");
    }
    std::thread::sleep(Duration::from_millis(200));
    let (status, took) = terminate(&mut child);
    let stderr = read_all(child.stderr.take());
    assert_eq!(status.code(), Some(128 + libc::SIGTERM), "stderr: {stderr}");
    assert!(
        took < STOP_BOUND + REAP_SLACK,
        "took {took:?} to stop; stderr: {stderr}"
    );
    assert!(
        stderr.contains("vCPU threads did not stop within"),
        "stderr: {stderr}"
    );
    drop(read);
}

/// Worse: the stuck vCPU thread holds the stderr lock (its debug log line
/// is blocked on a full stderr pipe), so the main thread cannot even log.
/// The stop-signal thread's deadline ends the process.
#[test]
fn sigterm_ends_the_vmm_within_the_bound_when_stderr_is_blocked() {
    if !kvm_usable() {
        husk_test_skip::skip("/dev/kvm cannot be opened read-write");
        return;
    }
    // loop: mov eax, [0xd010_0000] (unmapped MMIO, logged at debug); jmp loop
    let mmio_reads = [0xa1, 0x00, 0x00, 0x10, 0xd0, 0xeb, 0xf9];
    let (read, write) = small_pipe();
    let (mut child, _payload) = start_vmm(
        &mmio_reads,
        &[
            "--vcpus",
            "2",
            "--log-level",
            "debug",
            "--serial-log",
            "/dev/null",
        ],
        Stdio::null(),
        Stdio::from(write),
    );
    let full = wait_for(&mut child, Duration::from_secs(20), || pipe_is_full(&read));
    if !full {
        let in_pipe = bytes_in_pipe(&read);
        let _ = child.kill();
        let _ = child.wait();
        panic!("the debug log did not fill the pipe ({in_pipe} bytes)");
    }
    std::thread::sleep(Duration::from_millis(200));
    let (status, took) = terminate(&mut child);
    assert_eq!(status.code(), Some(128 + libc::SIGTERM));
    assert!(took < STOP_BOUND + REAP_SLACK, "took {took:?} to stop");
    eprintln!("stopped {took:?} after SIGTERM");
    drop(read);
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

/// Starts husk-vmm jailed (root `dir/jail`, nobody's ids) with a spinning
/// guest and `extra` arguments; says whether the guest got to run.
fn start_jailed_spinner(dir: &Path, extra: &[&str]) -> (Child, tempfile::NamedTempFile, bool) {
    let log = dir.join("serial.log");
    let jail = dir.join("jail");
    std::fs::create_dir(&jail).unwrap();
    let mut args = vec![
        "--serial-log",
        log.to_str().unwrap(),
        "--jail-root",
        jail.to_str().unwrap(),
        "--uid",
        "65534",
        "--gid",
        "65534",
    ];
    args.extend_from_slice(extra);
    let (mut child, payload) = start_vmm(&bsp_payload(SPIN), &args, Stdio::null(), Stdio::piped());
    let running = wait_for(&mut child, Duration::from_secs(10), || {
        std::fs::read(&log).unwrap_or_default().contains(&b'B')
    });
    (child, payload, running)
}

/// The jail is in force once the guest runs: no_new_privs, seccomp
/// filtering, no capability at all, the requested ids, and a mount
/// namespace of its own whose root is the empty jail directory.
#[test]
fn the_running_vmm_is_jailed() {
    if !kvm_usable() {
        husk_test_skip::skip("/dev/kvm cannot be opened read-write");
        return;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        husk_test_skip::skip("dropping to another uid needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (mut child, _payload, running) = start_jailed_spinner(dir.path(), &[]);
    let pid = child.id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let own_ns = std::fs::read_link("/proc/self/ns/mnt").unwrap();
    let its_ns = std::fs::read_link(format!("/proc/{pid}/ns/mnt"));
    let root_entries: Vec<_> = std::fs::read_dir(format!("/proc/{pid}/root"))
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name()).collect())
        .unwrap_or_else(|e| vec![format!("unreadable: {e}").into()]);
    let (_, _) = terminate(&mut child);
    let stderr = read_all(child.stderr.take());
    assert!(running, "the guest did not run; stderr: {stderr}");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .map(|value| value.split_whitespace().collect::<Vec<_>>().join(" "))
            .unwrap_or_default()
    };
    assert_eq!(field("NoNewPrivs:"), "1", "{status}");
    assert_eq!(field("Seccomp:"), "2", "{status}");
    for caps in ["CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:"] {
        assert_eq!(field(caps), "0000000000000000", "{caps} {status}");
    }
    assert_eq!(field("Uid:"), "65534 65534 65534 65534", "{status}");
    assert_eq!(field("Gid:"), "65534 65534 65534 65534", "{status}");
    assert_ne!(its_ns.unwrap(), own_ns, "its own mount namespace");
    assert!(root_entries.is_empty(), "its root holds {root_entries:?}");
}

/// Debug builds: a device worker that makes a syscall outside its filter
/// kills the whole VMM with SIGSYS, and the log says which syscall.
#[cfg(debug_assertions)]
#[test]
fn a_seccomp_violation_in_a_worker_kills_the_vmm_with_sigsys() {
    use std::os::unix::process::ExitStatusExt;
    if !kvm_usable() {
        husk_test_skip::skip("/dev/kvm cannot be opened read-write");
        return;
    }
    let out = run_payload(&bsp_payload(SPIN), &["--debug-seccomp-violation"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.signal(), Some(libc::SIGSYS), "stderr: {stderr}");
    assert!(
        stderr.contains(&format!(
            "seccomp violation: syscall {} in a device worker thread",
            libc::SYS_socket
        )),
        "stderr: {stderr}"
    );
}

/// The control socket works inside the jail: its thread (under the device
/// workers' seccomp filter, unprivileged, in the empty root) takes a
/// request with a passed descriptor, attaches it to a disk slot, empties
/// the slot again, and refuses nonsense, while the guest runs on.
#[test]
fn the_control_socket_swaps_a_disk_slot_inside_the_jail() {
    use std::io::{BufRead, BufReader};
    use std::os::unix::net::UnixStream;
    use vmm_sys_util::sock_ctrl_msg::ScmSocket;
    if !kvm_usable() {
        husk_test_skip::skip("/dev/kvm cannot be opened read-write");
        return;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        husk_test_skip::skip("dropping to another uid needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("control.sock");
    let (mut child, _payload, running) = start_jailed_spinner(
        dir.path(),
        &[
            "--disk-slot",
            "1M,serial=husk-pod-1",
            "--control-socket",
            socket.to_str().unwrap(),
        ],
    );
    let mut image = tempfile::tempfile().unwrap();
    image.write_all(&[0x5a; 4096]).unwrap();
    let ask = |line: &str, fds: &[i32]| -> String {
        let stream = UnixStream::connect(&socket).expect("connect to the control socket");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream
            .send_with_fds(&[format!("{line}\n").as_bytes()], fds)
            .unwrap();
        let mut reply = String::new();
        let _ = BufReader::new(&stream).read_line(&mut reply);
        reply
    };
    let replies = if running {
        vec![
            ask(
                r#"{"attach":{"serial":"husk-pod-1"}}"#,
                &[image.as_raw_fd()],
            ),
            ask(r#"{"detach":{"serial":"husk-pod-1"}}"#, &[]),
            ask(
                r#"{"attach":{"serial":"husk-pod-9"}}"#,
                &[image.as_raw_fd()],
            ),
        ]
    } else {
        Vec::new()
    };
    let alive = child.try_wait().unwrap().is_none();
    let (status, _) = terminate(&mut child);
    let stderr = read_all(child.stderr.take());
    assert!(running, "the guest did not run; stderr: {stderr}");
    assert!(
        alive,
        "husk-vmm died serving the socket: {status}; stderr: {stderr}"
    );
    assert_eq!(replies[0].trim(), r#""ok""#, "stderr: {stderr}");
    assert_eq!(replies[1].trim(), r#""ok""#, "stderr: {stderr}");
    assert!(replies[2].contains("no disk slot"), "{}", replies[2]);
    assert_eq!(status.code(), Some(128 + libc::SIGTERM), "stderr: {stderr}");
}
