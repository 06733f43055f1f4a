//! Sandboxes: a microVM per container. `backend` is the seam to the program
//! that runs the VM (`husk_vmm`, `qemu`); `initramfs` packs the guest agent.

pub mod backend;
pub mod initramfs;
pub mod qemu;
pub mod spec;
