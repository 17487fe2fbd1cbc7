//! Decoded views of raw bytes, so a secret written JSON-escaped (`\/`, `\u002b`), URL-encoded
//! (`%2B`) or inside base64 is found too. Each view maps its bytes back to the raw span they
//! came from, so the raw bytes are what gets masked.

use std::ops::Range;

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

use super::finding::Encoding;

/// Base64 runs shorter than this are not decoded (a 20-byte secret is 28 characters).
const MIN_BASE64_RUN: usize = 24;

pub struct View {
    pub encoding: Encoding,
    pub bytes: Vec<u8>,
    /// `starts[i]` is the raw offset where decoded byte `i` begins; one extra entry at the end.
    starts: Vec<usize>,
}

impl View {
    /// The raw span that decoded bytes `decoded` came from.
    pub fn raw_span(&self, decoded: Range<usize>) -> Range<usize> {
        self.starts[decoded.start]..self.starts[decoded.end]
    }

    fn new(encoding: Encoding, capacity: usize) -> View {
        View {
            encoding,
            bytes: Vec::with_capacity(capacity),
            starts: Vec::with_capacity(capacity + 1),
        }
    }

    fn push(&mut self, byte: u8, raw_start: usize) {
        self.bytes.push(byte);
        self.starts.push(raw_start);
    }

    fn finish(mut self, raw_end: usize) -> View {
        self.starts.push(raw_end);
        self
    }
}

/// Every decoded view worth scanning in `raw` (none for plain text).
pub fn views(raw: &[u8]) -> Vec<View> {
    let mut views = Vec::new();
    if has_json_escape(raw) {
        views.push(json_unescape(raw));
    }
    if has_percent_escape(raw) {
        views.push(url_decode(raw));
    }
    views.extend(base64_runs(raw));
    views
}

fn has_json_escape(raw: &[u8]) -> bool {
    raw.windows(2)
        .any(|w| w[0] == b'\\' && matches!(w[1], b'/' | b'u'))
}

fn has_percent_escape(raw: &[u8]) -> bool {
    raw.windows(3)
        .any(|w| w[0] == b'%' && w[1].is_ascii_hexdigit() && w[2].is_ascii_hexdigit())
}

/// JSON string escapes decoded; anything malformed is kept as written.
pub fn json_unescape(raw: &[u8]) -> View {
    let mut view = View::new(Encoding::JsonEscaped, raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'\\' && i + 1 < raw.len() {
            let simple = match raw[i + 1] {
                b'"' => Some(b'"'),
                b'\\' => Some(b'\\'),
                b'/' => Some(b'/'),
                b'b' => Some(8),
                b'f' => Some(12),
                b'n' => Some(b'\n'),
                b'r' => Some(b'\r'),
                b't' => Some(b'\t'),
                _ => None,
            };
            if let Some(b) = simple {
                view.push(b, i);
                i += 2;
                continue;
            }
            if let Some((c, len)) = unicode_escape(&raw[i..]) {
                let mut utf8 = [0u8; 4];
                for &b in c.encode_utf8(&mut utf8).as_bytes() {
                    view.push(b, i);
                }
                i += len;
                continue;
            }
        }
        view.push(raw[i], i);
        i += 1;
    }
    view.finish(raw.len())
}

/// `\uXXXX`, or a surrogate pair `\uD83D\uDE00`: the character and the escape's length.
fn unicode_escape(raw: &[u8]) -> Option<(char, usize)> {
    let hex4 = |s: &[u8]| -> Option<u32> {
        let s = std::str::from_utf8(s.get(..4)?).ok()?;
        u32::from_str_radix(s, 16).ok()
    };
    if !raw.starts_with(b"\\u") {
        return None;
    }
    let first = hex4(&raw[2..])?;
    if (0xD800..0xDC00).contains(&first) && raw.get(6..8) == Some(b"\\u") {
        let second = hex4(&raw[8..])?;
        let c = 0x10000 + ((first - 0xD800) << 10) + (second.checked_sub(0xDC00)? & 0x3FF);
        return char::from_u32(c).map(|c| (c, 12));
    }
    char::from_u32(first).map(|c| (c, 6))
}

/// `%XX` decoded (not `+`: in a secret it is a literal plus as often as a space).
pub fn url_decode(raw: &[u8]) -> View {
    let mut view = View::new(Encoding::UrlEncoded, raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%'
            && let Some(b) = raw
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            view.push(b, i);
            i += 3;
        } else {
            view.push(raw[i], i);
            i += 1;
        }
    }
    view.finish(raw.len())
}

fn is_base64(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'-' | b'_')
}

/// Each run of base64 characters long enough to wrap a secret, decoded (standard or URL-safe
/// alphabet, padding optional).
pub fn base64_runs(raw: &[u8]) -> Vec<View> {
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new()
            .with_decode_padding_mode(DecodePaddingMode::Indifferent)
            .with_decode_allow_trailing_bits(true),
    );
    let mut views = Vec::new();
    let mut i = 0;
    while i < raw.len() {
        if !is_base64(raw[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < raw.len() && is_base64(raw[i]) {
            i += 1;
        }
        // A lone trailing character cannot be decoded; 2 or 3 can (padding is optional).
        let usable = if (i - start) % 4 == 1 {
            i - start - 1
        } else {
            i - start
        };
        if usable < MIN_BASE64_RUN {
            continue;
        }
        let text: Vec<u8> = raw[start..start + usable]
            .iter()
            .map(|&b| match b {
                b'-' => b'+',
                b'_' => b'/',
                b => b,
            })
            .collect();
        let Ok(decoded) = LENIENT.decode(&text) else {
            continue;
        };
        let mut view = View::new(Encoding::Base64, decoded.len());
        for (k, b) in decoded.into_iter().enumerate() {
            // Byte k comes from characters 4k/3 .. ceil(4(k+1)/3).
            view.push(b, start + k * 4 / 3);
        }
        let end = start + usable;
        views.push(view.finish(end));
    }
    views
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_escapes_map_back_to_raw() {
        let raw = br#"{"u":"https:\/\/x\u0041y"}"#;
        let v = json_unescape(raw);
        assert_eq!(v.bytes, br#"{"u":"https://xAy"}"#);
        let a = v.bytes.iter().position(|&b| b == b'A').unwrap();
        assert_eq!(&raw[v.raw_span(a..a + 1)], br"\u0041");
        let emoji = json_unescape(br"\uD83D\uDE00!");
        assert_eq!(emoji.bytes, "😀!".as_bytes());
        assert_eq!(emoji.raw_span(0..4), 0..12);
    }

    #[test]
    fn percent_escapes_map_back_to_raw() {
        let v = url_decode(b"a%2Bb%zz+");
        assert_eq!(v.bytes, b"a+b%zz+");
        assert_eq!(v.raw_span(1..2), 1..4);
    }

    #[test]
    fn base64_runs_decode_with_either_alphabet() {
        let raw = b"x dXNlcjpodW50ZXIyLXN1cGVyLXNlY3JldA== y";
        let v = base64_runs(raw);
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].bytes, b"user:hunter2-super-secret");
        // "hunter2" is bytes 5..12 of the decoded text.
        let span = v[0].raw_span(5..12);
        assert!(span.start >= 2 && span.end <= raw.len() - 4, "{span:?}");
        assert!(base64_runs(b"short dGVzdA==").is_empty());
    }
}
