//! Host side of the agent channel (protocol in `husk_protocol`).
//!
//! The socket is non-blocking and every wait is a poll loop of at most
//! [`TICK`] that also checks the VM process, a deadline and husk's own
//! signals: a guest that dies, hangs or sends garbage becomes an error,
//! never a hang. Everything read from the guest goes through the protocol's
//! bounded frame decoder.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use husk_protocol::{
    check_hello, encode_frame, ErrorReply, Event, Frame, FrameDecoder, Hello, ProcessId,
    ProtocolError, Reply, Request, RequestId, Response, Stream, INITIAL_WINDOW,
};
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::Signal;

use super::backend::VmProcess;
use super::printable::{printable, Lines};
use super::signals::SignalWatch;

/// Longest single sleep in a wait: how soon a dead VM or a signal is noticed
/// when the socket is quiet.
pub const TICK: Duration = Duration::from_millis(100);

/// More than this read ahead of the consumer (frames' bytes plus their
/// in-memory size) means a guest flooding the channel: legitimate traffic
/// is bounded by flow-control credit, one window per stream (checked on
/// every Data frame as it arrives), and by the few replies and events a
/// request causes. This is the most a guest can make husk hold.
pub const MAX_INBOX_BYTES: usize = 8 << 20;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("connecting to the VM's console socket {path}: {source}")]
    Connect { path: PathBuf, source: io::Error },
    #[error("timed out after {after:?} waiting for {what}\n{detail}")]
    Timeout {
        what: &'static str,
        after: Duration,
        detail: String,
    },
    #[error("the VM ended while waiting for {what}: {detail}")]
    VmEnded { what: &'static str, detail: String },
    #[error("interrupted by {0} before the container started")]
    Interrupted(Signal),
    #[error("husk's {0} was closed by its reader")]
    OutputClosed(&'static str),
    #[error("stopped by repeated {0}: the container did not exit on the forwarded signals")]
    Abandoned(Signal),
    #[error("the agent channel broke: {0}")]
    Protocol(#[from] ProtocolError),
    #[error("agent channel I/O: {0}")]
    Io(#[from] io::Error),
    #[error("{0}")]
    Agent(ErrorReply),
    #[error("the guest agent gave up: {0}")]
    Fatal(String),
    #[error("the agent sent over {0} bytes ahead of the host: a misbehaving guest")]
    Flood(usize),
    #[error("the agent answered {request} with an unexpected {reply}")]
    UnexpectedReply {
        request: &'static str,
        reply: String,
    },
}

/// A connected agent channel.
pub struct AgentClient {
    stream: UnixStream,
    decoder: FrameDecoder,
    /// Frames read but not yet taken by the caller, with their cost.
    inbox: VecDeque<(Frame, usize)>,
    /// The cost of everything in the inbox (see [`MAX_INBOX_BYTES`]).
    inbox_bytes: usize,
    /// Data bytes in the inbox per stream: never more than a window, which
    /// is all the credit the consumer can ever have granted.
    queued_data: HashMap<(ProcessId, Stream), usize>,
    /// Encoded frames not yet written to the socket.
    outgoing: Vec<u8>,
    next_request: RequestId,
    /// The peer closed its end (EOF on read).
    closed: bool,
}

impl AgentClient {
    /// Connects to the VM's console socket, retrying until it exists and
    /// accepts (the VM program creates it shortly after starting).
    pub fn connect(
        path: &Path,
        vm: &mut VmProcess,
        signals: Option<&SignalWatch>,
        timeout: Duration,
    ) -> Result<Self, AgentError> {
        let deadline = Instant::now() + timeout;
        loop {
            match UnixStream::connect(path) {
                Ok(stream) => return Self::over(stream),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                    ) => {}
                Err(source) => {
                    return Err(AgentError::Connect {
                        path: path.to_path_buf(),
                        source,
                    })
                }
            }
            check_vm(vm, "the console socket")?;
            check_signals(signals)?;
            if Instant::now() >= deadline {
                return Err(AgentError::Timeout {
                    what: "the console socket",
                    after: timeout,
                    detail: vm.describe_end(),
                });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// A client on an already connected stream (a pod member's link to its
    /// sandbox's monitor, which relays to the pod's agent).
    pub fn over(stream: UnixStream) -> Result<Self, AgentError> {
        stream.set_nonblocking(true)?;
        Ok(AgentClient {
            stream,
            decoder: FrameDecoder::new(),
            inbox: VecDeque::new(),
            inbox_bytes: 0,
            queued_data: HashMap::new(),
            outgoing: Vec::new(),
            next_request: 1,
            closed: false,
        })
    }

    /// Waits for the agent's Hello (sent once the guest has booted and the
    /// agent is ready) and checks the protocol version.
    pub fn handshake(
        &mut self,
        vm: &mut VmProcess,
        signals: Option<&SignalWatch>,
        timeout: Duration,
    ) -> Result<Hello, AgentError> {
        let what = "the guest agent to start (kernel boot)";
        let frame = self.wait_frame(vm, signals, Instant::now() + timeout, timeout, what)?;
        match frame {
            Frame::Hello(hello) => Ok(check_hello(hello)?),
            other => Err(ProtocolError::NoHello(other.kind().name()).into()),
        }
    }

    /// Sends a request and waits for its response. Frames that arrive
    /// meanwhile (stdio, events) stay queued for [`Self::next_frame`].
    pub fn call(
        &mut self,
        vm: &mut VmProcess,
        signals: Option<&SignalWatch>,
        request: Request,
        timeout: Duration,
    ) -> Result<Reply, AgentError> {
        let what = request_name(&request);
        let id = self.send_request(request)?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(pos) = self
                .inbox
                .iter()
                .position(|(f, _)| matches!(f, Frame::Response { id: got, .. } if *got == id))
            {
                if let Some(Frame::Response { response, .. }) = self.take(pos) {
                    return match response {
                        Response::Ok(reply) => Ok(reply),
                        Response::Error(err) => Err(AgentError::Agent(err)),
                    };
                }
            }
            self.pump(vm, signals, deadline, timeout, what)?;
        }
    }

    /// Queues a request without waiting; its response arrives as a frame.
    pub fn send_request(&mut self, request: Request) -> Result<RequestId, AgentError> {
        let id = self.next_request;
        self.next_request = self.next_request.wrapping_add(1).max(1);
        self.queue(&Frame::Request { id, request })?;
        Ok(id)
    }

    /// Queues any frame for sending (written by [`Self::flush`] / the pump).
    pub fn queue(&mut self, frame: &Frame) -> Result<(), AgentError> {
        self.outgoing.extend_from_slice(&encode_frame(frame)?);
        Ok(())
    }

    /// The oldest frame read and not yet taken.
    pub fn next_frame(&mut self) -> Option<Frame> {
        self.take(0)
    }

    /// Removes the inbox's frame at `pos`, releasing its accounting.
    fn take(&mut self, pos: usize) -> Option<Frame> {
        let (frame, cost) = self.inbox.remove(pos)?;
        self.inbox_bytes -= cost;
        if let Frame::Data {
            process,
            stream,
            data,
        } = &frame
        {
            if let Some(queued) = self.queued_data.get_mut(&(*process, *stream)) {
                *queued -= data.len();
                if *queued == 0 {
                    self.queued_data.remove(&(*process, *stream));
                }
            }
        }
        Some(frame)
    }

    /// Queues a frame read from the guest, or refuses it: a Data frame
    /// beyond its stream's window (credit the consumer cannot have granted,
    /// whether or not a call is pending), or anything past the byte bound.
    fn admit(&mut self, frame: Frame, wire_len: usize) -> Result<(), AgentError> {
        if let Frame::Data {
            process,
            stream,
            data,
        } = &frame
        {
            let queued = self.queued_data.entry((*process, *stream)).or_insert(0);
            let window = INITIAL_WINDOW as usize;
            if *queued + data.len() > window {
                return Err(ProtocolError::CreditExceeded {
                    process: *process,
                    stream: stream.name(),
                    len: data.len(),
                    credit: u32::try_from(window - *queued).unwrap_or(0),
                }
                .into());
            }
            *queued += data.len();
        }
        let cost = wire_len + std::mem::size_of::<Frame>();
        self.inbox_bytes += cost;
        self.inbox.push_back((frame, cost));
        if self.inbox_bytes > MAX_INBOX_BYTES {
            return Err(AgentError::Flood(MAX_INBOX_BYTES));
        }
        Ok(())
    }

    /// What the inbox holds now (see [`MAX_INBOX_BYTES`]).
    pub fn inbox_bytes(&self) -> usize {
        self.inbox_bytes
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }

    pub fn wants_write(&self) -> bool {
        !self.outgoing.is_empty()
    }

    /// Bytes queued and not yet written (for flow decisions by the caller).
    pub fn queued_bytes(&self) -> usize {
        self.outgoing.len()
    }

    pub fn has_frames(&self) -> bool {
        !self.inbox.is_empty()
    }

    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Reads what the socket has (without blocking) into the inbox.
    pub fn read_available(&mut self) -> Result<(), AgentError> {
        let mut buf = [0u8; 64 * 1024];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => {
                    self.closed = true;
                    return Ok(());
                }
                Ok(n) => {
                    self.decoder.feed(&buf[..n]);
                    // Decode as we go: a garbage header fails here, before
                    // anything more from the peer is buffered.
                    while let Some((frame, wire_len)) = self.decoder.next_frame_sized()? {
                        let frame = printable_frame(frame);
                        if let Frame::Event(Event::Fatal { message }) = frame {
                            return Err(AgentError::Fatal(message));
                        }
                        self.admit(frame, wire_len)?;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                    self.closed = true;
                    return Ok(());
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Writes as much of the queued output as the socket takes now.
    pub fn flush(&mut self) -> Result<(), AgentError> {
        while !self.outgoing.is_empty() {
            match self.stream.write(&self.outgoing) {
                Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero).into()),
                Ok(n) => {
                    self.outgoing.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// One bounded round of I/O: waits up to [`TICK`] for the socket, moves
    /// bytes both ways, then checks the peer, the VM, signals and the
    /// deadline.
    fn pump(
        &mut self,
        vm: &mut VmProcess,
        signals: Option<&SignalWatch>,
        deadline: Instant,
        timeout: Duration,
        what: &'static str,
    ) -> Result<(), AgentError> {
        let mut events = PollFlags::POLLIN;
        if self.wants_write() {
            events |= PollFlags::POLLOUT;
        }
        let wait = deadline.saturating_duration_since(Instant::now()).min(TICK);
        let mut fds = vec![PollFd::new(self.stream.as_fd(), events)];
        if let Some(s) = signals {
            fds.push(PollFd::new(s.fd(), PollFlags::POLLIN));
        }
        match nix::poll::poll(
            &mut fds,
            PollTimeout::try_from(wait).unwrap_or(PollTimeout::ZERO),
        ) {
            Ok(_) | Err(nix::Error::EINTR) => {}
            Err(e) => return Err(io::Error::from(e).into()),
        }
        drop(fds);
        self.flush()?;
        self.read_available()?;
        if !self.inbox.is_empty() {
            return Ok(());
        }
        if self.closed {
            // The VM program closes the socket as it exits: give it a moment
            // so the error can say how it ended.
            let _ = vm.wait_timeout(Duration::from_millis(500));
            return Err(AgentError::VmEnded {
                what,
                detail: format!("channel closed; {}", vm.describe_end()),
            });
        }
        check_vm(vm, what)?;
        check_signals(signals)?;
        if Instant::now() >= deadline {
            return Err(AgentError::Timeout {
                what,
                after: timeout,
                detail: vm.describe_end(),
            });
        }
        Ok(())
    }

    fn wait_frame(
        &mut self,
        vm: &mut VmProcess,
        signals: Option<&SignalWatch>,
        deadline: Instant,
        timeout: Duration,
        what: &'static str,
    ) -> Result<Frame, AgentError> {
        loop {
            if let Some(frame) = self.take(0) {
                return Ok(frame);
            }
            self.pump(vm, signals, deadline, timeout, what)?;
        }
    }

    /// Asks the agent to power the VM off and waits for the VM to end; kills
    /// it if it does not within `timeout`. Errors here are logged, not
    /// returned: the container's result is already known.
    pub fn shutdown(&mut self, vm: &mut VmProcess, timeout: Duration) {
        let started = Instant::now();
        if vm.is_running() {
            match self.call(vm, None, Request::Shutdown, timeout) {
                Ok(_) => {}
                // The agent may power off before its reply gets through.
                Err(AgentError::VmEnded { .. }) => {}
                Err(e) => tracing::debug!(error = %e, "shutdown request"),
            }
            let left = timeout.saturating_sub(started.elapsed());
            if let Ok(None) = vm.wait_timeout(left) {
                tracing::debug!("the VM did not power off in time; killing it");
            }
        }
        if let Err(e) = vm.kill() {
            tracing::warn!(error = %e, "killing the VM");
        }
        tracing::debug!(elapsed = ?started.elapsed(), "VM shut down");
    }
}

/// The guest's free text (error replies, the fatal message, its version
/// string) made printable before anything can show it on a terminal.
fn printable_frame(frame: Frame) -> Frame {
    let line = |text: String| printable(&text, Lines::Escape);
    match frame {
        Frame::Response {
            id,
            response: Response::Error(ErrorReply { step, message }),
        } => Frame::Response {
            id,
            response: Response::Error(ErrorReply {
                step: line(step),
                message: line(message),
            }),
        },
        Frame::Event(Event::Fatal { message }) => Frame::Event(Event::Fatal {
            message: line(message),
        }),
        Frame::Hello(Hello {
            protocol_version,
            agent_version,
        }) => Frame::Hello(Hello {
            protocol_version,
            agent_version: line(agent_version),
        }),
        other => other,
    }
}

fn check_vm(vm: &mut VmProcess, what: &'static str) -> Result<(), AgentError> {
    if vm.is_running() {
        Ok(())
    } else {
        Err(AgentError::VmEnded {
            what,
            detail: vm.describe_end(),
        })
    }
}

/// Before the container runs there is nothing to forward a signal to:
/// a terminating signal aborts the start; SIGWINCH is ignored.
fn check_signals(signals: Option<&SignalWatch>) -> Result<(), AgentError> {
    if let Some(watch) = signals {
        while let Some(sig) = watch.next() {
            if sig != Signal::SIGWINCH {
                return Err(AgentError::Interrupted(sig));
            }
        }
    }
    Ok(())
}

fn request_name(request: &Request) -> &'static str {
    match request {
        Request::CreateContainer(_) => "the agent to create the container",
        Request::Start { .. } => "the agent to start the container's process",
        Request::Exec(_) => "the agent to exec a process",
        Request::Signal { .. } => "the agent to deliver a signal",
        Request::Wait { .. } => "a process to exit",
        Request::Stats { .. } => "container stats",
        Request::Update { .. } => "update limits",
        Request::RemoveContainer { .. } => "the agent to remove a pod member",
        Request::CloseStdin { .. } => "the agent to close stdin",
        Request::ResizeTty { .. } => "the agent to resize the terminal",
        Request::Shutdown => "the agent to shut down",
    }
}
