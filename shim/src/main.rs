//! `containerd-shim-husk-v2`: containerd's runtime v2 shim for husk
//! (`ctr run --runtime io.containerd.husk.v2 ...`). Each task runs in its
//! own KVM microVM through husk's container lifecycle; see README.md.

mod bootstrap;
mod options;
mod rootfs;
mod stdio;
mod task;

fn main() {
    // The same binary serves as each container's monitor (husk's
    // lifecycle starts monitors as `<current exe> __monitor ...`).
    if let Some(code) = husk::container::monitor::dispatch() {
        std::process::exit(code);
    }
    std::process::exit(bootstrap::main());
}
