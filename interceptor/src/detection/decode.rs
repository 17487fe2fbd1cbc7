//! Decoders for secrets written JSON-escaped (`\/`, `\u002b`), URL-encoded (`%2B`) or inside
//! base64. Each decoded byte keeps the raw offset it came from, so the raw bytes are what
//! gets masked. JSON and URL decoding work incrementally: a chunk that ends inside an escape
//! leaves it for the next one.

use std::ops::Range;

use super::base64_runs::MIN_BASE64_RUN;
use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

/// Decoded bytes a view forgets at once (fewer stay until there are this many).
const RELEASE_BATCH: usize = 64 * 1024;

/// Decoded bytes of a stream, held from decoded offset `base` on, with the way back to raw
/// offsets: between anchors, decoded and raw bytes correspond one to one; every byte that
/// an escape produced, and the first byte after it, is an anchor.
#[derive(Debug)]
pub struct Decoded {
    pub bytes: Vec<u8>,
    pub base: u64,
    /// (decoded offset, raw offset), ascending.
    anchors: Vec<(u64, u64)>,
    /// Raw offset the next decoded byte has if it continues the current one-to-one stretch
    /// (`u64::MAX` after an escape).
    linear_next: u64,
}

impl Decoded {
    /// An empty decoding of a stream whose next raw byte is at `raw_at`.
    pub fn new(raw_at: u64) -> Decoded {
        Decoded {
            bytes: Vec::new(),
            base: 0,
            anchors: vec![(0, raw_at)],
            linear_next: raw_at,
        }
    }

    /// Decoded offset of the next byte.
    fn end(&self) -> u64 {
        self.base + self.bytes.len() as u64
    }

    /// Plain bytes, copied as they are.
    fn plain(&mut self, bytes: &[u8], raw_at: u64) {
        if raw_at != self.linear_next {
            let here = self.end();
            self.anchors.push((here, raw_at));
        }
        self.bytes.extend_from_slice(bytes);
        self.linear_next = raw_at + bytes.len() as u64;
    }

    /// The one byte an escape of `raw_len` bytes at `raw_at` produced. One anchor, after
    /// it: the byte itself continues the stretch before (the escape starts where that ends).
    fn escaped(&mut self, byte: u8, raw_at: u64, raw_len: u64) {
        if raw_at != self.linear_next {
            let here = self.end();
            self.anchors.push((here, raw_at));
        }
        self.bytes.push(byte);
        let next = self.end();
        self.linear_next = raw_at + raw_len;
        self.anchors.push((next, self.linear_next));
    }

    /// Bytes one escape at `raw_at` produced (a character's UTF-8): they all share its raw
    /// start, each with an anchor of its own.
    fn escaped_many(&mut self, bytes: &[u8], raw_at: u64) {
        for &b in bytes {
            let here = self.end();
            self.anchors.push((here, raw_at));
            self.bytes.push(b);
        }
        self.linear_next = u64::MAX;
    }

    /// Raw offset where the byte at decoded offset `d` starts.
    fn raw_at(&self, d: u64) -> u64 {
        let i = self.anchors.partition_point(|&(a, _)| a <= d) - 1;
        let (a, raw) = self.anchors[i];
        match self.anchors.get(i + 1) {
            // Bytes of one escape share its raw start.
            Some(&(next, next_raw)) if next_raw - raw < next - a => raw,
            _ => raw + (d - a),
        }
    }

    /// The raw span of the held decoded bytes `span` (indices into `bytes`); `raw_end` is
    /// where the raw input consumed so far ends (for a span reaching the last byte).
    pub fn raw_span(&self, span: Range<usize>, raw_end: u64) -> Range<u64> {
        let end = if span.end == self.bytes.len() {
            raw_end
        } else {
            self.raw_at(self.base + span.end as u64)
        };
        self.raw_at(self.base + span.start as u64)..end
    }

    /// Forgets (in batches) the decoded bytes whose raw bytes start before `raw`.
    pub fn release_before(&mut self, raw: u64) {
        // raw_at never decreases: binary search for the first byte to keep.
        let (mut lo, mut hi) = (0, self.bytes.len());
        while lo < hi {
            let mid = (lo + hi) / 2;
            if self.raw_at(self.base + mid as u64) < raw {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        // In batches: moving the kept bytes after every chunk costs more than keeping them.
        if lo < RELEASE_BATCH {
            return;
        }
        self.bytes.drain(..lo);
        self.base += lo as u64;
        let keep = self.anchors.partition_point(|&(a, _)| a <= self.base) - 1;
        self.anchors.drain(..keep);
    }
}

fn hex_value(d: u8) -> u8 {
    (d as char).to_digit(16).unwrap_or(0) as u8
}

/// A `%XX` escape anywhere in `raw`.
pub fn has_percent_escape(raw: &[u8]) -> bool {
    memchr::memchr_iter(b'%', raw).any(|i| is_percent_escape(&raw[i..]))
}

/// Whether `rest` starts with `%` and two hex digits.
fn is_percent_escape(rest: &[u8]) -> bool {
    rest.get(1..3)
        .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit))
}

/// Appends `raw` (starting at raw offset `at`) with JSON string escapes and `%XX` escapes
/// decoded (not `+`: in a secret it is a literal plus as often as a space); anything
/// malformed is kept as written. Both in one pass: a secret URL-encoded inside a JSON string
/// comes out whole, and one view costs one Hyperscan stream. Returns the raw bytes consumed:
/// all of them, unless `raw` ends inside an escape and more input may come (`last` false).
pub fn unescape(raw: &[u8], at: u64, last: bool, out: &mut Decoded) -> usize {
    let mut i = 0;
    // One pass for every escape; those inside an escape already decoded are skipped.
    for p in memchr::memchr2_iter(b'\\', b'%', raw) {
        if p < i {
            continue;
        }
        out.plain(&raw[i..p], at + i as u64);
        i = p;
        let rest = &raw[i..];
        let decoded = if rest[0] == b'%' {
            percent_escape(rest, at + i as u64, last, out)
        } else {
            json_escape(rest, at + i as u64, last, out)
        };
        match decoded {
            Some(len) => i += len,
            None => return i,
        }
    }
    out.plain(&raw[i..], at + i as u64);
    raw.len()
}

/// Decodes the JSON escape that `rest` starts with (at raw offset `at`): its raw length, or
/// None when it may go on in input still to come. A malformed one is a plain backslash.
fn json_escape(rest: &[u8], at: u64, last: bool, out: &mut Decoded) -> Option<usize> {
    if !last && json_escape_incomplete(rest) {
        return None;
    }
    let simple = match rest.get(1) {
        Some(b'"') => Some(b'"'),
        Some(b'\\') => Some(b'\\'),
        Some(b'/') => Some(b'/'),
        Some(b'b') => Some(8),
        Some(b'f') => Some(12),
        Some(b'n') => Some(b'\n'),
        Some(b'r') => Some(b'\r'),
        Some(b't') => Some(b'\t'),
        _ => None,
    };
    if let Some(b) = simple {
        out.escaped(b, at, 2);
        return Some(2);
    }
    let Some((c, len)) = unicode_escape(rest) else {
        out.plain(&rest[..1], at);
        return Some(1);
    };
    let mut utf8 = [0u8; 4];
    match c.encode_utf8(&mut utf8).as_bytes() {
        &[b] => out.escaped(b, at, len as u64),
        bytes => out.escaped_many(bytes, at),
    }
    Some(len)
}

/// Decodes the `%XX` escape that `rest` starts with, as `json_escape` does.
fn percent_escape(rest: &[u8], at: u64, last: bool, out: &mut Decoded) -> Option<usize> {
    if !last && rest.len() < 3 {
        return None;
    }
    if !is_percent_escape(rest) {
        out.plain(&rest[..1], at);
        return Some(1);
    }
    out.escaped(hex_value(rest[1]) << 4 | hex_value(rest[2]), at, 3);
    Some(3)
}

/// Whether `rest`, the end of the bytes so far, may be an escape whose rest is still to come:
/// a match that ends just before it may yet take it.
pub fn is_cut_escape(rest: &[u8]) -> bool {
    match rest.first() {
        Some(b'%') => rest.len() < 3,
        Some(b'\\') => json_escape_incomplete(rest),
        _ => false,
    }
}

/// Whether `rest` (starting with `\`) may be the start of an escape that is not all there.
fn json_escape_incomplete(rest: &[u8]) -> bool {
    match rest.get(1) {
        None => true,
        Some(b'u') if rest.len() < 6 => true,
        // A high surrogate waits for its low half.
        Some(b'u') => {
            rest.len() < 12
                && std::str::from_utf8(&rest[2..6])
                    .ok()
                    .and_then(|h| u32::from_str_radix(h, 16).ok())
                    .is_some_and(|c| (0xD800..0xDC00).contains(&c))
        }
        _ => false,
    }
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

/// Decodes one run of base64 characters (standard or URL-safe alphabet, padding optional)
/// if it can wrap a secret: long enough, and with both upper- and lower-case letters, which
/// base64 of text always has and hex digests, ids and words do not. The decoded byte `k`
/// comes from raw characters `4k/3 ..= 4k/3 + 1` of the run.
pub fn base64_decode_run(run: &[u8]) -> Option<Vec<u8>> {
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new()
            .with_decode_padding_mode(DecodePaddingMode::Indifferent)
            .with_decode_allow_trailing_bits(true),
    );
    // Both cases, in one pass the compiler vectorizes (ids and digests in JSON are runs too).
    const UPPER: u8 = 1;
    const LOWER: u8 = 2;
    let cases = run.iter().fold(0, |cases, b| {
        cases
            | match b {
                b'A'..=b'Z' => UPPER,
                b'a'..=b'z' => LOWER,
                _ => 0,
            }
    });
    if run.len() < MIN_BASE64_RUN || cases != UPPER | LOWER {
        return None;
    }
    // A lone trailing character cannot be decoded; 2 or 3 can (padding is optional).
    let usable = if run.len() % 4 == 1 {
        run.len() - 1
    } else {
        run.len()
    };
    let text: Vec<u8> = run[..usable]
        .iter()
        .map(|&b| match b {
            b'-' => b'+',
            b'_' => b'/',
            b => b,
        })
        .collect();
    LENIENT.decode(&text).ok()
}

/// The raw span (relative to the run) of decoded bytes `decoded` of a base64 run.
pub fn base64_raw_span(decoded: Range<usize>, run_len: usize) -> Range<usize> {
    decoded.start * 4 / 3..(decoded.end * 4).div_ceil(3).min(run_len)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(raw: &[u8]) -> Decoded {
        let mut out = Decoded::new(0);
        assert_eq!(unescape(raw, 0, true, &mut out), raw.len());
        out
    }

    #[test]
    fn json_escapes_map_back_to_raw() {
        let raw = br#"{"u":"https:\/\/x\u0041y"}"#;
        let v = decode_all(raw);
        assert_eq!(v.bytes, br#"{"u":"https://xAy"}"#);
        let a = v.bytes.iter().position(|&b| b == b'A').unwrap();
        let span = v.raw_span(a..a + 1, raw.len() as u64);
        assert_eq!(&raw[span.start as usize..span.end as usize], br"\u0041");
        let emoji = decode_all(br"\uD83D\uDE00!");
        assert_eq!(emoji.bytes, "😀!".as_bytes());
        assert_eq!(emoji.raw_span(0..4, 13), 0..12);
    }

    #[test]
    fn decoding_resumes_inside_an_escape() {
        let raw = br#"a\u0041\uD83D\uDE00\/b%2Bc%4"#;
        for split in 0..=raw.len() {
            let mut out = Decoded::new(0);
            let used = unescape(&raw[..split], 0, false, &mut out);
            let rest = [&raw[used..split], &raw[split..]].concat();
            unescape(&rest, used as u64, true, &mut out);
            assert_eq!(out.bytes, "aA😀/b+c%4".as_bytes(), "split {split}");
        }
    }

    proptest::proptest! {
        /// Every decoded byte maps back to the raw bytes that made it (the whole escape),
        /// wherever the input is split.
        #[test]
        fn every_decoded_byte_maps_to_its_raw_source(
            tokens in proptest::collection::vec(0usize..10, 0..40),
            split in 0usize..400,
        ) {
            // (raw text, decoded bytes) of each kind of token.
            // Single-byte plain tokens only, none a hex digit: a lone `%` stays plain.
            const KINDS: [(&str, &[u8]); 10] = [
                ("x", b"x"),
                ("Z", b"Z"),
                ("\\/", b"/"),
                ("\\n", b"\n"),
                ("\\\\", b"\\"),
                ("\\u0041", b"A"),
                ("\\u00e9", "\u{e9}".as_bytes()),
                ("\\uD83D\\uDE00", "\u{1F600}".as_bytes()),
                ("%2F", b"/"),
                ("%", b"%"),
            ];
            let (mut raw, mut starts) = (String::new(), Vec::new());
            for &t in &tokens {
                let (text, bytes) = KINDS[t];
                starts.extend(std::iter::repeat_n(raw.len() as u64, bytes.len()));
                raw.push_str(text);
            }
            let raw = raw.as_bytes();
            let split = split.min(raw.len());
            let mut out = Decoded::new(0);
            let used = unescape(&raw[..split], 0, false, &mut out);
            let rest = [&raw[used..split], &raw[split..]].concat();
            unescape(&rest, used as u64, true, &mut out);
            proptest::prop_assert_eq!(out.bytes.len(), starts.len());
            for k in 0..starts.len() {
                let end = starts.get(k + 1).copied().unwrap_or(raw.len() as u64);
                proptest::prop_assert_eq!(
                    out.raw_span(k..k + 1, raw.len() as u64),
                    starts[k]..end,
                    "byte {} of {:?}", k, String::from_utf8_lossy(raw)
                );
            }
        }
    }

    #[test]
    fn percent_escapes_map_back_to_raw() {
        let v = decode_all(b"a%2Bb%zz+%+1");
        assert_eq!(v.bytes, b"a+b%zz+%+1");
        assert_eq!(v.raw_span(1..2, 9), 1..4);
    }

    #[test]
    fn base64_runs_decode_with_either_alphabet() {
        let run = b"dXNlcjpodW50ZXIyLXN1cGVyLXNlY3JldA==";
        let decoded = base64_decode_run(run).unwrap();
        assert_eq!(decoded, b"user:hunter2-super-secret");
        // "hunter2" is bytes 5..12 of the decoded text: characters 6..16 of the run.
        assert_eq!(base64_raw_span(5..12, run.len()), 6..16);
        assert!(base64_decode_run(b"dGVzdA").is_none(), "too short");
        let hex = b"0123456789abcdef0123456789abcdef";
        assert!(base64_decode_run(hex).is_none(), "hex is not base64 text");
    }
}
