//! The one place later layers (secret masking, policy, approvals, recording) act on HTTP
//! traffic: a [`Hook`] sees every request head before it goes upstream and every response
//! head before it goes back, may rewrite either, may hold the request (its future simply
//! does not complete yet) or refuse it, and may attach a [`BodyTransform`] that sees (and
//! may rewrite) the body as it streams.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

use bytes::Bytes;
use http::StatusCode;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type HookFuture<'a> = Pin<Box<dyn Future<Output = Decision> + Send + 'a>>;

/// What the hook knows about the exchange besides its head.
#[derive(Clone, Debug)]
pub struct ExchangeInfo {
    /// The session (connection) id.
    pub session: u64,
    /// Order of the request on its connection, from 0.
    pub seq: u64,
    pub destination: SocketAddr,
    /// SNI when the connection was TLS.
    pub sni: Option<String>,
    /// The process that made the connection.
    pub identity: std::sync::Arc<crate::identity::Identity>,
    /// Its enrollment's name (`enroll --name`), which policy rules can match.
    pub enrollment: Option<std::sync::Arc<str>>,
    /// The policy's secret settings for this exchange, set by the first hook that needs
    /// them on the request and read again for the response.
    pub plan: std::sync::OnceLock<std::sync::Arc<super::settings::Plan>>,
    /// Set by the policy hook when the request is MCP's `initialize`: its answer names the
    /// server.
    pub mcp_initialize: std::sync::OnceLock<()>,
}

#[cfg(test)]
impl ExchangeInfo {
    /// An exchange to 127.0.0.2:443 by an unknown process, for tests.
    pub fn for_tests() -> ExchangeInfo {
        ExchangeInfo {
            session: 9,
            seq: 0,
            destination: "127.0.0.2:443".parse().unwrap(),
            sni: None,
            identity: Default::default(),
            enrollment: None,
            plan: Default::default(),
            mcp_initialize: Default::default(),
        }
    }
}

pub trait Hook: Send + Sync {
    /// Before the request goes upstream. Headers, method and URI may be rewritten.
    fn on_request<'a>(
        &'a self,
        info: &'a ExchangeInfo,
        head: &'a mut http::request::Parts,
    ) -> HookFuture<'a>;

    /// Before the response goes back to the workload. By default it passes unchanged.
    fn on_response<'a>(
        &'a self,
        _info: &'a ExchangeInfo,
        _head: &'a mut http::response::Parts,
    ) -> HookFuture<'a> {
        Box::pin(async { Decision::default() })
    }
}

/// A hook's answer for one head.
#[derive(Default)]
pub struct Decision {
    pub verdict: Verdict,
    /// Sees the body that follows this head, chunk by chunk.
    pub body: Option<Box<dyn BodyTransform>>,
}

impl Decision {
    /// Refuse with 403 and `reason` as the body.
    pub fn forbidden(reason: String) -> Decision {
        Decision {
            verdict: Verdict::Refuse {
                status: StatusCode::FORBIDDEN,
                reason,
            },
            body: None,
        }
    }
}

#[derive(Debug, Default, PartialEq, Eq)]
pub enum Verdict {
    #[default]
    Forward,
    /// Answer the workload with `status` and `reason` (as the body); on a request, nothing
    /// goes upstream; on a response, the upstream's response is dropped.
    Refuse { status: StatusCode, reason: String },
}

/// Streams a body through: every data chunk in, what to send on out. Buffering (for a
/// match that spans chunks) is the transform's own business, within its own cap.
pub trait BodyTransform: Send {
    fn chunk(&mut self, data: Bytes) -> Result<Bytes, BoxError>;
    /// End of body: whatever was held back.
    fn finish(&mut self) -> Result<Bytes, BoxError>;
    /// Whether bytes are held back that [`Self::idle`] would let go.
    fn holds(&self) -> bool {
        false
    }
    /// The body paused (no data for a while): what is held back goes, confirmed as if the
    /// body ended here; the body goes on.
    fn idle(&mut self) -> Result<Bytes, BoxError> {
        Ok(Bytes::new())
    }
    /// The body's trailers (chunked HTTP/1.1, HTTP/2 trailing HEADERS), before they go on;
    /// they may be rewritten in place. A transform that wraps another passes them on.
    fn trailers(&mut self, _trailers: &mut http::HeaderMap) -> Result<(), BoxError> {
        Ok(())
    }
    /// Whether the output has exactly the input's length (then `Content-Length` stays).
    fn keeps_length(&self) -> bool {
        false
    }
    /// What of the body goes into the exchange's record (asked once, at the end of the
    /// body or when it is cut short).
    fn recorded(&mut self) -> Option<RecordedBody> {
        None
    }
}

pub use crate::sessions::RecordedBody;

/// An error a body transform ends a request body with to refuse the whole exchange: the
/// workload gets `status` and `reason` instead of the upstream's answer.
#[derive(Debug, thiserror::Error)]
#[error("{reason}")]
pub struct Refused {
    pub status: StatusCode,
    pub reason: String,
}

/// The hooks in force, run in order; the first refusal wins, transforms chain.
#[derive(Default, Clone)]
pub struct Hooks(Vec<std::sync::Arc<dyn Hook>>);

impl Hooks {
    pub fn new(hooks: Vec<std::sync::Arc<dyn Hook>>) -> Self {
        Hooks(hooks)
    }

    /// These hooks, then `hook`.
    pub fn then(mut self, hook: std::sync::Arc<dyn Hook>) -> Self {
        self.0.push(hook);
        self
    }

    pub async fn on_request(
        &self,
        info: &ExchangeInfo,
        head: &mut http::request::Parts,
    ) -> Decision {
        let mut decisions = Vec::with_capacity(self.0.len());
        for hook in &self.0 {
            decisions.push(hook.on_request(info, head).await);
        }
        combine(decisions)
    }

    pub async fn on_response(
        &self,
        info: &ExchangeInfo,
        head: &mut http::response::Parts,
    ) -> Decision {
        let mut decisions = Vec::with_capacity(self.0.len());
        for hook in &self.0 {
            decisions.push(hook.on_response(info, head).await);
        }
        combine(decisions)
    }
}

fn combine(decisions: Vec<Decision>) -> Decision {
    let mut transforms = Vec::new();
    for d in decisions {
        if d.verdict != Verdict::Forward {
            return Decision {
                verdict: d.verdict,
                body: None,
            };
        }
        transforms.extend(d.body);
    }
    Decision {
        verdict: Verdict::Forward,
        body: chained(transforms),
    }
}

/// `transforms` applied one after the other (None for none).
pub fn chained(mut transforms: Vec<Box<dyn BodyTransform>>) -> Option<Box<dyn BodyTransform>> {
    match transforms.len() {
        0 => None,
        1 => transforms.pop(),
        _ => Some(Box::new(Chain(transforms))),
    }
}

/// Transforms applied one after the other.
struct Chain(Vec<Box<dyn BodyTransform>>);

impl Chain {
    /// What each transform lets go (`release`: at the end, or idle) after what the ones
    /// before it let go has passed through it.
    fn release(
        &mut self,
        release: impl Fn(&mut dyn BodyTransform) -> Result<Bytes, BoxError>,
    ) -> Result<Bytes, BoxError> {
        let mut tail = Bytes::new();
        for t in &mut self.0 {
            let mut out = t.chunk(tail)?.to_vec();
            out.extend_from_slice(&release(t.as_mut())?);
            tail = out.into();
        }
        Ok(tail)
    }
}

impl BodyTransform for Chain {
    fn chunk(&mut self, mut data: Bytes) -> Result<Bytes, BoxError> {
        for t in &mut self.0 {
            data = t.chunk(data)?;
        }
        Ok(data)
    }

    fn finish(&mut self) -> Result<Bytes, BoxError> {
        self.release(|t| t.finish())
    }

    fn holds(&self) -> bool {
        self.0.iter().any(|t| t.holds())
    }

    fn idle(&mut self) -> Result<Bytes, BoxError> {
        self.release(|t| t.idle())
    }

    fn trailers(&mut self, trailers: &mut http::HeaderMap) -> Result<(), BoxError> {
        self.0.iter_mut().try_for_each(|t| t.trailers(trailers))
    }

    fn keeps_length(&self) -> bool {
        self.0.iter().all(|t| t.keeps_length())
    }

    fn recorded(&mut self) -> Option<RecordedBody> {
        self.0.iter_mut().find_map(|t| t.recorded())
    }
}
