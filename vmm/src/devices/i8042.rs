//! A minimal i8042 on ports 0x60..0x65 (vm-superio's model): reads answer
//! 0 (no data, input buffer empty, so the guest's probes time out rather
//! than hang), and the CPU-reset command (0xFE to port 0x64), which Linux
//! uses for `reboot=k` and after a panic, stops the VM as a clean guest
//! shutdown.

use vm_superio::{I8042Device, Trigger};

use super::bus::BusDevice;
use crate::exit::{ExitSender, VmExitReason};

pub const I8042_PORT_BASE: u64 = 0x60;
/// 0x60 (data) through 0x64 (command/status).
pub const I8042_PORT_LEN: u64 = 5;

/// Turns the guest's reset request into the VM's exit reason.
pub struct ShutdownTrigger(ExitSender);

impl Trigger for ShutdownTrigger {
    type E = std::convert::Infallible;

    fn trigger(&self) -> Result<(), Self::E> {
        // The receiver is gone only when the VM is already stopping.
        let _ = self.0.send(VmExitReason::GuestShutdown);
        Ok(())
    }
}

pub struct I8042 {
    inner: I8042Device<ShutdownTrigger>,
}

impl I8042 {
    pub fn new(exit: ExitSender) -> Self {
        I8042 {
            inner: I8042Device::new(ShutdownTrigger(exit)),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match u8::try_from(offset) {
            Ok(offset) => data.fill(self.inner.read(offset)),
            Err(_) => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(offset), Some(&value)) = (u8::try_from(offset), data.first()) {
            let Ok(()) = self.inner.write(offset, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn reset_command_is_a_guest_shutdown() {
        let (tx, rx) = mpsc::channel();
        let mut dev = I8042::new(tx);
        dev.write(4, &[0xfe]);
        assert_eq!(rx.try_recv().unwrap(), VmExitReason::GuestShutdown);
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn other_writes_do_nothing_and_status_reads_idle() {
        let (tx, rx) = mpsc::channel();
        let mut dev = I8042::new(tx);
        dev.write(4, &[0xfd]);
        dev.write(0, &[0xfe]);
        dev.write(4, &[]);
        assert!(rx.try_recv().is_err());
        let mut status = [0xaau8];
        dev.read(4, &mut status);
        assert_eq!(status[0] & 0x03, 0, "no output data, input buffer empty");
    }
}
