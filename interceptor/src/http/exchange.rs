//! One request/response pair as it is recorded: filled in while it runs, written to the
//! session store when the last piece of it (either body, an upgraded stream) is gone, so an
//! exchange cut short is recorded too, with what happened.

use std::fmt;
use std::pin::Pin;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::HeaderMap;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::{Body, Frame, SizeHint};

use super::hook::{BodyTransform, BoxError, ExchangeInfo, RecordedBody, Refused};
use crate::sessions::{HttpExchange, PolicyDecision, UpgradedBytes};

pub type HttpBody = UnsyncBoxBody<Bytes, BoxError>;
/// Where finished exchanges go (the session store, in the daemon).
pub type Recorder = std::sync::Arc<dyn Fn(HttpExchange) + Send + Sync>;

/// Headers worth keeping; nothing that carries credentials (no authorization, cookies).
const REQUEST_HEADERS: &[&str] = &[
    "user-agent",
    "content-type",
    "content-length",
    "transfer-encoding",
    "accept",
    "expect",
    "upgrade",
];
const RESPONSE_HEADERS: &[&str] = &[
    "content-type",
    "content-length",
    "transfer-encoding",
    "server",
    "location",
    "upgrade",
];
const MAX_HEADER_VALUE: usize = 256;

pub struct Exchange {
    recorder: Recorder,
    started: Instant,
    record: Mutex<HttpExchange>,
    request_bytes: AtomicU64,
    response_bytes: AtomicU64,
    /// Why a request body transform refused the exchange.
    refused: Mutex<Option<(http::StatusCode, String)>>,
}

impl Exchange {
    pub fn new(recorder: Recorder, info: &ExchangeInfo, head: &http::request::Parts) -> Exchange {
        let authority = head.uri.authority().map(|a| a.to_string()).or_else(|| {
            let host = head.headers.get(http::header::HOST)?;
            host.to_str().ok().map(str::to_owned)
        });
        Exchange {
            recorder,
            started: Instant::now(),
            record: Mutex::new(HttpExchange {
                id: info.session,
                seq: info.seq,
                version: format!("{:?}", head.version),
                method: head.method.to_string(),
                authority,
                // The query stays out: it often carries tokens.
                path: head.uri.path().to_owned(),
                status: None,
                request_headers: selected(&head.headers, REQUEST_HEADERS),
                response_headers: Vec::new(),
                request_body_bytes: 0,
                response_body_bytes: 0,
                started_at: SystemTime::now(),
                response_after: None,
                duration: Default::default(),
                upgraded: None,
                error: None,
                policy: None,
                request_body: None,
                response_body: None,
            }),
            request_bytes: AtomicU64::new(0),
            response_bytes: AtomicU64::new(0),
            refused: Mutex::new(None),
        }
    }

    /// The request head again, after the hooks rewrote it (masked secrets) and the policy
    /// hook left its decision in the extensions.
    pub fn rewritten(&self, head: &http::request::Parts) {
        let mut r = self.record.lock().unwrap();
        r.path = head.uri.path().to_owned();
        r.request_headers = selected(&head.headers, REQUEST_HEADERS);
        r.policy = head.extensions.get::<PolicyDecision>().cloned();
    }

    pub fn responded(&self, head: &http::response::Parts) {
        let mut r = self.record.lock().unwrap();
        r.status = Some(head.status.as_u16());
        r.response_headers = selected(&head.headers, RESPONSE_HEADERS);
        r.response_after = Some(self.started.elapsed());
    }

    /// Keeps the first error: later ones are usually its consequences.
    pub fn fail(&self, error: impl fmt::Display) {
        let mut r = self.record.lock().unwrap();
        if r.error.is_none() {
            r.error = Some(error.to_string());
        }
    }

    /// The status and reason a body transform refused the exchange with ([`Refused`]).
    pub fn refused(&self) -> Option<(http::StatusCode, String)> {
        self.refused.lock().unwrap().clone()
    }

    fn body_recorded(&self, side: Side, body: RecordedBody) {
        let mut r = self.record.lock().unwrap();
        match side {
            Side::Request => r.request_body = Some(body),
            Side::Response => r.response_body = Some(body),
        }
    }

    pub fn upgraded(&self, up: u64, down: u64) {
        self.record.lock().unwrap().upgraded = Some(UpgradedBytes { up, down });
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        let mut r = self.record.get_mut().unwrap().clone();
        r.request_body_bytes = self.request_bytes.load(Ordering::Relaxed);
        r.response_body_bytes = self.response_bytes.load(Ordering::Relaxed);
        r.duration = self.started.elapsed();
        tracing::debug!(session = r.id, seq = r.seq, method = %r.method, path = %r.path,
            status = ?r.status, error = r.error.as_deref().unwrap_or(""), "http exchange");
        (self.recorder)(r);
    }
}

/// The request headers that records (and approvers) may see.
pub fn recorded_request_headers(headers: &HeaderMap) -> Vec<(String, String)> {
    selected(headers, REQUEST_HEADERS)
}

fn selected(headers: &HeaderMap, names: &[&str]) -> Vec<(String, String)> {
    names
        .iter()
        .flat_map(|name| {
            headers.get_all(*name).iter().map(move |v| {
                let v = String::from_utf8_lossy(v.as_bytes());
                let v: String = v.chars().take(MAX_HEADER_VALUE).collect();
                (name.to_string(), v)
            })
        })
        .collect()
}

#[derive(Clone, Copy, Debug)]
pub enum Side {
    Request,
    Response,
}

/// A body on its way through: counted, passed through the hooks' transform, its end and
/// errors noted in the exchange.
pub struct Metered {
    inner: HttpBody,
    exchange: std::sync::Arc<Exchange>,
    side: Side,
    transform: Option<Box<dyn BodyTransform>>,
    /// Trailers held while a transform's tail goes out first.
    pending: Option<Frame<Bytes>>,
    done: bool,
}

impl Metered {
    pub fn new(
        inner: HttpBody,
        exchange: std::sync::Arc<Exchange>,
        side: Side,
        transform: Option<Box<dyn BodyTransform>>,
    ) -> Self {
        Metered {
            inner,
            exchange,
            side,
            transform,
            pending: None,
            done: false,
        }
    }

    fn counter(&self) -> &AtomicU64 {
        match self.side {
            Side::Request => &self.exchange.request_bytes,
            Side::Response => &self.exchange.response_bytes,
        }
    }

    fn failed(&self, e: BoxError) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let side = match self.side {
            Side::Request => "request body",
            Side::Response => "response body",
        };
        if let Some(r) = e.downcast_ref::<Refused>() {
            self.exchange.fail(format_args!("refused: {}", r.reason));
            *self.exchange.refused.lock().unwrap() = Some((r.status, r.reason.clone()));
        }
        self.exchange.fail(format_args!("{side}: {e}"));
        Poll::Ready(Some(Err(e)))
    }

    /// The transform's held-back tail, once, at the end of the data.
    fn finish(&mut self) -> Result<Option<Frame<Bytes>>, BoxError> {
        match self.transform.take() {
            Some(mut t) => {
                let tail = t.finish();
                self.record(t.as_mut());
                let tail = tail?;
                Ok((!tail.is_empty()).then(|| Frame::data(tail)))
            }
            None => Ok(None),
        }
    }

    /// A trailers frame through the transform (which may rewrite them: masking).
    fn trailers(&mut self, frame: Frame<Bytes>) -> Result<Frame<Bytes>, BoxError> {
        match (frame.into_trailers(), self.transform.as_mut()) {
            (Ok(mut trailers), Some(t)) => {
                t.trailers(&mut trailers)?;
                Ok(Frame::trailers(trailers))
            }
            (Ok(trailers), None) => Ok(Frame::trailers(trailers)),
            // Neither data nor trailers: passed on as it came.
            (Err(other), _) => Ok(other),
        }
    }

    fn record(&self, t: &mut dyn BodyTransform) {
        if let Some(body) = t.recorded() {
            self.exchange.body_recorded(self.side, body);
        }
    }
}

impl Drop for Metered {
    /// A body cut short still leaves what it recorded.
    fn drop(&mut self) {
        if let Some(mut t) = self.transform.take() {
            self.record(t.as_mut());
        }
    }
}

impl Body for Metered {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(frame) = this.pending.take() {
            return Poll::Ready(Some(Ok(frame)));
        }
        if this.done {
            return Poll::Ready(None);
        }
        match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    this.counter()
                        .fetch_add(data.len() as u64, Ordering::Relaxed);
                    match this.transform.as_mut().map(|t| t.chunk(data.clone())) {
                        None => Poll::Ready(Some(Ok(Frame::data(data)))),
                        Some(Ok(out)) => Poll::Ready(Some(Ok(Frame::data(out)))),
                        Some(Err(e)) => this.failed(e),
                    }
                }
                Err(frame) => {
                    let trailers = match this.trailers(frame) {
                        Ok(trailers) => trailers,
                        Err(e) => return this.failed(e),
                    };
                    match this.finish() {
                        Ok(Some(tail)) => {
                            this.pending = Some(trailers);
                            Poll::Ready(Some(Ok(tail)))
                        }
                        Ok(None) => Poll::Ready(Some(Ok(trailers))),
                        Err(e) => this.failed(e),
                    }
                }
            },
            Some(Err(e)) => this.failed(e),
            None => {
                this.done = true;
                match this.finish() {
                    Ok(tail) => Poll::Ready(tail.map(Ok)),
                    Err(e) => this.failed(e),
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.pending.is_none()
            && (self.done || (self.transform.is_none() && self.inner.is_end_stream()))
    }

    fn size_hint(&self) -> SizeHint {
        match &self.transform {
            // A transform may change the length.
            Some(t) if !t.keeps_length() => SizeHint::default(),
            _ => self.inner.size_hint(),
        }
    }
}
