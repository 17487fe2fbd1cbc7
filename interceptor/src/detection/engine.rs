//! All rules compiled into one Hyperscan database per mode (block; stream, in the rules'
//! escape-tolerant forms and with their stream prefilters), with the `regex` crate
//! confirming each candidate on a bounded window (decoded, if it holds an escape) and
//! finding the secret's exact span.
//!
//! Hyperscan runs without start-of-match tracking: it reports where a candidate ends, and the
//! rule's regex re-runs on the bytes that can hold a match ending there (at most the rule's
//! width back). That keeps every pattern compilable (SOM rejects some bounded repeats) and the
//! stream state small, and the regex work is proportional to candidates, not to traffic.

use std::ops::Range;
use std::sync::Arc;

use hyperscan::prelude::*;

use super::databases::{Databases, Forms};
use super::db_cache::DatabaseCache;
use super::decode::{self, Decoded};
use super::end_check::EndCheck;
use super::openings::Openings;
use super::rules::Rule;
use super::scratch::{LentScratch, ScratchPool};
use super::tolerant::{self, LONGEST_ESCAPE, Precision};

/// Widest match a rule may have: it bounds how much of a stream is held back for scanning.
pub const MAX_RULE_WIDTH: usize = 8192;
/// Upper bound on the tail a masker holds back.
pub const MAX_HOLDBACK: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("rule {id}: {message}")]
    Rule { id: String, message: String },
    #[error("compiling the rule database: {0}")]
    Database(hyperscan::Error),
    #[error("no rules")]
    NoRules,
}

#[derive(Debug, thiserror::Error)]
#[error("scanning: {0}")]
pub struct ScanError(#[from] pub hyperscan::Error);

/// A rule ready to confirm candidates.
pub struct CompiledRule {
    pub id: Arc<str>,
    pub name: String,
    regex: regex::bytes::Regex,
    /// Lower-cased.
    keywords: Vec<Vec<u8>>,
    min_entropy: Option<f64>,
    /// Widest match in bytes (capped at `MAX_RULE_WIDTH`).
    pub width: usize,
    /// For a rule with a prefilter: which of its ends the pattern can have.
    end_check: Option<EndCheck>,
}

/// A confirmed secret in a buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Detection {
    /// Index into `Engine::rules`.
    pub rule: usize,
    /// The capture: the secret itself.
    pub secret: Range<usize>,
}

pub struct Engine {
    rules: Vec<CompiledRule>,
    block: BlockDatabase,
    pub(super) stream: StreamingDatabase,
    /// Each rule's width, shared by every candidate table.
    widths: Arc<[u64]>,
    scratches: Arc<ScratchPool>,
    holdback: usize,
    /// Literals that are never secrets (vault placeholders): a match that holds one is not
    /// a finding, so the vault can still swap it after masking.
    exempt: Vec<Vec<u8>>,
    /// Built on first use (by event streams only).
    openings: std::sync::OnceLock<Openings>,
}

/// The candidate ends Hyperscan reported during one scan, per rule, grouped into clusters
/// of ends less than the rule's width apart: each cluster is confirmed on one window, and a
/// rule that matches at both ends of a large buffer does not make one window of all of it.
///
/// Every masker (one per body, header block and WebSocket control frame) has a few of these
/// and most never see a candidate, so the per-rule tables are sized on first use.
#[derive(Default)]
pub(super) struct Candidates {
    /// Current cluster per rule: (first end, last end); (0, 0) when none. Empty until a hit.
    ends: Vec<(u64, u64)>,
    /// The engine's rule widths.
    widths: Arc<[u64]>,
    touched: Vec<u32>,
    closed: Vec<(usize, u64, u64)>,
    /// Lazy DFA caches for the rules' end checks, each made on first use (boxed: a cache is a
    /// few hundred bytes). Empty until the first end check.
    end_caches: Vec<Option<Box<regex_automata::hybrid::dfa::Cache>>>,
    /// A stream scan has met an escape that no encoder writes (see [`unusual_escape_signal`]).
    pub(super) unusual_escape: bool,
}

impl Candidates {
    /// Hyperscan reported `rule` ending at stream offset `end` in `data`, whose first byte is
    /// at offset `base`: a candidate, unless the rule's end check rules it out.
    pub(super) fn report(
        &mut self,
        rules: &[CompiledRule],
        rule: u32,
        end: u64,
        data: &[u8],
        base: u64,
    ) {
        let Some(r) = rules.get(rule as usize) else {
            self.unusual_escape = true;
            return;
        };
        // An end outside `data` cannot be checked; it stays a candidate.
        let at = (end.checked_sub(base))
            .map(|at| at as usize)
            .filter(|&at| at <= data.len());
        if let (Some(check), Some(at)) = (&r.end_check, at) {
            if self.end_caches.is_empty() {
                self.end_caches.resize_with(rules.len(), || None);
            }
            let cache =
                self.end_caches[rule as usize].get_or_insert_with(|| Box::new(check.cache()));
            if !check.can_end_at(cache, data, at, r.width * LONGEST_ESCAPE) {
                return;
            }
        }
        self.hit(rule, end);
    }

    fn hit(&mut self, rule: u32, end: u64) {
        let r = rule as usize;
        if self.ends.is_empty() {
            self.ends.resize(self.widths.len(), (0, 0));
        }
        let slot = &mut self.ends[r];
        if slot.1 == 0 {
            self.touched.push(rule);
            *slot = (end, end);
        } else if end > slot.1 + self.widths[r] || end + self.widths[r] < slot.0 {
            self.closed.push((r, slot.0, slot.1));
            *slot = (end, end);
        } else {
            slot.0 = slot.0.min(end);
            slot.1 = slot.1.max(end);
        }
    }

    /// (rule, first end, last end) for every cluster since the last drain.
    pub(super) fn drain(&mut self) -> impl Iterator<Item = (usize, u64, u64)> + '_ {
        let ends = &mut self.ends;
        let current = self.touched.drain(..).map(move |r| {
            let (lo, hi) = std::mem::take(&mut ends[r as usize]);
            (r as usize, lo, hi)
        });
        self.closed.drain(..).chain(current)
    }
}

impl Engine {
    pub fn compile(rules: &[Rule]) -> Result<Engine, EngineError> {
        Engine::build(rules, None)
    }

    /// [`compile`](Self::compile), the Hyperscan databases taken from `cache` when it holds
    /// them for exactly these rules, else compiled and stored there.
    pub fn compile_cached(rules: &[Rule], cache: &DatabaseCache) -> Result<Engine, EngineError> {
        Engine::build(rules, Some(cache))
    }

    fn build(rules: &[Rule], cache: Option<&DatabaseCache>) -> Result<Engine, EngineError> {
        if rules.is_empty() {
            return Err(EngineError::NoRules);
        }
        let forms = Forms::of(rules)?;
        let Databases {
            block,
            stream,
            widths,
        } = match cache {
            Some(cache) => cache.databases(rules, &forms)?,
            None => Databases::compile(rules, &forms)?,
        };
        // The regexes are built (and checked) on every build: they are not in the cache.
        let compiled = (rules.iter().zip(&widths))
            .map(|(rule, &width)| CompiledRule::new(rule, width))
            .collect::<Result<Vec<_>, _>>()?;
        let mut prototype = block.alloc_scratch().map_err(EngineError::Database)?;
        stream
            .realloc_scratch(&mut prototype)
            .map_err(EngineError::Database)?;
        let widest = widths.iter().copied().max().unwrap_or(0);
        Ok(Engine {
            widths: widths.iter().map(|&w| w as u64).collect(),
            rules: compiled,
            block,
            stream,
            scratches: ScratchPool::new(prototype),
            // Escaped, a match is up to this much wider.
            holdback: (widest * LONGEST_ESCAPE).min(MAX_HOLDBACK),
            exempt: Vec::new(),
            openings: Default::default(),
        })
    }

    /// This engine, never reporting a secret that holds one of `literals`.
    pub fn exempting(mut self, literals: impl IntoIterator<Item = Vec<u8>>) -> Engine {
        self.exempt = literals.into_iter().filter(|l| !l.is_empty()).collect();
        self
    }

    /// Whether `secret` holds an exempt literal.
    pub fn is_exempt(&self, secret: &[u8]) -> bool {
        self.exempt
            .iter()
            .any(|l| secret.windows(l.len()).any(|w| w == l.as_slice()))
    }

    pub fn rules(&self) -> &[CompiledRule] {
        &self.rules
    }

    /// Bytes a streaming masker keeps back so a secret split across chunks is seen whole.
    pub fn holdback(&self) -> usize {
        self.holdback
    }

    /// Where a text's tail could still start a secret of any rule.
    pub fn openings(&self) -> &Openings {
        self.openings
            .get_or_init(|| Openings::new(self.rules.iter().map(|r| r.regex.as_str())))
    }

    pub(super) fn candidates(&self) -> Candidates {
        Candidates {
            ends: Vec::new(),
            widths: self.widths.clone(),
            touched: Vec::new(),
            closed: Vec::new(),
            end_caches: Vec::new(),
            unusual_escape: false,
        }
    }

    /// Scratch space for both databases, the caller's until dropped.
    pub(super) fn lend_scratch(&self) -> LentScratch {
        self.scratches.lend()
    }

    /// Scratch spaces in the pool, not lent to anyone.
    #[cfg(test)]
    pub(super) fn idle_scratches(&self) -> usize {
        self.scratches.idle()
    }

    /// Every confirmed secret in `data` (block mode), in order of position.
    pub fn find(&self, data: &[u8]) -> Result<Vec<Detection>, ScanError> {
        self.find_with(data, &self.lend_scratch(), &mut self.candidates())
    }

    /// `find` with the caller's scratch space and candidate table.
    pub(super) fn find_with(
        &self,
        data: &[u8],
        scratch: &Scratch,
        candidates: &mut Candidates,
    ) -> Result<Vec<Detection>, ScanError> {
        self.block.scan(data, scratch, |id, _, to, _| {
            candidates.report(&self.rules, id, to, data, 0);
            Matching::Continue
        })?;
        let mut found = Vec::new();
        for (rule, first_end, last_end) in candidates.drain() {
            let window = Window::new(data, 0, first_end, last_end);
            self.rules[rule]
                .confirm_as_written(&window, |secret, _| found.push(Detection { rule, secret }));
        }
        found.sort_by_key(|d| (d.secret.start, d.rule));
        Ok(found)
    }

    /// Secrets whose whole match runs to the end of `data`, as if the data ended there: a
    /// stream confirms those only when the next byte or the end comes (a trailing `\b`), too
    /// late for bytes flushed before either arrives. Calls `each` with rule and span. In
    /// stream mode, whose forms take escaped secrets; closing the stream ends the data.
    pub(super) fn find_ending(
        &self,
        data: &[u8],
        scratch: &Scratch,
        candidates: &mut Candidates,
        mut each: impl FnMut(usize, Range<usize>, Option<&[u8]>),
    ) -> Result<(), ScanError> {
        let end = data.len() as u64;
        self.stream_whole(data, scratch, |id, to| {
            if to == end {
                candidates.report(&self.rules, id, to, data, 0);
            }
        })?;
        for (rule, first_end, last_end) in candidates.drain() {
            self.confirm(
                rule,
                data,
                0,
                first_end,
                last_end,
                |secret, whole_end, decoded| {
                    if whole_end == data.len() {
                        each(rule, secret, decoded);
                    }
                },
            );
        }
        Ok(())
    }

    /// `data` as a whole stream: `each` gets every rule and end Hyperscan reports, those
    /// that need the end of the data included.
    fn stream_whole(
        &self,
        data: &[u8],
        scratch: &Scratch,
        mut each: impl FnMut(u32, u64),
    ) -> Result<(), ScanError> {
        let mut report = |id, to| {
            each(id, to);
            Matching::Continue
        };
        let stream = self.stream.open_stream()?;
        stream.scan(data, scratch, |id, _, to, _| report(id, to))?;
        stream.close(scratch, |id, _, to, _| report(id, to))?;
        Ok(())
    }

    /// Rules that Hyperscan finds somewhere in `data` (unconfirmed) in both block and
    /// stream mode: a rule missing in either would be missed by some scans.
    pub fn candidate_rules(&self, data: &[u8]) -> Result<Vec<usize>, ScanError> {
        let scratch = self.lend_scratch();
        let (mut block, mut stream) = (self.candidates(), self.candidates());
        self.block.scan(data, &scratch, |id, _, to, _| {
            block.report(&self.rules, id, to, data, 0);
            Matching::Continue
        })?;
        self.stream_whole(data, &scratch, |id, to| {
            stream.report(&self.rules, id, to, data, 0)
        })?;
        let in_stream: Vec<usize> = stream.drain().map(|(rule, ..)| rule).collect();
        Ok(block
            .drain()
            .map(|(rule, ..)| rule)
            .filter(|rule| in_stream.contains(rule))
            .collect())
    }

    /// Confirms the candidates of `rule` that end in `first_end..=last_end` (absolute stream
    /// offsets) in `data`, which starts at absolute offset `base`, as written and escaped;
    /// calls `each` with the secret's span and the whole match's end, relative to `data`,
    /// and for a secret that was escaped, its decoded bytes.
    pub(super) fn confirm(
        &self,
        rule: usize,
        data: &[u8],
        base: u64,
        first_end: u64,
        last_end: u64,
        mut each: impl FnMut(Range<usize>, usize, Option<&[u8]>),
    ) {
        let window = Window::new(data, base, first_end, last_end);
        let r = &self.rules[rule];
        r.confirm_as_written(&window, |span, end| each(span, end, None));
        r.confirm_escaped(&window, each);
    }
}

/// The bytes the candidates of one cluster are confirmed on: `data[..hi]`, from as far
/// back from the first candidate's end as a match can reach.
struct Window<'a> {
    data: &'a [u8],
    base: u64,
    first_end: u64,
    hi: usize,
}

impl<'a> Window<'a> {
    fn new(data: &'a [u8], base: u64, first_end: u64, last_end: u64) -> Window<'a> {
        let hi = (last_end - base).min(data.len() as u64) as usize;
        Window {
            data,
            base,
            first_end,
            hi,
        }
    }

    /// Where a match `width` bytes wide, ending at the first end, starts (in `data`).
    fn from(&self, width: usize) -> usize {
        (self.first_end.saturating_sub(width as u64).max(self.base) - self.base) as usize
    }
}

impl CompiledRule {
    fn new(rule: &Rule, width: usize) -> Result<CompiledRule, EngineError> {
        let err = |message: String| EngineError::Rule {
            id: rule.id.clone(),
            message,
        };
        // Bytes, not Unicode: Hyperscan matches bytes, and so must the confirmation.
        let regex = regex::bytes::RegexBuilder::new(&rule.pattern)
            .unicode(false)
            .build()
            .map_err(|e| err(format!("regex: {e}")))?;
        if regex.captures_len() != 2 {
            return Err(err(format!(
                "needs exactly one capture group (the secret), has {}",
                regex.captures_len() - 1
            )));
        }
        Ok(CompiledRule {
            id: rule.id.as_str().into(),
            name: rule.name.clone(),
            regex,
            keywords: rule
                .keywords
                .iter()
                .map(|k| k.to_ascii_lowercase().into_bytes())
                .collect(),
            min_entropy: rule.min_entropy,
            width,
            end_check: if rule.prefilter.is_some() || rule.stream_prefilter.is_some() {
                let hir = tolerant::parse(&rule.pattern).map_err(&err)?;
                Some(EndCheck::new(&tolerant::tolerant(&hir, Precision::Exact)).map_err(&err)?)
            } else {
                None
            },
        })
    }

    /// Every match in `text` from `from` on (the bytes before as context) whose secret
    /// passes the filters: the whole match's span and the secret's.
    fn each_match(
        &self,
        text: &[u8],
        from: usize,
        mut each: impl FnMut(Range<usize>, Range<usize>),
    ) {
        let mut at = from;
        let mut groups = self.regex.capture_locations();
        while let Some(whole) = self.regex.captures_read_at(&mut groups, text, at) {
            at = whole.end().max(whole.start() + 1);
            if let Some((start, end)) = groups.get(1)
                && self.accepts(whole.as_bytes(), &text[start..end])
            {
                each(whole.range(), start..end);
            }
            if at > text.len() {
                break;
            }
        }
    }

    /// [`Engine::confirm`] of the secrets as written: from the window's start with the
    /// bytes before it as context, so a leading `\b` (that a prefilter need not have) is
    /// checked against the byte before the window.
    fn confirm_as_written(&self, w: &Window, mut each: impl FnMut(Range<usize>, usize)) {
        self.each_match(&w.data[..w.hi], w.from(self.width), |whole, secret| {
            each(secret, whole.end)
        });
    }

    /// [`Engine::confirm`] of escaped secrets: the window decoded, spans mapped back.
    fn confirm_escaped(
        &self,
        w: &Window,
        mut each: impl FnMut(Range<usize>, usize, Option<&[u8]>),
    ) {
        let (data, hi) = (w.data, w.hi);
        // A match with an escape in it has one within its last `width` bytes (and the
        // escape's own length): else it is the plain pass's.
        if memchr::memchr2(b'\\', b'%', &data[w.from(self.width + LONGEST_ESCAPE)..hi]).is_none() {
            return;
        }
        // Escaped, the match is up to LONGEST_ESCAPE times wider: decoded, the regex
        // decides; matches without an escape are still the plain pass's.
        let lo = w.from(self.width * LONGEST_ESCAPE);
        let mut decoded = Decoded::new(lo as u64);
        decode::unescape(&data[lo..hi], lo as u64, true, &mut decoded);
        self.each_match(&decoded.bytes, 0, |whole, secret| {
            // An escape just before the match can be what makes its leading boundary.
            let after_escape = whole.start > 0 && {
                let before = decoded.raw_span(whole.start - 1..whole.start, hi as u64);
                before.end - before.start > 1
            };
            let raw_whole = decoded.raw_span(whole, hi as u64);
            let (start, end) = (raw_whole.start as usize, raw_whole.end as usize);
            if !after_escape && memchr::memchr2(b'\\', b'%', &data[start..end]).is_none() {
                return;
            }
            let span = decoded.raw_span(secret.clone(), hi as u64);
            each(
                span.start as usize..span.end as usize,
                end,
                Some(&decoded.bytes[secret]),
            );
        });
    }

    /// The keyword and entropy filters.
    fn accepts(&self, whole: &[u8], secret: &[u8]) -> bool {
        if secret.is_empty() {
            return false;
        }
        if !self.keywords.is_empty() {
            let lower = whole.to_ascii_lowercase();
            if !self
                .keywords
                .iter()
                .any(|k| lower.windows(k.len()).any(|w| w == k.as_slice()))
            {
                return false;
            }
        }
        self.min_entropy.is_none_or(|min| entropy(secret) >= min)
    }

    /// Whether the regex alone (no filters) matches: for `rules check`.
    pub(super) fn regex_matches(&self, text: &[u8]) -> Option<Range<usize>> {
        self.regex
            .captures(text)
            .and_then(|c| c.get(1))
            .map(|m| m.range())
    }
}

/// Shannon entropy in bits per byte.
pub fn entropy(data: &[u8]) -> f64 {
    let mut counts = [0u32; 256];
    for &b in data {
        counts[b as usize] += 1;
    }
    let n = data.len() as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / n;
            -p * p.log2()
        })
        .sum()
}
