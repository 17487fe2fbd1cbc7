//! Streaming masking of one direction of a connection or one body.
//!
//! Bytes are scanned in Hyperscan stream mode as they arrive; every byte that can no longer
//! be the start of a secret not yet seen is forwarded (masked where a secret was found). Only
//! the last `Engine::holdback()` bytes are held back, so a secret split across any two chunks
//! is still whole in the buffer when Hyperscan reports its end, and a body is never buffered
//! whole. Masking keeps length: a short prefix stays readable and the rest becomes `*`.

use std::ops::Range;
use std::sync::Arc;

use hyperscan::{Matching, Scratch, Stream};

use super::decode;
use super::engine::{Candidates, Engine, ScanError};
use super::finding::{Encoding, Finding, MASK_BYTE, SecretHasher, kept_prefix};

pub struct Masker {
    engine: Arc<Engine>,
    hasher: SecretHasher,
    stream: Option<Stream>,
    scratch: Scratch,
    candidates: Candidates,
    /// Raw bytes not yet forwarded; `buf[0]` is at stream offset `base`.
    buf: Vec<u8>,
    base: u64,
    /// Stream ranges to mask when forwarded.
    masks: Vec<Range<u64>>,
    /// Candidates whose match reached the end of the buffer: (rule, first end, last end).
    deferred: Vec<(usize, u64, u64)>,
    /// Secrets already recorded whose bytes are not all forwarded yet, by rule.
    reported: Vec<(usize, Range<u64>)>,
    findings: Vec<Finding>,
}

impl Masker {
    pub fn new(engine: Arc<Engine>, hasher: SecretHasher) -> Result<Masker, ScanError> {
        let stream = engine.stream.open_stream()?;
        Ok(Masker {
            scratch: engine.clone_scratch(),
            candidates: engine.candidates(),
            stream: Some(stream),
            engine,
            hasher,
            buf: Vec::new(),
            base: 0,
            masks: Vec::new(),
            reported: Vec::new(),
            deferred: Vec::new(),
            findings: Vec::new(),
        })
    }

    /// Scans `chunk` and appends to `out` what can be forwarded now, masked.
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> Result<(), ScanError> {
        if chunk.is_empty() {
            return Ok(());
        }
        self.buf.extend_from_slice(chunk);
        if let Some(stream) = &self.stream {
            let candidates = &mut self.candidates;
            stream.scan(chunk, &self.scratch, |id, _, to, _| {
                candidates.hit(id, to);
                Matching::Continue
            })?;
        }
        self.confirm(false)?;
        let releasable = self.buf.len().saturating_sub(self.engine.holdback());
        self.release(releasable, out);
        Ok(())
    }

    /// Forwards the held tail as well, for a peer that waits for it. The stream goes on; a
    /// secret cut by this flush is still reported, with `forwarded_unmasked` set.
    pub fn flush(&mut self, out: &mut Vec<u8>) -> Result<(), ScanError> {
        self.confirm(true)?;
        self.release(self.buf.len(), out);
        Ok(())
    }

    /// Bytes currently held back.
    pub fn held(&self) -> usize {
        self.buf.len()
    }

    /// Findings since the last call.
    pub fn take_findings(&mut self) -> Vec<Finding> {
        std::mem::take(&mut self.findings)
    }

    /// End of stream: matches that only complete at the end, then everything held.
    pub fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), ScanError> {
        if let Some(stream) = self.stream.take() {
            let candidates = &mut self.candidates;
            stream.close(&self.scratch, |id, _, to, _| {
                candidates.hit(id, to);
                Matching::Continue
            })?;
        }
        self.flush(out)
    }

    /// Confirms this scan's candidates in the buffer, plain and in decoded views. A match
    /// that reaches the end of the buffer may still grow with the next chunk: unless this is
    /// the end (`at_end`), it is confirmed again then.
    fn confirm(&mut self, at_end: bool) -> Result<(), ScanError> {
        for (rule, first_end, last_end) in std::mem::take(&mut self.deferred) {
            self.candidates.hit(rule as u32, first_end);
            self.candidates.hit(rule as u32, last_end);
        }
        let mut plain = Vec::new();
        for (rule, first_end, last_end) in self.candidates.drain() {
            let mut open = false;
            self.engine
                .confirm(rule, &self.buf, self.base, first_end, last_end, |s, end| {
                    if end == self.buf.len() && !at_end {
                        open = true;
                    } else {
                        plain.push((rule, s));
                    }
                });
            if open {
                self.deferred.push((rule, first_end, last_end));
            }
        }
        for (rule, span) in plain {
            let secret = self.buf[span.clone()].to_vec();
            self.record(rule, span, Encoding::Plain, &secret);
        }
        for view in decode::views(&self.buf) {
            // What the plain scan found already is recorded, and `record` skips repeats.
            for d in self.engine.find(&view.bytes)? {
                let raw = view.raw_span(d.secret.clone());
                self.record(d.rule, raw, view.encoding, &view.bytes[d.secret]);
            }
        }
        Ok(())
    }

    /// Records a secret at `span` of the buffer and schedules its masking.
    fn record(&mut self, rule: usize, span: Range<usize>, encoding: Encoding, secret: &[u8]) {
        let span = self.base + span.start as u64..self.base + span.end as u64;
        if let Some((_, seen)) = self
            .reported
            .iter_mut()
            .find(|(r, s)| *r == rule && s.start < span.end && span.start < s.end)
        {
            // The same secret again, seen with more of it: mask the extension too.
            if span.end > seen.end {
                self.masks.push(seen.end..span.end);
                seen.end = span.end;
            }
            return;
        }
        let len = span.end - span.start;
        self.masks
            .push(span.start + kept_prefix(len as usize) as u64..span.end);
        self.findings.push(Finding {
            rule: self.engine.rules()[rule].id.to_string(),
            offset: span.start,
            length: len as u32,
            encoding,
            hash: self.hasher.hash(secret),
            forwarded_unmasked: self.base.saturating_sub(span.start).min(len) as u32,
        });
        self.reported.push((rule, span));
    }

    /// Appends the first `n` held bytes to `out`, masked, and drops them from the buffer.
    fn release(&mut self, n: usize, out: &mut Vec<u8>) {
        if n == 0 {
            return;
        }
        let at = out.len();
        out.extend_from_slice(&self.buf[..n]);
        let end = self.base + n as u64;
        for m in &self.masks {
            let (lo, hi) = (m.start.max(self.base), m.end.min(end));
            if lo < hi {
                let (lo, hi) = ((lo - self.base) as usize, (hi - self.base) as usize);
                out[at + lo..at + hi].fill(MASK_BYTE);
            }
        }
        self.buf.drain(..n);
        self.base = end;
        self.masks.retain(|m| m.end > end);
        self.reported.retain(|(_, s)| s.end > end);
    }
}

impl Drop for Masker {
    fn drop(&mut self) {
        // Hyperscan streams must be closed or their state leaks.
        if let Some(stream) = self.stream.take() {
            let _ = stream.close(&self.scratch, ());
        }
    }
}
