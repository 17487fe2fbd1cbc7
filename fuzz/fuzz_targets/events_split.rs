//! An event stream (SSE or NDJSON, chosen by the first byte) masked whole and in pieces cut
//! at fuzzer-chosen points must come out the same, with the same findings at the same
//! places: where a stream's chunks happen to split must not change what the client gets.
//! Any bytes at all are a stream here: malformed events, JSON and escapes included.
#![no_main]

use interceptor::detection::SecretHasher;
use interceptor::events::{EventMasker, Format};
use interceptor_fuzz::{cut_points, engine};
use libfuzzer_sys::fuzz_target;

fn mask(format: Format, pieces: &[&[u8]]) -> (Vec<u8>, Vec<(String, String, String)>) {
    let mut masker = EventMasker::new(
        format,
        engine().clone(),
        SecretHasher::with_salt([0; 16]),
        None,
    );
    let mut out = Vec::new();
    for piece in pieces {
        masker.push(piece, &mut out).expect("masks");
    }
    masker.finish(&mut out).expect("masks");
    let mut found: Vec<_> = (masker.take_findings().into_iter())
        .map(|f| (f.location, f.finding.rule, f.finding.hash))
        .collect();
    found.sort();
    (out, found)
}

fuzz_target!(|input: &[u8]| {
    let Some((&which, input)) = input.split_first() else {
        return;
    };
    let format = match which % 2 {
        0 => Format::Sse,
        _ => Format::Ndjson,
    };
    let (points, data) = cut_points(input, 8);
    let mut pieces = Vec::new();
    let mut from = 0;
    for &to in points.iter().chain([&data.len()]) {
        pieces.push(&data[from..to.max(from)]);
        from = to.max(from);
    }
    let whole = mask(format, &[data]);
    let split = mask(format, &pieces);
    if whole != split {
        panic!(
            "cut at {points:?}:\nwhole {:?}\n{:?}\nsplit {:?}\n{:?}",
            String::from_utf8_lossy(&whole.0),
            whole.1,
            String::from_utf8_lossy(&split.0),
            split.1
        );
    }
});
