//! Fuzz target: the virtio-mmio register interface (reads and writes of any width at any offset).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    husk_vmm::devices::virtio::mmio::fuzz_registers(data);
});
