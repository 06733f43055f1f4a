//! LD_PRELOAD interposer for the VMM start-up benchmark.
//!
//! Wraps glibc's `ioctl` so the benchmark sees, for any VMM (husk-vmm, QEMU)
//! measured the same way:
//! - every KVM_SET_USER_MEMORY_REGION(2): which host ranges are guest RAM;
//! - the CLOCK_MONOTONIC time of the first KVM_RUN.
//!
//! Each record is one line appended to the file named by
//! `HUSK_BENCH_STAMP_FILE` (nothing is recorded when it is unset):
//!   `region <slot> <guest_phys_addr> <memory_size> <userspace_addr>`
//!   `first_kvm_run <monotonic nanoseconds>`
//!
//! Built by build.rs with plain rustc (std only, no crates), so the benchmark
//! needs no separate build step. Only x86_64 glibc is supported: the variadic
//! `ioctl(int, unsigned long, ...)` is defined here with one pointer argument,
//! which the x86_64 SysV calling convention passes in the same register.

use std::ffi::{c_char, c_int, c_ulong, c_void, CStr};
use std::fs::OpenOptions;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

const KVM_RUN: c_ulong = 0xAE80;
/// _IOW(KVMIO, 0x46, struct kvm_userspace_memory_region) (32 bytes).
const KVM_SET_USER_MEMORY_REGION: c_ulong = 0x4020_AE46;
/// _IOW(KVMIO, 0x49, struct kvm_userspace_memory_region2) (160 bytes); its
/// first 32 bytes have the same layout as the older struct.
const KVM_SET_USER_MEMORY_REGION2: c_ulong = 0x40A0_AE49;

const RTLD_NEXT: *mut c_void = -1isize as *mut c_void;
const CLOCK_MONOTONIC: c_int = 1;
const STAMP_FILE_ENV: &CStr = c"HUSK_BENCH_STAMP_FILE";

#[repr(C)]
struct Timespec {
    tv_sec: i64,
    tv_nsec: i64,
}

/// The leading fields shared by both memory-region structs.
#[repr(C)]
struct UserMemoryRegion {
    slot: u32,
    flags: u32,
    guest_phys_addr: u64,
    memory_size: u64,
    userspace_addr: u64,
}

extern "C" {
    fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void;
    fn clock_gettime(clock: c_int, ts: *mut Timespec) -> c_int;
    fn getenv(name: *const c_char) -> *const c_char;
}

type IoctlFn = unsafe extern "C" fn(c_int, c_ulong, *mut c_void) -> c_int;

static REAL_IOCTL: AtomicUsize = AtomicUsize::new(0);
static FIRST_RUN_SEEN: AtomicBool = AtomicBool::new(false);

fn real_ioctl() -> IoctlFn {
    let mut addr = REAL_IOCTL.load(Ordering::Acquire);
    if addr == 0 {
        // SAFETY: a constant NUL-terminated name; RTLD_NEXT finds glibc's ioctl.
        addr = unsafe { dlsym(RTLD_NEXT, c"ioctl".as_ptr()) } as usize;
        if addr == 0 {
            // Without the real ioctl nothing can work; fail loudly, not silently.
            std::process::abort();
        }
        REAL_IOCTL.store(addr, Ordering::Release);
    }
    // SAFETY: addr is glibc's ioctl, whose ABI matches IoctlFn on x86_64.
    unsafe { std::mem::transmute::<usize, IoctlFn>(addr) }
}

fn monotonic_ns() -> u64 {
    let mut ts = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid, writable timespec.
    unsafe { clock_gettime(CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// Appends one line in a single write, so records from several threads never
/// interleave.
fn record(line: String) {
    // SAFETY: a constant NUL-terminated name; getenv returns NULL or a C string.
    let path = unsafe { getenv(STAMP_FILE_ENV.as_ptr()) };
    if path.is_null() {
        return;
    }
    // SAFETY: non-NULL getenv results are NUL-terminated.
    let Ok(path) = unsafe { CStr::from_ptr(path) }.to_str() else {
        return;
    };
    if let Ok(mut file) = OpenOptions::new().create(true).append(true).open(path) {
        let _ = file.write_all(line.as_bytes());
    }
}

/// # Safety
/// Same contract as glibc's `ioctl`; the argument is forwarded untouched.
#[no_mangle]
pub unsafe extern "C" fn ioctl(fd: c_int, request: c_ulong, arg: *mut c_void) -> c_int {
    match request {
        KVM_RUN => {
            // Stamp before entering the guest: this is the moment the VMM is ready.
            if !FIRST_RUN_SEEN.load(Ordering::Relaxed)
                && !FIRST_RUN_SEEN.swap(true, Ordering::AcqRel)
            {
                record(format!("first_kvm_run {}\n", monotonic_ns()));
            }
        }
        KVM_SET_USER_MEMORY_REGION | KVM_SET_USER_MEMORY_REGION2 if !arg.is_null() => {
            // SAFETY: for these requests arg points to the region struct the
            // VMM passes to KVM; only its common leading fields are read.
            let region = unsafe { &*(arg as *const UserMemoryRegion) };
            record(format!(
                "region {} {:#x} {} {:#x}\n",
                region.slot, region.guest_phys_addr, region.memory_size, region.userspace_addr
            ));
        }
        _ => {}
    }
    // SAFETY: forwarding the caller's arguments to the real ioctl.
    unsafe { real_ioctl()(fd, request, arg) }
}
