//! husk-agent library: the host/guest protocol, the one definition both the
//! agent (guest) and the runtime (host) compile.

pub mod protocol;
