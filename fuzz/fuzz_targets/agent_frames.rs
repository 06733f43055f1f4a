//! Fuzz target: the agent channel's frame decoders, both directions, with a round-trip check.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    husk_protocol::fuzzing::frames(data);
});
