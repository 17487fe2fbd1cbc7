//! The answer to MCP's `initialize`, read as it goes back to the workload (a JSON body, or an
//! SSE stream whose events carry JSON-RPC messages): who the server is. The bytes pass
//! unchanged; at most [`MAX_READ`] of them are looked at.

use bytes::Bytes;
use interceptor::agent::mcp::{self, ServerInfo};
use interceptor::events::Format;

use super::hook::{BodyTransform, BoxError};

/// How much of the answer is looked at for the server's name.
const MAX_READ: usize = 64 * 1024;

pub struct ServerInfoTap {
    /// SSE, or None for one JSON body.
    sse: bool,
    /// The part not looked at yet (SSE: from the start of the current event).
    buf: Vec<u8>,
    /// SSE: where in `buf` to look on for the current event's end.
    from: usize,
    /// Found, or given up.
    done: bool,
    found: Box<dyn FnMut(ServerInfo) + Send>,
}

impl ServerInfoTap {
    /// A tap for a body of `content_type`; None for one that carries no JSON-RPC answer.
    pub fn new(
        content_type: &str,
        found: impl FnMut(ServerInfo) + Send + 'static,
    ) -> Option<ServerInfoTap> {
        let essence = content_type.split(';').next()?.trim();
        let sse = match Format::of(content_type) {
            Some(Format::Sse) => true,
            None if essence.eq_ignore_ascii_case("application/json") => false,
            _ => return None,
        };
        Some(ServerInfoTap {
            sse,
            buf: Vec::new(),
            from: 0,
            done: false,
            found: Box::new(found),
        })
    }

    fn look(&mut self, data: &[u8]) {
        if let Some(info) = mcp::server_info(data) {
            (self.found)(info);
            self.stop();
        }
    }

    fn stop(&mut self) {
        self.done = true;
        self.buf = Vec::new();
    }

    /// Looks at each complete SSE event in `buf`.
    fn events(&mut self) {
        while !self.done {
            match Format::Sse.event_end(&self.buf, self.from) {
                Ok(end) => {
                    let event = &self.buf[..end];
                    let data: Vec<&[u8]> = (Format::Sse.data(event).into_iter())
                        .map(|r| &event[r])
                        .collect();
                    let data = data.join(&b'\n');
                    self.look(&data);
                    if !self.done {
                        self.buf.drain(..end);
                        self.from = 0;
                    }
                }
                Err(from) => {
                    self.from = from;
                    return;
                }
            }
        }
    }
}

impl BodyTransform for ServerInfoTap {
    fn chunk(&mut self, data: Bytes) -> Result<Bytes, BoxError> {
        if !self.done {
            let room = MAX_READ.saturating_sub(self.buf.len());
            self.buf.extend_from_slice(&data[..data.len().min(room)]);
            if self.sse {
                self.events();
            }
            if self.buf.len() >= MAX_READ {
                self.stop();
            }
        }
        Ok(data)
    }

    fn finish(&mut self) -> Result<Bytes, BoxError> {
        if !self.done && !self.sse {
            let whole = std::mem::take(&mut self.buf);
            self.look(&whole);
        }
        self.stop();
        Ok(Bytes::new())
    }

    fn keeps_length(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    const ANSWER: &str = r#"{"jsonrpc":"2.0","id":0,"result":{"protocolVersion":"2025-06-18","serverInfo":{"name":"config-server","version":"1.2"}}}"#;

    /// What a tap for `content_type` finds in `body` cut into pieces of `size`, checking
    /// that the bytes pass unchanged.
    fn found(content_type: &str, body: &str, size: usize) -> Vec<ServerInfo> {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let mut tap =
            ServerInfoTap::new(content_type, move |i| sink.lock().unwrap().push(i)).unwrap();
        let mut out = Vec::new();
        for piece in body.as_bytes().chunks(size) {
            out.extend_from_slice(&tap.chunk(Bytes::copy_from_slice(piece)).unwrap());
        }
        out.extend_from_slice(&tap.finish().unwrap());
        assert_eq!(out, body.as_bytes());
        seen.lock().unwrap().clone()
    }

    #[test]
    fn the_server_is_found_in_json_and_in_sse_however_the_body_is_cut() {
        let sse = format!(
            "event: message\r\ndata: {{\"jsonrpc\":\"2.0\",\"method\":\"notifications/message\"}}\r\n\r\nevent: message\r\ndata: {ANSWER}\r\n\r\n"
        );
        for size in [1, 7, 64, 4096] {
            for (content_type, body) in [
                ("application/json", ANSWER.to_owned()),
                ("text/event-stream", sse.clone()),
            ] {
                let f = found(content_type, &body, size);
                assert_eq!(f.len(), 1, "{content_type} in pieces of {size}");
                assert_eq!(f[0].name, "config-server");
                assert_eq!(f[0].version.as_deref(), Some("1.2"));
            }
        }
        assert!(found("application/json", "{\"jsonrpc\":", 3).is_empty());
        assert!(ServerInfoTap::new("text/html", |_| {}).is_none());
    }
}
