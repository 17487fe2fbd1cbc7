//! Finding runs of base64 characters long enough to wrap a secret. Text is mostly letters,
//! so a byte-at-a-time walk touches much of the stream; instead each 64-byte block becomes a
//! bitmask of base64 characters (two AVX2 nibble lookups per 32 bytes), and a few shifts
//! tell whether it holds a long enough run. Most blocks hold none and cost a dozen
//! instructions.

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

/// The next run of at least `MIN_BASE64_RUN` base64 characters in `raw` that starts at or
/// after `from` (`from` is at a run boundary).
pub fn next_base64_run(raw: &[u8], from: usize) -> Option<Range<usize>> {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2.
        return unsafe { avx2::next_base64_run(raw, from) };
    }
    find_run(raw, from, scalar_mask)
}

/// `next_base64_run` with `mask_of` turning each block of at most 64 bytes into a bitmask
/// (inlined, so that a SIMD caller's target features reach the mask).
#[inline(always)]
fn find_run(raw: &[u8], from: usize, mask_of: impl Fn(&[u8]) -> u64) -> Option<Range<usize>> {
    // Start of a run that reaches the current block from the ones before.
    let mut open: Option<usize> = None;
    let mut at = from;
    while at < raw.len() {
        let block = &raw[at..raw.len().min(at + 64)];
        let n = block.len();
        let mut mask = mask_of(block);
        if let Some(start) = open.take() {
            let lead = mask.trailing_ones() as usize;
            if lead == 64 {
                open = Some(start);
                at += 64;
                continue;
            }
            if at + lead - start >= MIN_BASE64_RUN {
                return Some(start..at + lead);
            }
            // Bit `lead` is clear: the open run ends there.
            mask &= !0u64 << lead;
        }
        let long = if may_hold_run(mask) {
            run_starts(mask, MIN_BASE64_RUN as u32)
        } else {
            0
        };
        if long != 0 {
            let start = at + long.trailing_zeros() as usize;
            return Some(start..run_end(raw, start));
        }
        // A shorter run that reaches the end of the block may go on in the next one.
        let top = (mask << (64 - n)).leading_ones() as usize;
        if top > 0 {
            open = Some(at + n - top);
        }
        at += n;
    }
    open.filter(|&start| raw.len() - start >= MIN_BASE64_RUN)
        .map(|start| start..raw.len())
}

/// Where the run of base64 characters that ends `raw` starts (`raw.len()` if none does).
pub fn trailing_base64_start(raw: &[u8]) -> usize {
    raw.iter()
        .rposition(|&b| !is_base64(b))
        .map_or(0, |p| p + 1)
}

fn run_end(raw: &[u8], start: usize) -> usize {
    raw[start..]
        .iter()
        .position(|&b| !is_base64(b))
        .map_or(raw.len(), |p| start + p)
}

/// Whether `mask` may hold a run of `MIN_BASE64_RUN` (24) set bits: such a run covers two
/// adjacent whole bytes. Cheaper than `run_starts`, and false for most blocks of text.
fn may_hold_run(mask: u64) -> bool {
    const LOW: u64 = 0x0101_0101_0101_0101;
    let clear = !mask;
    // The high bit of each byte of `clear` that is zero (and, from the borrow, maybe of the
    // byte above one: a false positive that `run_starts` then rules out).
    let full = clear.wrapping_sub(LOW) & !clear & (LOW << 7);
    full & (full >> 8) != 0
}

/// Bit i set when bits i .. i + len of `mask` are all set (within the 64 bits).
fn run_starts(mask: u64, len: u32) -> u64 {
    let (mut runs, mut have) = (mask, 1);
    while have * 2 <= len {
        runs &= runs >> have;
        have *= 2;
    }
    if have < len {
        runs &= runs >> (len - have);
    }
    runs
}

/// Bit i set when `block[i]` is a base64 character (`block` is at most 64 bytes).
fn scalar_mask(block: &[u8]) -> u64 {
    block
        .iter()
        .enumerate()
        .fold(0, |m, (i, &b)| m | (u64::from(is_base64(b)) << i))
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;
    use std::ops::Range;

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
    pub(super) fn next_base64_run(raw: &[u8], from: usize) -> Option<Range<usize>> {
        super::find_run(raw, from, |block| {
            if block.len() == 64 {
                mask64(block)
            } else {
                super::scalar_mask(block)
            }
        })
    }

    /// `super::scalar_mask` for exactly 64 bytes.
    #[target_feature(enable = "avx2")]
    pub(super) fn mask64(block: &[u8]) -> u64 {
        assert_eq!(block.len(), 64);
        // SAFETY: the two tables are 16 bytes and the block 64, so every load is in bounds.
        unsafe {
            let by_high =
                _mm256_broadcastsi128_si256(_mm_loadu_si128(BY_HIGH_NIBBLE.as_ptr().cast()));
            let by_low =
                _mm256_broadcastsi128_si256(_mm_loadu_si128(BY_LOW_NIBBLE.as_ptr().cast()));
            let nibble = _mm256_set1_epi8(0x0F);
            let mut mask = 0u64;
            for (i, half) in block.chunks_exact(32).enumerate() {
                let v = _mm256_loadu_si256(half.as_ptr().cast());
                // Bytes from 0x80 have a high nibble from 8: no class.
                let high = _mm256_and_si256(_mm256_srli_epi16(v, 4), nibble);
                let low = _mm256_and_si256(v, nibble);
                let classes = _mm256_and_si256(
                    _mm256_shuffle_epi8(by_high, high),
                    _mm256_shuffle_epi8(by_low, low),
                );
                let none = _mm256_cmpeq_epi8(classes, _mm256_setzero_si256());
                mask |= u64::from(!(_mm256_movemask_epi8(none) as u32)) << (32 * i);
            }
            mask
        }
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
    fn mask_matches_the_table_for_every_byte() {
        for b in 0..=255u8 {
            let block = [b; 64];
            let expected = if is_base64(b) { !0 } else { 0 };
            assert_eq!(scalar_mask(&block), expected, "byte {b:#x}");
            #[cfg(target_arch = "x86_64")]
            if is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU has AVX2.
                assert_eq!(unsafe { avx2::mask64(&block) }, expected, "byte {b:#x}");
            }
        }
        // Every byte value in every lane.
        for shift in 0..=255u8 {
            let block: Vec<u8> = (0..64u8)
                .map(|i| i.wrapping_mul(4).wrapping_add(shift))
                .collect();
            #[cfg(target_arch = "x86_64")]
            if is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU has AVX2.
                assert_eq!(unsafe { avx2::mask64(&block) }, scalar_mask(&block));
            }
        }
    }

    #[test]
    fn the_prefilter_never_misses_a_run() {
        for start in 0..=40 {
            for len in 24..=64 - start {
                let mask = (!0u64 >> (64 - len)) << start;
                assert!(may_hold_run(mask), "run {start}+{len}");
                assert!(
                    may_hold_run(mask | 0x5555_0000_0000_5555),
                    "run {start}+{len}"
                );
            }
        }
        assert!(!may_hold_run(0x00FF_00FF_00FF_00FF));
        assert!(!may_hold_run(0x7FFF_7FFF_7FFF_7FFF));
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
    }
}
