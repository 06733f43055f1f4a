//! Fuzz target: the image layer unpacker: arbitrary tar bytes into a temporary directory.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    husk::image::unpack::fuzz_unpack(data);
});
