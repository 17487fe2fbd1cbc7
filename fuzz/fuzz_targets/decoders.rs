//! The JSON/URL decoder gives the same bytes whether the input comes whole or in two
//! pieces, and maps the decoded bytes back inside the input, in order; base64 runs decode without
//! panicking and map back inside the run.
#![no_main]

use interceptor::detection::decode::{Decoded, base64_decode_run, base64_raw_span, unescape};
use interceptor_fuzz::cut_points;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let (points, raw) = cut_points(input, 1);
    let mut whole = Decoded::new(0);
    assert_eq!(unescape(raw, 0, true, &mut whole), raw.len());
    let cut = points.first().copied().unwrap_or(0);
    let mut split = Decoded::new(0);
    let used = unescape(&raw[..cut], 0, false, &mut split);
    assert!(used <= cut);
    assert_eq!(
        unescape(&raw[used..], used as u64, true, &mut split),
        raw.len() - used
    );
    assert_eq!(whole.bytes, split.bytes, "cut at {cut}");
    // Bytes of one escape share its raw span (the last of them ends it): spans are in
    // order, inside the input, and the last ends the input's decoded part.
    let mut at = 0;
    for i in 0..whole.bytes.len() {
        let span = whole.raw_span(i..i + 1, raw.len() as u64);
        assert!(
            at <= span.start && span.start <= span.end,
            "byte {i}: {span:?} after {at}"
        );
        assert!(span.end <= raw.len() as u64, "byte {i}: {span:?}");
        at = span.start;
    }
    if let Some(decoded) = base64_decode_run(raw) {
        let span = base64_raw_span(0..decoded.len(), raw.len());
        assert!(span.end <= raw.len());
    }
});
