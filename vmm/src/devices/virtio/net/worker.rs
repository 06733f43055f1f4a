//! The virtio-net worker: frames from the transmit queue are written to the
//! tap one chain per frame, frames read from the tap go into the receive
//! queue one frame per chain. Both directions are bounded: one frame of at
//! most [`MAX_FRAME`] bytes is buffered each way, and a batch of frames per
//! wake-up keeps a busy link from starving a stop request. A chain the
//! guest got wrong (wrong direction, outside memory, too long, no header)
//! costs that frame only: it is returned used and counted.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, Permissions};
use vmm_sys_util::epoll::{EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::tap::{Tap, VNET_HDR_LEN};
use crate::devices::virtio::worker::{drain_eventfd, EventLoop};
use crate::devices::virtio::Interrupt;
use crate::exit::{ExitSender, VmExitReason};

const RX_QUEUE_TOKEN: u64 = 0;
const TX_QUEUE_TOKEN: u64 = 1;
const STOP_TOKEN: u64 = 2;
const TAP_TOKEN: u64 = 3;

/// The largest frame either way, header included: a 64 KiB TSO segment
/// plus an Ethernet header with a VLAN tag.
pub const MAX_FRAME: usize = VNET_HDR_LEN + 65_550;
/// Most descriptors walked in one chain (an indirect table may claim more).
const MAX_CHAIN_DESCRIPTORS: usize = 1024;
/// Frames moved per direction before looking at epoll again.
const BATCH: usize = 64;
/// Offset of `num_buffers` in `virtio_net_hdr_v1`.
const NUM_BUFFERS_OFFSET: usize = 10;

/// Frames dropped, by reason (for logs and tests).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Drops {
    /// Transmit chains that were malformed.
    pub bad_tx_chain: u64,
    /// Receive chains that were malformed.
    pub bad_rx_chain: u64,
    /// Frames larger than the receive buffer they were offered.
    pub rx_too_large: u64,
    /// Frames the tap refused.
    pub tap_write: u64,
}

pub(super) struct NetWorker {
    label: String,
    tap: Tap,
    rx_queue: Queue,
    tx_queue: Queue,
    rx_evt: EventFd,
    tx_evt: EventFd,
    mem: GuestMemoryMmap,
    interrupt: Arc<Interrupt>,
    exit: ExitSender,
    tx_frame: Vec<u8>,
    rx_frame: Vec<u8>,
    /// Length of the frame in `rx_frame` still waiting for a buffer.
    rx_pending: Option<usize>,
    drops: Drops,
}

#[derive(Default)]
struct Used {
    rx: bool,
    tx: bool,
}

impl NetWorker {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        label: String,
        tap: Tap,
        rx_queue: Queue,
        tx_queue: Queue,
        rx_evt: EventFd,
        tx_evt: EventFd,
        mem: GuestMemoryMmap,
        interrupt: Arc<Interrupt>,
        exit: ExitSender,
    ) -> Self {
        Self {
            label,
            tap,
            rx_queue,
            tx_queue,
            rx_evt,
            tx_evt,
            mem,
            interrupt,
            exit,
            tx_frame: vec![0; MAX_FRAME],
            rx_frame: vec![0; MAX_FRAME],
            rx_pending: None,
            drops: Drops::default(),
        }
    }

    /// Runs until `stop_evt` fires and hands the tap back.
    pub(super) fn run(mut self, stop_evt: EventFd) -> Tap {
        if let Err(e) = self.event_loop(&stop_evt) {
            tracing::error!(device = %self.label, "virtio-net worker failed: {e}");
            let _ = self.exit.send(VmExitReason::DeviceError {
                device: self.label.clone(),
                detail: e.to_string(),
            });
        }
        if self.drops != Drops::default() {
            tracing::info!(device = %self.label, drops = ?self.drops, "virtio-net frames dropped");
        }
        self.tap
    }

    fn event_loop(&mut self, stop_evt: &EventFd) -> io::Result<()> {
        let event_loop = EventLoop::new()?;
        event_loop.add(self.rx_evt.as_raw_fd(), RX_QUEUE_TOKEN, EventSet::IN)?;
        event_loop.add(self.tx_evt.as_raw_fd(), TX_QUEUE_TOKEN, EventSet::IN)?;
        event_loop.add(stop_evt.as_raw_fd(), STOP_TOKEN, EventSet::IN)?;
        let mut tap_registered = false;
        let mut events = [EpollEvent::default(); 8];
        loop {
            let more_work = self.pump()?;
            // Read the tap only while a frame could go somewhere: otherwise
            // the guest's next receive notification wakes us.
            let want_tap = self.rx_pending.is_none() && self.rx_has_buffers();
            if want_tap != tap_registered {
                if want_tap {
                    event_loop.add(self.tap.fd.as_raw_fd(), TAP_TOKEN, EventSet::IN)?;
                } else {
                    event_loop.delete(self.tap.fd.as_raw_fd())?;
                }
                tap_registered = want_tap;
            }
            let timeout_ms = if more_work { 0 } else { -1 };
            let count = event_loop.wait_timeout(&mut events, timeout_ms)?;
            for event in &events[..count] {
                match event.data() {
                    STOP_TOKEN => return Ok(()),
                    RX_QUEUE_TOKEN => drain_eventfd(&self.rx_evt)?,
                    TX_QUEUE_TOKEN => drain_eventfd(&self.tx_evt)?,
                    _ => {}
                }
            }
        }
    }

    /// One batch each way; true if a direction has more to do at once.
    fn pump(&mut self) -> io::Result<bool> {
        let mut used = Used::default();
        let tx_more = self.transmit(&mut used);
        let rx_more = self.receive(&mut used)?;
        self.signal_used(&used)?;
        Ok(tx_more || rx_more)
    }

    fn transmit(&mut self, used: &mut Used) -> bool {
        for _ in 0..BATCH {
            let Some(chain) = self.tx_queue.pop_descriptor_chain(&self.mem) else {
                return false;
            };
            let head = chain.head_index();
            match gather(chain, &self.mem, &mut self.tx_frame) {
                Ok(len) => {
                    // SAFETY: writes `len` initialised bytes from our buffer.
                    let written = unsafe {
                        libc::write(self.tap.fd.as_raw_fd(), self.tx_frame.as_ptr().cast(), len)
                    };
                    if written < 0 {
                        // A tap whose link is down or full drops frames, as
                        // a real NIC would.
                        self.drops.tap_write += 1;
                        tracing::trace!(device = %self.label, "tap write: {}", io::Error::last_os_error());
                    }
                }
                Err(reason) => {
                    self.drops.bad_tx_chain += 1;
                    tracing::warn!(device = %self.label, head, "transmit chain dropped: {reason}");
                }
            }
            if let Err(e) = self.tx_queue.add_used(&self.mem, head, 0) {
                tracing::warn!(device = %self.label, head, "cannot return a transmit buffer: {e}");
            }
            used.tx = true;
        }
        true
    }

    /// Reads one frame from the tap into `rx_frame`; false if none waits.
    fn read_tap(&mut self) -> io::Result<bool> {
        loop {
            // SAFETY: reads at most `rx_frame.len()` bytes into our buffer.
            let read = unsafe {
                libc::read(
                    self.tap.fd.as_raw_fd(),
                    self.rx_frame.as_mut_ptr().cast(),
                    self.rx_frame.len(),
                )
            };
            if read >= 0 {
                self.rx_pending = Some(read as usize);
                return Ok(true);
            }
            let err = io::Error::last_os_error();
            match err.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => return Ok(false),
                _ => return Err(io::Error::other(format!("read from the tap: {err}"))),
            }
        }
    }

    fn receive(&mut self, used: &mut Used) -> io::Result<bool> {
        for _ in 0..BATCH {
            if self.rx_pending.is_none() && (!self.rx_has_buffers() || !self.read_tap()?) {
                return Ok(false);
            }
            let Some(len) = self.rx_pending else {
                return Ok(false);
            };
            let Some(chain) = self.rx_queue.pop_descriptor_chain(&self.mem) else {
                return Ok(false);
            };
            let head = chain.head_index();
            if len < VNET_HDR_LEN {
                // Not a frame from a tap with a vnet header: drop it.
                self.rx_pending = None;
                self.rx_queue
                    .set_next_avail(self.rx_queue.next_avail().wrapping_sub(1));
                continue;
            }
            // Without MRG_RXBUF every frame is one buffer.
            self.rx_frame[NUM_BUFFERS_OFFSET..NUM_BUFFERS_OFFSET + 2]
                .copy_from_slice(&1u16.to_le_bytes());
            match scatter(chain, &self.mem, &self.rx_frame[..len]) {
                Ok(()) => {
                    self.rx_pending = None;
                    let used_len = u32::try_from(len).unwrap_or(u32::MAX);
                    if let Err(e) = self.rx_queue.add_used(&self.mem, head, used_len) {
                        tracing::warn!(device = %self.label, head, "cannot return a receive buffer: {e}");
                    }
                    used.rx = true;
                }
                Err(Scatter::TooSmall) => {
                    // The buffer is fine, the frame is not for it: drop the
                    // frame, keep the buffer for the next.
                    self.drops.rx_too_large += 1;
                    self.rx_pending = None;
                    self.rx_queue
                        .set_next_avail(self.rx_queue.next_avail().wrapping_sub(1));
                }
                Err(Scatter::Malformed(reason)) => {
                    // The frame waits for the next buffer.
                    self.drops.bad_rx_chain += 1;
                    tracing::warn!(device = %self.label, head, "receive chain returned unused: {reason}");
                    if let Err(e) = self.rx_queue.add_used(&self.mem, head, 0) {
                        tracing::warn!(device = %self.label, head, "cannot return a receive buffer: {e}");
                    }
                    used.rx = true;
                }
            }
        }
        Ok(true)
    }

    /// Whether a receive buffer can be popped (a bogus avail index counts
    /// as none, so that a broken guest cannot make us spin).
    fn rx_has_buffers(&self) -> bool {
        self.rx_queue.ready()
            && self
                .rx_queue
                .avail_idx(&self.mem, Ordering::Acquire)
                .is_ok_and(|idx| {
                    let waiting = idx.0.wrapping_sub(self.rx_queue.next_avail());
                    waiting != 0 && waiting <= self.rx_queue.size()
                })
    }

    fn signal_used(&mut self, used: &Used) -> io::Result<()> {
        let mut notify = false;
        if used.rx {
            notify |= self.rx_queue.needs_notification(&self.mem).unwrap_or(true);
        }
        if used.tx {
            notify |= self.tx_queue.needs_notification(&self.mem).unwrap_or(true);
        }
        if notify {
            self.interrupt.signal_used_buffer()?;
        }
        Ok(())
    }
}

/// Copies a transmit chain (device-readable buffers only) into `frame`;
/// its length, or why the chain is unusable.
fn gather<I>(chain: I, mem: &GuestMemoryMmap, frame: &mut [u8]) -> Result<usize, &'static str>
where
    I: IntoIterator<Item = virtio_queue::desc::split::Descriptor>,
{
    let mut total = 0usize;
    let mut last_has_next = false;
    for (index, desc) in chain.into_iter().enumerate() {
        if index == MAX_CHAIN_DESCRIPTORS {
            return Err("too many descriptors");
        }
        if desc.is_write_only() {
            return Err("device-writable descriptor in a transmit chain");
        }
        let len = desc.len() as usize;
        let end = total
            .checked_add(len)
            .filter(|end| *end <= frame.len())
            .ok_or("frame larger than the largest frame")?;
        mem.read_slice(&mut frame[total..end], desc.addr())
            .map_err(|_| "buffer outside guest memory")?;
        total = end;
        last_has_next = desc.has_next();
    }
    if last_has_next {
        return Err("chain does not terminate");
    }
    if total < VNET_HDR_LEN {
        return Err("shorter than the virtio-net header");
    }
    Ok(total)
}

enum Scatter {
    /// The chain's buffers hold less than the frame.
    TooSmall,
    Malformed(&'static str),
}

/// Writes `frame` into a receive chain (device-writable buffers only),
/// after checking every buffer, so nothing is written into a bad chain.
fn scatter<I>(chain: I, mem: &GuestMemoryMmap, frame: &[u8]) -> Result<(), Scatter>
where
    I: IntoIterator<Item = virtio_queue::desc::split::Descriptor>,
{
    let mut segments: Vec<(GuestAddress, usize)> = Vec::new();
    let mut capacity = 0usize;
    let mut last_has_next = false;
    for (index, desc) in chain.into_iter().enumerate() {
        if index == MAX_CHAIN_DESCRIPTORS {
            return Err(Scatter::Malformed("too many descriptors"));
        }
        if !desc.is_write_only() {
            return Err(Scatter::Malformed(
                "device-readable descriptor in a receive chain",
            ));
        }
        let len = desc.len() as usize;
        if !mem.check_range(desc.addr(), len, Permissions::Write) {
            return Err(Scatter::Malformed("buffer outside guest memory"));
        }
        last_has_next = desc.has_next();
        if capacity < frame.len() && len > 0 {
            segments.push((desc.addr(), len));
            capacity = capacity.saturating_add(len);
        }
    }
    if last_has_next {
        return Err(Scatter::Malformed("chain does not terminate"));
    }
    if capacity < frame.len() {
        return Err(Scatter::TooSmall);
    }
    let mut offset = 0;
    for (addr, len) in segments {
        let chunk = len.min(frame.len() - offset);
        mem.write_slice(&frame[offset..offset + chunk], addr)
            .map_err(|_| Scatter::Malformed("buffer outside guest memory"))?;
        offset += chunk;
        if offset == frame.len() {
            break;
        }
    }
    Ok(())
}
