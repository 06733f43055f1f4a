//! husk-agent library: re-exports the host/guest protocol (crate
//! `husk-protocol`, under `agent/protocol/`) as `husk_agent::protocol` for
//! the agent's binary, tests and examples.

pub use husk_protocol as protocol;
