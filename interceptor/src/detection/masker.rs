//! Streaming masking of one direction of a connection or one body.
//!
//! Bytes are scanned in Hyperscan stream mode as they arrive; every byte that can no longer
//! be the start of a secret not yet seen is forwarded (masked where a secret was found). Only
//! the last `Engine::holdback()` bytes are held back (and as many forwarded ones kept as
//! context), so a secret split across any two chunks
//! is still whole in the buffer when Hyperscan reports its end, and a body is never buffered
//! whole. Masking keeps length: a short prefix stays readable and the rest becomes `*`.
//! JSON-escaped and URL-encoded secrets are found by the rules' escape-tolerant forms and
//! confirmed decoded; escapes no encoder writes start a decoded view that runs alongside.
//! Base64 runs are decoded and scanned in segments fixed by the run alone (aligned to its
//! start, overlapping by the holdback), each once it is whole, and a run's bytes are held until
//! their segment is scanned: the result does not depend on how the stream was split.

use std::ops::Range;
use std::sync::Arc;

use hyperscan::Scratch;

use super::engine::{Candidates, Engine, ScanError};
use super::finding::{Encoding, Finding, MASK_BYTE, SecretHasher, kept_prefix};
use super::selection::{Handling, Selection};
use super::stream::StreamScan;
use super::view::{View, ViewFinding};
use super::{base64_runs, decode};

/// Forwarded bytes a masker keeps beyond its context before it drops them.
const COMPACT_AT: usize = 64 * 1024;
/// A base64 run is decoded in segments this long (a multiple of 4: each starts on a quantum
/// of the run), each with the holdback before it as overlap, so a secret across two segments
/// is whole in the second. This many raw bytes of a run at most wait for their segment.
const BASE64_SEGMENT: u64 = 64 * 1024;

/// A base64 run that reached the end of the buffer and may go on (stream offsets).
#[derive(Clone, Copy)]
struct OpenRun {
    start: u64,
    /// Where its next segment starts: everything before was scanned.
    next: u64,
}

/// How far a base64 pass may take the run at the end of the buffer.
#[derive(Clone, Copy, PartialEq, Eq)]
enum RunEnd {
    /// More bytes will come: only whole segments are scanned.
    Open,
    /// A flush forwards every byte: the rest is scanned as if the run ended, but it goes on.
    Flush,
    /// The stream ended.
    Finish,
}

pub struct Masker {
    engine: Arc<Engine>,
    hasher: SecretHasher,
    /// Which rules mask, report or are ignored; None: every rule masks.
    selection: Option<Arc<Selection>>,
    raw: StreamScan,
    /// Started when the first escape shows up.
    view: Option<View>,
    /// Block-mode candidates for base64 runs.
    candidates: Candidates,
    /// Raw bytes from stream offset `base` on: up to `holdback` already forwarded (context
    /// for matches that a flush cut), then those not forwarded yet, from offset `sent` on.
    buf: Vec<u8>,
    base: u64,
    sent: u64,
    /// Base64 runs before this stream offset have been scanned (but for `open_run`).
    base64_done: u64,
    open_run: Option<OpenRun>,
    /// Stream ranges to mask when forwarded.
    masks: Vec<Range<u64>>,
    /// Secrets already recorded whose bytes are not all forwarded yet, by rule.
    reported: Vec<(usize, Range<u64>)>,
    findings: Vec<Finding>,
}

impl Masker {
    pub fn new(engine: Arc<Engine>, hasher: SecretHasher) -> Result<Masker, ScanError> {
        Masker::with_selection(engine, hasher, None)
    }

    /// A masker that handles each rule's findings as `selection` says (None: mask them all).
    pub fn with_selection(
        engine: Arc<Engine>,
        hasher: SecretHasher,
        selection: Option<Arc<Selection>>,
    ) -> Result<Masker, ScanError> {
        Ok(Masker {
            selection,
            raw: StreamScan::new(&engine)?,
            candidates: engine.candidates(),
            engine,
            hasher,
            view: None,
            buf: Vec::new(),
            base: 0,
            sent: 0,
            base64_done: 0,
            open_run: None,
            masks: Vec::new(),
            reported: Vec::new(),
            findings: Vec::new(),
        })
    }

    /// Scans `chunk` and appends to `out` what can be forwarded now, masked.
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> Result<(), ScanError> {
        if chunk.is_empty() {
            return Ok(());
        }
        self.buf.extend_from_slice(chunk);
        let scratch = self.engine.lend_scratch();
        self.scan(&scratch, chunk.len(), false)?;
        let releasable = (self.held().saturating_sub(self.engine.holdback()))
            .min(self.unscanned_from().saturating_sub(self.sent) as usize);
        self.release(releasable, out);
        Ok(())
    }

    /// Forwards the held tail as well, for a peer that waits for it. What is held is first
    /// confirmed as if the stream ended here, so a secret that ends the tail (awaiting its
    /// trailing boundary) is masked before it leaves. The stream goes on; a secret cut by
    /// this flush (its rest still to come) is reported, with `forwarded_unmasked` set.
    pub fn flush(&mut self, out: &mut Vec<u8>) -> Result<(), ScanError> {
        let scratch = self.engine.lend_scratch();
        self.scan(&scratch, 0, true)?;
        self.scan_tails(&scratch)?;
        self.release(self.held(), out);
        Ok(())
    }

    /// Forwards the held bytes before stream offset `to`, for a caller that knows no secret
    /// still incomplete can start before it (an event stream asks its openings). Bytes of a
    /// base64 run still wait for their segment.
    pub fn release_before(&mut self, to: u64, out: &mut Vec<u8>) {
        let to = to
            .min(self.unscanned_from())
            .min(self.sent + self.held() as u64);
        self.release(to.saturating_sub(self.sent) as usize, out);
    }

    /// End of stream: matches that only complete at the end, then everything held.
    pub fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), ScanError> {
        let scratch = self.engine.lend_scratch();
        let mut plain = Vec::new();
        self.raw.finish(
            &self.engine,
            &scratch,
            &self.buf,
            self.base,
            collect(&mut plain),
        )?;
        self.record_plain(plain);
        let mut found = Vec::new();
        if let Some(view) = &mut self.view {
            view.finish(&self.engine, &scratch, &mut found)?;
        }
        self.record_view(found);
        self.scan_base64(&scratch, RunEnd::Finish)?;
        self.release(self.held(), out);
        Ok(())
    }

    /// Bytes currently held back.
    pub fn held(&self) -> usize {
        self.buf.len() - (self.sent - self.base) as usize
    }

    /// Room in the buffer of held and context bytes.
    #[cfg(test)]
    pub(super) fn buffer_capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Findings since the last call.
    pub fn take_findings(&mut self) -> Vec<Finding> {
        std::mem::take(&mut self.findings)
    }

    /// Scans the last `new` bytes of the buffer, raw and in the decoded view.
    fn scan(&mut self, scratch: &Scratch, new: usize, at_end: bool) -> Result<(), ScanError> {
        let mut plain = Vec::new();
        self.raw.scan(
            &self.engine,
            scratch,
            &self.buf,
            self.base,
            new,
            at_end,
            collect(&mut plain),
        )?;
        self.record_plain(plain);
        self.start_view(scratch, new)?;
        let fresh = &self.buf[self.buf.len() - new..];
        let mut found = Vec::new();
        if let Some(view) = &mut self.view {
            view.push(&self.engine, scratch, fresh, at_end, &mut found)?;
        }
        self.record_view(found);
        self.scan_base64(scratch, if at_end { RunEnd::Flush } else { RunEnd::Open })
    }

    /// Secrets that end at the end of the buffer, raw and in the view, as at the end.
    fn scan_tails(&mut self, scratch: &Scratch) -> Result<(), ScanError> {
        let mut plain = Vec::new();
        self.raw
            .scan_tail(&self.engine, scratch, &self.buf, collect(&mut plain))?;
        self.record_plain(plain);
        let mut found = Vec::new();
        if let Some(view) = &mut self.view {
            view.scan_tail(&self.engine, scratch, &mut found)?;
        }
        self.record_view(found);
        Ok(())
    }

    /// Starts the view when the raw stream first meets an escape that no encoder writes; it
    /// decodes everything still held.
    fn start_view(&mut self, scratch: &Scratch, new: usize) -> Result<(), ScanError> {
        if self.view.is_some() || !self.raw.saw_unusual_escape() {
            return Ok(());
        }
        let mut view = View::new(&self.engine, self.base)?;
        let old = self.buf.len() - new;
        let mut found = Vec::new();
        // The held bytes before this chunk; the chunk itself follows with the others.
        view.push(&self.engine, scratch, &self.buf[..old], false, &mut found)?;
        self.view = Some(view);
        self.record_view(found);
        Ok(())
    }

    /// Decodes and scans the base64 runs that came in, each segment once it is whole.
    fn scan_base64(&mut self, scratch: &Scratch, until: RunEnd) -> Result<(), ScanError> {
        let len = self.buf.len();
        let mut at = (self.base64_done.max(self.base) - self.base) as usize;
        loop {
            let (mut run, end) = match self.open_run.take() {
                // Every byte up to `at` is in the run.
                Some(run) => (run, base64_runs::run_end(&self.buf, at)),
                None => match base64_runs::next_base64_run(&self.buf, at) {
                    Some(r) => {
                        let start = self.base + r.start as u64;
                        (OpenRun { start, next: start }, r.end)
                    }
                    None => break,
                },
            };
            let complete = end < len || until == RunEnd::Finish;
            self.scan_segments(scratch, &mut run, self.base + end as u64, complete)?;
            if !complete {
                if until == RunEnd::Flush {
                    let from = self.segment_from(run);
                    self.scan_base64_span(scratch, from, self.base + end as u64)?;
                }
                self.open_run = Some(run);
                at = len;
                break;
            }
            at = end;
        }
        // A short run at the end may still grow into one worth decoding.
        let resume = match until {
            RunEnd::Finish => len,
            _ if self.open_run.is_some() => len,
            _ => base64_runs::trailing_base64_start(&self.buf).max(at),
        };
        self.base64_done = self.base + resume as u64;
        Ok(())
    }

    /// Scans the segments of `run` that are whole with its bytes up to `end` (all of them
    /// if the run is `complete`).
    fn scan_segments(
        &mut self,
        scratch: &Scratch,
        run: &mut OpenRun,
        end: u64,
        complete: bool,
    ) -> Result<(), ScanError> {
        while run.next < end {
            let seg_end = match run.next + BASE64_SEGMENT {
                whole if whole <= end => whole,
                _ if complete => end,
                _ => break,
            };
            self.scan_base64_span(scratch, self.segment_from(*run), seg_end)?;
            run.next = seg_end;
        }
        Ok(())
    }

    /// Where the next segment of `run` starts decoding: the holdback before it, so that a
    /// secret the segment boundary cuts is whole in it.
    fn segment_from(&self, run: OpenRun) -> u64 {
        let overlap = (self.engine.holdback() as u64).next_multiple_of(4);
        run.start.max(run.next.saturating_sub(overlap))
    }

    /// Stream offset before which no base64 finding can still mask a byte.
    fn unscanned_from(&self) -> u64 {
        self.open_run.map_or(u64::MAX, |run| self.segment_from(run))
    }

    /// Decodes the base64 at stream range `from..to` (starting on a quantum) and records the
    /// secrets in it.
    fn scan_base64_span(&mut self, scratch: &Scratch, from: u64, to: u64) -> Result<(), ScanError> {
        let run = &self.buf[(from - self.base) as usize..(to - self.base) as usize];
        let mut found = Vec::new();
        if let Some(decoded) = decode::base64_decode_run(run) {
            for d in self
                .engine
                .find_with(&decoded, scratch, &mut self.candidates)?
            {
                let raw = decode::base64_raw_span(d.secret.clone(), run.len());
                let span = from + raw.start as u64..from + raw.end as u64;
                found.push((d.rule, span, decoded[d.secret].to_vec()));
            }
        }
        for (rule, span, secret) in found {
            self.record(rule, span, Encoding::Base64, &secret);
        }
        Ok(())
    }

    /// Secrets the raw stream found: as written, or escaped (with their decoded bytes).
    fn record_plain(&mut self, found: Vec<RawFinding>) {
        for (rule, held, decoded) in found {
            let span = self.base + held.start as u64..self.base + held.end as u64;
            match decoded {
                Some(secret) => {
                    let encoding = self.escapes_in(&span);
                    self.record(rule, span, encoding, &secret);
                }
                None => {
                    let secret = self.buf[held].to_vec();
                    self.record(rule, span, Encoding::Plain, &secret);
                }
            }
        }
    }

    fn record_view(&mut self, found: Vec<ViewFinding>) {
        for (rule, span, secret) in found {
            let encoding = self.escapes_in(&span);
            self.record(rule, span, encoding, &secret);
        }
    }

    /// How the raw bytes at stream range `span` (held, as a view's finding is) were escaped:
    /// URL-encoded when they hold a `%XX`, JSON-escaped otherwise.
    fn escapes_in(&self, span: &Range<u64>) -> Encoding {
        let held = |at: u64| (at.max(self.base) - self.base).min(self.buf.len() as u64) as usize;
        if decode::has_percent_escape(&self.buf[held(span.start)..held(span.end)]) {
            Encoding::UrlEncoded
        } else {
            Encoding::JsonEscaped
        }
    }

    /// Records a secret at stream range `span` and schedules its masking; a secret already
    /// recorded (seen again in a view, or grown) is not recorded twice.
    fn record(&mut self, rule: usize, span: Range<u64>, encoding: Encoding, secret: &[u8]) {
        let handling = self
            .selection
            .as_ref()
            .map_or(Handling::Mask, |s| s.handling(rule));
        if handling == Handling::Ignore || self.engine.is_exempt(secret) {
            return;
        }
        let mask = handling == Handling::Mask;
        if let Some((_, seen)) = self
            .reported
            .iter_mut()
            .find(|(r, s)| *r == rule && s.start < span.end && span.start < s.end)
        {
            if span.end > seen.end {
                if mask {
                    self.masks.push(seen.end..span.end);
                }
                seen.end = span.end;
            }
            return;
        }
        let len = span.end - span.start;
        if mask {
            self.masks
                .push(span.start + kept_prefix(len as usize) as u64..span.end);
        }
        self.findings.push(Finding {
            rule: self.engine.rules()[rule].id.to_string(),
            offset: span.start,
            length: len as u32,
            encoding,
            hash: self.hasher.hash(secret),
            forwarded_unmasked: if mask {
                self.sent.saturating_sub(span.start).min(len) as u32
            } else {
                0
            },
            report_only: !mask,
        });
        self.reported.push((rule, span));
    }

    /// Appends the next `n` held bytes to `out`, masked; keeps at least `holdback` forwarded
    /// bytes as context and drops the rest (in batches of [`COMPACT_AT`]).
    fn release(&mut self, n: usize, out: &mut Vec<u8>) {
        if n == 0 {
            return;
        }
        let at = out.len();
        let from = (self.sent - self.base) as usize;
        out.extend_from_slice(&self.buf[from..from + n]);
        let end = self.sent + n as u64;
        for m in &self.masks {
            let (lo, hi) = (m.start.max(self.sent), m.end.min(end));
            if lo < hi {
                let (lo, hi) = ((lo - self.sent) as usize, (hi - self.sent) as usize);
                out[at + lo..at + hi].fill(MASK_BYTE);
            }
        }
        self.sent = end;
        self.masks.retain(|m| m.end > end);
        // Compact only once enough is dead: moving the kept bytes after every chunk costs
        // more than scanning them.
        self.compact(COMPACT_AT as u64);
    }

    /// The stream has gone quiet: the forwarded bytes beyond the context are dropped and the
    /// buffer's spare room given back, so an idle stream holds only its tail.
    pub fn release_memory(&mut self) {
        self.compact(0);
        self.buf.shrink_to_fit();
        self.masks.shrink_to_fit();
        self.reported.shrink_to_fit();
    }

    /// Drops the forwarded bytes no longer needed as context, if at least `min` of them.
    fn compact(&mut self, min: u64) {
        // Bytes an open base64 run's next segment decodes stay, even if a flush sent them.
        let keep_from =
            (self.sent.saturating_sub(self.engine.holdback() as u64)).min(self.unscanned_from());
        let drop = keep_from.saturating_sub(self.base);
        if drop < min {
            return;
        }
        self.buf.drain(..drop as usize);
        self.base += drop;
        let base = self.base;
        self.reported.retain(|(_, s)| s.end > base);
        if let Some(view) = &mut self.view {
            view.release(base);
        }
    }
}

/// A secret the raw stream found: rule, span in the buffer, decoded bytes if escaped.
type RawFinding = (usize, Range<usize>, Option<Vec<u8>>);

/// Gathers the raw stream's findings, to record once the stream scan lets go of the buffer.
fn collect(found: &mut Vec<RawFinding>) -> impl FnMut(usize, Range<usize>, Option<&[u8]>) + '_ {
    |rule, span, decoded| found.push((rule, span, decoded.map(<[u8]>::to_vec)))
}

/// Masks a whole value (a header, a small body) in one go: the masked bytes, same length,
/// and what was found.
pub fn mask_buffer(
    engine: &Arc<Engine>,
    hasher: &SecretHasher,
    data: &[u8],
) -> Result<(Vec<u8>, Vec<Finding>), ScanError> {
    mask_buffer_selected(engine, hasher, None, data)
}

/// [`mask_buffer`] handling each rule as `selection` says.
pub fn mask_buffer_selected(
    engine: &Arc<Engine>,
    hasher: &SecretHasher,
    selection: Option<&Arc<Selection>>,
    data: &[u8],
) -> Result<(Vec<u8>, Vec<Finding>), ScanError> {
    let mut masker = Masker::with_selection(engine.clone(), hasher.clone(), selection.cloned())?;
    let mut out = Vec::with_capacity(data.len());
    masker.push(data, &mut out)?;
    masker.finish(&mut out)?;
    Ok((out, masker.take_findings()))
}

impl Drop for Masker {
    fn drop(&mut self) {
        // Hyperscan streams must be closed or their state leaks.
        let scratch = self.engine.lend_scratch();
        self.raw.close(&scratch);
        if let Some(view) = &mut self.view {
            view.close(&scratch);
        }
    }
}
