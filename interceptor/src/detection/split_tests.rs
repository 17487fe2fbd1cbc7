//! Masking must not depend on where a stream is split into chunks: the regressions the
//! differential fuzz target found, and a property over every shipped rule's examples.

use super::check::split_difference;
use super::tests::{engine, mask_chunks};
use super::*;

fn mask_whole(data: &[u8]) -> (Vec<u8>, Vec<Finding>) {
    mask_chunks([data])
}

fn assert_split_invariant(data: &[u8], points: &[usize]) {
    if let Some(difference) = split_difference(&engine(), data, points).unwrap() {
        panic!("{difference}");
    }
}

#[test]
fn a_secret_at_the_end_of_a_long_base64_run_is_masked_whatever_the_split() {
    use base64::Engine as _;
    let blob = base64::engine::general_purpose::STANDARD
        .encode(b"token=ghp_aB3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1xY3zA5\n");
    for lead in 1..=4 {
        let text = format!("{}{}{blob}\n", " ".repeat(lead), "A".repeat(120_000));
        let data = text.as_bytes();
        let (split, _) = mask_chunks([&data[..110_000], &data[110_000..]]);
        assert!(
            !super::check::contains(&split, blob.as_bytes()),
            "{lead} leading spaces: the token's base64 went out"
        );
        assert_split_invariant(data, &[110_000]);
        assert_split_invariant(data, &[65_536, 110_000]);
    }
}

#[test]
fn a_secret_at_the_start_of_a_long_base64_run_is_masked_whatever_the_split() {
    use base64::Engine as _;
    // 48 bytes: whole quanta, so the run goes on without padding.
    let blob = base64::engine::general_purpose::STANDARD
        .encode(b"token=ghp_aB3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1xY3zA5\n\n");
    let text = format!("x {blob}{}\n", "QUFB".repeat(40_000));
    let data = text.as_bytes();
    let (whole, _) = mask_whole(data);
    assert!(!super::check::contains(&whole, &blob.as_bytes()[..40]));
    for points in [&[10_000][..], &[30_000, 70_000], &[1_000, 2_000, 100_000]] {
        assert_split_invariant(data, points);
    }
}

#[test]
fn a_deferred_candidate_is_confirmed_on_the_bytes_that_came_after_it() {
    use base64::Engine as _;
    let text = "MWQxoDE2NTAifSB7InYiOiAicGFzc3dvcmQgPSBweXBpLUF3RUljSGx3YVM1dmNtY1dqTGwWFhYWFhYWFhYWFhYWFhYWFhYW\
FhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhZLUk5Q\
RUhpa2M4QXpQOXBWRFBRTEJEUVZxTXJGem9CUUcwWG1nYzQzcWtWREJSZnMtd241ZDNienBxeWNIMXcydXZndjNIWEkxQmRZ\
Vy1nUFo5MnNsYktEU2Z2WnRsOW1HNmFcbkRndGFscC0wdHBydGpUZHBmXzBRRVUEAAAAAAAAAABUY2IiOiJodHRwczpcL1wv\
YS50ZUxFR1JBTV9CT1RfVE9LRU4lHx8fHzFENjg0Hx8fHx8fHx8fHx8fHx8fHx8fHx8fHx8fHx8fHx8fHx8fHx8fMkYlMkZh\
hnAlM0FTM2NyM3QtbnVzRnAzbGdsYktEU2Z2WnRsOW1HNmFcbiJ9IixEQVRBQkFTRV9ENjExMDU0NGE4NTUxOGFiMWQxYzE2\
NTAifSB7InYiOiAicGFzc3dvcmQgPSBteExWMlEzVm1ZNFJUVT0KIAAAAAY6ICJjbGllbkRndGFscC0wdHBydGpUZHBmXzBR\
RVVUWDRNMCJ9IHsiY2IiOiJodHRwczpcL1wvYS50ZXN0XC9jYj9xPVRFTEVHUkFNX0JPVF9UT0tFTiUfHx8fMUQ2ODQfHw==";
    let data = base64::engine::general_purpose::STANDARD
        .decode(text)
        .expect("the reproducer is base64");
    assert_split_invariant(&data, &[48]);
}

/// Every shipped rule's examples, as written.
fn examples() -> Vec<String> {
    let rules = load_dir(&super::tests::rules_dir()).unwrap();
    rules
        .iter()
        .flat_map(|r| r.examples.iter().map(|e| e.text().to_string()))
        .collect()
}

/// Every shipped rule's examples that name their secret: (text, secret).
pub(crate) fn examples_with_secrets() -> Vec<(String, String)> {
    let rules = load_dir(&super::tests::rules_dir()).unwrap();
    (rules.iter().flat_map(|r| &r.examples))
        .filter_map(|e| Some((e.text().to_string(), e.secret()?.to_string())))
        .collect()
}

/// The ways an example is planted: as written, JSON-escaped (with `\/`, as some encoders
/// write it), URL-encoded, base64 and base64url (no padding).
fn forms(text: &str) -> [Vec<u8>; 5] {
    use base64::Engine as _;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    let json = serde_json::to_string(text).unwrap().replace('/', r"\/");
    let url: String = text
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect();
    [
        text.as_bytes().to_vec(),
        json.into_bytes(),
        url.into_bytes(),
        STANDARD.encode(text).into_bytes(),
        URL_SAFE_NO_PAD.encode(text).into_bytes(),
    ]
}

/// Filler around a planted example: prose, JSON lines, or one long base64 run (whose length
/// before the example is a multiple of 4, so a base64 form inside it decodes).
fn filler(kind: u8, len: usize) -> Vec<u8> {
    let unit: &[u8] = match kind {
        0 => b"the quick brown fox jumps over the lazy dog\n",
        1 => b"{\"id\": 1, \"name\": \"widget\", \"tags\": [\"a\", \"b\"]}\n",
        _ => b"QUJDRGVmZ2hpSktMbW5vcFFSU3R1dnd4WVo0NTY3",
    };
    let mut out: Vec<u8> = unit.iter().copied().cycle().take(len).collect();
    if kind > 1 {
        out.truncate(len / 4 * 4);
    }
    out
}

#[test]
fn every_example_in_every_form_is_masked_the_same_however_it_is_split() {
    for example in examples() {
        for (form, planted) in forms(&example).iter().enumerate() {
            let mut data = filler(0, 300);
            data.push(b' ');
            data.extend_from_slice(planted);
            data.push(b'\n');
            data.extend(filler(1, 200));
            let (at, n) = (301, planted.len());
            let (whole, _) = mask_whole(&data);
            if form == 0 {
                assert!(whole != data, "{example:?} is masked as written");
            }
            for points in [
                vec![at + 1],
                vec![at + n / 2],
                vec![at + n - 1],
                vec![at + n],
                vec![at + 2, at + n / 3, at + n - 2],
            ] {
                assert_split_invariant(&data, &points);
            }
        }
    }
}

mod property {
    use proptest::prelude::*;

    use super::*;

    fn cases() -> u32 {
        std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(48)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(cases()))]

        /// Any example, in any form, at any place in long filler (past the masker's drop
        /// threshold), split anywhere: masked exactly as whole.
        #[test]
        fn masking_does_not_depend_on_where_chunks_split(
            example in any::<prop::sample::Index>(),
            form in 0..5usize,
            kind in 0..3u8,
            lead in 0..150_000usize,
            trail in 0..20_000usize,
            points in prop::collection::vec(0..=1_000_000u64, 1..6),
        ) {
            let examples = examples();
            let example: &String = example.get(&examples);
            let planted = &forms(example)[form];
            let mut data = filler(kind, lead);
            data.extend_from_slice(planted);
            data.extend(filler(kind, trail));
            data.push(b'\n');
            let mut points: Vec<usize> = points
                .iter()
                .map(|p| (p * data.len() as u64 / 1_000_000) as usize)
                .collect();
            points.sort();
            assert_split_invariant(&data, &points);
        }
    }
}
