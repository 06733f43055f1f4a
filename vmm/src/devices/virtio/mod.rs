//! virtio over the MMIO transport: `mmio` (the register file, one per
//! device), and one folder per device (`block`, `console`).
