//! One module per subcommand group. Each exposes its clap arguments and a
//! `run` returning the process exit code.

pub mod check;
pub mod containers;
pub mod image;
pub mod oci;
pub mod registry;
pub mod run;
