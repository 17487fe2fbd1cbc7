//! The decoded view of a stream (JSON string escapes and `%XX` escapes decoded), scanned as
//! it flows with a Hyperscan stream of its own. The raw stream's escape-tolerant rule forms
//! take escapes as encoders write them; the view starts the first time an escape that no
//! encoder writes shows up (`%5F`, `\u0067`), from the bytes still held back then, so
//! other traffic costs nothing extra.

use std::ops::Range;

use hyperscan::Scratch;

use super::decode::{self, Decoded};
use super::engine::{Engine, ScanError};
use super::stream::StreamScan;

/// A secret found in the view: rule, raw span (stream offsets), decoded secret.
pub(super) type ViewFinding = (usize, Range<u64>, Vec<u8>);

pub(super) struct View {
    scan: StreamScan,
    /// Decoded bytes held, and the way back to raw offsets.
    decoded: Decoded,
    /// Raw bytes that end inside an escape, waiting for the rest; they start at `raw_next`.
    pending: Vec<u8>,
    raw_next: u64,
}

impl View {
    /// A view of the raw stream from offset `raw_at` on.
    pub fn new(engine: &Engine, raw_at: u64) -> Result<View, ScanError> {
        Ok(View {
            scan: StreamScan::new(engine)?,
            decoded: Decoded::new(raw_at),
            pending: Vec::new(),
            raw_next: raw_at,
        })
    }

    /// Decodes and scans the next raw bytes; `at_end` also decodes an unfinished escape and
    /// confirms matches that reach the end.
    pub fn push(
        &mut self,
        engine: &Engine,
        scratch: &Scratch,
        raw: &[u8],
        at_end: bool,
        found: &mut Vec<ViewFinding>,
    ) -> Result<(), ScanError> {
        let before = self.decoded.bytes.len();
        let joined;
        let input = if self.pending.is_empty() {
            raw
        } else {
            joined = [std::mem::take(&mut self.pending).as_slice(), raw].concat();
            &joined
        };
        let used = decode::unescape(input, self.raw_next, at_end, &mut self.decoded);
        self.pending = input[used..].to_vec();
        self.raw_next += used as u64;
        let new = self.decoded.bytes.len() - before;
        let (decoded, raw_end) = (&self.decoded, self.raw_next);
        self.scan.scan(
            engine,
            scratch,
            &decoded.bytes,
            self.decoded.base,
            new,
            at_end,
            collect(decoded, raw_end, found),
        )
    }

    /// Secrets that reach the end of the decoded bytes, confirmed as if the stream ended
    /// there: for a flush, after a `push` with `at_end`.
    pub fn scan_tail(
        &mut self,
        engine: &Engine,
        scratch: &Scratch,
        found: &mut Vec<ViewFinding>,
    ) -> Result<(), ScanError> {
        let (decoded, raw_end) = (&self.decoded, self.raw_next);
        self.scan.scan_tail(
            engine,
            scratch,
            &decoded.bytes,
            collect(decoded, raw_end, found),
        )
    }

    /// End of stream.
    pub fn finish(
        &mut self,
        engine: &Engine,
        scratch: &Scratch,
        found: &mut Vec<ViewFinding>,
    ) -> Result<(), ScanError> {
        self.push(engine, scratch, &[], true, found)?;
        let (decoded, raw_end) = (&self.decoded, self.raw_next);
        self.scan.finish(
            engine,
            scratch,
            &decoded.bytes,
            self.decoded.base,
            collect(decoded, raw_end, found),
        )
    }

    /// Forgets decoded bytes whose raw bytes were forwarded (before raw offset `released`).
    pub fn release(&mut self, released: u64) {
        self.decoded.release_before(released);
    }

    pub fn close(&mut self, scratch: &Scratch) {
        self.scan.close(scratch);
    }
}

/// A span of decoded bytes as a finding: its raw span and the decoded secret.
fn collect<'a>(
    decoded: &'a Decoded,
    raw_end: u64,
    found: &'a mut Vec<ViewFinding>,
) -> impl FnMut(usize, Range<usize>, Option<&[u8]>) + 'a {
    move |rule, span, escaped| {
        // Escaped once more inside the view: the confirmation decoded it again.
        let secret = escaped.unwrap_or(&decoded.bytes[span.clone()]).to_vec();
        found.push((rule, decoded.raw_span(span, raw_end), secret));
    }
}
