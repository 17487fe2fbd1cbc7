//! Masking the same bytes whole and in pieces cut at fuzzer-chosen points must agree, in
//! output and findings. A byte after the cut points asks for up to 255 KiB of base64 filler
//! before the data, so runs longer than the masker's drop threshold are reached.
#![no_main]

use interceptor::detection::check::split_difference;
use interceptor_fuzz::{cut_points, engine};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let (points, rest) = cut_points(input, 8);
    let Some((&filler, data)) = rest.split_first() else {
        return;
    };
    let mut text: Vec<u8> = (b"QUJD".iter().copied().cycle())
        .take(filler as usize * 1024)
        .collect();
    text.extend_from_slice(data);
    // The points were drawn over `rest`; spread over the text they stay in order.
    let points: Vec<usize> = (points.iter())
        .map(|p| p * text.len() / rest.len())
        .collect();
    if let Some(difference) = split_difference(engine(), &text, &points).expect("scans") {
        panic!("{difference}");
    }
});
