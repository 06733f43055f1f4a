//! The virtio-blk worker thread: waits on the queue's EventFd, serves every
//! available request, returns it to the used ring and raises the interrupt.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use virtio_bindings::virtio_blk::VIRTIO_BLK_S_IOERR;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestMemory, GuestMemoryMmap};
use vmm_sys_util::epoll::{EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::disk::{write_status, Disk};
use super::request;
use crate::devices::virtio::worker::{drain_eventfd, EventLoop};
use crate::devices::virtio::Interrupt;
use crate::exit::{ExitSender, VmExitReason};

const QUEUE_TOKEN: u64 = 0;
const STOP_TOKEN: u64 = 1;

pub(super) struct BlockWorker {
    pub(super) label: String,
    pub(super) disk: Disk,
    pub(super) queue: Queue,
    pub(super) queue_evt: EventFd,
    pub(super) mem: GuestMemoryMmap,
    pub(super) interrupt: Arc<Interrupt>,
    pub(super) exit: ExitSender,
}

impl BlockWorker {
    /// Serves the queue until `stop_evt` fires, then hands the disk back.
    /// A host-side failure (epoll, eventfd) stops the VM with a device error.
    pub(super) fn run(mut self, stop_evt: EventFd) -> Disk {
        if let Err(e) = self.event_loop(&stop_evt) {
            tracing::error!(device = %self.label, "virtio-blk worker failed: {e}");
            // The receiver is gone only when the VM is already stopping.
            let _ = self.exit.send(VmExitReason::DeviceError {
                device: self.label.clone(),
                detail: e.to_string(),
            });
        }
        self.disk
    }

    fn event_loop(&mut self, stop_evt: &EventFd) -> io::Result<()> {
        let event_loop = EventLoop::new()?;
        event_loop.add(self.queue_evt.as_raw_fd(), QUEUE_TOKEN, EventSet::IN)?;
        event_loop.add(stop_evt.as_raw_fd(), STOP_TOKEN, EventSet::IN)?;
        // Requests queued before activation (or before a reset) get served now.
        self.process_queue()?;
        let mut events = [EpollEvent::default(); 2];
        loop {
            let count = event_loop.wait(&mut events)?;
            for event in &events[..count] {
                match event.data() {
                    STOP_TOKEN => return Ok(()),
                    QUEUE_TOKEN => {
                        drain_eventfd(&self.queue_evt)?;
                        self.process_queue()?;
                    }
                    _ => {}
                }
            }
        }
    }

    fn process_queue(&mut self) -> io::Result<()> {
        let mut completed = false;
        while let Some(chain) = self.queue.pop_descriptor_chain(&self.mem) {
            let head = chain.head_index();
            let used_len = serve_chain(&self.disk, chain, &self.mem);
            if let Err(e) = self.queue.add_used(&self.mem, head, used_len) {
                tracing::warn!(device = %self.label, head, "cannot return a request to the used ring: {e}");
            }
            completed = true;
        }
        if completed && self.queue.needs_notification(&self.mem).unwrap_or(true) {
            self.interrupt.signal_used_buffer()?;
        }
        Ok(())
    }
}

/// Parses and runs one request, writes its status byte, and returns the
/// length for the used ring. A malformed chain gets VIRTIO_BLK_S_IOERR when
/// it has a writable status byte, and a used length of 0 when it has none.
pub(crate) fn serve_chain<M, I>(disk: &Disk, descriptors: I, mem: &M) -> u32
where
    M: GuestMemory,
    I: IntoIterator<Item = Descriptor>,
{
    match request::parse(descriptors, mem) {
        Ok(request) => {
            let completion = disk.execute(&request, mem);
            write_status(mem, request.status_addr, completion.status);
            completion.used_len
        }
        Err(rejected) => {
            tracing::warn!("malformed virtio-blk request: {}", rejected.error);
            match rejected.status_addr {
                Some(addr) => {
                    write_status(mem, addr, VIRTIO_BLK_S_IOERR as u8);
                    1
                }
                None => 0,
            }
        }
    }
}
