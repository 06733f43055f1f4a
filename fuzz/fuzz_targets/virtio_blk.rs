//! Fuzz target: virtio-blk request parsing and execution on guest memory (descriptor tables, rings and buffers all arbitrary).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    husk_vmm::devices::virtio::block::fuzz_requests(data);
});
