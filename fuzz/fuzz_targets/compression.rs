//! Every content decoder takes any bytes, in any pieces, without panicking or producing
//! more than its limit; what an encoder wrote decodes back to the same bytes.
#![no_main]

use interceptor::detection::compression::{ContentEncoding, Decoder, Encoder};
use interceptor_fuzz::cut_points;
use libfuzzer_sys::fuzz_target;

const LIMIT: u64 = 1 << 20;
const ENCODINGS: [ContentEncoding; 4] = [
    ContentEncoding::Gzip,
    ContentEncoding::Deflate,
    ContentEncoding::Brotli,
    ContentEncoding::Zstd,
];

fn decode(encoding: ContentEncoding, pieces: &[&[u8]]) -> Option<Vec<u8>> {
    let mut decoder = Decoder::new(encoding, LIMIT).ok()?;
    let mut out = Vec::new();
    for piece in pieces {
        out.extend(decoder.push(piece).ok()?);
        assert!(out.len() as u64 <= LIMIT, "{encoding:?} past its limit");
    }
    out.extend(decoder.finish().ok()?);
    assert!(out.len() as u64 <= LIMIT, "{encoding:?} past its limit");
    Some(out)
}

fuzz_target!(|input: &[u8]| {
    let (points, data) = cut_points(input, 4);
    let mut pieces = Vec::new();
    let mut from = 0;
    for p in points.into_iter().chain([data.len()]) {
        pieces.push(&data[from..p]);
        from = p;
    }
    for encoding in ENCODINGS {
        decode(encoding, &pieces);
        let mut encoder = Encoder::new(encoding).expect("an encoder");
        let mut encoded = encoder.push(data).expect("encodes");
        encoded.extend(encoder.finish().expect("encodes"));
        assert_eq!(
            decode(encoding, &[&encoded]).as_deref(),
            Some(data),
            "{encoding:?} round trip"
        );
    }
});
