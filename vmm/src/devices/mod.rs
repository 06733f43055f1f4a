//! Emulated devices. Legacy ones (serial, i8042) live on the PIO bus,
//! virtio-mmio devices on the MMIO bus; `bus` routes vCPU exits to them.

pub mod bus;
pub mod i8042;
pub mod serial;
pub mod virtio;
pub mod wiring;
