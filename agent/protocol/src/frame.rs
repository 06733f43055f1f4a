//! Frames: the fixed header, encoding, blocking read/write and an
//! incremental decoder for poll-driven readers.

use std::io::{self, Read, Write};

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::error::ProtocolError;
use super::messages::{Event, Hello, ProcessId, Request, RequestId, Response};

/// "HK": the first two bytes of every frame.
pub const MAGIC: u16 = 0x484b;
/// Bytes in a frame header.
pub const HEADER_LEN: usize = 12;
/// Largest payload either side accepts; checked before allocating.
pub const MAX_PAYLOAD: u32 = 1 << 20;
/// Largest stdio payload a sender puts in one Data frame.
pub const MAX_DATA_CHUNK: usize = 32 * 1024;

/// The `kind` byte of the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    Hello = 1,
    Request = 2,
    Response = 3,
    Event = 4,
    Data = 5,
    Credit = 6,
    Eof = 7,
}

impl FrameKind {
    fn from_byte(byte: u8) -> Result<Self, ProtocolError> {
        Ok(match byte {
            1 => Self::Hello,
            2 => Self::Request,
            3 => Self::Response,
            4 => Self::Event,
            5 => Self::Data,
            6 => Self::Credit,
            7 => Self::Eof,
            other => return Err(ProtocolError::UnknownKind(other)),
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Hello => "hello",
            Self::Request => "request",
            Self::Response => "response",
            Self::Event => "event",
            Self::Data => "data",
            Self::Credit => "credit",
            Self::Eof => "eof",
        }
    }
}

/// Which stdio stream of a process a Data/Credit/Eof frame is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Stream {
    Stdin = 1,
    /// With a terminal, the pty output (stdout and stderr merged).
    Stdout = 2,
    Stderr = 3,
}

impl Stream {
    fn from_byte(byte: u8) -> Result<Self, ProtocolError> {
        Ok(match byte {
            1 => Self::Stdin,
            2 => Self::Stdout,
            3 => Self::Stderr,
            other => return Err(ProtocolError::UnknownStream(other)),
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Stdin => "stdin",
            Self::Stdout => "stdout",
            Self::Stderr => "stderr",
        }
    }
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    Hello(Hello),
    Request {
        id: RequestId,
        request: Request,
    },
    Response {
        id: RequestId,
        response: Response,
    },
    Event(Event),
    /// Stdio bytes: stdin host → agent, stdout/stderr agent → host.
    Data {
        process: ProcessId,
        stream: Stream,
        data: Vec<u8>,
    },
    /// The receiver of a stream lets the sender send `bytes` more.
    Credit {
        process: ProcessId,
        stream: Stream,
        bytes: u32,
    },
    /// The sender of a stream has no more data (pipe closed / stdin closed).
    Eof {
        process: ProcessId,
        stream: Stream,
    },
}

impl Frame {
    pub fn kind(&self) -> FrameKind {
        match self {
            Frame::Hello(_) => FrameKind::Hello,
            Frame::Request { .. } => FrameKind::Request,
            Frame::Response { .. } => FrameKind::Response,
            Frame::Event(_) => FrameKind::Event,
            Frame::Data { .. } => FrameKind::Data,
            Frame::Credit { .. } => FrameKind::Credit,
            Frame::Eof { .. } => FrameKind::Eof,
        }
    }
}

/// The decoded fixed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub kind: FrameKind,
    pub stream: u8,
    pub id: u32,
    pub len: u32,
}

impl Header {
    /// Checks magic, kind and length; never allocates.
    pub fn parse(bytes: &[u8; HEADER_LEN]) -> Result<Self, ProtocolError> {
        let magic = u16::from_be_bytes([bytes[0], bytes[1]]);
        if magic != MAGIC {
            return Err(ProtocolError::BadMagic(magic));
        }
        let kind = FrameKind::from_byte(bytes[2])?;
        let stream = bytes[3];
        let id = u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
        let len = u32::from_be_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
        if len > MAX_PAYLOAD {
            return Err(ProtocolError::Oversized {
                len: len.into(),
                max: MAX_PAYLOAD,
            });
        }
        Ok(Self {
            kind,
            stream,
            id,
            len,
        })
    }

    fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0..2].copy_from_slice(&MAGIC.to_be_bytes());
        out[2] = self.kind as u8;
        out[3] = self.stream;
        out[4..8].copy_from_slice(&self.id.to_be_bytes());
        out[8..12].copy_from_slice(&self.len.to_be_bytes());
        out
    }
}

fn to_json<T: Serialize>(what: &'static str, value: &T) -> Result<Vec<u8>, ProtocolError> {
    serde_json::to_vec(value).map_err(|source| ProtocolError::Json { what, source })
}

fn from_json<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, ProtocolError> {
    serde_json::from_slice(bytes).map_err(|source| ProtocolError::Json { what, source })
}

/// Encodes a frame (header + payload) into one buffer, so a writer can put
/// it on the channel with a single `write_all`.
pub fn encode_frame(frame: &Frame) -> Result<Vec<u8>, ProtocolError> {
    let (stream, id, payload): (u8, u32, Vec<u8>) = match frame {
        Frame::Hello(hello) => (0, 0, to_json("hello", hello)?),
        Frame::Request { id, request } => (0, *id, to_json("request", request)?),
        Frame::Response { id, response } => (0, *id, to_json("response", response)?),
        Frame::Event(event) => (0, 0, to_json("event", event)?),
        Frame::Data {
            process,
            stream,
            data,
        } => (*stream as u8, *process, data.clone()),
        Frame::Credit {
            process,
            stream,
            bytes,
        } => (*stream as u8, *process, bytes.to_be_bytes().to_vec()),
        Frame::Eof { process, stream } => (*stream as u8, *process, Vec::new()),
    };
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|len| *len <= MAX_PAYLOAD)
        .ok_or(ProtocolError::Oversized {
            len: payload.len() as u64,
            max: MAX_PAYLOAD,
        })?;
    let header = Header {
        kind: frame.kind(),
        stream,
        id,
        len,
    };
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&header.encode());
    out.extend_from_slice(&payload);
    Ok(out)
}

/// Decodes the payload of a frame whose header was already checked.
pub fn decode_payload(header: &Header, payload: Vec<u8>) -> Result<Frame, ProtocolError> {
    let stream = || Stream::from_byte(header.stream);
    Ok(match header.kind {
        FrameKind::Hello => Frame::Hello(from_json("hello", &payload)?),
        FrameKind::Request => Frame::Request {
            id: header.id,
            request: from_json("request", &payload)?,
        },
        FrameKind::Response => Frame::Response {
            id: header.id,
            response: from_json("response", &payload)?,
        },
        FrameKind::Event => Frame::Event(from_json("event", &payload)?),
        FrameKind::Data => Frame::Data {
            process: header.id,
            stream: stream()?,
            data: payload,
        },
        FrameKind::Credit => {
            let bytes: [u8; 4] = payload
                .as_slice()
                .try_into()
                .map_err(|_| ProtocolError::Malformed("credit"))?;
            Frame::Credit {
                process: header.id,
                stream: stream()?,
                bytes: u32::from_be_bytes(bytes),
            }
        }
        FrameKind::Eof => {
            if !payload.is_empty() {
                return Err(ProtocolError::Malformed("eof"));
            }
            Frame::Eof {
                process: header.id,
                stream: stream()?,
            }
        }
    })
}

/// Reads as many bytes as `buf` holds; returns how many arrived before EOF.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(filled)
}

/// Reads one frame, blocking. A clean EOF before the first header byte is
/// `ProtocolError::Closed`; EOF anywhere else is `Truncated`.
pub fn read_frame(reader: &mut impl Read) -> Result<Frame, ProtocolError> {
    let mut header_bytes = [0u8; HEADER_LEN];
    let got = read_full(reader, &mut header_bytes)?;
    if got == 0 {
        return Err(ProtocolError::Closed);
    }
    if got < HEADER_LEN {
        return Err(ProtocolError::Truncated {
            expected: HEADER_LEN,
            got,
        });
    }
    let header = Header::parse(&header_bytes)?;
    // The length is bounded by MAX_PAYLOAD, so this allocation is too.
    let mut payload = vec![0u8; header.len as usize];
    let got = read_full(reader, &mut payload)?;
    if got < payload.len() {
        return Err(ProtocolError::Truncated {
            expected: HEADER_LEN + payload.len(),
            got: HEADER_LEN + got,
        });
    }
    decode_payload(&header, payload)
}

/// Writes one frame with a single `write_all`, then flushes.
pub fn write_frame(writer: &mut impl Write, frame: &Frame) -> Result<(), ProtocolError> {
    let bytes = encode_frame(frame)?;
    writer.write_all(&bytes)?;
    writer.flush()?;
    Ok(())
}

/// Reads the first frame and checks it is a Hello of our protocol version.
pub fn expect_hello(reader: &mut impl Read) -> Result<Hello, ProtocolError> {
    match read_frame(reader)? {
        Frame::Hello(hello) => check_hello(hello),
        other => Err(ProtocolError::NoHello(other.kind().name())),
    }
}

/// Accepts a Hello only if it speaks [`super::PROTOCOL_VERSION`].
pub fn check_hello(hello: Hello) -> Result<Hello, ProtocolError> {
    if hello.protocol_version != super::PROTOCOL_VERSION {
        return Err(ProtocolError::VersionMismatch {
            ours: super::PROTOCOL_VERSION,
            theirs: hello.protocol_version,
        });
    }
    Ok(hello)
}

/// Incremental decoder for non-blocking readers: feed whatever bytes
/// arrived, take out whole frames. Buffers at most one frame plus one read.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buffer: Vec<u8>,
}

impl FrameDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn feed(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// True when bytes of an incomplete frame are pending (EOF now would
    /// be a truncation).
    pub fn has_partial(&self) -> bool {
        !self.buffer.is_empty()
    }

    /// The next whole frame, `Ok(None)` if more bytes are needed. The
    /// header is checked as soon as it is complete, so an oversized or
    /// garbage frame fails before its payload is buffered.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, ProtocolError> {
        Ok(self.next_frame_sized()?.map(|(frame, _)| frame))
    }

    /// Like [`Self::next_frame`], with the frame's size on the wire (for a
    /// reader that bounds what it buffers in bytes).
    pub fn next_frame_sized(&mut self) -> Result<Option<(Frame, usize)>, ProtocolError> {
        let Some(header_bytes) = self.buffer.first_chunk::<HEADER_LEN>() else {
            return Ok(None);
        };
        let header = Header::parse(header_bytes)?;
        let total = HEADER_LEN + header.len as usize;
        if self.buffer.len() < total {
            return Ok(None);
        }
        let payload = self.buffer[HEADER_LEN..total].to_vec();
        self.buffer.drain(..total);
        decode_payload(&header, payload).map(|frame| Some((frame, total)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::*;
    use std::io::Cursor;

    fn sample_frames() -> Vec<Frame> {
        let spec = oci_spec::runtime::Spec::default();
        vec![
            Frame::Hello(Hello {
                protocol_version: crate::PROTOCOL_VERSION,
                agent_version: "0.1.0".into(),
            }),
            Frame::Request {
                id: 7,
                request: Request::CreateContainer(Box::new(CreateContainer {
                    container_id: "c1".into(),
                    init_process: 1,
                    spec,
                    layers: vec![LayerDisk {
                        serial: "husk-layers".into(),
                        digest: "sha256:00".into(),
                        offset: 4096,
                        length: Some(8192),
                    }],
                    scratch: Some(ScratchDisk {
                        serial: "husk-scratch".into(),
                    }),
                    stdin: true,
                    network: None,
                    sandbox: Some("pod".into()),
                })),
            },
            Frame::Request {
                id: 8,
                request: Request::ResizeTty {
                    process: 1,
                    rows: 24,
                    cols: 80,
                },
            },
            Frame::Response {
                id: 7,
                response: Response::Error(ErrorReply {
                    step: "pivot_root".into(),
                    message: "Invalid argument".into(),
                }),
            },
            Frame::Response {
                id: 9,
                response: Response::Ok(Reply::Exited(ExitStatus::signaled(9))),
            },
            Frame::Event(Event::ProcessExited {
                process: 1,
                status: ExitStatus::exited(42),
            }),
            Frame::Data {
                process: 1,
                stream: Stream::Stderr,
                data: b"\x00\xffbinary".to_vec(),
            },
            Frame::Data {
                process: 2,
                stream: Stream::Stdin,
                data: Vec::new(),
            },
            Frame::Credit {
                process: 1,
                stream: Stream::Stdout,
                bytes: 65536,
            },
            Frame::Eof {
                process: 1,
                stream: Stream::Stdin,
            },
            Frame::Request {
                id: 9,
                request: Request::RemoveContainer {
                    container: "member".into(),
                },
            },
        ]
    }

    #[test]
    fn every_frame_round_trips_through_read_and_write() {
        let frames = sample_frames();
        let mut wire = Vec::new();
        for frame in &frames {
            write_frame(&mut wire, frame).unwrap();
        }
        let mut reader = Cursor::new(wire);
        for frame in &frames {
            assert_eq!(&read_frame(&mut reader).unwrap(), frame);
        }
        assert!(matches!(
            read_frame(&mut reader),
            Err(ProtocolError::Closed)
        ));
    }

    #[test]
    fn decoder_handles_byte_by_byte_arrival() {
        let frames = sample_frames();
        let mut wire = Vec::new();
        for frame in &frames {
            wire.extend(encode_frame(frame).unwrap());
        }
        let mut decoder = FrameDecoder::new();
        let mut decoded = Vec::new();
        for byte in wire {
            decoder.feed(&[byte]);
            while let Some(frame) = decoder.next_frame().unwrap() {
                decoded.push(frame);
            }
        }
        assert_eq!(decoded, frames);
        assert!(!decoder.has_partial());
    }

    #[test]
    fn truncated_frames_are_reported_as_truncated() {
        let wire = encode_frame(&sample_frames()[3]).unwrap();
        for cut in [1, HEADER_LEN - 1, HEADER_LEN, wire.len() - 1] {
            let result = read_frame(&mut Cursor::new(&wire[..cut]));
            assert!(
                matches!(result, Err(ProtocolError::Truncated { .. })),
                "cut at {cut}: {result:?}"
            );
        }
    }

    #[test]
    fn oversized_length_is_rejected_from_the_header_alone() {
        let mut header = Header {
            kind: FrameKind::Data,
            stream: Stream::Stdout as u8,
            id: 1,
            len: 0,
        }
        .encode();
        header[8..12].copy_from_slice(&(MAX_PAYLOAD + 1).to_be_bytes());
        // No payload follows: rejection must not wait for (or allocate) it.
        let result = read_frame(&mut Cursor::new(header.to_vec()));
        assert!(matches!(result, Err(ProtocolError::Oversized { .. })));
        header[8..12].copy_from_slice(&u32::MAX.to_be_bytes());
        let mut decoder = FrameDecoder::new();
        decoder.feed(&header);
        assert!(matches!(
            decoder.next_frame(),
            Err(ProtocolError::Oversized { .. })
        ));
    }

    #[test]
    fn encoding_refuses_payloads_over_the_limit() {
        let frame = Frame::Data {
            process: 1,
            stream: Stream::Stdout,
            data: vec![0; MAX_PAYLOAD as usize + 1],
        };
        assert!(matches!(
            encode_frame(&frame),
            Err(ProtocolError::Oversized { .. })
        ));
    }

    #[test]
    fn garbage_is_rejected() {
        let garbage = b"Linux version 6.1 (root@h) #1 SMP".to_vec();
        assert!(matches!(
            read_frame(&mut Cursor::new(garbage)),
            Err(ProtocolError::BadMagic(_))
        ));

        let mut unknown_kind = encode_frame(&sample_frames()[0]).unwrap();
        unknown_kind[2] = 99;
        assert!(matches!(
            read_frame(&mut Cursor::new(unknown_kind)),
            Err(ProtocolError::UnknownKind(99))
        ));

        let mut unknown_stream = encode_frame(&sample_frames()[6]).unwrap();
        unknown_stream[3] = 0;
        assert!(matches!(
            read_frame(&mut Cursor::new(unknown_stream)),
            Err(ProtocolError::UnknownStream(0))
        ));

        let bad_json = Header {
            kind: FrameKind::Request,
            stream: 0,
            id: 1,
            len: 5,
        };
        let mut wire = bad_json.encode().to_vec();
        wire.extend_from_slice(b"{nope");
        assert!(matches!(
            read_frame(&mut Cursor::new(wire)),
            Err(ProtocolError::Json {
                what: "request",
                ..
            })
        ));

        let short_credit = Header {
            kind: FrameKind::Credit,
            stream: Stream::Stdout as u8,
            id: 1,
            len: 3,
        };
        let mut wire = short_credit.encode().to_vec();
        wire.extend_from_slice(&[0, 0, 1]);
        assert!(matches!(
            read_frame(&mut Cursor::new(wire)),
            Err(ProtocolError::Malformed("credit"))
        ));
    }

    #[test]
    fn random_bytes_never_panic() {
        // A small deterministic generator: no extra dependency for fuzz-ish input.
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..2000 {
            let mut bytes = Vec::new();
            let len = (state % 64) as usize;
            for _ in 0..len {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                bytes.push(state as u8);
            }
            // Valid magic half of the time, to reach the deeper checks.
            if state & 1 == 0 && bytes.len() >= 2 {
                bytes[0] = 0x48;
                bytes[1] = 0x4b;
            }
            let _ = read_frame(&mut Cursor::new(&bytes));
            let mut decoder = FrameDecoder::new();
            decoder.feed(&bytes);
            while let Ok(Some(_)) = decoder.next_frame() {}
        }
    }

    #[test]
    fn hello_version_is_checked() {
        let mut wire = Vec::new();
        write_frame(
            &mut wire,
            &Frame::Hello(Hello {
                protocol_version: crate::PROTOCOL_VERSION + 1,
                agent_version: "9.9.9".into(),
            }),
        )
        .unwrap();
        assert!(matches!(
            expect_hello(&mut Cursor::new(wire)),
            Err(ProtocolError::VersionMismatch { .. })
        ));

        let mut wire = Vec::new();
        write_frame(&mut wire, &sample_frames()[6]).unwrap();
        assert!(matches!(
            expect_hello(&mut Cursor::new(wire)),
            Err(ProtocolError::NoHello("data"))
        ));

        let mut wire = Vec::new();
        write_frame(&mut wire, &sample_frames()[0]).unwrap();
        assert!(expect_hello(&mut Cursor::new(wire)).is_ok());
    }
}
