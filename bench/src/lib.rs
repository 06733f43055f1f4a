//! The VMM start-up benchmark: husk-vmm against `qemu-system-x86_64 -M
//! microvm`, both run on the same kernel, devices and command line, and both
//! measured through the same LD_PRELOAD interposer (interposer/), so the
//! ratio compares the VMMs and not the ways of measuring them.
//!
//! `stamp` reads what the interposer recorded, `memory` samples a VMM's
//! resident memory outside guest RAM, `vmms` builds the two command lines,
//! `run` measures one VM, `stats` summarises, `external` runs helper commands.
//!
//! The backend benchmark (benches/run_backends.rs) drives `husk run` itself
//! with each backend; `husk_run` reads husk's log and finds its VMM process.

pub mod external;
pub mod husk_run;
pub mod memory;
pub mod run;
pub mod stamp;
pub mod stats;
pub mod vmms;
