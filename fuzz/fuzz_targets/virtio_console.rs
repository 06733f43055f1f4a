//! Fuzz target: the virtio-console transmit and receive queues on arbitrary guest memory.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    husk_vmm::devices::virtio::console::fuzz_queues(data);
});
