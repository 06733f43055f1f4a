//! Routes vCPU port-I/O and MMIO exits to the device that owns the address.
//!
//! The contract every device implements: `read`/`write` get the offset
//! relative to the start of the device's registered range. Devices are
//! shared between vCPU threads, so the bus holds them behind a Mutex.

/// A device reachable from a vCPU exit (PIO or MMIO).
pub trait BusDevice: Send {
    /// The guest reads `data.len()` bytes at `offset` inside the device's range.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// The guest writes `data` at `offset` inside the device's range.
    fn write(&mut self, offset: u64, data: &[u8]);
}
