//! husk: containers in KVM microVMs. The library behind the `husk` binary
//! (and the containerd shim next): the image store, the sandboxes (one VM
//! each) and the command groups of the CLI.

pub mod cli;
pub mod container;
pub mod image;
pub mod network;
pub mod sandbox;
