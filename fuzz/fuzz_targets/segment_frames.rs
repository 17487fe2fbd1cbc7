//! Session segment framing over any bytes: the intact frames lie inside the input, in
//! order, never overlapping a skipped stretch, and what was read re-encodes and reads back
//! the same with no damage. The module is the daemon's own file (the daemon is a binary, so
//! its framing is compiled in here by path rather than copied).
#![no_main]

#[allow(dead_code)]
#[path = "../../interceptor/src/sessions/segment.rs"]
mod segment;

use libfuzzer_sys::fuzz_target;
use segment::{FRAME_HEADER, Frames, encode_frame};

fuzz_target!(|input: &[u8]| {
    let mut frames = Frames::new(input);
    let mut at = 0;
    let mut payloads = Vec::new();
    for (offset, payload) in frames.by_ref() {
        assert!(offset >= at, "frame at {offset} before {at}");
        at = offset + FRAME_HEADER + payload.len();
        assert!(at <= input.len());
        payloads.push(payload.to_vec());
    }
    for skipped in &frames.skipped {
        assert!(skipped.start < skipped.end && skipped.end <= input.len());
    }
    let mut again = Vec::new();
    for p in &payloads {
        encode_frame(&mut again, |out| out.extend_from_slice(p));
    }
    let mut clean = Frames::new(&again);
    let reread: Vec<Vec<u8>> = clean.by_ref().map(|(_, p)| p.to_vec()).collect();
    assert_eq!(reread, payloads);
    assert!(clean.damage.is_none() && clean.skipped.is_empty());
});
