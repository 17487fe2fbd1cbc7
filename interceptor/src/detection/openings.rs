//! Whether the end of a text could still be the start of a secret: the question an event
//! stream asks before it lets an event go without waiting for the next one.
//!
//! One forward lazy DFA holds every rule's escape-tolerant pattern, anchored. A position is
//! *open* while the DFA run started there has not died: the bytes from it to the end are a
//! prefix of some match (including a match that still waits for its trailing boundary).
//! Death is permanent as text only grows, so a caller keeps the open positions and checks
//! each new byte once; a run longer than the engine's holdback is dropped, as no match the
//! masker can see is that long.

use regex_automata::hybrid::LazyStateID;
use regex_automata::hybrid::dfa::{Cache, DFA};
use regex_automata::nfa::thompson;
use regex_automata::util::start;
use regex_automata::{Anchored, MatchKind};

use regex_syntax::hir::{Capture, Hir, HirKind, Repetition};

use super::tolerant::{self, Precision};

/// A run is open once it has taken this many bytes. Shorter runs go on: what may leave
/// before the rest of a secret comes is no longer than the prefix masking keeps readable
/// anyway (and is often context in front of the secret: a keyword, a quote), so it shows
/// nothing the mask would not. Without this, text ending in any short word would wait:
/// some rules begin with a class every word fits (`\b[A-Za-z0-9]{14}\.atlasv1\.`), others
/// with a keyword's first letters.
pub const OPEN_AFTER: usize = super::finding::MAX_KEPT_PREFIX + 1;

pub struct Openings(Dfa);

enum Dfa {
    Built(Box<DFA>),
    /// The patterns could not be built into one DFA: every position counts as open (callers
    /// wait for more text or the idle release; never less safe).
    Unchecked,
}

/// The lazy DFA's cache.
pub struct OpeningsCache(Option<Cache>);

impl Openings {
    pub(super) fn new<'a>(patterns: impl Iterator<Item = &'a str>) -> Openings {
        let mut hirs = Vec::new();
        for p in patterns {
            let Ok(hir) = tolerant::parse(p) else {
                tracing::warn!(pattern = p, "a rule's openings cannot be checked");
                return Openings(Dfa::Unchecked);
            };
            hirs.push(loosened(&tolerant::tolerant(&hir, Precision::Exact)));
        }
        Openings(dfa(&hirs).map_or(Dfa::Unchecked, |dfa| Dfa::Built(Box::new(dfa))))
    }

    pub fn cache(&self) -> OpeningsCache {
        OpeningsCache(match &self.0 {
            Dfa::Built(dfa) => Some(dfa.create_cache()),
            Dfa::Unchecked => None,
        })
    }

    /// Whether a run started at `at` in `text` is alive at its end (the byte before `at`, if
    /// any, is the look-behind for `\b` and the like).
    fn alive(&self, cache: &mut OpeningsCache, text: &[u8], at: usize) -> bool {
        let Dfa::Built(dfa) = &self.0 else {
            return true;
        };
        let cache = cache.0.as_mut().expect("made with the DFA");
        let config = start::Config::new()
            .anchored(Anchored::Yes)
            .look_behind(at.checked_sub(1).map(|i| text[i]));
        // A cache that gave up proves nothing: the position stays open.
        let Ok(mut state) = dfa.start_state(cache, &config) else {
            return true;
        };
        for &b in &text[at..] {
            match dfa.next_state(cache, state, b) {
                Ok(next) if next.is_dead() => return false,
                Ok(next) if next.is_quit() => return true,
                Ok(next) => state = next,
                Err(_) => return true,
            }
        }
        // A match state reports a match that ended a byte ago (the DFA's delay): the run is
        // over unless some next byte could still lead on to a longer one.
        !state.is_match() || leads_on(dfa, cache, state)
    }
}

fn dfa(hirs: &[Hir]) -> Option<DFA> {
    if hirs.is_empty() {
        return None;
    }
    let built = thompson::Compiler::new()
        .configure(
            thompson::Config::new()
                .utf8(false)
                .which_captures(thompson::WhichCaptures::None),
        )
        .build_many_from_hir(hirs)
        .map_err(|e| e.to_string())
        .and_then(|nfa| {
            DFA::builder()
                .configure(
                    DFA::config()
                        .match_kind(MatchKind::All)
                        .starts_for_each_pattern(false)
                        .cache_capacity(4 << 20),
                )
                .build_from_nfa(nfa)
                .map_err(|e| e.to_string())
        });
    built
        .inspect_err(|e| {
            tracing::warn!(error = %e, "secret openings cannot be checked: streamed events wait for more text")
        })
        .ok()
}

/// Whether any byte leads `state` to a live state.
fn leads_on(dfa: &DFA, cache: &mut Cache, state: LazyStateID) -> bool {
    dfa.byte_classes().representatives(..).any(|unit| {
        let Some(b) = unit.as_u8() else {
            return false;
        };
        dfa.next_state(cache, state, b).is_ok_and(|n| !n.is_dead())
    })
}

/// Repeats longer than this are made unbounded (a larger language: positions can only be
/// open more often), so that every rule fits one small lazy DFA: a PEM body's `{64,7000}`
/// would otherwise need thousands of states per character class.
const LONGEST_COUNTED_REPEAT: u32 = 64;

fn loosened(hir: &Hir) -> Hir {
    match hir.kind() {
        HirKind::Repetition(r) => {
            let long = r.max.is_none_or(|max| max > LONGEST_COUNTED_REPEAT);
            Hir::repetition(Repetition {
                min: if long {
                    r.min.min(LONGEST_COUNTED_REPEAT)
                } else {
                    r.min
                },
                max: if long { None } else { r.max },
                greedy: r.greedy,
                sub: Box::new(loosened(&r.sub)),
            })
        }
        HirKind::Capture(c) => Hir::capture(Capture {
            index: c.index,
            name: c.name.clone(),
            sub: Box::new(loosened(&c.sub)),
        }),
        HirKind::Concat(all) => Hir::concat(all.iter().map(loosened).collect()),
        HirKind::Alternation(all) => Hir::alternation(all.iter().map(loosened).collect()),
        _ => hir.clone(),
    }
}

/// The open positions of one growing text, checked incrementally.
#[derive(Default)]
pub struct OpenTail {
    /// Stream offsets of the runs still alive, in order.
    alive: Vec<u64>,
    /// Every position before this has been started.
    started: u64,
}

impl OpenTail {
    /// Updates the runs for `text`, the last bytes of the stream, which start at stream
    /// offset `base` (and hold at least `limit` bytes before the end, or all of it); returns
    /// the first open position (see [`OPEN_AFTER`]). Runs longer than `limit` are dropped.
    pub fn update(
        &mut self,
        openings: &Openings,
        cache: &mut OpeningsCache,
        text: &[u8],
        base: u64,
        limit: usize,
    ) -> Option<u64> {
        let end = base + text.len() as u64;
        let oldest = end.saturating_sub(limit as u64).max(base);
        let at = |p: u64| (p - base) as usize;
        self.alive
            .retain(|&p| p >= oldest && openings.alive(cache, text, at(p)));
        for p in self.started.max(oldest)..end {
            if openings.alive(cache, text, at(p)) {
                self.alive.push(p);
            }
        }
        self.started = end;
        (self.alive.iter().copied()).find(|&p| (end - p) as usize >= OPEN_AFTER)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn openings() -> Openings {
        Openings::new(
            [
                r"\b((?:AKIA|ASIA)[A-Z2-7]{16})\b",
                r"(?i)\b(?:password|pass)\s{0,3}[:=]\s{0,3}([^\s]{8,64})",
                r"\b([A-Za-z0-9]{14}\.atlasv1\.[A-Za-z0-9]{60,70})",
            ]
            .into_iter(),
        )
    }

    fn first_open(text: &str) -> Option<u64> {
        let o = openings();
        let mut cache = o.cache();
        OpenTail::default().update(&o, &mut cache, text.as_bytes(), 0, 4096)
    }

    #[test]
    fn a_prefix_of_a_secret_is_open_where_it_starts() {
        assert_eq!(first_open("the key is AKIA4UAV"), Some(11));
        assert_eq!(first_open("then PassWord: "), Some(5));
        // Up to four bytes go (context, or what masking keeps readable of a secret).
        assert_eq!(first_open("the end "), None);
        assert_eq!(first_open("a key: A"), None);
        assert_eq!(first_open("x AKIA"), None);
        assert_eq!(first_open("x AKIA4"), Some(2));
        // A whole key waits for the boundary after it.
        assert_eq!(first_open("x AKIA4UAVNHXTUL3D4D4U"), Some(2));
    }

    #[test]
    fn ordinary_text_and_dead_prefixes_are_not() {
        assert_eq!(first_open("Hello, how can I help you today? "), None);
        assert_eq!(first_open("x AKIA4UAVNHXTUL3D4D4U "), None);
        // No word boundary before it: never a match.
        assert_eq!(first_open("xAKIA4U "), None);
        assert_eq!(first_open("AKIA4u "), None);
    }

    #[test]
    fn a_rule_every_word_fits_is_open_only_past_the_kept_prefix() {
        assert_eq!(first_open("see you then"), None);
        assert_eq!(first_open("see you today"), Some(8));
        assert_eq!(first_open("id Ab3dEf5gH7jK9"), Some(3));
        assert_eq!(first_open("id Ab3dEf5gH7jK9mN1pQ"), None);
    }

    #[test]
    fn escaped_prefixes_are_open_too() {
        // JSON-in-a-string (a tool call's arguments) escapes what follows the key.
        assert_eq!(first_open(r"x pass:\thunt"), Some(2));
        // After an escape (the tolerant form may start at its backslash).
        assert!(matches!(first_open(r"x \npass"), Some(2..=4)));
    }

    #[test]
    fn growing_text_is_checked_once_per_byte_and_agrees_with_a_fresh_check() {
        let o = openings();
        let mut cache = o.cache();
        let mut tail = OpenTail::default();
        let text = "one AKIA4UAV two pass= hunter2hunter2 three";
        for end in 1..=text.len() {
            let got = tail.update(&o, &mut cache, &text.as_bytes()[..end], 0, 4096);
            assert_eq!(
                got,
                first_open(&text[..end]),
                "at {end}: {:?}",
                &text[..end]
            );
        }
    }
}
