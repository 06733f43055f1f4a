//! Sandboxes: a microVM per container.
//!
//! `launch` runs one container start to finish. Beneath it: `backend` is the
//! seam to the program that runs the VM (`husk_vmm`, `qemu`, picked by
//! `select`); `assets` finds the guest kernel and agent; `initramfs` packs
//! the agent; `rundir` holds a VM's socket and logs; `spec` builds the OCI
//! runtime spec; `agent_client` speaks the agent protocol and `stdio` runs
//! the container's session over it (`signals`, `terminal`).

pub mod agent_client;
pub mod assets;
pub mod backend;
pub mod husk_vmm;
pub mod initramfs;
pub mod launch;
pub mod layers;
pub mod logcap;
mod pid_namespace;
pub mod pod;
pub mod printable;
pub mod qemu;
pub mod rundir;
pub mod select;
pub mod signals;
pub mod spec;
pub mod stdio;
pub mod terminal;
pub mod vm_cgroup;

#[cfg(test)]
mod client_tests;
#[cfg(test)]
mod fake_agent;
