//! Escape-tolerant forms of the rules, for Hyperscan and the end check: where a pattern can
//! match a byte that encoders escape (`/` as `\/`, `+` as `\u002b`, `@` as `%40`), the
//! form also takes its escapes. One stream then finds secrets as encoders write them, and
//! the confirmation decodes the candidate's window; the decoded view is left for escapes no
//! encoder writes (`%5F`, `\u0067`: obfuscation).
//!
//! Hyperscan's forms are supersets, not exact: a class inside a repeat becomes one wider
//! class (plus the bytes its escapes are made of) with its bounds scaled by the longest
//! escape, so that Hyperscan keeps its fast repeat engines; what matches is decided by the
//! regex. The end check's forms are exact.

use regex_syntax::hir::{Class, ClassBytes, ClassBytesRange, Hir, HirKind, Look, Repetition};
use std::fmt::Write as _;

/// The longest escape of one byte: `\u002b`.
pub const LONGEST_ESCAPE: usize = 6;
/// Bounded repeats scaled past this many bytes become unbounded (Hyperscan compiles large
/// bounded repeats slowly; the regex still bounds the match).
const MAX_SCALED_REPEAT: u32 = 2048;

/// Bytes that encoders escape: JSON (`"`, `\`, `/`, control characters, and `<>&'+=` as
/// `\u00XX` in HTML-safe modes) and URLs (reserved characters, space, a few unsafe ones, and
/// every byte of non-ASCII text).
pub fn is_escaped_by_encoders(b: u8) -> bool {
    !(0x20..0x7f).contains(&b) || b"\"\\/<>&'+= :?#[]@!$()*,;%^`{|}~".contains(&b)
}

/// A Hyperscan pattern for a `%XX` or `\u00XX` escape of a byte that encoders leave as it
/// is (`%5F`, `\u0067`): the escape-tolerant rule forms do not take those, a decoded view
/// does. Run with the rules, it costs no pass of its own over the traffic.
pub fn unusual_escape_pattern() -> String {
    // Every escape spelled out: as `%` or `\u00` before classes of hex digits, the pattern
    // made Hyperscan run an automaton at each `%` and `\` of escaped text (a third more time).
    let cases = |digit: u8| {
        let lower = char::from_digit(digit.into(), 16).unwrap_or('0');
        let mut both = vec![lower, lower.to_ascii_uppercase()];
        both.dedup();
        both
    };
    let mut escapes = Vec::new();
    for b in (0..0x80u8).filter(|&b| !is_escaped_by_encoders(b)) {
        for high in cases(b >> 4) {
            for low in cases(b & 0xf) {
                escapes.push(format!("%{high}{low}"));
                escapes.push(format!(r"\\u00{high}{low}"));
            }
        }
    }
    escapes.join("|")
}

/// `pattern` parsed as the engine reads it: bytes, not Unicode.
pub fn parse(pattern: &str) -> Result<Hir, String> {
    regex_syntax::ParserBuilder::new()
        .unicode(false)
        .utf8(false)
        .build()
        .parse(pattern)
        .map_err(|e| e.to_string())
}

/// How closely a tolerant form follows the pattern.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// Every escape stands for one byte the pattern takes there, and counts as one: for
    /// the end check's lazy DFA.
    Exact,
    /// A superset Hyperscan compiles quickly: a repeated class is widened by the bytes its
    /// members' escapes are made of, its bounds scaled (Hyperscan rejects bounded repeats of
    /// alternations this size).
    Wide,
}

/// The escape-tolerant form of `hir`.
pub fn tolerant(hir: &Hir, precision: Precision) -> Hir {
    let again = |h: &Hir| tolerant(h, precision);
    match hir.kind() {
        HirKind::Literal(lit) => Hir::concat(lit.0.iter().map(|&b| byte(b)).collect()),
        HirKind::Class(class) => match escapable(class) {
            true => Hir::alternation(vec![hir.clone(), escapes_of(class)]),
            false => hir.clone(),
        },
        HirKind::Repetition(rep) => match rep.sub.kind() {
            HirKind::Class(class) if precision == Precision::Wide && escapable(class) => {
                Hir::repetition(Repetition {
                    min: rep.min,
                    max: rep
                        .max
                        .map(|m| m.saturating_mul(LONGEST_ESCAPE as u32))
                        .filter(|&m| m <= MAX_SCALED_REPEAT),
                    greedy: rep.greedy,
                    sub: Box::new(Hir::class(widened(class))),
                })
            }
            _ => Hir::repetition(Repetition {
                sub: Box::new(again(&rep.sub)),
                ..rep.clone()
            }),
        },
        HirKind::Capture(cap) => again(&cap.sub),
        HirKind::Concat(subs) => Hir::concat(subs.iter().map(again).collect()),
        HirKind::Alternation(subs) => Hir::alternation(subs.iter().map(again).collect()),
        // Decoded, an escape is one byte: `\n`, `%20` before a secret is a boundary the
        // raw text hides behind the escape's last letter or digit.
        HirKind::Look(look) if starts_a_word(*look) => {
            Hir::alternation(vec![hir.clone(), escape_ending_in_a_word_byte()])
        }
        HirKind::Empty | HirKind::Look(_) => hir.clone(),
    }
}

/// Whether `look` asks for a word to start (or a boundary, which may be a start).
fn starts_a_word(look: Look) -> bool {
    matches!(
        look,
        Look::WordAscii
            | Look::WordUnicode
            | Look::WordStartAscii
            | Look::WordStartUnicode
            | Look::WordStartHalfAscii
            | Look::WordStartHalfUnicode
    )
}

/// The escapes whose last byte is a word byte (`\n`, `\u0001`, `%0A`): after one, a raw
/// word boundary fails even where the decoded text has one.
fn escape_ending_in_a_word_byte() -> Hir {
    let hex = || Hir::class(class_of(b"0123456789ABCDEFabcdef"));
    Hir::alternation(vec![
        Hir::concat(vec![Hir::literal(*b"\\"), Hir::class(class_of(b"bfnrt"))]),
        Hir::concat(vec![
            Hir::literal(*b"\\u"),
            Hir::repetition(Repetition {
                min: 4,
                max: Some(4),
                greedy: true,
                sub: Box::new(hex()),
            }),
        ]),
        Hir::concat(vec![Hir::literal(*b"%"), hex(), hex()]),
    ])
}

/// The escapes of the bytes of `class` that encoders escape.
fn escapes_of(class: &Class) -> Hir {
    let escaped = escaped_members(class);
    let mut forms = Vec::new();
    let simple: Vec<u8> = escaped.iter().filter_map(|&b| simple_escape(b)).collect();
    if !simple.is_empty() {
        forms.push(Hir::concat(vec![
            Hir::literal(*b"\\"),
            Hir::class(class_of(&simple)),
        ]));
    }
    let ascii: Vec<u8> = escaped.iter().copied().filter(u8::is_ascii).collect();
    if !ascii.is_empty() {
        forms.push(Hir::concat(vec![Hir::literal(*b"\\u00"), hex_pair(&ascii)]));
    }
    forms.push(Hir::concat(vec![Hir::literal(*b"%"), hex_pair(&escaped)]));
    Hir::alternation(forms)
}

/// The letter of a JSON escape like `\n` (or the byte itself: `\/`).
fn simple_escape(b: u8) -> Option<u8> {
    match b {
        b'"' | b'\\' | b'/' => Some(b),
        8 => Some(b'b'),
        12 => Some(b'f'),
        b'\n' => Some(b'n'),
        b'\r' => Some(b'r'),
        b'\t' => Some(b't'),
        _ => None,
    }
}

fn escaped_members(class: &Class) -> Vec<u8> {
    bytes_of(class)
        .iter()
        .flat_map(|r| r.start()..=r.end())
        .filter(|&b| is_escaped_by_encoders(b))
        .collect()
}

/// Two hex digits (either case) whose value is one of `bytes`.
fn hex_pair(bytes: &[u8]) -> Hir {
    let digits = |nibbles: &[u8]| -> Class {
        let mut set = Vec::new();
        for &n in nibbles {
            let c = b"0123456789ABCDEF"[n as usize];
            set.push(c);
            set.push(c.to_ascii_lowercase());
        }
        class_of(&set)
    };
    let alternatives = (0..16u8)
        .filter_map(|high| {
            let lows: Vec<u8> = bytes
                .iter()
                .filter(|&&b| b >> 4 == high)
                .map(|b| b & 15)
                .collect();
            (!lows.is_empty())
                .then(|| Hir::concat(vec![Hir::class(digits(&[high])), Hir::class(digits(&lows))]))
        })
        .collect();
    Hir::alternation(alternatives)
}

/// One byte, and its escapes if encoders escape it.
fn byte(b: u8) -> Hir {
    let lit = Hir::literal([b]);
    match is_escaped_by_encoders(b) {
        true => Hir::alternation(vec![lit, escapes_of(&class_of(&[b]))]),
        false => lit,
    }
}

/// `class` plus every byte the escapes of its members are made of.
fn widened(class: &Class) -> Class {
    let mut extra = vec![b'%'];
    for b in escaped_members(class) {
        for digit in format!("{b:02X}").bytes() {
            extra.extend([digit, digit.to_ascii_lowercase()]);
        }
        if b.is_ascii() {
            extra.extend(b"\\u0");
        }
        if let Some(letter) = simple_escape(b) {
            extra.extend([b'\\', letter]);
        }
    }
    let mut bytes = bytes_of(class);
    bytes.union(&ClassBytes::new(
        extra.iter().map(|&b| ClassBytesRange::new(b, b)),
    ));
    Class::Bytes(bytes)
}

fn escapable(class: &Class) -> bool {
    bytes_of(class)
        .iter()
        .any(|r| (r.start()..=r.end()).any(is_escaped_by_encoders))
}

fn bytes_of(class: &Class) -> ClassBytes {
    match class {
        Class::Bytes(b) => b.clone(),
        // Unicode is off, so only ASCII ranges can come this way.
        Class::Unicode(u) => ClassBytes::new(u.ranges().iter().filter_map(|r| {
            let (s, e) = (r.start() as u32, (r.end() as u32).min(0xff));
            (s <= e).then(|| ClassBytesRange::new(s as u8, e as u8))
        })),
    }
}

fn class_of(bytes: &[u8]) -> Class {
    Class::Bytes(ClassBytes::new(
        bytes.iter().map(|&b| ClassBytesRange::new(b, b)),
    ))
}

/// The stream database's form of `hir`: [`Precision::Wide`], a leading alternation branched
/// out, in Hyperscan's syntax.
pub fn hyperscan_form(hir: &Hir) -> String {
    hyperscan_syntax(&branch_out_leading_alternation(tolerant(
        hir,
        Precision::Wide,
    )))
}

/// Most alternatives a leading alternation may have to be branched out (each copies the
/// rest of the pattern).
const MAX_BRANCHED_OUT: usize = 8;

/// `(?:@|%40)x` as `@x|%40x`: Hyperscan then takes each branch's literal on its own. With
/// the alternation in front it ran an automaton at every `%` and `\` of escaped text; one
/// such form (`url.credentials`, whose stream prefilter starts with `@`) cost a quarter
/// of the whole database's time there.
fn branch_out_leading_alternation(hir: Hir) -> Hir {
    let HirKind::Concat(subs) = hir.kind() else {
        return hir;
    };
    match subs[0].kind() {
        HirKind::Alternation(alternatives) if alternatives.len() <= MAX_BRANCHED_OUT => {
            Hir::alternation(
                alternatives
                    .iter()
                    .map(|first| {
                        Hir::concat(
                            std::iter::once(first.clone())
                                .chain(subs[1..].iter().cloned())
                                .collect(),
                        )
                    })
                    .collect(),
            )
        }
        _ => hir,
    }
}

/// `hir` in Hyperscan's syntax: every byte as `\xHH`, groups non-capturing.
pub fn hyperscan_syntax(hir: &Hir) -> String {
    let mut out = String::new();
    print(hir, &mut out);
    out
}

fn print(hir: &Hir, out: &mut String) {
    match hir.kind() {
        HirKind::Empty => out.push_str("(?:)"),
        HirKind::Literal(lit) => lit.0.iter().for_each(|b| push_byte(*b, out)),
        HirKind::Class(class) => {
            out.push('[');
            for r in bytes_of(class).iter() {
                push_byte(r.start(), out);
                if r.end() > r.start() {
                    out.push('-');
                    push_byte(r.end(), out);
                }
            }
            out.push(']');
        }
        HirKind::Look(look) => out.push_str(match look {
            Look::Start => "\\A",
            Look::End => "\\z",
            Look::StartLF | Look::StartCRLF => "(?m:^)",
            Look::EndLF | Look::EndCRLF => "(?m:$)",
            Look::WordAsciiNegate | Look::WordUnicodeNegate => "\\B",
            _ => "\\b",
        }),
        HirKind::Repetition(rep) => {
            out.push_str("(?:");
            print(&rep.sub, out);
            out.push(')');
            let _ = match rep.max {
                None => write!(out, "{{{},}}", rep.min),
                Some(max) => write!(out, "{{{},{max}}}", rep.min),
            };
            if !rep.greedy {
                out.push('?');
            }
        }
        HirKind::Capture(cap) => print(&cap.sub, out),
        HirKind::Concat(subs) => {
            out.push_str("(?:");
            subs.iter().for_each(|h| print(h, out));
            out.push(')');
        }
        HirKind::Alternation(subs) => {
            out.push_str("(?:");
            for (i, h) in subs.iter().enumerate() {
                if i > 0 {
                    out.push('|');
                }
                print(h, out);
            }
            out.push(')');
        }
    }
}

fn push_byte(b: u8, out: &mut String) {
    let _ = write!(out, "\\x{b:02x}");
}
