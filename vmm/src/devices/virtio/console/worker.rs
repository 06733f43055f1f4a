//! The virtio-console worker: moves bytes between the two queues and the
//! port's socket in one epoll loop. All sockets are non-blocking; progress
//! is made in `pump`, which runs after every batch of events until nothing
//! more can move.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, Permissions};
use vmm_sys_util::epoll::{EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::port::Port;
use crate::devices::virtio::worker::{drain_eventfd, EventLoop};
use crate::devices::virtio::Interrupt;
use crate::exit::{ExitSender, VmExitReason};

const RX_QUEUE_TOKEN: u64 = 0;
const TX_QUEUE_TOKEN: u64 = 1;
const STOP_TOKEN: u64 = 2;
const LISTENER_TOKEN: u64 = 3;
const CLIENT_TOKEN: u64 = 4;

/// Most bytes taken from one transmit chain; a longer chain is cut (and
/// logged): drivers send at most a few pages at a time.
const TX_CHAIN_LIMIT: usize = 1024 * 1024;
/// Most bytes put into one receive chain per socket read.
const RX_CHUNK: usize = 64 * 1024;
/// Most descriptors we walk in one chain (virtio-queue bounds it by the
/// queue size, or by an indirect table's size, which may be 65535).
const MAX_CHAIN_DESCRIPTORS: usize = 1024;
/// `pump` rounds before looking at epoll again, so that a stop request is
/// not starved by a transfer that keeps going.
const PUMP_ROUNDS: usize = 64;

pub(super) struct ConsoleWorker {
    pub(super) label: String,
    pub(super) port: Port,
    pub(super) rx_queue: Queue,
    pub(super) tx_queue: Queue,
    pub(super) rx_evt: EventFd,
    pub(super) tx_evt: EventFd,
    pub(super) mem: GuestMemoryMmap,
    pub(super) interrupt: Arc<Interrupt>,
    pub(super) exit: ExitSender,
    /// Reused copy buffers (guest → port, client → guest).
    pub(super) tx_buf: Vec<u8>,
    pub(super) rx_buf: Vec<u8>,
}

/// What is registered with epoll right now.
#[derive(Default)]
struct Registrations {
    listener: bool,
    client: Option<EventSet>,
}

/// Which queues got used buffers during a pump.
#[derive(Default)]
struct Used {
    rx: bool,
    tx: bool,
}

impl ConsoleWorker {
    /// Runs until `stop_evt` fires and hands the port back.
    pub(super) fn run(mut self, stop_evt: EventFd) -> Port {
        if let Err(e) = self.event_loop(&stop_evt) {
            tracing::error!(device = %self.label, "virtio-console worker failed: {e}");
            // The receiver is gone only when the VM is already stopping.
            let _ = self.exit.send(VmExitReason::DeviceError {
                device: self.label.clone(),
                detail: e.to_string(),
            });
        }
        self.port
    }

    fn event_loop(&mut self, stop_evt: &EventFd) -> io::Result<()> {
        let event_loop = EventLoop::new()?;
        event_loop.add(self.rx_evt.as_raw_fd(), RX_QUEUE_TOKEN, EventSet::IN)?;
        event_loop.add(self.tx_evt.as_raw_fd(), TX_QUEUE_TOKEN, EventSet::IN)?;
        event_loop.add(stop_evt.as_raw_fd(), STOP_TOKEN, EventSet::IN)?;
        let mut registrations = Registrations::default();
        let mut events = [EpollEvent::default(); 8];
        let mut more_work = self.pump(&event_loop, &mut registrations)?;
        loop {
            let timeout_ms = if more_work { 0 } else { -1 };
            let count = event_loop.wait_timeout(&mut events, timeout_ms)?;
            for event in &events[..count] {
                match event.data() {
                    STOP_TOKEN => return Ok(()),
                    RX_QUEUE_TOKEN => drain_eventfd(&self.rx_evt)?,
                    TX_QUEUE_TOKEN => drain_eventfd(&self.tx_evt)?,
                    LISTENER_TOKEN => self.port.accept(),
                    CLIENT_TOKEN => {
                        let set = event.event_set();
                        if set.intersects(EventSet::HANG_UP | EventSet::ERROR) {
                            if let Some(client) = self.port.client.as_mut() {
                                client.hang_up();
                            }
                        }
                    }
                    _ => {}
                }
            }
            more_work = self.pump(&event_loop, &mut registrations)?;
        }
    }

    /// Moves everything that can move; true if it stopped early with more
    /// to do.
    fn pump(
        &mut self,
        event_loop: &EventLoop,
        registrations: &mut Registrations,
    ) -> io::Result<bool> {
        let mut used = Used::default();
        let mut more_work = true;
        for _ in 0..PUMP_ROUNDS {
            let mut progress = self.take_guest_output(&mut used);
            progress |= self.port.flush_tx();
            progress |= self.deliver_client_input(&mut used);
            if !progress {
                more_work = false;
                break;
            }
        }
        if let Some(client) = self.port.client.as_ref().filter(|c| c.is_finished()) {
            // Deregister before the socket closes so that a new client
            // reusing the fd number is not confused with it.
            if registrations.client.take().is_some() {
                event_loop.delete(client.fd())?;
            }
        }
        if self.port.drop_finished_client().is_some() {
            // A waiting client gets in right away.
            self.port.accept();
            more_work = true;
        }
        self.update_registrations(event_loop, registrations)?;
        self.signal_used(&used)?;
        Ok(more_work)
    }

    /// Copies the guest's transmit buffers into the port's buffer while it
    /// has room.
    fn take_guest_output(&mut self, used: &mut Used) -> bool {
        let mut progress = false;
        while self.port.has_room_for_tx() {
            let Some(chain) = self.tx_queue.pop_descriptor_chain(&self.mem) else {
                break;
            };
            let head = chain.head_index();
            let mut taken = 0usize;
            for (index, desc) in chain.enumerate() {
                if index == MAX_CHAIN_DESCRIPTORS {
                    tracing::warn!(device = %self.label, "transmit chain longer than {MAX_CHAIN_DESCRIPTORS} descriptors; rest dropped");
                    break;
                }
                if desc.is_write_only() {
                    tracing::warn!(device = %self.label, "device-writable descriptor in a transmit chain; skipped");
                    continue;
                }
                let len = (desc.len() as usize).min(TX_CHAIN_LIMIT - taken);
                if len < desc.len() as usize {
                    tracing::warn!(device = %self.label, "transmit chain larger than {TX_CHAIN_LIMIT} bytes; rest dropped");
                }
                self.tx_buf.resize(len, 0);
                if let Err(e) = self.mem.read_slice(&mut self.tx_buf[..len], desc.addr()) {
                    tracing::warn!(device = %self.label, addr = desc.addr().0, len, "unreadable transmit buffer skipped: {e}");
                    continue;
                }
                self.port.pending_tx.extend(&self.tx_buf[..len]);
                taken += len;
                if taken == TX_CHAIN_LIMIT {
                    break;
                }
            }
            if let Err(e) = self.tx_queue.add_used(&self.mem, head, 0) {
                tracing::warn!(device = %self.label, head, "cannot return a transmit buffer: {e}");
            }
            used.tx = true;
            progress = true;
        }
        progress
    }

    /// Reads from the client into the guest's receive buffers, one socket
    /// read per buffer, while the guest has buffers and the client has data.
    fn deliver_client_input(&mut self, used: &mut Used) -> bool {
        let Some(client) = self.port.client.as_mut().filter(|c| c.read_open) else {
            return false;
        };
        let mut progress = false;
        self.rx_buf.resize(RX_CHUNK, 0);
        while let Some(chain) = self.rx_queue.pop_descriptor_chain(&self.mem) {
            let head = chain.head_index();
            let segments = match receive_segments(chain, &self.mem) {
                Ok(segments) => segments,
                Err(reason) => {
                    tracing::warn!(device = %self.label, head, "unusable receive buffer: {reason}");
                    if let Err(e) = self.rx_queue.add_used(&self.mem, head, 0) {
                        tracing::warn!(device = %self.label, head, "cannot return a receive buffer: {e}");
                    }
                    used.rx = true;
                    progress = true;
                    continue;
                }
            };
            let capacity: usize = segments.iter().map(|(_, len)| len).sum();
            match client.read(&mut self.rx_buf[..capacity]) {
                Ok(0) | Err(_) => {
                    // Nothing to deliver: give the buffer back to the avail ring.
                    let next = self.rx_queue.next_avail().wrapping_sub(1);
                    self.rx_queue.set_next_avail(next);
                    if !client.read_open {
                        progress = true;
                    }
                    break;
                }
                Ok(n) => {
                    let mut offset = 0;
                    for (addr, len) in &segments {
                        if offset == n {
                            break;
                        }
                        let chunk = (*len).min(n - offset);
                        if let Err(e) = self
                            .mem
                            .write_slice(&self.rx_buf[offset..offset + chunk], *addr)
                        {
                            tracing::warn!(device = %self.label, "cannot write a receive buffer: {e}");
                        }
                        offset += chunk;
                    }
                    let used_len = u32::try_from(n).unwrap_or(u32::MAX);
                    if let Err(e) = self.rx_queue.add_used(&self.mem, head, used_len) {
                        tracing::warn!(device = %self.label, head, "cannot return a receive buffer: {e}");
                    }
                    used.rx = true;
                    progress = true;
                }
            }
        }
        progress
    }

    /// Whether a receive buffer can be popped. A bogus avail index (more
    /// entries than the queue holds) counts as none: pop would refuse it, and
    /// polling the client for input we cannot deliver would spin.
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

    /// Listener while nobody is connected; the client for reading while the
    /// guest has receive buffers and for writing while output is buffered.
    /// An open-for-writing client stays registered even with no interest so
    /// that its hang-up is noticed.
    fn update_registrations(
        &self,
        event_loop: &EventLoop,
        registrations: &mut Registrations,
    ) -> io::Result<()> {
        let want_listener = self.port.client.is_none();
        if want_listener != registrations.listener {
            if want_listener {
                event_loop.add(self.port.listener_fd(), LISTENER_TOKEN, EventSet::IN)?;
            } else {
                event_loop.delete(self.port.listener_fd())?;
            }
            registrations.listener = want_listener;
        }

        let Some(client) = self.port.client.as_ref() else {
            registrations.client = None;
            return Ok(());
        };
        let mut interest = EventSet::empty();
        if client.read_open && self.rx_has_buffers() {
            interest |= EventSet::IN;
        }
        if client.write_open && !self.port.pending_tx.is_empty() {
            interest |= EventSet::OUT;
        }
        let wanted = (client.write_open || !interest.is_empty()).then_some(interest);
        match (registrations.client, wanted) {
            (None, Some(events)) => event_loop.add(client.fd(), CLIENT_TOKEN, events)?,
            (Some(old), Some(events)) if old != events => {
                event_loop.modify(client.fd(), CLIENT_TOKEN, events)?
            }
            (Some(_), None) => event_loop.delete(client.fd())?,
            _ => {}
        }
        registrations.client = wanted;
        Ok(())
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

/// The device-writable buffers of a receive chain, checked against guest
/// memory and cut at [`RX_CHUNK`] bytes in total.
fn receive_segments<I>(
    chain: I,
    mem: &GuestMemoryMmap,
) -> Result<Vec<(GuestAddress, usize)>, &'static str>
where
    I: IntoIterator<Item = Descriptor>,
{
    let mut segments = Vec::new();
    let mut total = 0usize;
    let mut last_has_next = false;
    for (index, desc) in chain.into_iter().enumerate() {
        if index == MAX_CHAIN_DESCRIPTORS {
            return Err("too many descriptors");
        }
        if !desc.is_write_only() {
            return Err("device-readable descriptor in a receive chain");
        }
        let len = desc.len() as usize;
        if !mem.check_range(desc.addr(), len, Permissions::Write) {
            return Err("buffer outside guest memory");
        }
        last_has_next = desc.has_next();
        let len = len.min(RX_CHUNK - total);
        if len > 0 {
            segments.push((desc.addr(), len));
            total += len;
        }
    }
    if last_has_next {
        return Err("chain does not terminate");
    }
    if total == 0 {
        return Err("no room in the buffer");
    }
    Ok(segments)
}

/// Fuzz entry (see `fuzz/`): a console worker over a guest memory made of
/// `data` takes the guest's transmit chains (queue 1) into its port buffer
/// and checks its receive chains (queue 0), as it does for a guest.
#[doc(hidden)]
pub fn fuzz_queues(data: &[u8]) {
    use std::os::linux::net::SocketAddrExt;
    let mem = crate::devices::virtio::fuzz_support::memory(data);
    let Ok(addr) = std::os::unix::net::SocketAddr::from_abstract_name(format!(
        "husk-fuzz-console-{}",
        std::process::id()
    )) else {
        return;
    };
    let Ok(listener) = std::os::unix::net::UnixListener::bind_addr(&addr) else {
        return;
    };
    let (Ok(rx_evt), Ok(tx_evt), Ok(interrupt)) =
        (EventFd::new(0), EventFd::new(0), Interrupt::new())
    else {
        return;
    };
    let (exit, _exits) = std::sync::mpsc::channel();
    let mut worker = ConsoleWorker {
        label: "fuzz".into(),
        port: Port::new(listener),
        rx_queue: crate::devices::virtio::fuzz_support::queue(0, 16),
        tx_queue: crate::devices::virtio::fuzz_support::queue(1, 16),
        rx_evt,
        tx_evt,
        mem: mem.clone(),
        interrupt: Arc::new(interrupt),
        exit,
        tx_buf: Vec::new(),
        rx_buf: Vec::new(),
    };
    let mut used = Used::default();
    for _ in 0..crate::devices::virtio::fuzz_support::MAX_CHAINS {
        if !worker.take_guest_output(&mut used) {
            break;
        }
    }
    for _ in 0..crate::devices::virtio::fuzz_support::MAX_CHAINS {
        let Some(chain) = worker.rx_queue.pop_descriptor_chain(&mem) else {
            break;
        };
        let _ = receive_segments(chain, &mem);
    }
}
