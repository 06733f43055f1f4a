//! The host channel: /dev/hvc0 (a virtio-console tty) in raw mode, frames
//! out with blocking writes, frames in from poll-driven reads.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};

use husk_agent::protocol::{write_frame, Frame, FrameDecoder, ProtocolError};

pub struct Channel {
    file: File,
    decoder: FrameDecoder,
}

impl Channel {
    /// Opens the channel; a tty (hvc0) is put in raw mode so no byte is
    /// translated or echoed. A non-tty path (a socket or pipe, for tests)
    /// is used as is.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let file = File::options()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOCTTY)
            .open(path)?;
        if let Ok(mut termios) = tcgetattr(&file) {
            cfmakeraw(&mut termios);
            tcsetattr(&file, SetArg::TCSANOW, &termios)?;
        }
        Ok(Self {
            file,
            decoder: FrameDecoder::new(),
        })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    pub fn send(&mut self, frame: &Frame) -> Result<(), ProtocolError> {
        write_frame(&mut self.file, frame)
    }

    /// Reads what is available (call when poll says readable) and returns
    /// the whole frames it completed.
    pub fn receive(&mut self) -> Result<Vec<Frame>, ProtocolError> {
        let mut buf = vec![0u8; 64 * 1024];
        let read = loop {
            match self.file.read(&mut buf) {
                Ok(read) => break read,
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err.into()),
            }
        };
        if read == 0 {
            return Err(if self.decoder.has_partial() {
                ProtocolError::Truncated {
                    expected: 0,
                    got: 0,
                }
            } else {
                ProtocolError::Closed
            });
        }
        self.decoder.feed(&buf[..read]);
        let mut frames = Vec::new();
        while let Some(frame) = self.decoder.next_frame()? {
            frames.push(frame);
        }
        Ok(frames)
    }
}
