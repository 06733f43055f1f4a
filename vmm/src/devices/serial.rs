//! COM1: vm-superio's 8250/16550 model on ports 0x3f8..0x400, raising IRQ 4
//! through an irqfd, writing what the guest transmits to a host sink
//! (stdout or the `--serial-log` file) and taking input bytes the VMM
//! feeds it (host stdin when it is a terminal).

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use vm_superio::serial::NoEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use super::bus::BusDevice;

/// COM1's port base and number of registers.
pub const SERIAL_PORT_BASE: u64 = 0x3f8;
pub const SERIAL_PORT_LEN: u64 = 8;

/// Raises the serial IRQ by signalling an EventFd registered with KVM as
/// an irqfd, so no VMM thread sits between the UART and the guest's PIC.
pub struct IrqFdTrigger(EventFd);

impl IrqFdTrigger {
    pub fn new(evt: EventFd) -> Self {
        IrqFdTrigger(evt)
    }
}

impl Trigger for IrqFdTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// The host side the guest's output goes to.
pub type SerialSink = Box<dyn Write + Send>;

/// What Linux prints when it panics (kernel/panic.c). Its reboot after
/// `panic=N` is an ordinary i8042 reset, so this line is how the VMM tells
/// a panic from a clean reboot; a guest can only fake its own failure.
const KERNEL_PANIC_MARKER: &[u8] = b"Kernel panic - not syncing";

/// Passes output through to a sink and raises a flag when the kernel's
/// panic line goes by.
pub struct PanicWatch<W: Write> {
    inner: W,
    matched: usize,
    panicked: Arc<AtomicBool>,
}

impl<W: Write> PanicWatch<W> {
    pub fn new(inner: W, panicked: Arc<AtomicBool>) -> Self {
        PanicWatch {
            inner,
            matched: 0,
            panicked,
        }
    }

    fn scan(&mut self, bytes: &[u8]) {
        for &b in bytes {
            // The marker has no proper prefix that is also a suffix, so a
            // mismatch restarts at 0 (or 1 if this byte starts it again).
            self.matched = if b == KERNEL_PANIC_MARKER[self.matched] {
                self.matched + 1
            } else {
                usize::from(b == KERNEL_PANIC_MARKER[0])
            };
            if self.matched == KERNEL_PANIC_MARKER.len() {
                self.panicked.store(true, Ordering::Release);
                self.matched = 0;
            }
        }
    }
}

impl<W: Write> Write for PanicWatch<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.scan(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

pub struct SerialDevice {
    uart: Serial<IrqFdTrigger, NoEvents, SerialSink>,
    /// Whether a sink error was already logged (a closed stdout must not
    /// flood the log once per byte).
    sink_error_logged: bool,
}

impl SerialDevice {
    pub fn new(irq: EventFd, sink: SerialSink) -> Self {
        SerialDevice {
            uart: Serial::new(IrqFdTrigger::new(irq), sink),
            sink_error_logged: false,
        }
    }

    /// Queues input bytes for the guest; returns how many fit in the FIFO
    /// (0 when it is full: the caller retries later).
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        if self.uart.fifo_capacity() == 0 {
            return 0;
        }
        match self.uart.enqueue_raw_bytes(bytes) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!("serial input: {e}");
                0
            }
        }
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        // The UART has byte-wide registers; wider accesses read the first.
        match (u8::try_from(offset), data.first_mut()) {
            (Ok(offset), Some(first)) if u64::from(offset) < SERIAL_PORT_LEN => {
                *first = self.uart.read(offset)
            }
            _ => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let (Ok(offset), Some(&value)) = (u8::try_from(offset), data.first()) else {
            return;
        };
        if let Err(e) = self.uart.write(offset, value) {
            if !self.sink_error_logged {
                tracing::warn!("serial output lost: {e}");
                self.sink_error_logged = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A sink the test can read back.
    #[derive(Clone, Default)]
    struct SharedBuf(Arc<Mutex<Vec<u8>>>);

    impl Write for SharedBuf {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    const THR: u64 = 0;
    const IER: u64 = 1;
    const LSR: u64 = 5;
    const LSR_DATA_READY: u8 = 1;

    fn device() -> (SerialDevice, SharedBuf, EventFd) {
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let buf = SharedBuf::default();
        let dev = SerialDevice::new(evt.try_clone().unwrap(), Box::new(buf.clone()));
        (dev, buf, evt)
    }

    #[test]
    fn transmitted_bytes_reach_the_sink() {
        let (mut dev, buf, _evt) = device();
        for b in b"Linux version" {
            dev.write(THR, &[*b]);
        }
        assert_eq!(&buf.0.lock().unwrap()[..], b"Linux version");
    }

    #[test]
    fn input_raises_the_irq_when_enabled_and_is_read_back() {
        let (mut dev, _buf, evt) = device();
        // Enable the received-data interrupt.
        dev.write(IER, &[0x01]);
        let _ = evt.read();
        assert_eq!(dev.enqueue_input(b"ok"), 2);
        assert_eq!(evt.read().unwrap(), 1, "irqfd signalled");
        let mut lsr = [0u8];
        dev.read(LSR, &mut lsr);
        assert_eq!(lsr[0] & LSR_DATA_READY, LSR_DATA_READY);
        let mut got = Vec::new();
        for _ in 0..2 {
            let mut b = [0u8];
            dev.read(THR, &mut b);
            got.push(b[0]);
        }
        assert_eq!(got, b"ok");
        dev.read(LSR, &mut lsr);
        assert_eq!(lsr[0] & LSR_DATA_READY, 0);
    }

    #[test]
    fn full_fifo_takes_nothing_more() {
        let (mut dev, _buf, _evt) = device();
        let big = [b'x'; 200];
        let first = dev.enqueue_input(&big);
        assert!(first > 0 && first < big.len());
        assert_eq!(dev.enqueue_input(&big), 0);
    }

    #[test]
    fn panic_line_raises_the_flag_wherever_it_is_split() {
        let flag = Arc::new(AtomicBool::new(false));
        let mut watch = PanicWatch::new(io::sink(), flag.clone());
        watch.write_all(b"[ 1.0] KKernel pani").unwrap();
        assert!(!flag.load(Ordering::Acquire));
        for b in b"c - not syncing: VFS: Unable to mount root fs" {
            watch.write_all(&[*b]).unwrap();
        }
        assert!(flag.load(Ordering::Acquire));
    }

    #[test]
    fn ordinary_output_does_not_raise_the_flag() {
        let flag = Arc::new(AtomicBool::new(false));
        let mut watch = PanicWatch::new(Vec::new(), flag.clone());
        watch
            .write_all(b"Kernel panic? no. Kernel panic - not syncin\nreboot: Restarting system\n")
            .unwrap();
        assert!(!flag.load(Ordering::Acquire));
        assert!(watch.inner.starts_with(b"Kernel panic? no."));
    }

    #[test]
    fn out_of_range_accesses_are_harmless() {
        let (mut dev, buf, _evt) = device();
        let mut data = [0u8; 2];
        dev.read(300, &mut data);
        assert_eq!(data, [0xff, 0xff]);
        dev.write(u64::MAX, b"a");
        dev.write(THR, &[]);
        assert!(buf.0.lock().unwrap().is_empty());
    }
}
