//! One Hyperscan stream over a byte sequence whose recent bytes are held in a buffer, with
//! the rules' regexes confirming candidates there. Used for the raw bytes and for each
//! decoded view.

use std::ops::Range;

use hyperscan::{Matching, Scratch, Stream};

use super::decode;
use super::engine::{Candidates, Engine, ScanError};

pub(super) struct StreamScan {
    stream: Option<Stream>,
    candidates: Candidates,
    /// Candidates whose match reached the end of the buffer: (rule, first end). The next
    /// bytes may extend the match, so they are confirmed again with them.
    deferred: Vec<(usize, u64)>,
}

impl StreamScan {
    pub(super) fn new(engine: &Engine) -> Result<StreamScan, ScanError> {
        Ok(StreamScan {
            stream: Some(engine.stream.open_stream()?),
            candidates: engine.candidates(),
            deferred: Vec::new(),
        })
    }

    /// Scans the last `new` bytes of `buf` (whose first byte is at stream offset `base`) and
    /// calls `found` with each confirmed secret's rule and span in `buf` (and its decoded bytes
    /// if it was escaped). Unless `at_end`, a
    /// match that reaches the end of `buf` waits for the next bytes.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn scan(
        &mut self,
        engine: &Engine,
        scratch: &Scratch,
        buf: &[u8],
        base: u64,
        new: usize,
        at_end: bool,
        found: impl FnMut(usize, Range<usize>, Option<&[u8]>),
    ) -> Result<(), ScanError> {
        if new > 0
            && let Some(stream) = &self.stream
        {
            let candidates = &mut self.candidates;
            stream.scan(&buf[buf.len() - new..], scratch, |id, _, to, _| {
                candidates.report(engine.rules(), id, to, buf, base);
                Matching::Continue
            })?;
        }
        self.confirm(engine, buf, base, at_end, found);
        Ok(())
    }

    /// End of the sequence: matches that complete only at the end, then every candidate.
    pub(super) fn finish(
        &mut self,
        engine: &Engine,
        scratch: &Scratch,
        buf: &[u8],
        base: u64,
        found: impl FnMut(usize, Range<usize>, Option<&[u8]>),
    ) -> Result<(), ScanError> {
        if let Some(stream) = self.stream.take() {
            let candidates = &mut self.candidates;
            stream.close(scratch, |id, _, to, _| {
                candidates.report(engine.rules(), id, to, buf, base);
                Matching::Continue
            })?;
        }
        self.confirm(engine, buf, base, true, found);
        Ok(())
    }

    /// Secrets that end exactly at the end of `buf`, confirmed as if the sequence ended
    /// there (the stream itself goes on untouched): for a flush that forwards every byte.
    pub(super) fn scan_tail(
        &mut self,
        engine: &Engine,
        scratch: &Scratch,
        buf: &[u8],
        mut found: impl FnMut(usize, Range<usize>, Option<&[u8]>),
    ) -> Result<(), ScanError> {
        // A match is at most the widest rule long, and the holdback is at least that.
        let from = buf.len().saturating_sub(engine.holdback());
        if from == buf.len() {
            return Ok(());
        }
        engine.find_ending(
            &buf[from..],
            scratch,
            &mut self.candidates,
            |rule, span, decoded| found(rule, from + span.start..from + span.end, decoded),
        )
    }

    fn confirm(
        &mut self,
        engine: &Engine,
        buf: &[u8],
        base: u64,
        at_end: bool,
        mut found: impl FnMut(usize, Range<usize>, Option<&[u8]>),
    ) {
        // A deferred match reached the end of the bytes it was confirmed on, so it may have
        // grown with the bytes since: it is confirmed on all of them, never again on its old
        // window, whose end would pass for the end of the stream (a `$`, a cut repeat).
        let end = base + buf.len() as u64;
        let deferred = std::mem::take(&mut self.deferred)
            .into_iter()
            .map(|(rule, first_end)| (rule, first_end, end));
        for (rule, first_end, last_end) in deferred.chain(self.candidates.drain()) {
            let mut open = false;
            engine.confirm(
                rule,
                buf,
                base,
                first_end,
                last_end,
                |span, end, decoded| {
                    // A match may grow into bytes still to come, also through an escape
                    // that is cut.
                    if !at_end && (end == buf.len() || decode::is_cut_escape(&buf[end..])) {
                        open = true;
                    } else {
                        found(rule, span, decoded);
                    }
                },
            );
            if open {
                self.deferred.push((rule, first_end));
            }
        }
    }

    /// Whether an escape that no encoder writes has gone by (`%5F`, `\u0067`).
    pub(super) fn saw_unusual_escape(&self) -> bool {
        self.candidates.unusual_escape
    }

    /// Releases the Hyperscan stream (its state leaks otherwise).
    pub(super) fn close(&mut self, scratch: &Scratch) {
        if let Some(stream) = self.stream.take() {
            let _ = stream.close(scratch, ());
        }
    }
}
