//! The running container's session: its stdout and stderr to husk's
//! (kept apart), husk's stdin to it (with `-i`), signals and window size
//! forwarded, until the agent reports the exit. Flow control follows the
//! protocol: credit for guest output is returned only once written out, and
//! stdin is read only while the agent has granted credit for it.

use std::io;
use std::os::fd::BorrowedFd;

use husk_protocol::{
    Event, ExitStatus, Frame, ProcessId, ProtocolError, RecvWindow, Request, Response, SendCredit,
    Stream,
};
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::Signal;

use super::agent_client::{AgentClient, AgentError, TICK};
use super::backend::VmProcess;
use super::signals::{SignalWatch, FORWARDED};
use super::terminal;

/// Stop reading stdin while this much is queued for the socket.
const MAX_QUEUED_STDIN: usize = 1 << 20;

/// A PID-namespace init ignores signals it has no handler for, so a
/// forwarded Ctrl-C may do nothing: this many in a row give up on the
/// container (the VM is then killed) rather than leave the user stuck.
const INTERRUPTS_TO_ABANDON: u32 = 3;

#[derive(Clone, Copy, Debug)]
pub struct SessionOptions {
    pub process: ProcessId,
    pub forward_stdin: bool,
    pub terminal: bool,
}

/// Host-side ends of the container's stdio.
pub struct HostStdio<'a> {
    pub stdin: BorrowedFd<'a>,
    pub stdout: BorrowedFd<'a>,
    pub stderr: BorrowedFd<'a>,
}

/// An output stream to the host: open until a write fails (other than
/// EPIPE, which ends the run); afterwards its data is discarded but
/// credited, so the container is not stalled.
struct Sink<'a> {
    fd: BorrowedFd<'a>,
    window: RecvWindow,
    open: bool,
}

/// Runs the session until the process exits; returns its status.
pub fn run(
    client: &mut AgentClient,
    vm: &mut VmProcess,
    signals: Option<&SignalWatch>,
    stdio: &HostStdio<'_>,
    opts: SessionOptions,
) -> Result<ExitStatus, AgentError> {
    let process = opts.process;
    let mut stdout = Sink {
        fd: stdio.stdout,
        window: RecvWindow::new(),
        open: true,
    };
    let mut stderr = Sink {
        fd: stdio.stderr,
        window: RecvWindow::new(),
        open: true,
    };
    let mut stdin_open = opts.forward_stdin;
    let mut stdin_credit = SendCredit::new();
    let mut buf = vec![0u8; husk_protocol::MAX_DATA_CHUNK];
    let mut interrupts = 0u32;
    loop {
        while let Some(frame) = client.next_frame() {
            match frame {
                Frame::Data {
                    process: p,
                    stream,
                    data,
                } if p == process => {
                    let sink = match stream {
                        Stream::Stdout => &mut stdout,
                        Stream::Stderr => &mut stderr,
                        Stream::Stdin => {
                            return Err(ProtocolError::Malformed("stdin data from the agent").into())
                        }
                    };
                    sink.window.on_data(p, stream, data.len())?;
                    if sink.open {
                        match write_all(sink.fd, &data) {
                            Ok(()) => {}
                            // Like a process in a shell pipeline whose
                            // reader went away (`husk run .. yes | head`):
                            // the run ends, as SIGPIPE would end it.
                            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                                return Err(AgentError::OutputClosed(stream.name()));
                            }
                            Err(e) => {
                                tracing::warn!(stream = stream.name(), error = %e, "host output failed; discarding it");
                                sink.open = false;
                            }
                        }
                    }
                    if let Some(bytes) = sink.window.on_consumed(data.len()) {
                        client.queue(&Frame::Credit {
                            process: p,
                            stream,
                            bytes,
                        })?;
                    }
                }
                Frame::Credit {
                    process: p,
                    stream: Stream::Stdin,
                    bytes,
                } if p == process => {
                    stdin_credit.grant(bytes)?;
                }
                Frame::Eof { process: p, stream } => {
                    tracing::debug!(process = p, stream = stream.name(), "end of stream");
                }
                Frame::Event(Event::ProcessExited { process: p, status }) if p == process => {
                    client.flush()?;
                    return Ok(status);
                }
                Frame::Response {
                    id,
                    response: Response::Error(err),
                } => {
                    // Signals and resizes are fire-and-forget; say if one failed.
                    tracing::warn!(request = id, "agent: {err}");
                }
                Frame::Response { .. } => {}
                Frame::Hello(_) | Frame::Request { .. } => {
                    return Err(ProtocolError::Malformed("hello/request from the agent").into());
                }
                other => tracing::debug!(?other, "frame for another process"),
            }
        }

        let read_stdin =
            stdin_open && stdin_credit.available() > 0 && client.queued_bytes() < MAX_QUEUED_STDIN;
        let mut socket_events = PollFlags::POLLIN;
        if client.wants_write() {
            socket_events |= PollFlags::POLLOUT;
        }
        let mut fds = vec![PollFd::new(client.fd(), socket_events)];
        let stdin_index = read_stdin.then(|| {
            fds.push(PollFd::new(stdio.stdin, PollFlags::POLLIN));
            fds.len() - 1
        });
        let signal_index = signals.map(|s| {
            fds.push(PollFd::new(s.fd(), PollFlags::POLLIN));
            fds.len() - 1
        });
        match nix::poll::poll(
            &mut fds,
            PollTimeout::try_from(TICK).unwrap_or(PollTimeout::ZERO),
        ) {
            Ok(_) | Err(nix::Error::EINTR) => {}
            Err(e) => return Err(io::Error::from(e).into()),
        }
        let ready = |i: Option<usize>| {
            i.and_then(|i| fds[i].revents()).is_some_and(|r| {
                r.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR)
            })
        };
        let stdin_ready = ready(stdin_index);
        let signal_ready = ready(signal_index);
        drop(fds);

        if stdin_ready {
            let want = stdin_credit.allowance(buf.len());
            match nix::unistd::read(stdio.stdin, &mut buf[..want]) {
                Ok(0) | Err(nix::Error::EIO) => {
                    client.queue(&Frame::Eof {
                        process,
                        stream: Stream::Stdin,
                    })?;
                    stdin_open = false;
                }
                Ok(n) => {
                    stdin_credit.consume(n);
                    client.queue(&Frame::Data {
                        process,
                        stream: Stream::Stdin,
                        data: buf[..n].to_vec(),
                    })?;
                }
                Err(nix::Error::EAGAIN | nix::Error::EINTR) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "reading stdin; closing the container's stdin");
                    client.queue(&Frame::Eof {
                        process,
                        stream: Stream::Stdin,
                    })?;
                    stdin_open = false;
                }
            }
        }
        if signal_ready {
            if let Some(watch) = signals {
                while let Some(sig) = watch.next() {
                    if sig == Signal::SIGINT {
                        interrupts += 1;
                        if interrupts >= INTERRUPTS_TO_ABANDON {
                            return Err(AgentError::Abandoned(sig));
                        }
                    }
                    forward_signal(client, process, opts.terminal, sig)?;
                }
            }
        }
        client.flush()?;
        client.read_available()?;
        // Frames read before a close are handled first (top of the loop):
        // the exit may be among them. Only then is a close a dead guest.
        if client.has_frames() {
            continue;
        }
        if client.is_closed() {
            let _ = vm.wait_timeout(std::time::Duration::from_millis(500));
            return Err(AgentError::VmEnded {
                what: "the container to exit",
                detail: format!("channel closed; {}", vm.describe_end()),
            });
        }
        if !vm.is_running() {
            return Err(AgentError::VmEnded {
                what: "the container to exit",
                detail: vm.describe_end(),
            });
        }
    }
}

fn forward_signal(
    client: &mut AgentClient,
    process: ProcessId,
    terminal: bool,
    sig: Signal,
) -> Result<(), AgentError> {
    if sig == Signal::SIGWINCH {
        if terminal {
            if let Some((rows, cols)) = terminal::host_window_size() {
                client.send_request(Request::ResizeTty {
                    process,
                    rows,
                    cols,
                })?;
            }
        }
    } else if FORWARDED.contains(&sig) {
        tracing::info!(signal = %sig, "forwarding to the container");
        client.send_request(Request::Signal {
            process,
            signal: sig as i32,
        })?;
    }
    Ok(())
}

/// Writes all of `data` to a blocking or non-blocking fd.
pub(crate) fn write_all(fd: BorrowedFd<'_>, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        match nix::unistd::write(fd, data) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => data = &data[n..],
            Err(nix::Error::EINTR) => {}
            Err(nix::Error::EAGAIN) => {
                let mut fds = [PollFd::new(fd, PollFlags::POLLOUT)];
                let _ = nix::poll::poll(
                    &mut fds,
                    PollTimeout::try_from(TICK).unwrap_or(PollTimeout::ZERO),
                );
            }
            Err(e) => return Err(io::Error::from_raw_os_error(e as i32)),
        }
    }
    Ok(())
}
