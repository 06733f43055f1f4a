//! The host/agent protocol: framing and messages, the one definition both
//! sides compile. Plain `std::io` and serde; nothing guest-only, so the host
//! builds it on any platform.
//!
//! # Transport
//! One byte stream: the virtio-console port (guest: `/dev/hvc0` in raw
//! mode; host: the Unix socket the VMM or QEMU bridges it to).
//!
//! # Handshake
//! When ready to serve, the agent sends a `Hello` frame
//! (`{"protocol_version":2,"agent_version":"0.1.0"}`). The host reads it
//! first ([`expect_hello`]) and gives up on any other frame or version.
//! The host sends nothing before the Hello. The agent sends Hello once, as
//! soon as it has booted: the host must already be connected to the
//! console socket by then (QEMU drops console output while no client is
//! connected: use `server=on,wait=on`, or connect before the guest can
//! boot).
//!
//! # Frames
//! A 12-byte header, all integers big-endian, then `len` payload bytes:
//!
//! | bytes | field  | meaning |
//! |-------|--------|---------|
//! | 0..2  | magic  | `0x48 0x4b` ("HK") |
//! | 2     | kind   | 1 Hello, 2 Request, 3 Response, 4 Event, 5 Data, 6 Credit, 7 Eof |
//! | 3     | stream | Data/Credit/Eof: 1 stdin, 2 stdout, 3 stderr; else 0 |
//! | 4..8  | id     | Request/Response: request id; Data/Credit/Eof: process id; else 0 |
//! | 8..12 | len    | payload length, at most [`MAX_PAYLOAD`] (1 MiB) |
//!
//! Payloads:
//! - Hello, Request, Response, Event: JSON of [`Hello`], [`Request`],
//!   [`Response`], [`Event`] (externally tagged snake_case enums; unknown
//!   fields ignored, unknown variants rejected).
//! - Data: raw stdio bytes (senders use at most [`MAX_DATA_CHUNK`] per frame).
//! - Credit: a u32 (big-endian): bytes the receiver lets the sender send.
//! - Eof: empty. The sender's stream is finished (agent: the pipe/pty
//!   closed; host: stdin closed, same as `Request::CloseStdin`).
//!
//! A reader checks magic, kind and length before allocating; anything else
//! (unknown kind or stream, bad JSON, truncated frame) is a
//! [`ProtocolError`], and the connection is then unusable.
//!
//! # Requests
//! The host numbers requests; the agent answers each with exactly one
//! Response carrying the same id, `Ok(Reply)` or `Error { step, message }`.
//! Requests are answered in order except `Wait`, which is answered when the
//! process exits (other requests are served meanwhile). Process ids are
//! chosen by the host (`CreateContainer.init_process`, `Exec.process`).
//!
//! Typical run: Hello ← ; CreateContainer → Created ; Start → Done ;
//! stdio Data/Credit/Eof both ways ; Event::ProcessExited ← (after the
//! process's stdout/stderr Eof) ; Shutdown → Done ; the VM powers off.
//!
//! A pod's VM runs several containers: the first one created (the pod's
//! sandbox) is the default of every request that names a container
//! (`None`); a member is created with `CreateContainer.sandbox` set, named
//! in `Start`, `Exec`, `Stats` and `Update`, and removed with
//! `RemoveContainer` (its layer disk is free again once that replies).
//! Process ids stay unique within the VM, across containers.
//!
//! If the agent cannot go on (garbled channel, credit violation, channel
//! closed) it sends `Event::Fatal { message }` if it still can and powers
//! the VM off.
//!
//! # Flow control
//! Per (process, stream), credit-based (see [`flow`]): every stream starts
//! with [`INITIAL_WINDOW`] (256 KiB) of credit for its sender; the receiver
//! returns credit with Credit frames as it passes data on. A sender never
//! exceeds its credit; a receiver treats an overrun as a protocol error.
//! Control frames are not flow-controlled.
//!
//! # Exit status
//! [`ExitStatus`] has `code` or `signal`; [`ExitStatus::shell_code`] maps a
//! signal N to 128+N.

mod error;
pub mod flow;
mod frame;
#[doc(hidden)]
pub mod fuzzing;
mod messages;
pub mod network;

pub use error::ProtocolError;
pub use flow::{RecvWindow, SendCredit, INITIAL_WINDOW};
pub use frame::{
    check_hello, decode_payload, encode_frame, expect_hello, read_frame, write_frame, Frame,
    FrameDecoder, FrameKind, Header, Stream, HEADER_LEN, MAGIC, MAX_DATA_CHUNK, MAX_PAYLOAD,
};
pub use messages::{
    ContainerStats, CreateContainer, ErrorReply, Event, ExecProcess, ExitStatus, Hello, LayerDisk,
    ProcessId, Reply, Request, RequestId, Response, ScratchDisk,
};

/// Bumped on any incompatible change to framing or messages.
pub use network::NetworkConfig;

/// Version 2: requests name their container (several per VM: a pod),
/// `RemoveContainer`, `CreateContainer.sandbox`.
pub const PROTOCOL_VERSION: u32 = 2;
