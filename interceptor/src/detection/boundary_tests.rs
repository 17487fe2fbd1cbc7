//! A secret right after (or before) a JSON escape is a secret: `\n` before a key is how
//! LLM output and pretty-printed JSON write it, and the escape's letter must not pass for
//! part of a word.

use super::check::contains;
use super::split_tests::examples_with_secrets;
use super::tests::mask_chunks;

const JSON_ESCAPES: [&str; 11] = [
    r#"\""#, r"\\", r"\/", r"\b", r"\f", r"\n", r"\r", r"\t", r"\r\n", r"\u0001", r"\u00e9",
];

/// A JSON string's inner text, as an encoder writes it.
fn json_inner(text: &str) -> String {
    let quoted = serde_json::to_string(text).unwrap();
    quoted[1..quoted.len() - 1].to_string()
}

#[test]
fn every_example_after_and_before_every_json_escape_is_masked_whole_and_split() {
    let mut missed = Vec::new();
    for (example, secret) in examples_with_secrets() {
        let (example, secret) = (json_inner(&example), json_inner(&secret));
        for escape in JSON_ESCAPES {
            let body = format!(r#"{{"content": "x{escape}{example}{escape}y"}}"#);
            let data = body.as_bytes();
            let at = body.find(&example).unwrap();
            for points in [vec![], vec![at + 1], vec![at + example.len() / 2]] {
                let mut pieces = Vec::new();
                let mut from = 0;
                for p in points.iter().copied().chain([data.len()]) {
                    pieces.push(&data[from..p]);
                    from = p;
                }
                let (out, _) = mask_chunks(pieces);
                if contains(&out, secret.as_bytes()) {
                    missed.push(format!("{escape} {example} split {points:?}"));
                }
            }
        }
    }
    assert!(
        missed.is_empty(),
        "{} missed:\n{}",
        missed.len(),
        missed.join("\n")
    );
}
