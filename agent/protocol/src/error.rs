//! Errors of the wire protocol: every way a peer's bytes can be wrong.

use std::io;

/// Anything that can go wrong reading, decoding or checking frames.
///
/// The peer is untrusted: every variant is a normal outcome of bad input,
/// never a reason to panic.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("channel I/O: {0}")]
    Io(#[from] io::Error),
    /// The peer closed the stream cleanly between two frames.
    #[error("channel closed by peer")]
    Closed,
    /// The stream ended inside a frame.
    #[error("channel closed inside a frame ({got} of {expected} bytes)")]
    Truncated { expected: usize, got: usize },
    #[error("bad frame magic {0:#06x} (not a husk agent channel, or out of sync)")]
    BadMagic(u16),
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("unknown stdio stream {0}")]
    UnknownStream(u8),
    #[error("frame payload of {len} bytes exceeds the limit of {max} bytes")]
    Oversized { len: u64, max: u32 },
    #[error("bad {what} payload: {source}")]
    Json {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("malformed {0} frame")]
    Malformed(&'static str),
    #[error("protocol version mismatch: host speaks {ours}, agent speaks {theirs}")]
    VersionMismatch { ours: u32, theirs: u32 },
    #[error("expected a Hello frame first, got a {0} frame")]
    NoHello(&'static str),
    #[error(
        "peer sent {len} bytes on {stream} of process {process} with only {credit} bytes of credit"
    )]
    CreditExceeded {
        process: u32,
        stream: &'static str,
        len: usize,
        credit: u32,
    },
    #[error("peer granted credit beyond the maximum window ({max} bytes)")]
    CreditOverflow { max: u32 },
}
