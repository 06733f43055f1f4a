//! husk-vmm: a KVM microVM monitor built on rust-vmm crates.
//!
//! The modules follow the boot path: `probe` (what the host can do) →
//! `config` (what to run) → `memory` → `boot` (kernel, boot params, cmdline)
//! → `x86_64` (CPU state) → `devices` → `vcpu` → `vm` (ties it together).

pub mod boot;
pub mod config;
pub mod control;
pub mod devices;
pub mod exit;
pub mod jail;
pub mod logcap;
pub mod memory;
pub mod probe;
pub mod vcpu;
pub mod vm;
pub mod x86_64;
