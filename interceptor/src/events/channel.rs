//! The text one field accumulates across the events of a stream (a channel), masked as one
//! stream: a secret whose pieces arrive in several events is whole here.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::detection::openings::{OpenTail, Openings, OpeningsCache};
use crate::detection::{Engine, Finding, Masker, ScanError, SecretHasher, Selection};

/// A trailing run of base64 characters this long, in a text that grows across events, may
/// be the start of an encoded secret (which the masker decodes once the run is whole): its
/// events wait. Shorter runs are words; a field seen once or repeated (an id) is whole.
const OPEN_BASE64_RUN: usize = 16;

/// Where a field's text starts in its channel, for placing findings.
struct Place {
    at: u64,
    event: u64,
    pointer: Arc<str>,
}

pub(super) struct Channel {
    masker: Masker,
    /// The channel's last bytes (at least the engine's holdback), from offset `window_base`.
    window: Vec<u8>,
    window_base: u64,
    open: OpenTail,
    /// Masked text the masker let go, from offset `released_base` on, until written out.
    released: Vec<u8>,
    released_base: u64,
    places: VecDeque<Place>,
    pieces: u64,
    /// The last field's text was the one before it again (an id in every event), not text
    /// that grows.
    repeated: bool,
}

impl Channel {
    pub(super) fn new(
        engine: &Arc<Engine>,
        hasher: &SecretHasher,
        selection: &Option<Arc<Selection>>,
    ) -> Result<Channel, ScanError> {
        Ok(Channel {
            masker: Masker::with_selection(engine.clone(), hasher.clone(), selection.clone())?,
            window: Vec::new(),
            window_base: 0,
            open: OpenTail::default(),
            released: Vec::new(),
            released_base: 0,
            places: VecDeque::new(),
            pieces: 0,
            repeated: false,
        })
    }

    fn end(&self) -> u64 {
        self.window_base + self.window.len() as u64
    }

    pub(super) fn released_end(&self) -> u64 {
        self.released_base + self.released.len() as u64
    }

    /// Appends one field's text (of event `event`, at `pointer`); returns its offset.
    pub(super) fn push(
        &mut self,
        text: &[u8],
        event: u64,
        pointer: &Arc<str>,
    ) -> Result<u64, ScanError> {
        let at = self.end();
        // The previous field's text is the window's end, unless the window dropped it.
        let previous = (self.places.back())
            .filter(|p| p.at >= self.window_base)
            .map(|p| &self.window[(p.at - self.window_base) as usize..]);
        self.repeated = previous == Some(text);
        self.places.push_back(Place {
            at,
            event,
            pointer: pointer.clone(),
        });
        self.window.extend_from_slice(text);
        self.pieces += 1;
        self.masker.push(text, &mut self.released)?;
        Ok(at)
    }

    /// After new text: lets all of it go unless its tail could still start a secret.
    pub(super) fn settle(
        &mut self,
        openings: &Openings,
        cache: &mut OpeningsCache,
        limit: usize,
    ) -> Result<(), ScanError> {
        let open = self
            .open
            .update(openings, cache, &self.window, self.window_base, limit);
        let growing = self.pieces > 1 && !self.repeated;
        // A value that repeats (an id or type in every event) is whole each time: a run open
        // only within it ends with it. One open from an earlier piece still waits.
        let piece_start = self.places.back().map_or(self.end(), |p| p.at);
        let open = open.filter(|&at| !self.repeated || at < piece_start);
        match open {
            // What comes before the first open position cannot be part of a secret still
            // to be completed: it goes, and only the open tail waits.
            Some(at) => self.masker.release_before(at, &mut self.released),
            None if growing && self.trailing_base64_run() >= OPEN_BASE64_RUN => {}
            None => self.flush()?,
        }
        if self.window.len() > 2 * limit {
            let cut = self.window.len() - limit;
            self.window.drain(..cut);
            self.window_base += cut as u64;
            while self.places.len() > 1 && self.places[1].at <= self.window_base {
                self.places.pop_front();
            }
        }
        Ok(())
    }

    /// A value seen in one event only (`"role":"assistant"` in the first) that the next
    /// event did not go on with: it was whole, not the start of a text that grows.
    pub(super) fn ended_after_one_piece(&self) -> bool {
        self.pieces == 1 && self.released_end() < self.end()
    }

    fn trailing_base64_run(&self) -> usize {
        (self.window.iter().rev())
            .take_while(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'-' | b'_'))
            .count()
    }

    /// Lets everything go, confirmed as if the text ended here (it goes on).
    pub(super) fn flush(&mut self) -> Result<(), ScanError> {
        self.masker.flush(&mut self.released)
    }

    /// The text ended.
    pub(super) fn finish(&mut self) -> Result<(), ScanError> {
        self.masker.finish(&mut self.released)
    }

    /// The masked bytes at `at..at + len` (released already).
    pub(super) fn masked(&self, at: u64, len: usize) -> &[u8] {
        let from = (at - self.released_base) as usize;
        &self.released[from..from + len]
    }

    /// Forgets released bytes before `offset` (written out).
    pub(super) fn written_up_to(&mut self, offset: u64) {
        let cut = (offset.saturating_sub(self.released_base) as usize).min(self.released.len());
        self.released.drain(..cut);
        self.released_base += cut as u64;
    }

    /// Findings since the last call, each with its event, field and offset in the field.
    pub(super) fn take_findings(&mut self) -> impl Iterator<Item = (u64, Arc<str>, Finding)> + '_ {
        let places = &self.places;
        self.masker.take_findings().into_iter().map(move |mut f| {
            let place = places
                .iter()
                .rev()
                .find(|p| p.at <= f.offset)
                .or(places.front())
                .expect("a finding comes from a field");
            f.offset = f.offset.saturating_sub(place.at);
            (place.event, place.pointer.clone(), f)
        })
    }
}
