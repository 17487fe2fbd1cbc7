//! Where one event of a stream ends, and where its data is: Server-Sent Events (the WHATWG
//! `text/event-stream` format: lines ended by CRLF, LF or CR, an event ended by an empty
//! line, its data in `data:` fields joined by LF) and NDJSON (one JSON value per line).

use std::ops::Range;

use memchr::memchr2;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Sse,
    Ndjson,
}

impl Format {
    /// The event format of a body with this `Content-Type`, if it is one.
    pub fn of(content_type: &str) -> Option<Format> {
        let essence = content_type.split(';').next()?.trim();
        let is = |t: &str| essence.eq_ignore_ascii_case(t);
        if is("text/event-stream") {
            Some(Format::Sse)
        } else if is("application/x-ndjson")
            || is("application/jsonl")
            || is("application/jsonlines")
        {
            Some(Format::Ndjson)
        } else {
            None
        }
    }

    /// The end (just past its terminator) of the first complete event in `buf`, looking
    /// from `from` on (a line start with no end before it); else where to look from once
    /// more bytes came.
    pub fn event_end(self, buf: &[u8], from: usize) -> Result<usize, usize> {
        match self {
            Format::Ndjson => memchr::memchr(b'\n', &buf[from..])
                .map(|i| from + i + 1)
                .ok_or(buf.len()),
            Format::Sse => sse_event_end(buf, from),
        }
    }

    /// The spans of the event's data: the values of its `data` fields for SSE, the line
    /// without its end for NDJSON. Joined with LF they are the event's data.
    pub fn data(self, event: &[u8]) -> Vec<Range<usize>> {
        match self {
            Format::Ndjson => {
                let mut end = event.len();
                while end > 0 && matches!(event[end - 1], b'\n' | b'\r') {
                    end -= 1;
                }
                std::iter::once(0..end).collect()
            }
            Format::Sse => lines(event)
                .filter_map(|line| {
                    let text = &event[line.clone()];
                    let value = text.strip_prefix(b"data")?;
                    let skip = match value {
                        [] => 0,
                        [b':', b' ', ..] => 2,
                        [b':', ..] => 1,
                        _ => return None,
                    };
                    Some(line.start + 4 + skip..line.end)
                })
                .collect(),
        }
    }
}

/// The event's lines, each without its end.
pub fn lines(event: &[u8]) -> impl Iterator<Item = Range<usize>> + '_ {
    let mut at = 0;
    std::iter::from_fn(move || {
        if at >= event.len() {
            return None;
        }
        let start = at;
        match memchr2(b'\n', b'\r', &event[at..]) {
            None => {
                at = event.len();
                Some(start..event.len())
            }
            Some(i) => {
                let end = start + i;
                at = end + line_end_len(event, end);
                Some(start..end)
            }
        }
    })
}

/// 2 for a CRLF at `at`, else 1 (a lone CR or LF).
fn line_end_len(buf: &[u8], at: usize) -> usize {
    if buf[at] == b'\r' && buf.get(at + 1) == Some(&b'\n') {
        2
    } else {
        1
    }
}

fn sse_event_end(buf: &[u8], from: usize) -> Result<usize, usize> {
    let mut line_start = from;
    loop {
        let Some(i) = memchr2(b'\n', b'\r', &buf[line_start..]) else {
            return Err(line_start);
        };
        let end = line_start + i;
        // A CR at the very end may be the first half of a CRLF still to come.
        if buf[end] == b'\r' && end + 1 == buf.len() {
            return Err(line_start);
        }
        let next = end + line_end_len(buf, end);
        if end == line_start {
            return Ok(next);
        }
        line_start = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(format: Format, stream: &[u8]) -> Vec<&[u8]> {
        let mut out = Vec::new();
        let mut start = 0;
        while let Ok(end) = format.event_end(&stream[start..], 0) {
            out.push(&stream[start..start + end]);
            start += end;
        }
        out
    }

    #[test]
    fn sse_events_end_at_an_empty_line_with_any_line_end() {
        let stream = b"data: a\n\nevent: x\r\ndata: b\r\n\r\n: ping\r\rdata: c\n";
        assert_eq!(
            events(Format::Sse, stream),
            [
                &b"data: a\n\n"[..],
                b"event: x\r\ndata: b\r\n\r\n",
                b": ping\r\r"
            ]
        );
        // A CR at the end waits: it may be half of a CRLF.
        assert_eq!(Format::Sse.event_end(b"data: a\r\n\r", 0), Err(9));
    }

    #[test]
    fn sse_data_is_the_values_of_data_fields() {
        let event = b"event: delta\r\ndata: {\"a\":\ndata:1}\ndata\ndatum: no\n\n";
        let data: Vec<&[u8]> = Format::Sse
            .data(event)
            .into_iter()
            .map(|r| &event[r])
            .collect();
        assert_eq!(data, [&b"{\"a\":"[..], b"1}", b""]);
    }

    #[test]
    fn ndjson_events_are_lines() {
        let stream = b"{\"a\":1}\n{\"b\":2}\r\n{\"c\"";
        let found = events(Format::Ndjson, stream);
        assert_eq!(found, [&b"{\"a\":1}\n"[..], b"{\"b\":2}\r\n"]);
        let spans = Format::Ndjson.data(found[1]);
        assert_eq!((spans.len(), spans[0].clone()), (1, 0..7));
    }

    #[test]
    fn content_types_name_the_format() {
        assert_eq!(
            Format::of("text/event-stream; charset=utf-8"),
            Some(Format::Sse)
        );
        assert_eq!(Format::of("application/x-ndjson"), Some(Format::Ndjson));
        assert_eq!(Format::of("application/json"), None);
    }
}
