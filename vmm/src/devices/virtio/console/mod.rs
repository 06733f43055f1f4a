//! virtio-console with a single port (no MULTIPORT): receiveq 0 and
//! transmitq 1, bridged to a Unix socket the VMM listens on. The guest sees
//! the port as /dev/hvc0; the host connects to the socket, one client at a
//! time (the next one is accepted when the current one leaves). This is the
//! agent channel, so nothing may be lost or reordered: see `port` for the
//! flow control, `worker` for the event loop.

mod port;
mod worker;

use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use thiserror::Error;
use virtio_bindings::virtio_ids::VIRTIO_ID_CONSOLE;
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

pub use port::TX_BUFFER_LIMIT;
#[doc(hidden)]
pub use worker::fuzz_queues;

use self::port::Port;
use self::worker::ConsoleWorker;
use super::device::take_ready_queues;
use super::worker::Worker;
use super::{read_config_space, ActivateError, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::exit::ExitSender;

/// Size of each of the two queues.
pub const QUEUE_SIZE: u16 = 256;
const QUEUE_SIZES: [u16; 2] = [QUEUE_SIZE, QUEUE_SIZE];
/// `struct virtio_console_config`: cols, rows, max_nr_ports, emerg_wr. Only
/// read with features we do not offer (SIZE, MULTIPORT, EMERG_WRITE), so
/// all zero.
const CONFIG_SIZE: usize = 12;

#[derive(Debug, Error)]
pub enum ConsoleError {
    #[error("console socket {path} exists and is not a socket; not removing it")]
    NotASocket { path: PathBuf },
    #[error("console socket {path} is in use by another process")]
    InUse { path: PathBuf },
    #[error("cannot remove the stale console socket {path}: {source}")]
    RemoveStale {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot listen on console socket {path}: {source}")]
    Listen {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// A virtio-console device; create it with [`Console::new`] and hand it to
/// an [`MmioTransport`](super::MmioTransport). Dropping it removes the socket.
pub struct Console {
    label: String,
    socket_path: PathBuf,
    /// Identity of the socket file we created, so that drop never removes
    /// somebody else's file.
    socket_inode: Option<(u64, u64)>,
    acked_features: u64,
    config: [u8; CONFIG_SIZE],
    /// Owned here while inactive, by the worker while active.
    port: Option<Port>,
    worker: Option<Worker<Port>>,
    exit: ExitSender,
}

impl Console {
    /// Listens on `socket_path`, replacing a stale socket left by a dead
    /// process (but not a live one, and never a non-socket file).
    pub fn new(socket_path: impl AsRef<Path>, exit: ExitSender) -> Result<Self, ConsoleError> {
        let path = socket_path.as_ref().to_owned();
        remove_stale_socket(&path)?;
        let listener = UnixListener::bind(&path).map_err(|source| ConsoleError::Listen {
            path: path.clone(),
            source,
        })?;
        listener
            .set_nonblocking(true)
            .map_err(|source| ConsoleError::Listen {
                path: path.clone(),
                source,
            })?;
        let socket_inode = fs::symlink_metadata(&path).ok().map(|m| (m.dev(), m.ino()));
        tracing::debug!(path = %path.display(), "virtio-console listening");
        Ok(Self {
            label: "virtio-console".to_owned(),
            socket_path: path,
            socket_inode,
            acked_features: 0,
            config: [0; CONFIG_SIZE],
            port: Some(Port::new(listener)),
            worker: None,
            exit,
        })
    }

    pub fn socket_path(&self) -> &Path {
        &self.socket_path
    }
}

fn remove_stale_socket(path: &Path) -> Result<(), ConsoleError> {
    let metadata = match fs::symlink_metadata(path) {
        Ok(metadata) => metadata,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(ConsoleError::RemoveStale {
                path: path.to_owned(),
                source,
            })
        }
    };
    if !metadata.file_type().is_socket() {
        return Err(ConsoleError::NotASocket {
            path: path.to_owned(),
        });
    }
    if UnixStream::connect(path).is_ok() {
        return Err(ConsoleError::InUse {
            path: path.to_owned(),
        });
    }
    tracing::info!(path = %path.display(), "removing stale console socket");
    fs::remove_file(path).map_err(|source| ConsoleError::RemoveStale {
        path: path.to_owned(),
        source,
    })
}

impl Drop for Console {
    fn drop(&mut self) {
        self.reset();
        let ours = fs::symlink_metadata(&self.socket_path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        if ours.is_some() && ours == self.socket_inode {
            if let Err(e) = fs::remove_file(&self.socket_path) {
                tracing::warn!(path = %self.socket_path.display(), "cannot remove the console socket: {e}");
            }
        }
    }
}

impl VirtioDevice for Console {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_CONSOLE
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn avail_features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn ack_features(&mut self, features: u64) {
        self.acked_features = features & self.avail_features();
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_space(&self.label, &self.config, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // emerg_wr is the only writable field, and only with EMERG_WRITE.
        tracing::warn!(device = %self.label, offset, len = data.len(), "guest wrote the virtio-console config; ignored");
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<Interrupt>,
        queues: Vec<Queue>,
        queue_events: Vec<EventFd>,
    ) -> Result<(), ActivateError> {
        if self.worker.is_some() {
            return Err(ActivateError::AlreadyActive);
        }
        // Queue order is the spec's: receiveq (0), then transmitq (1).
        let ([rx_queue, tx_queue], [rx_evt, tx_evt]) =
            take_ready_queues::<2>(queues, queue_events)?;
        let port = self.port.take().ok_or(ActivateError::BackendGone)?;
        let worker = ConsoleWorker {
            label: self.label.clone(),
            port,
            rx_queue,
            tx_queue,
            rx_evt,
            tx_evt,
            mem,
            interrupt,
            exit: self.exit.clone(),
            tx_buf: Vec::new(),
            rx_buf: Vec::new(),
        };
        let worker = Worker::spawn(self.label.clone(), move |stop_evt| worker.run(stop_evt))
            .map_err(ActivateError::Worker)?;
        self.worker = Some(worker);
        Ok(())
    }

    fn reset(&mut self) {
        if let Some(worker) = self.worker.take() {
            match worker.stop() {
                Some(port) => self.port = Some(port),
                None => {
                    tracing::error!(device = %self.label, "virtio-console worker panicked; the socket is gone")
                }
            }
        }
        self.acked_features = 0;
    }
}

#[cfg(test)]
mod tests;
