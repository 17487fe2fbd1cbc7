//! Event-aware masking of streamed bodies (Server-Sent Events, NDJSON): what LLM APIs,
//! MCP servers and agents stream.
//!
//! Masking the raw bytes misses a secret whose pieces arrive in several events: between them
//! it is broken up by JSON and SSE framing. Here every JSON string field continues a
//! *channel* ([`fields`]), the text a client assembles from that field across events, and
//! each channel is masked as one stream; the masked text is written back into the events, so
//! each stays valid JSON with the same fields and the same event boundaries (an event no
//! secret touched goes on byte for byte). Data that is not JSON is one text channel.
//!
//! Latency: an event goes on as soon as it is whole, unless a channel it wrote to could still
//! be in the middle of a secret (the engine's [`Openings`], or a long base64 run): then it
//! waits for the next event or for [`EventMasker::idle`] (the body's reader calls it when the
//! stream pauses), which lets everything go as if the stream ended there, as the raw relay's
//! idle flush does. Events never overtake each other.
//!
//! The whole event is also scanned in block mode after its fields are masked, so a secret
//! known by the key in front of it (`"password": "..."`) is found as in any JSON body.
//! An event larger than [`MAX_EVENT`] ends event-aware masking: the rest of the body is
//! masked as raw bytes (still masked, no longer per field).
//!
//! [`Openings`]: crate::detection::openings::Openings

mod channel;
pub mod fields;
pub mod framing;

use std::borrow::Cow;
use std::collections::{HashMap, HashSet, VecDeque};
use std::ops::Range;
use std::sync::Arc;

use crate::detection::openings::OpeningsCache;
use crate::detection::{
    Engine, Finding, Masker, ScanError, SecretHasher, Selection, mask_buffer_selected,
};
use channel::Channel;
pub use framing::Format;

/// Largest event held whole; past it the body is masked as raw bytes.
pub const MAX_EVENT: usize = 4 << 20;
/// Channels per stream; fields past them share one.
const MAX_CHANNELS: usize = 256;
/// The channel of event data that is not JSON.
const TEXT_CHANNEL: &str = "~data";
const OVERFLOW_CHANNEL: &str = "~more";

/// A finding with its place: `event:N/json/pointer` (the event where the secret starts and
/// the field's RFC 6901 pointer; just `event:N` for a match in the event as a whole), or
/// `body` once the stream is masked as raw bytes.
#[derive(Debug)]
pub struct PlacedFinding {
    pub location: String,
    pub finding: Finding,
}

pub struct EventMasker {
    format: Format,
    engine: Arc<Engine>,
    hasher: SecretHasher,
    selection: Option<Arc<Selection>>,
    cache: OpeningsCache,
    /// Bytes of the event still coming in, and where to look for its end.
    input: Vec<u8>,
    resume: usize,
    next_event: u64,
    /// Events whole but not written out yet, in order.
    pending: VecDeque<Pending>,
    channels: Vec<Channel>,
    names: HashMap<String, usize>,
    touched: Vec<usize>,
    findings: Vec<PlacedFinding>,
    /// Hashes of secrets the channels found, so the block scan does not report them again.
    found_hashes: HashSet<String>,
    /// Set once an event was too large: the rest is masked as raw bytes.
    raw: Option<Masker>,
}

/// One event, whole, waiting for the masked text of its fields.
struct Pending {
    number: u64,
    raw: Vec<u8>,
    /// Spans of its data in `raw` (joined by LF, they are the data).
    data: Vec<Range<usize>>,
    pieces: Vec<Piece>,
}

/// One field's text in a channel.
struct Piece {
    channel: usize,
    at: u64,
    text: String,
    /// The JSON string literal in the data, or None for data that is text as a whole.
    literal: Option<Range<usize>>,
}

impl EventMasker {
    pub fn new(
        format: Format,
        engine: Arc<Engine>,
        hasher: SecretHasher,
        selection: Option<Arc<Selection>>,
    ) -> EventMasker {
        EventMasker {
            format,
            cache: engine.openings().cache(),
            engine,
            hasher,
            selection,
            input: Vec::new(),
            resume: 0,
            next_event: 0,
            pending: VecDeque::new(),
            channels: Vec::new(),
            names: HashMap::new(),
            touched: Vec::new(),
            findings: Vec::new(),
            found_hashes: HashSet::new(),
            raw: None,
        }
    }

    /// Takes in `chunk`; appends to `out` the events that may go on, masked.
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> Result<(), ScanError> {
        if let Some(raw) = &mut self.raw {
            raw.push(chunk, out)?;
            return self.take_raw_findings();
        }
        self.input.extend_from_slice(chunk);
        let mut start = 0;
        loop {
            match self.format.event_end(&self.input, self.resume) {
                Ok(end) => {
                    let event = self.input[start..end].to_vec();
                    self.take_event(event)?;
                    start = end;
                    self.resume = end;
                }
                Err(resume) => {
                    self.resume = resume;
                    break;
                }
            }
        }
        self.input.drain(..start);
        self.resume -= start;
        self.settle()?;
        self.write_ready(out)?;
        if self.input.len() > MAX_EVENT {
            self.mask_rest_raw(out)?;
        }
        Ok(())
    }

    /// The stream paused: everything waiting goes on, as if the stream ended here.
    pub fn idle(&mut self, out: &mut Vec<u8>) -> Result<(), ScanError> {
        if let Some(raw) = &mut self.raw {
            raw.flush(out)?;
            return self.take_raw_findings();
        }
        for c in &mut self.channels {
            c.flush()?;
        }
        self.take_channel_findings(0..self.channels.len());
        self.write_ready(out)
    }

    /// End of the stream: a last event without its end goes on as it is.
    pub fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), ScanError> {
        if let Some(raw) = &mut self.raw {
            raw.finish(out)?;
            return self.take_raw_findings();
        }
        if !self.input.is_empty() {
            let event = std::mem::take(&mut self.input);
            self.take_event(event)?;
        }
        for c in &mut self.channels {
            c.finish()?;
        }
        self.take_channel_findings(0..self.channels.len());
        self.write_ready(out)
    }

    /// Whether whole events are waiting (for more text, or the idle release).
    pub fn waiting(&self) -> bool {
        !self.pending.is_empty()
    }

    pub fn take_findings(&mut self) -> Vec<PlacedFinding> {
        std::mem::take(&mut self.findings)
    }

    /// Splits a whole event into its fields and adds their text to their channels.
    fn take_event(&mut self, raw: Vec<u8>) -> Result<(), ScanError> {
        let number = self.next_event;
        self.next_event += 1;
        let data = self.format.data(&raw);
        let mut pieces = Vec::new();
        if !data.is_empty() {
            let joined = joined(&raw, &data);
            // A bare number or word (`data: 1`, `[DONE]`) is text, not a field.
            match fields::string_fields(&joined).filter(|_| is_structured(&joined)) {
                Some(found) => {
                    for field in found.into_iter().filter(|f| !f.text.is_empty()) {
                        let pointer: Arc<str> = field.pointer.into();
                        let channel = self.channel(&field.channel)?;
                        let at =
                            self.channels[channel].push(field.text.as_bytes(), number, &pointer)?;
                        pieces.push(Piece {
                            channel,
                            at,
                            text: field.text,
                            literal: Some(field.literal),
                        });
                    }
                    self.end_one_piece_values(&pieces)?;
                }
                None if !joined.is_empty() => {
                    let text = String::from_utf8_lossy(&joined).into_owned();
                    let channel = self.channel(TEXT_CHANNEL)?;
                    let at = self.channels[channel].push(&joined, number, &"".into())?;
                    pieces.push(Piece {
                        channel,
                        at,
                        text,
                        literal: None,
                    });
                }
                None => {}
            }
        }
        self.pending.push_back(Pending {
            number,
            raw,
            data,
            pieces,
        });
        Ok(())
    }

    /// Values that came whole in the event before and not in this one let their event go
    /// (otherwise the first event's `"role":"assistant"` would wait for the end of the
    /// stream, and every event behind it). A text that grows in every event is untouched.
    fn end_one_piece_values(&mut self, pieces: &[Piece]) -> Result<(), ScanError> {
        for (i, c) in self.channels.iter_mut().enumerate() {
            if c.ended_after_one_piece() && !pieces.iter().any(|p| p.channel == i) {
                c.flush()?;
                if !self.touched.contains(&i) {
                    self.touched.push(i);
                }
            }
        }
        Ok(())
    }

    /// The channel called `name`, made on first use.
    fn channel(&mut self, name: &str) -> Result<usize, ScanError> {
        let name = if self.names.len() >= MAX_CHANNELS && !self.names.contains_key(name) {
            OVERFLOW_CHANNEL
        } else {
            name
        };
        let index = match self.names.get(name) {
            Some(&i) => i,
            None => {
                let c = Channel::new(&self.engine, &self.hasher, &self.selection)?;
                self.channels.push(c);
                self.names.insert(name.to_owned(), self.channels.len() - 1);
                self.channels.len() - 1
            }
        };
        if !self.touched.contains(&index) {
            self.touched.push(index);
        }
        Ok(index)
    }

    /// Lets the channels written to go where their tails cannot start a secret.
    fn settle(&mut self) -> Result<(), ScanError> {
        let limit = self.engine.holdback();
        let openings = self.engine.openings();
        for &i in &self.touched {
            self.channels[i].settle(openings, &mut self.cache, limit)?;
        }
        let touched = std::mem::take(&mut self.touched);
        self.take_channel_findings(touched.into_iter());
        Ok(())
    }

    fn take_channel_findings(&mut self, channels: impl Iterator<Item = usize>) {
        for i in channels {
            for (event, pointer, finding) in self.channels[i].take_findings() {
                self.found_hashes.insert(finding.hash.clone());
                self.findings.push(PlacedFinding {
                    location: format!("event:{event}{pointer}"),
                    finding,
                });
            }
        }
    }

    /// Writes out the events at the front whose fields are all released.
    fn write_ready(&mut self, out: &mut Vec<u8>) -> Result<(), ScanError> {
        while let Some(front) = self.pending.front() {
            let ready = front
                .pieces
                .iter()
                .all(|p| self.channels[p.channel].released_end() >= p.at + p.text.len() as u64);
            if !ready {
                break;
            }
            let event = self.pending.pop_front().expect("front");
            self.write(event, out)?;
        }
        // Released text no waiting event needs is dropped.
        for (i, c) in self.channels.iter_mut().enumerate() {
            let needed = self
                .pending
                .iter()
                .flat_map(|e| &e.pieces)
                .filter(|p| p.channel == i)
                .map(|p| p.at)
                .min();
            c.written_up_to(needed.unwrap_or(u64::MAX));
        }
        Ok(())
    }

    /// One event with its fields' masked text written back, then masked as a whole.
    fn write(&mut self, event: Pending, out: &mut Vec<u8>) -> Result<(), ScanError> {
        let changed = event
            .pieces
            .iter()
            .any(|p| self.channels[p.channel].masked(p.at, p.text.len()) != p.text.as_bytes());
        let (bytes, contents) = if changed {
            let (bytes, contents) = self.rewritten(&event);
            (Cow::Owned(bytes), contents)
        } else {
            let contents = contents_in(&event.data, &event.pieces, None);
            (Cow::Borrowed(event.raw.as_slice()), contents)
        };
        let (mut masked, found) =
            mask_buffer_selected(&self.engine, &self.hasher, self.selection.as_ref(), &bytes)?;
        for finding in found {
            let secret =
                finding.offset as usize..(finding.offset + u64::from(finding.length)) as usize;
            // Inside one field, a match is its channel's to find (the field may be a piece of
            // it, cut where its quote ends it), unless it starts the field's text: then it
            // takes its context from outside, from a key (`"password": "..."`).
            let inside = contents.iter().any(|(c, whole)| {
                (c.start < secret.start || (*whole && c.start == secret.start))
                    && secret.end <= c.end
            });
            if inside {
                masked[secret.clone()].copy_from_slice(&bytes[secret]);
            } else if !self.found_hashes.contains(&finding.hash) {
                self.findings.push(PlacedFinding {
                    location: format!("event:{}", event.number),
                    finding,
                });
            }
        }
        out.extend_from_slice(&masked);
        Ok(())
    }

    /// The event's bytes with each field's masked text in place of the original, and where
    /// its string values are written in them.
    fn rewritten(&self, event: &Pending) -> (Vec<u8>, Vec<(Range<usize>, bool)>) {
        let data = joined(&event.raw, &event.data);
        let mut new_data = Vec::with_capacity(data.len() + 16);
        let mut literals = Vec::new();
        let mut copied = 0;
        for p in &event.pieces {
            let masked = self.channels[p.channel].masked(p.at, p.text.len());
            match &p.literal {
                Some(literal) => {
                    new_data.extend_from_slice(&data[copied..literal.start]);
                    let text = String::from_utf8_lossy(masked);
                    let quoted = serde_json::to_string(&text).expect("a string serializes");
                    literals.push(new_data.len()..new_data.len() + quoted.len());
                    new_data.extend_from_slice(quoted.as_bytes());
                    copied = literal.end;
                }
                None => {
                    // Line ends stay where they were, so the data keeps its lines.
                    new_data.extend(
                        masked
                            .iter()
                            .zip(p.text.as_bytes())
                            .map(|(&m, &o)| if o == b'\n' { o } else { m }),
                    );
                    copied = data.len();
                }
            }
        }
        new_data.extend_from_slice(&data[copied..]);
        // The data's lines go back into the event's data spans, one each.
        let mut out = Vec::with_capacity(event.raw.len() + 16);
        let mut spans = Vec::with_capacity(event.data.len());
        let mut lines = new_data.split(|&b| b == b'\n');
        let mut at = 0;
        for span in &event.data {
            out.extend_from_slice(&event.raw[at..span.start]);
            let line = lines.next().unwrap_or_default();
            spans.push(out.len()..out.len() + line.len());
            out.extend_from_slice(line);
            at = span.end;
        }
        out.extend_from_slice(&event.raw[at..]);
        let contents = contents_in(&spans, &event.pieces, Some(&literals));
        (out, contents)
    }

    /// An event too large to hold: what waits goes on, and the rest of the body is masked
    /// as raw bytes from the start of that event.
    fn mask_rest_raw(&mut self, out: &mut Vec<u8>) -> Result<(), ScanError> {
        tracing::warn!(
            bytes = self.input.len(),
            "an event larger than the cap: the rest of the stream is masked as raw bytes"
        );
        self.idle(out)?;
        let mut raw = Masker::with_selection(
            self.engine.clone(),
            self.hasher.clone(),
            self.selection.clone(),
        )?;
        raw.push(&std::mem::take(&mut self.input), out)?;
        self.raw = Some(raw);
        self.take_raw_findings()
    }

    fn take_raw_findings(&mut self) -> Result<(), ScanError> {
        if let Some(raw) = &mut self.raw {
            self.findings.extend(
                raw.take_findings()
                    .into_iter()
                    .map(|finding| PlacedFinding {
                        location: "body".into(),
                        finding,
                    }),
            );
        }
        Ok(())
    }
}

/// Where the event's fields are written in it (data spans `data`): each JSON string's
/// contents without the quotes, or the whole data when it is text (then flagged: the whole
/// data is its channel's). `literals` overrides the pieces' own literal ranges (rewritten).
fn contents_in(
    data: &[Range<usize>],
    pieces: &[Piece],
    literals: Option<&[Range<usize>]>,
) -> Vec<(Range<usize>, bool)> {
    let mut rewritten = literals.into_iter().flatten();
    let mut contents = Vec::with_capacity(pieces.len());
    for piece in pieces {
        match &piece.literal {
            Some(original) => {
                let l = match literals {
                    Some(_) => rewritten.next().expect("one per literal").clone(),
                    None => original.clone(),
                };
                if let Some(start) = raw_offset(data, l.start + 1) {
                    contents.push((start..start + (l.end - l.start - 2), false));
                }
            }
            None => contents.extend(data.iter().map(|span| (span.clone(), true))),
        }
    }
    contents
}

/// The offset in the raw event of offset `at` of its joined data (a literal never spans
/// two data lines: JSON strings hold no raw line end).
fn raw_offset(data: &[Range<usize>], mut at: usize) -> Option<usize> {
    for span in data {
        if at <= span.len() {
            return Some(span.start + at);
        }
        at -= span.len() + 1;
    }
    None
}

/// Whether JSON `data` is an object, array or string (not a bare scalar).
fn is_structured(data: &[u8]) -> bool {
    data.iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| matches!(b, b'{' | b'[' | b'"'))
}

/// The event's data: its spans joined by LF (borrowed when there is one).
fn joined<'a>(raw: &'a [u8], data: &[Range<usize>]) -> Cow<'a, [u8]> {
    match data {
        [one] => Cow::Borrowed(&raw[one.clone()]),
        _ => Cow::Owned(
            data.iter()
                .map(|r| &raw[r.clone()])
                .collect::<Vec<_>>()
                .join(&b'\n'),
        ),
    }
}

#[cfg(test)]
mod tests;
