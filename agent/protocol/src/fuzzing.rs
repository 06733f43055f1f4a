//! For the `agent_frames` fuzz target (`fuzz/`) and its regression test:
//! arbitrary bytes through both decoders, the incremental one both sides
//! read the channel with and the blocking reader, and every frame that
//! decodes must encode and decode back to itself.

use std::io::Cursor;

use crate::frame::{encode_frame, read_frame, FrameDecoder, HEADER_LEN, MAX_PAYLOAD};
use crate::Frame;

fn round_trip(frame: &Frame) {
    // A frame we decoded may still be too large to send back (its JSON
    // re-encoded differently): that is an error, never a panic.
    if let Ok(bytes) = encode_frame(frame) {
        let again = read_frame(&mut Cursor::new(&bytes)).expect("a frame we encoded decodes");
        assert_eq!(&again, frame, "round trip");
    }
}

/// The first byte picks how the rest is cut into reads (1..=256 bytes).
pub fn frames(data: &[u8]) {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let step = usize::from(first) + 1;
    let mut decoder = FrameDecoder::new();
    'feed: for piece in rest.chunks(step) {
        decoder.feed(piece);
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => round_trip(&frame),
                Ok(None) => break,
                Err(_) => break 'feed,
            }
        }
        // At most one frame plus one read stays buffered.
        assert!(!decoder.has_partial() || rest.len() <= HEADER_LEN + MAX_PAYLOAD as usize + step);
    }
    let mut reader = Cursor::new(rest);
    while let Ok(frame) = read_frame(&mut reader) {
        round_trip(&frame);
    }
}
