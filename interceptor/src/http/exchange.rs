//! One request/response pair as it is recorded: filled in while it runs, written to the
//! session store when the last piece of it (either body, an upgraded stream) is gone, so an
//! exchange cut short is recorded too, with what happened.

use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::HeaderMap;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::{Body, Frame, SizeHint};

use super::hook::{BodyTransform, BoxError, ExchangeInfo, Refused};
use super::pipeline::Pipeline;
use super::refusal::ErrorShape;
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
    /// How a refusal made here is written for this request's client.
    pub error_shape: ErrorShape,
    /// The workload's request body broke (malformed chunked framing, a reset, a coding
    /// that does not decode): the exchange failed on the workload's side.
    request_body_failed: AtomicBool,
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
            error_shape: ErrorShape::of(head),
            request_body_failed: AtomicBool::new(false),
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

    /// Whether the workload's request body broke (see [`Metered`]).
    pub fn request_body_failed(&self) -> bool {
        self.request_body_failed.load(Ordering::Relaxed)
    }

    /// What a body's transform kept of the body, for the record.
    pub(super) fn record_body(&self, side: Side, t: &mut dyn BodyTransform) {
        let Some(body) = t.recorded() else {
            return;
        };
        let mut r = self.record.lock().unwrap();
        match side {
            Side::Request => r.request_body = Some(body),
            Side::Response => r.response_body = Some(body),
        }
    }

    /// Body bytes that came in on `side`.
    pub(super) fn body_bytes(&self, side: Side) -> &AtomicU64 {
        match side {
            Side::Request => &self.request_bytes,
            Side::Response => &self.response_bytes,
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

/// The transform a body is to go through, with its headers fixed for it: one that may change
/// the length drops `Content-Length`. A body that has already ended (a GET, a 204) gets
/// none: nothing in it to transform, and a transformed body's length is not known up front,
/// so HTTP/1.1 would send a body-less request on as an empty chunked one.
pub fn transform_for(
    body: &impl Body,
    transform: Option<Box<dyn BodyTransform>>,
    headers: &mut HeaderMap,
) -> Option<Box<dyn BodyTransform>> {
    let transform = transform.filter(|_| !body.is_end_stream())?;
    if !transform.keeps_length() {
        headers.remove(http::header::CONTENT_LENGTH);
    }
    Some(transform)
}

#[derive(Clone, Copy, Debug)]
pub enum Side {
    Request,
    Response,
}

/// A response body that broke on its way from the upstream (its connection, a coding that
/// does not decode, a body that decodes past the cap): the upstream's fault, however the
/// workload's connection ends because of it. The cause stays its source, so hyper still
/// finds an HTTP/2 reset reason in it.
#[derive(Debug, thiserror::Error)]
#[error("upstream response body: {0}")]
pub struct UpstreamBodyError(#[source] BoxError);

/// A body on its way through: counted, passed through the hooks' transform (on a task of its
/// own: [`Pipeline`]), its end and errors noted in the exchange.
pub struct Metered {
    source: Source,
    exchange: Arc<Exchange>,
    side: Side,
    done: bool,
}

enum Source {
    /// No transform: frames go on as they come.
    Direct(HttpBody),
    Transformed(Pipeline),
    /// Read whole already (and counted): the frames to hand on.
    Buffered(std::collections::VecDeque<Frame<Bytes>>),
}

impl Metered {
    /// A transform starts its task on the current Tokio runtime.
    pub fn new(
        inner: HttpBody,
        exchange: Arc<Exchange>,
        side: Side,
        transform: Option<Box<dyn BodyTransform>>,
    ) -> Self {
        let source = match transform {
            None => Source::Direct(inner),
            Some(t) => Source::Transformed(Pipeline::start(inner, t, exchange.clone(), side)),
        };
        Metered {
            source,
            exchange,
            side,
            done: false,
        }
    }

    /// This body read to its end now, held to be handed on at once: a small request body
    /// that a transform resized gets a `Content-Length` that way. Returns it and its data
    /// length, or None for the length when it has trailers (they need chunked framing).
    pub async fn buffered(mut self) -> Result<(Metered, Option<u64>), BoxError> {
        use http_body_util::BodyExt;
        let (mut frames, mut data, mut trailers) = (std::collections::VecDeque::new(), 0, false);
        while let Some(frame) = self.frame().await {
            let frame = frame?;
            match frame.data_ref() {
                Some(d) => data += d.len() as u64,
                None => trailers = true,
            }
            frames.push_back(frame);
        }
        self.source = Source::Buffered(frames);
        self.done = false;
        Ok((self, (!trailers).then_some(data)))
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
        match self.side {
            Side::Request => {
                self.exchange
                    .request_body_failed
                    .store(true, Ordering::Relaxed);
                Poll::Ready(Some(Err(e)))
            }
            Side::Response => Poll::Ready(Some(Err(Box::new(UpstreamBodyError(e))))),
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
        if this.done {
            return Poll::Ready(None);
        }
        let item = match &mut this.source {
            Source::Direct(inner) => {
                let item = ready!(Pin::new(inner).poll_frame(cx));
                if let Some(Ok(frame)) = &item
                    && let Some(data) = frame.data_ref()
                {
                    this.exchange
                        .body_bytes(this.side)
                        .fetch_add(data.len() as u64, Ordering::Relaxed);
                }
                item
            }
            // The task counts what comes in.
            Source::Transformed(pipeline) => ready!(pipeline.poll_frame(cx)),
            Source::Buffered(frames) => frames.pop_front().map(Ok),
        };
        match item {
            Some(Ok(frame)) => Poll::Ready(Some(Ok(frame))),
            Some(Err(e)) => this.failed(e),
            None => {
                this.done = true;
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
            || match &self.source {
                Source::Direct(inner) => inner.is_end_stream(),
                Source::Transformed(_) => false,
                Source::Buffered(frames) => frames.is_empty(),
            }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.source {
            Source::Direct(inner) => inner.size_hint(),
            Source::Transformed(pipeline) => pipeline.size_hint(),
            Source::Buffered(frames) => {
                let data = frames.iter().filter_map(|f| f.data_ref()).map(|d| d.len());
                SizeHint::with_exact(data.sum::<usize>() as u64)
            }
        }
    }
}
