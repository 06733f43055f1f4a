//! The host side of console port 0: a listening Unix socket, at most one
//! connected client, and the bytes the guest sent that no client has taken
//! yet. It outlives device resets, so a guest that reloads its driver keeps
//! its host connection and loses no output.
//!
//! Flow control, both ways:
//! - guest → host: transmit buffers are copied into `pending_tx` while it
//!   holds less than [`TX_BUFFER_LIMIT`]; past that (a slow client, or none
//!   connected) the device stops taking buffers from the guest, which then
//!   waits. Nothing is dropped; a client that connects later gets the
//!   buffered bytes first.
//! - host → guest: the client socket is read only into receive buffers the
//!   guest has posted, so a guest that stops reading stops the client.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};

/// Guest output buffered while no client reads it (plus at most one chain).
pub const TX_BUFFER_LIMIT: usize = 256 * 1024;

/// One connected client. Each direction closes on its own: EOF on read
/// (the client shut down writing) or a failed write / hang-up.
pub(super) struct Client {
    stream: UnixStream,
    pub(super) read_open: bool,
    pub(super) write_open: bool,
}

impl Client {
    pub(super) fn fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }

    pub(super) fn is_finished(&self) -> bool {
        !self.read_open && !self.write_open
    }

    /// The peer hung up: writes are over; reads too unless it left unread
    /// bytes, which the guest still gets.
    pub(super) fn hang_up(&mut self) {
        self.write_open = false;
        if self.read_open && bytes_readable(&self.stream) == 0 {
            self.read_open = false;
        }
    }

    /// Reads what the client sent. `Ok(0)` is EOF and closes the read side.
    pub(super) fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let result = (&self.stream).read(buf);
        match &result {
            Ok(0) => self.read_open = false,
            Err(e) if !is_transient(e) => {
                tracing::info!("console client read failed: {e}");
                self.read_open = false;
            }
            _ => {}
        }
        result
    }

    /// Writes as much of `buf` as the socket takes, without SIGPIPE.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        loop {
            // SAFETY: a valid socket fd and a buffer of `buf.len()` bytes.
            let n = unsafe {
                libc::send(
                    self.stream.as_raw_fd(),
                    buf.as_ptr().cast(),
                    buf.len(),
                    libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
                )
            };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

/// WouldBlock and EINTR: try again later, the connection is fine.
pub(super) fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

fn bytes_readable(stream: &UnixStream) -> usize {
    let mut count: libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int through the pointer we pass.
    let rc = unsafe { libc::ioctl(stream.as_raw_fd(), libc::FIONREAD, &mut count) };
    if rc < 0 {
        0
    } else {
        usize::try_from(count).unwrap_or(0)
    }
}

/// The socket side of the port; see the module docs.
pub(super) struct Port {
    listener: UnixListener,
    pub(super) client: Option<Client>,
    pub(super) pending_tx: VecDeque<u8>,
}

impl Port {
    pub(super) fn new(listener: UnixListener) -> Self {
        Self {
            listener,
            client: None,
            pending_tx: VecDeque::new(),
        }
    }

    pub(super) fn listener_fd(&self) -> RawFd {
        self.listener.as_raw_fd()
    }

    pub(super) fn has_room_for_tx(&self) -> bool {
        self.pending_tx.len() < TX_BUFFER_LIMIT
    }

    /// Takes the next waiting connection, if there is none connected yet.
    pub(super) fn accept(&mut self) {
        if self.client.is_some() {
            return;
        }
        match self.listener.accept() {
            Ok((stream, _)) => {
                if let Err(e) = stream.set_nonblocking(true) {
                    tracing::warn!(
                        "console client refused: cannot make its socket non-blocking: {e}"
                    );
                    return;
                }
                tracing::info!(buffered = self.pending_tx.len(), "console client connected");
                self.client = Some(Client {
                    stream,
                    read_open: true,
                    write_open: true,
                });
            }
            Err(e) if is_transient(&e) => {}
            Err(e) => tracing::warn!("console socket accept failed: {e}"),
        }
    }

    /// Sends buffered guest output to the client; true if anything moved or
    /// the client's state changed.
    pub(super) fn flush_tx(&mut self) -> bool {
        let Some(client) = self.client.as_mut().filter(|c| c.write_open) else {
            return false;
        };
        let mut progress = false;
        while !self.pending_tx.is_empty() {
            let (front, _) = self.pending_tx.as_slices();
            match client.write(front) {
                Ok(0) => break,
                Ok(n) => {
                    self.pending_tx.drain(..n);
                    progress = true;
                }
                Err(e) if is_transient(&e) => break,
                Err(e) => {
                    tracing::info!("console client stopped reading: {e}");
                    client.hang_up();
                    progress = true;
                    break;
                }
            }
        }
        progress
    }

    /// Drops a client that closed both ways, making room for the next one.
    pub(super) fn drop_finished_client(&mut self) -> Option<Client> {
        if self.client.as_ref().is_some_and(Client::is_finished) {
            tracing::info!(
                buffered = self.pending_tx.len(),
                "console client disconnected"
            );
            return self.client.take();
        }
        None
    }
}
