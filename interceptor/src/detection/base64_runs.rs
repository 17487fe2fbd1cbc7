//! Finding runs of base64 characters long enough to wrap a secret. Text is mostly letters,
//! so a byte-at-a-time walk touches much of the stream. Instead: a run of 24 or more holds
//! two whole adjacent 8-byte lanes (counted from any origin), so the search looks for such a
//! pair, 64 bytes at a time (one 128-entry table lookup per byte with AVX-512 VBMI, else
//! AVX2 nibble lookups; one compare per lane), and only then finds the ends of the one run
//! around it, 32 bytes at a time. Most text has no such pair; JSON has ids and digests (hex,
//! UUIDs) that do.

use std::ops::Range;

/// Base64 runs shorter than this are not decoded (a 16-byte secret is 24 characters).
pub const MIN_BASE64_RUN: usize = 24;

/// Characters of the standard and URL-safe base64 alphabets.
const BASE64_CHARS: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric() || matches!(c, b'+' | b'/' | b'-' | b'_');
        b += 1;
    }
    table
};

fn is_base64(b: u8) -> bool {
    BASE64_CHARS[b as usize]
}

/// Bytes per lane: a run of `MIN_BASE64_RUN` covers at least two whole lanes.
const LANE: usize = 8;

/// The next run of at least `MIN_BASE64_RUN` base64 characters in `raw` that starts at or
/// after `from` (`from` is at a run boundary).
pub fn next_base64_run(raw: &[u8], from: usize) -> Option<Range<usize>> {
    let mut at = from;
    // Each pair found lies in the next run that may be long enough; shorter ones are passed.
    while let Some(pair) = first_full_pair(raw, at) {
        let start = run_start(raw, at, pair);
        let end = run_end(raw, pair);
        if end - start >= MIN_BASE64_RUN {
            return Some(start..end);
        }
        at = end;
    }
    None
}

/// Where the first two adjacent whole lanes of base64 characters (lanes counted from `at`)
/// start.
fn first_full_pair(raw: &[u8], at: usize) -> Option<usize> {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx512vbmi") {
        // SAFETY: the CPU has AVX-512 VBMI (and so F and BW).
        return unsafe { avx512::first_full_pair(raw, at) };
    }
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2.
        return unsafe { avx2::first_full_pair(raw, at) };
    }
    pair_from(raw, at, false)
}

/// `first_full_pair` a lane at a time; `prev_full` says whether the lane before `at` was
/// whole.
fn pair_from(raw: &[u8], at: usize, mut prev_full: bool) -> Option<usize> {
    for (k, lane) in raw[at..].chunks_exact(LANE).enumerate() {
        let full = lane.iter().all(|&b| is_base64(b));
        if full && prev_full {
            return Some(at + k * LANE - LANE);
        }
        prev_full = full;
    }
    None
}

/// Where the run of base64 characters that ends `raw` starts (`raw.len()` if none does).
pub fn trailing_base64_start(raw: &[u8]) -> usize {
    run_start(raw, 0, raw.len())
}

/// Where the run of base64 characters that ends at `end` starts (not before `from`).
fn run_start(raw: &[u8], from: usize, mut end: usize) -> usize {
    while end >= from + 32 {
        match base64_mask(&raw[end - 32..end]) {
            Some(u32::MAX) => end -= 32,
            Some(mask) => return end - mask.leading_ones() as usize,
            None => break,
        }
    }
    raw[from..end]
        .iter()
        .rposition(|&b| !is_base64(b))
        .map_or(from, |p| from + p + 1)
}

/// Where the run of base64 characters from `start` on ends.
pub fn run_end(raw: &[u8], mut start: usize) -> usize {
    while start + 32 <= raw.len() {
        match base64_mask(&raw[start..start + 32]) {
            Some(u32::MAX) => start += 32,
            Some(mask) => return start + mask.trailing_ones() as usize,
            None => break,
        }
    }
    raw[start..]
        .iter()
        .position(|&b| !is_base64(b))
        .map_or(raw.len(), |p| start + p)
}

/// Bit k set when byte k of `v` (32 bytes) is a base64 character; None without AVX2.
fn base64_mask(v: &[u8]) -> Option<u32> {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2.
        return Some(unsafe { avx2::base64_bytes(v) });
    }
    None
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    // A byte is a base64 character when the classes its high nibble allows and those its
    // low nibble allows share a bit.
    /// `+ - /`: 0x2B, 0x2D, 0x2F.
    const SIGN: u8 = 1;
    /// `0-9`: 0x30..=0x39.
    const DIGIT: u8 = 2;
    /// `A-O`, `a-o`: 0x41..=0x4F, 0x61..=0x6F.
    const LETTER_LOW: u8 = 4;
    /// `P-Z`, `p-z`: 0x50..=0x5A, 0x70..=0x7A.
    const LETTER_HIGH: u8 = 8;
    /// `_`: 0x5F.
    const UNDERSCORE: u8 = 16;

    const BY_HIGH_NIBBLE: [u8; 16] = [
        0,
        0,
        SIGN,
        DIGIT,
        LETTER_LOW,
        LETTER_HIGH | UNDERSCORE,
        LETTER_LOW,
        LETTER_HIGH,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
    ];

    const BY_LOW_NIBBLE: [u8; 16] = {
        let mut table = [0u8; 16];
        let mut low = 0;
        while low < 16 {
            let l = low as u8;
            table[low] = if matches!(l, 0xB | 0xD | 0xF) {
                SIGN
            } else {
                0
            } | if l <= 9 { DIGIT } else { 0 }
                | if l >= 1 { LETTER_LOW } else { 0 }
                | if l <= 0xA { LETTER_HIGH } else { 0 }
                | if l == 0xF { UNDERSCORE } else { 0 };
            low += 1;
        }
        table
    };

    #[target_feature(enable = "avx2")]
    pub(super) fn first_full_pair(raw: &[u8], at: usize) -> Option<usize> {
        let mut prev_full = false;
        let mut i = at;
        // 64 bytes (eight lanes) per step: one branch for both halves.
        while i + 64 <= raw.len() {
            let full = whole_lanes(&raw[i..i + 32]) | whole_lanes(&raw[i + 32..i + 64]) << 4;
            if let Some(pair) = super::pair_in(full << 1 | u32::from(prev_full), i) {
                return Some(pair);
            }
            prev_full = full & 0x80 != 0;
            i += 64;
        }
        super::pair_from(raw, i, prev_full)
    }

    /// Bit k set when the 8 bytes of lane k of `v` (32 bytes) are all base64 characters.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(super) fn whole_lanes(v: &[u8]) -> u32 {
        let whole = _mm256_cmpeq_epi64(not_base64(v), _mm256_setzero_si256());
        _mm256_movemask_pd(_mm256_castsi256_pd(whole)) as u32
    }

    /// Bit k set when byte k of `v` (32 bytes) is a base64 character.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(super) fn base64_bytes(v: &[u8]) -> u32 {
        !(_mm256_movemask_epi8(not_base64(v)) as u32)
    }

    /// 0xFF in each byte of `v` (32 bytes) that is not a base64 character, 0 elsewhere.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn not_base64(v: &[u8]) -> __m256i {
        assert_eq!(v.len(), 32);
        // SAFETY: the two tables are 16 bytes and `v` 32, so every load is in bounds.
        unsafe {
            let by_high =
                _mm256_broadcastsi128_si256(_mm_loadu_si128(BY_HIGH_NIBBLE.as_ptr().cast()));
            let by_low =
                _mm256_broadcastsi128_si256(_mm_loadu_si128(BY_LOW_NIBBLE.as_ptr().cast()));
            let nibble = _mm256_set1_epi8(0x0F);
            let v = _mm256_loadu_si256(v.as_ptr().cast());
            // Bytes from 0x80 have a high nibble from 8: no class.
            let high = _mm256_and_si256(_mm256_srli_epi16(v, 4), nibble);
            let low = _mm256_and_si256(v, nibble);
            let classes = _mm256_and_si256(
                _mm256_shuffle_epi8(by_high, high),
                _mm256_shuffle_epi8(by_low, low),
            );
            _mm256_cmpeq_epi8(classes, _mm256_setzero_si256())
        }
    }
}

/// Bits 1 to 8: which of the eight lanes starting at `at` are whole; bit 0: the lane before
/// `at`. The start of the first adjacent whole pair among them, if any.
fn pair_in(lanes: u32, at: usize) -> Option<usize> {
    let pairs = lanes & (lanes >> 1);
    (pairs != 0).then(|| at + pairs.trailing_zeros() as usize * LANE - LANE)
}

/// 64 bytes a step with one 128-entry table lookup per byte (`vpermi2b`).
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// 0xFF at each ASCII base64 character.
    const TABLE: [u8; 128] = {
        let mut table = [0u8; 128];
        let mut b = 0;
        while b < 128 {
            if super::BASE64_CHARS[b] {
                table[b] = 0xFF;
            }
            b += 1;
        }
        table
    };

    #[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
    pub(super) fn first_full_pair(raw: &[u8], at: usize) -> Option<usize> {
        // SAFETY: the table halves are 64 bytes each.
        let (low, high) = unsafe {
            (
                _mm512_loadu_si512(TABLE.as_ptr().cast()),
                _mm512_loadu_si512(TABLE[64..].as_ptr().cast()),
            )
        };
        let mut prev_full = false;
        let mut i = at;
        while i + 64 <= raw.len() {
            // SAFETY: `raw[i..i + 64]` is in bounds.
            let v = unsafe { _mm512_loadu_si512(raw[i..].as_ptr().cast()) };
            // The lookup takes each byte's low 7 bits; bytes from 0x80 are zeroed instead.
            let ascii = !_mm512_movepi8_mask(v);
            let classes = _mm512_maskz_permutex2var_epi8(ascii, low, v, high);
            let full = u32::from(_mm512_cmpeq_epi64_mask(classes, _mm512_set1_epi8(-1)));
            if let Some(pair) = super::pair_in(full << 1 | u32::from(prev_full), i) {
                return Some(pair);
            }
            prev_full = full & 0x80 != 0;
            i += 64;
        }
        super::pair_from(raw, i, prev_full)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The obvious byte-at-a-time definition.
    fn naive_next_run(raw: &[u8], from: usize) -> Option<Range<usize>> {
        let mut i = from;
        while i < raw.len() {
            if !is_base64(raw[i]) {
                i += 1;
                continue;
            }
            let end = run_end(raw, i);
            if end - i >= MIN_BASE64_RUN {
                return Some(i..end);
            }
            i = end;
        }
        None
    }

    #[test]
    fn lane_and_byte_masks_match_the_table_for_every_byte_in_every_position() {
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") {
            for b in 0..=255u8 {
                for at in 0..32 {
                    let mut v = [b'A'; 32];
                    v[at] = b;
                    let expected = if is_base64(b) {
                        0b1111
                    } else {
                        0b1111 & !(1 << (at / LANE))
                    };
                    // SAFETY: the CPU has AVX2.
                    assert_eq!(unsafe { avx2::whole_lanes(&v) }, expected, "{b:#x} at {at}");
                    let bytes = if is_base64(b) { u32::MAX } else { !(1 << at) };
                    // SAFETY: as above.
                    assert_eq!(unsafe { avx2::base64_bytes(&v) }, bytes, "{b:#x} at {at}");
                }
            }
        }
    }

    type PairSearch = fn(&[u8], usize) -> Option<usize>;

    /// Every vectorized pair search this CPU can run, by name.
    fn vector_pair_searches() -> Vec<(&'static str, PairSearch)> {
        let mut searches: Vec<(&'static str, PairSearch)> = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU has AVX2.
                searches.push(("avx2", |raw, at| unsafe { avx2::first_full_pair(raw, at) }));
            }
            if is_x86_feature_detected!("avx512vbmi") {
                // SAFETY: the CPU has AVX-512 VBMI.
                searches.push(("avx512", |raw, at| unsafe {
                    avx512::first_full_pair(raw, at)
                }));
            }
        }
        searches
    }

    #[test]
    fn vector_pair_searches_agree_with_the_lane_walk_for_every_byte_in_every_position() {
        let searches = vector_pair_searches();
        for b in 0..=255u8 {
            for at in 0..140 {
                let mut raw = [b'A'; 140];
                raw[at] = b;
                for from in [0, 3] {
                    let expected = pair_from(&raw, from, false);
                    for (name, search) in &searches {
                        assert_eq!(search(&raw, from), expected, "{name}: {b:#x} at {at}");
                    }
                }
            }
        }
    }

    #[test]
    fn runs_of_every_length_and_place_are_found_from_every_origin() {
        for from in 0..LANE {
            for start in from..from + 70 {
                for len in 14..=34 {
                    let mut raw = vec![b' '; 120];
                    raw[start..start + len].fill(b'Q');
                    let expected = naive_next_run(&raw, from);
                    assert_eq!(next_base64_run(&raw, from), expected, "{start}+{len}");
                    // The lane walk alone (the fallback without AVX2) finds the same pair.
                    assert_eq!(
                        first_full_pair(&raw, from),
                        pair_from(&raw, from, false),
                        "{start}+{len} from {from}"
                    );
                }
            }
        }
    }

    #[test]
    fn runs_across_block_boundaries_are_found_whole() {
        let mut raw = vec![b' '; 300];
        raw[50..90].fill(b'A'); // crosses the first block boundary
        raw[120..143].fill(b'b'); // 23: too short
        raw[200..264].fill(b'z'); // a whole block and more
        raw[199] = b'9';
        assert_eq!(next_base64_run(&raw, 0), Some(50..90));
        assert_eq!(next_base64_run(&raw, 90), Some(199..264));
        assert_eq!(next_base64_run(&raw, 264), None);
        let tail = [vec![b' '; 10], vec![b'x'; 30]].concat();
        assert_eq!(next_base64_run(&tail, 0), Some(10..40));
    }

    proptest! {
        #[test]
        fn agrees_with_the_byte_walk(
            raw in prop::collection::vec(
                prop_oneof![
                    10 => Just(b'a'), 5 => Just(b'Z'), 5 => Just(b'7'), 2 => Just(b'-'),
                    1 => Just(b' '), 1 => Just(b'"'),
                ],
                0..400,
            ),
            from in 0usize..400,
        ) {
            // `from` must be at a run boundary, as callers guarantee.
            let mut from = from.min(raw.len());
            while from > 0 && from < raw.len() && is_base64(raw[from - 1]) && is_base64(raw[from]) {
                from -= 1;
            }
            prop_assert_eq!(next_base64_run(&raw, from), naive_next_run(&raw, from));
        }

        #[test]
        fn vector_pair_searches_agree_with_the_lane_walk(
            raw in prop::collection::vec(
                prop_oneof![
                    20 => Just(b'a'), 2 => Just(b'/'), 1 => Just(b' '), 1 => Just(0xC1u8),
                ],
                0..400,
            ),
            from in 0usize..400,
        ) {
            let from = from.min(raw.len());
            for (name, search) in vector_pair_searches() {
                prop_assert_eq!(search(&raw, from), pair_from(&raw, from, false), "{}", name);
            }
        }
    }
}
