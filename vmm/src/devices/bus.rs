//! Routes vCPU port-I/O and MMIO exits to the device that owns the address.
//!
//! The contract every device implements: `read`/`write` get the offset
//! relative to the start of the device's registered range. Devices are
//! shared between vCPU threads, so the bus holds them behind a Mutex.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use thiserror::Error;

/// A device reachable from a vCPU exit (PIO or MMIO).
pub trait BusDevice: Send {
    /// The guest reads `data.len()` bytes at `offset` inside the device's range.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// The guest writes `data` at `offset` inside the device's range.
    fn write(&mut self, offset: u64, data: &[u8]);
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum BusError {
    #[error("bus range at {base:#x} has zero length")]
    ZeroLength { base: u64 },
    #[error("bus range {base:#x}+{len:#x} wraps around the address space")]
    Overflow { base: u64, len: u64 },
    #[error("bus range {base:#x}+{len:#x} overlaps the device at {other_base:#x}+{other_len:#x}")]
    Overlap {
        base: u64,
        len: u64,
        other_base: u64,
        other_len: u64,
    },
}

struct Entry {
    len: u64,
    device: Arc<Mutex<dyn BusDevice>>,
}

/// Address ranges → devices. Ranges never overlap, so the owner of an
/// address is the entry with the greatest base at or below it.
#[derive(Default)]
pub struct Bus {
    devices: BTreeMap<u64, Entry>,
}

impl Bus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `device` for `[base, base + len)`.
    pub fn insert(
        &mut self,
        base: u64,
        len: u64,
        device: Arc<Mutex<dyn BusDevice>>,
    ) -> Result<(), BusError> {
        if len == 0 {
            return Err(BusError::ZeroLength { base });
        }
        let end = base
            .checked_add(len - 1)
            .ok_or(BusError::Overflow { base, len })?;
        // The only candidates for overlap: the last range starting at or
        // before `end`.
        if let Some((&other_base, other)) = self.devices.range(..=end).next_back() {
            if other_base + (other.len - 1) >= base {
                return Err(BusError::Overlap {
                    base,
                    len,
                    other_base,
                    other_len: other.len,
                });
            }
        }
        self.devices.insert(base, Entry { len, device });
        Ok(())
    }

    /// The device owning `addr` and the offset of `addr` inside its range.
    fn resolve(&self, addr: u64) -> Option<(&Arc<Mutex<dyn BusDevice>>, u64)> {
        let (&base, entry) = self.devices.range(..=addr).next_back()?;
        let offset = addr - base;
        (offset < entry.len).then_some((&entry.device, offset))
    }

    /// Forwards a guest read; returns false (and leaves `data` alone) when
    /// nothing is mapped there.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.resolve(addr) {
            Some((device, offset)) => {
                // A device that panicked while locked is still the best we
                // have; its state is its own problem.
                let mut device = device.lock().unwrap_or_else(|e| e.into_inner());
                device.read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Forwards a guest write; returns false when nothing is mapped there.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.resolve(addr) {
            Some((device, offset)) => {
                let mut device = device.lock().unwrap_or_else(|e| e.into_inner());
                device.write(offset, data);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records accesses and answers reads with the offset.
    #[derive(Default)]
    struct Recorder {
        writes: Vec<(u64, Vec<u8>)>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.writes.push((offset, data.to_vec()));
        }
    }

    fn recorder() -> Arc<Mutex<Recorder>> {
        Arc::new(Mutex::new(Recorder::default()))
    }

    #[test]
    fn accesses_reach_the_owner_with_relative_offsets() {
        let mut bus = Bus::new();
        let a = recorder();
        let b = recorder();
        bus.insert(0x3f8, 8, a.clone()).unwrap();
        bus.insert(0x60, 5, b.clone()).unwrap();

        assert!(bus.write(0x3fb, &[0x80]));
        assert!(bus.write(0x64, &[0xfe]));
        let mut data = [0u8; 1];
        assert!(bus.read(0x3fd, &mut data));
        assert_eq!(data, [5]);

        assert_eq!(a.lock().unwrap().writes, vec![(3, vec![0x80])]);
        assert_eq!(b.lock().unwrap().writes, vec![(4, vec![0xfe])]);
    }

    #[test]
    fn unmapped_addresses_are_reported() {
        let mut bus = Bus::new();
        bus.insert(0x1000, 0x10, recorder()).unwrap();
        let mut data = [0xaau8; 2];
        assert!(!bus.read(0xfff, &mut data));
        assert!(!bus.read(0x1010, &mut data));
        assert!(!bus.write(0x1010, &[1]));
        assert_eq!(data, [0xaa, 0xaa]);
        assert!(bus.read(0x100f, &mut data));
    }

    #[test]
    fn overlaps_are_refused() {
        let mut bus = Bus::new();
        bus.insert(0x1000, 0x100, recorder()).unwrap();
        for (base, len) in [
            (0x1000, 1),
            (0xf00, 0x101),
            (0x10ff, 0x10),
            (0x1010, 0x10),
            (0x0, 0x2000),
        ] {
            assert!(
                matches!(
                    bus.insert(base, len, recorder()),
                    Err(BusError::Overlap {
                        other_base: 0x1000,
                        ..
                    })
                ),
                "{base:#x}+{len:#x}"
            );
        }
        // Adjacent ranges are fine on both sides.
        bus.insert(0xf00, 0x100, recorder()).unwrap();
        bus.insert(0x1100, 0x100, recorder()).unwrap();
    }

    #[test]
    fn degenerate_ranges_are_refused() {
        let mut bus = Bus::new();
        assert_eq!(
            bus.insert(0x10, 0, recorder()).unwrap_err(),
            BusError::ZeroLength { base: 0x10 }
        );
        assert!(matches!(
            bus.insert(u64::MAX, 2, recorder()),
            Err(BusError::Overflow { .. })
        ));
        bus.insert(u64::MAX, 1, recorder()).unwrap();
        let mut data = [0u8; 1];
        assert!(bus.read(u64::MAX, &mut data));
    }
}
