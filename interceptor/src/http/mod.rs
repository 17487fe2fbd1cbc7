//! The HTTP layer: hyper serves the workload's side of a (decrypted or plain) connection and
//! drives a hyper client on the upstream side, one upstream connection per workload
//! connection, same protocol on both (ALPN was mirrored). Every request passes the hooks
//! ([`hook`]) and becomes an exchange record ([`exchange`]); bodies stream through.

mod exchange;
pub mod hook;
mod idle;
pub mod masking;
mod pipeline;
pub mod policy_hook;
pub mod preview;
mod refusal;
mod server_info;
pub mod settings;
pub mod tokenize;

use std::convert::Infallible;
use std::future::{Future, poll_fn};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::{http1 as client1, http2 as client2};
use hyper::server::conn::{http1 as server1, http2 as server2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::proxy::counted::Counted;
use crate::proxy::scan::StreamScan;
use crate::relay::Traffic;
pub use exchange::Recorder;
use exchange::{Exchange, HttpBody, Metered, Side, UpstreamBodyError, transform_for};
use hook::{BodyTransform, BoxError, ExchangeInfo, Hooks, Refused, Verdict};
use interceptor::detection::compression::CodecError;
use interceptor::relay_scan::Counters;
use refusal::ErrorShape;

/// Drives the client connection toward the upstream.
type UpstreamDriver = Boxed<()>;

/// How long a finished workload connection waits for its upstream connection to wind down.
const UPSTREAM_LINGER: Duration = Duration::from_secs(5);
/// Request bodies up to this size that a transform resizes are read whole before they go
/// on, so that they keep a `Content-Length` (larger ones stream, chunked on HTTP/1.1).
const REFRAMED_REQUEST_BODY: u64 = 64 * 1024;
/// How much of a refused JSON-RPC request is read, and for how long, to answer it by its id.
const RPC_ID_PEEK: usize = 64 * 1024;
const RPC_ID_WAIT: Duration = Duration::from_secs(2);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    Http1,
    Http2,
}

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("upstream HTTP handshake: {0}")]
    Handshake(#[source] hyper::Error),
    #[error("{0}")]
    Serve(#[source] hyper::Error),
    /// The workload's connection failed because an upstream response body broke under it.
    #[error("{0}")]
    UpstreamBody(#[source] hyper::Error),
    #[error("HTTP/2: no request in progress for {0:?} (header timeout)")]
    HeaderTimeout(Duration),
}

impl HttpError {
    /// The error serving the workload's connection ended with, blamed on the upstream when
    /// a response body of its broke ([`UpstreamBodyError`]).
    fn served(e: hyper::Error) -> HttpError {
        let mut causes = std::iter::successors(std::error::Error::source(&e), |s| s.source());
        if causes.any(|c| c.is::<UpstreamBodyError>()) {
            HttpError::UpstreamBody(e)
        } else {
            HttpError::Serve(e)
        }
    }
}

/// The HTTP layer's settings and hooks, shared by every connection.
pub struct HttpLayer {
    pub hooks: Hooks,
    pub header_timeout: Duration,
}

/// What one connection's exchanges share.
struct Connection {
    recorder: Recorder,
    hooks: Hooks,
    session: u64,
    destination: SocketAddr,
    sni: Option<String>,
    identity: Arc<crate::identity::Identity>,
    enrollment: Option<Arc<str>>,
    streams: Option<Arc<StreamScan>>,
    next_seq: AtomicU64,
    upstream: Upstream,
    /// Relays of upgraded (WebSocket) streams, awaited before the session ends.
    upgrades: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// Request bodies go upstream boxed: hyper's HTTP/1 client keeps a queue of requests for the
/// connection's life, with room for 32 of them from the start.
enum Upstream {
    /// HTTP/1 carries one exchange at a time; the lock makes pipelined requests wait.
    Http1(tokio::sync::Mutex<client1::SendRequest<HttpBody>>),
    Http2(client2::SendRequest<HttpBody>),
}

/// Where a connection comes from and goes to, for its records.
pub struct ConnectionInfo {
    pub session: u64,
    pub destination: SocketAddr,
    pub sni: Option<String>,
    /// How upgraded streams (WebSocket, CONNECT tunnels) are scanned for secrets; None:
    /// relayed as they are.
    pub streams: Option<Arc<StreamScan>>,
    pub identity: Arc<crate::identity::Identity>,
    pub enrollment: Option<Arc<str>>,
}

impl HttpLayer {
    pub fn new(hooks: Hooks, header_timeout: Duration) -> Self {
        HttpLayer {
            hooks,
            header_timeout,
        }
    }

    /// Serves one workload connection until it ends.
    ///
    /// The future lives as long as the connection, idle or not, so it holds little itself:
    /// the handshake's state is boxed and freed once done, the client's connection is boxed
    /// and sized for the protocol spoken, and no stream or connection is awaited where it
    /// was given (an async block keeps a value it was given beside whatever it moves it into).
    pub fn serve<C, U>(
        &self,
        recorder: Recorder,
        info: ConnectionInfo,
        version: Version,
        client: C,
        upstream: U,
    ) -> impl Future<Output = Result<(), HttpError>> + Send + 'static
    where
        C: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        U: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (hooks, header_timeout) = (self.hooks.clone(), self.header_timeout);
        let client = Box::new(client);
        let handshake = handshake(version, TokioIo::new(upstream));
        async move {
            let (sender, mut upstream_driver) = handshake.await?;
            let conn = Arc::new(Connection {
                recorder,
                hooks,
                session: info.session,
                destination: info.destination,
                sni: info.sni,
                identity: info.identity,
                enrollment: info.enrollment,
                streams: info.streams,
                next_seq: AtomicU64::new(0),
                upstream: sender,
                upgrades: Mutex::new(Vec::new()),
            });
            let shared = conn.clone();
            let mut server = serve_client(version, client, conn, header_timeout);
            // Both connections are driven by this one task: a request and its response never
            // wait for a wake-up on another thread.
            let mut upstream_done = false;
            let served = loop {
                tokio::select! {
                    served = &mut server => break served,
                    () = &mut upstream_driver, if !upstream_done => upstream_done = true,
                }
            };
            // The session ends when everything on it has: upgraded streams, then the upstream
            // connection (which lets go of the last request bodies, so every exchange is
            // recorded before the session's end).
            let upgrades = std::mem::take(&mut *shared.upgrades.lock().unwrap());
            for upgrade in upgrades {
                let _ = upgrade.await;
            }
            drop(shared);
            if !upstream_done
                && tokio::time::timeout(UPSTREAM_LINGER, upstream_driver)
                    .await
                    .is_err()
            {
                tracing::debug!(
                    session = info.session,
                    "upstream connection still busy after the workload's ended; closing it"
                );
            }
            served
        }
    }
}

/// A boxed future, sized for what it is.
type Boxed<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The upstream side's HTTP handshake: the sender for requests, and the future that drives
/// the connection.
fn handshake<U>(
    version: Version,
    upstream: TokioIo<U>,
) -> Boxed<Result<(Upstream, UpstreamDriver), HttpError>>
where
    U: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    match version {
        Version::Http1 => Box::pin(async move {
            let (sender, conn) = client1::handshake(upstream)
                .await
                .map_err(HttpError::Handshake)?;
            let sender = Upstream::Http1(tokio::sync::Mutex::new(sender));
            Ok((
                sender,
                drive(conn.with_upgrades(), "upstream HTTP/1 connection"),
            ))
        }),
        Version::Http2 => Box::pin(async move {
            let (sender, conn) = client2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .handshake(upstream)
                .await
                .map_err(HttpError::Handshake)?;
            Ok((
                Upstream::Http2(sender),
                drive(conn, "upstream HTTP/2 connection"),
            ))
        }),
    }
}

/// Drives an upstream connection to its end, logging an error it ends with.
fn drive<F>(conn: F, what: &'static str) -> UpstreamDriver
where
    F: Future<Output = hyper::Result<()>> + Unpin + Send + 'static,
{
    Box::pin(in_place(conn, move |done| {
        if let Err(e) = done {
            tracing::debug!(error = %e, "{what}");
        }
    }))
}

/// Awaits `conn` where it is and drops it once it is done (as an async block awaiting it
/// would), then `then` takes its output. An async block or fn that awaits a future it was
/// given holds it twice: where it was given, and where it is awaited.
fn in_place<F, T>(conn: F, then: impl FnOnce(F::Output) -> T) -> impl Future<Output = T>
where
    F: Future + Unpin,
{
    let mut pending = Some((conn, then));
    poll_fn(move |cx| {
        let (conn, _) = pending.as_mut().expect("polled after it completed");
        let done = ready!(Pin::new(conn).poll(cx));
        let (conn, then) = pending.take().expect("polled after it completed");
        drop(conn);
        Poll::Ready(then(done))
    })
}

/// Serves the workload's side of the connection, forwarding its requests through `conn`.
fn serve_client<C>(
    version: Version,
    client: Box<C>,
    conn: Arc<Connection>,
    header_timeout: Duration,
) -> Boxed<Result<(), HttpError>>
where
    C: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // HTTP/2 counts requests in progress for its header timeout.
    let in_flight = Arc::new(idle::InFlight::default());
    let counted = (version == Version::Http2).then(|| in_flight.clone());
    // hyper keeps a place for the service's future for the connection's life: a box, so an
    // idle connection does not keep room for an exchange.
    let service = hyper::service::service_fn(move |req| {
        let conn = conn.clone();
        let busy = counted.as_ref().map(|c| c.busy());
        let forward = Box::pin(async move { conn.forward(req, busy).await });
        async move { Ok::<_, Infallible>(forward.await) }
    });
    let client = TokioIo::new(client);
    match version {
        Version::Http1 => {
            let served = server1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(client, service)
                .with_upgrades();
            Box::pin(in_place(served, |served| served.map_err(HttpError::served)))
        }
        Version::Http2 => Box::pin(async move {
            // Extended CONNECT (RFC 8441): WebSocket over HTTP/2.
            let mut conn = Box::pin(
                server2::Builder::new(TokioExecutor::new())
                    .timer(TokioTimer::new())
                    .enable_connect_protocol()
                    .serve_connection(client, service),
            );
            tokio::select! {
                served = conn.as_mut() => match served {
                    // Gone once its streams were done: curl often resets, leaving
                    // a last WINDOW_UPDATE of ours unread. That is a close.
                    Err(e) if in_flight.is_idle() && went_away(&e) => Ok(()),
                    served => served.map_err(HttpError::served),
                },
                () = in_flight.idle_for(header_timeout) => {
                    // GOAWAY; with nothing in progress the connection ends at once.
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(header_timeout, conn).await;
                    Err(HttpError::HeaderTimeout(header_timeout))
                }
            }
        }),
    }
}

impl Connection {
    /// One exchange; `busy` (HTTP/2) counts it as in progress until its response body, or
    /// the stream it was upgraded to (a WebSocket over extended CONNECT), is done.
    async fn forward(
        &self,
        req: Request<Incoming>,
        busy: Option<idle::Busy>,
    ) -> Response<HttpBody> {
        let info = ExchangeInfo {
            session: self.session,
            seq: self.next_seq.fetch_add(1, Ordering::Relaxed),
            destination: self.destination,
            sni: self.sni.clone(),
            identity: self.identity.clone(),
            enrollment: self.enrollment.clone(),
            plan: Default::default(),
            mcp_initialize: Default::default(),
        };
        let (mut head, body) = req.into_parts();
        let exchange = Arc::new(Exchange::new(self.recorder.clone(), &info, &head));
        // Hooks may read the start of the body (an approval's preview); it is replayed.
        let body = preview::BodyPreview::new(body.map_err(Into::into).boxed_unsync());
        head.extensions.insert(body.clone());
        let decision = self.hooks.on_request(&info, &mut head).await;
        head.extensions.remove::<preview::BodyPreview>();
        // Recorded as the hooks left it (secrets masked).
        exchange.rewritten(&head);
        if let Verdict::Refuse { status, reason } = decision.verdict {
            exchange.fail(format_args!("refused: {reason}"));
            if exchange.error_shape == ErrorShape::JsonRpc
                || head.extensions.get::<refusal::JsonRpcBody>().is_some()
            {
                // The refusal answers the request by its id (read again from what a hook
                // may have read already).
                let (start, _) = body.first_bytes(RPC_ID_PEEK, RPC_ID_WAIT).await;
                let id = interceptor::agent::mcp::answer_id(&start);
                return answer_as(&exchange, ErrorShape::JsonRpc, status, reason, id);
            }
            return answer(&exchange, status, reason);
        }
        let body = body.into_body();
        let declared = (head.headers.contains_key(http::header::CONTENT_LENGTH))
            .then(|| hyper::body::Body::size_hint(&body).exact())
            .flatten();
        let transform = transform_for(&body, decision.body, &mut head.headers)
            .map(|t| Box::new(CapRefuses(t)) as Box<dyn BodyTransform>);
        let resized = !head.headers.contains_key(http::header::CONTENT_LENGTH);
        let mut body = Metered::new(body, exchange.clone(), Side::Request, transform);
        // Some servers refuse chunked uploads: a small body that a transform resized (a
        // vault swap) is read whole here and keeps a `Content-Length`, with its new length.
        if resized && declared.is_some_and(|n| n <= REFRAMED_REQUEST_BODY) {
            match body.buffered().await {
                Ok((whole, length)) => {
                    body = whole;
                    if let Some(length) = length {
                        head.headers
                            .insert(http::header::CONTENT_LENGTH, length.into());
                    }
                }
                Err(e) => {
                    if let Some((status, reason)) = exchange.refused() {
                        return answer(&exchange, status, reason);
                    }
                    return answer(
                        &exchange,
                        StatusCode::BAD_REQUEST,
                        format!("request body: {e}"),
                    );
                }
            }
        }
        let mut req = Request::from_parts(head, body);
        // A CONNECT (the workload talks to an HTTP proxy) becomes a tunnel on a 2xx, an
        // `Upgrade` (WebSocket) another protocol on a 101: either way, raw bytes follow.
        let tunnel = req.method() == http::Method::CONNECT;
        let client_upgrade = (tunnel || req.headers().contains_key(http::header::UPGRADE))
            .then(|| hyper::upgrade::on(&mut req));
        // HTTP/1.1 `Upgrade: websocket`, or HTTP/2's extended CONNECT with that protocol.
        let websocket = req
            .headers()
            .get(http::header::UPGRADE)
            .map(|v| v.as_bytes())
            .or_else(|| {
                let protocol = req.extensions().get::<hyper::ext::Protocol>();
                protocol.map(|p| p.as_str().as_bytes())
            })
            .is_some_and(|p| p.eq_ignore_ascii_case(b"websocket"));
        if websocket && self.streams.is_some() {
            // Compressed frames (permessage-deflate) could not be scanned: keep them plain.
            req.headers_mut()
                .remove(http::header::SEC_WEBSOCKET_EXTENSIONS);
        }
        let req = req.map(BodyExt::boxed_unsync);
        let sent = match &self.upstream {
            Upstream::Http1(sender) => {
                let mut sender = sender.lock().await;
                match sender.ready().await {
                    Ok(()) => sender.send_request(req).await,
                    Err(e) => Err(e),
                }
            }
            Upstream::Http2(sender) => sender.clone().send_request(req).await,
        };
        let mut resp = match sent {
            Ok(resp) => resp,
            Err(e) => {
                // A request body transform refused the exchange (a vault placeholder in the
                // body).
                if let Some((status, reason)) = exchange.refused() {
                    return answer(&exchange, status, reason);
                }
                // The workload's own body broke (bad chunked framing): not the upstream's.
                if exchange.request_body_failed() {
                    let reason = format!("request body: {}", crate::errors::chain(&e));
                    return answer(&exchange, StatusCode::BAD_REQUEST, reason);
                }
                exchange.fail(format_args!("upstream: {e}"));
                return answer(&exchange, StatusCode::BAD_GATEWAY, format!("upstream: {e}"));
            }
        };
        let switched = resp.status() == StatusCode::SWITCHING_PROTOCOLS
            || (tunnel && resp.status().is_success());
        let mut busy = busy;
        if switched && let Some(client_upgrade) = client_upgrade {
            let upstream_upgrade = hyper::upgrade::on(&mut resp);
            let relay = relay_upgraded(
                client_upgrade,
                upstream_upgrade,
                exchange.clone(),
                self.streams.clone().map(|scan| (scan, websocket)),
            );
            let busy = busy.take();
            let relay = tokio::spawn(async move {
                relay.await;
                drop(busy);
            });
            self.upgrades.lock().unwrap().push(relay);
        }
        let (mut head, body) = resp.into_parts();
        let decision = self.hooks.on_response(&info, &mut head).await;
        exchange.responded(&head);
        if let Verdict::Refuse { status, reason } = decision.verdict {
            exchange.fail(format_args!("response refused: {reason}"));
            return answer(&exchange, status, reason);
        }
        let transform = transform_for(&body, decision.body, &mut head.headers);
        let body = Metered::new(
            body.map_err(Into::into).boxed_unsync(),
            exchange,
            Side::Response,
            transform,
        )
        .boxed_unsync();
        let body = match busy {
            Some(busy) => idle::BusyBody::new(body, busy).boxed_unsync(),
            None => body,
        };
        Response::from_parts(head, body)
    }
}

/// Whether `e` is the client's connection dropping (a reset, TCP closed without TLS
/// close_notify, a broken pipe) rather than a protocol error.
fn went_away(e: &hyper::Error) -> bool {
    std::iter::successors(std::error::Error::source(e), |s| s.source())
        .find_map(|s| s.downcast_ref::<std::io::Error>())
        .is_some_and(|io| {
            matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::UnexpectedEof
                    | std::io::ErrorKind::BrokenPipe
            )
        })
}

/// A request body transform whose cap refuses the exchange: a body that decodes past the
/// decoded-size cap gets the workload a 413 with the reason, not a broken upstream's 502.
struct CapRefuses(Box<dyn BodyTransform>);

impl CapRefuses {
    fn refused(e: BoxError) -> BoxError {
        match e.downcast_ref::<CodecError>() {
            Some(cap @ CodecError::TooLarge { .. }) => Box::new(Refused {
                status: StatusCode::PAYLOAD_TOO_LARGE,
                reason: cap.to_string(),
            }),
            _ => e,
        }
    }
}

impl BodyTransform for CapRefuses {
    fn chunk(&mut self, data: Bytes) -> Result<Bytes, BoxError> {
        self.0.chunk(data).map_err(Self::refused)
    }

    fn finish(&mut self) -> Result<Bytes, BoxError> {
        self.0.finish().map_err(Self::refused)
    }

    fn trailers(&mut self, trailers: &mut http::HeaderMap) -> Result<(), BoxError> {
        self.0.trailers(trailers)
    }

    fn keeps_length(&self) -> bool {
        self.0.keeps_length()
    }

    fn recorded(&mut self) -> Option<hook::RecordedBody> {
        self.0.recorded()
    }
}

/// A response made here (refusal, upstream failure), recorded as the exchange's status, in
/// the error shape of the request's API.
fn answer(exchange: &Exchange, status: StatusCode, reason: String) -> Response<HttpBody> {
    answer_as(exchange, exchange.error_shape, status, reason, None)
}

/// [`answer`] in `shape`, for a JSON-RPC request whose id is known.
fn answer_as(
    exchange: &Exchange,
    shape: ErrorShape,
    status: StatusCode,
    reason: String,
    rpc_id: Option<serde_json::Value>,
) -> Response<HttpBody> {
    let (body, content_type) = shape.body(status, &reason, rpc_id);
    let mut resp = Response::new(
        Full::new(body)
            .map_err(|never: Infallible| match never {})
            .boxed_unsync(),
    );
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    let (head, body) = resp.into_parts();
    exchange.responded(&head);
    Response::from_parts(head, body)
}

/// After `101 Switching Protocols` (WebSocket) or a CONNECT's 2xx both sides speak something
/// else: relay the bytes (through the scanner, with whether they are WebSocket frames, when
/// secrets are masked) and record how many went each way.
async fn relay_upgraded(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    exchange: Arc<Exchange>,
    scan: Option<(Arc<StreamScan>, bool)>,
) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(both) => both,
        Err(e) => return exchange.fail(format_args!("upgrade: {e}")),
    };
    let traffic = Arc::new(Traffic::default());
    let mut client = Counted::client(TokioIo::new(client), traffic.clone());
    let mut upstream = Counted::upstream(TokioIo::new(upstream), traffic.clone());
    // Counted on the wire: what the scanner reads of a WebSocket has a newline per frame more.
    let counters = Counters::default();
    let relayed = match scan {
        Some((scan, true)) => scan
            .relay_websocket(client, upstream, &counters)
            .await
            .map_err(|e| e.to_string()),
        Some((scan, false)) => scan
            .relay(client, upstream, &counters)
            .await
            .map_err(|e| e.to_string()),
        None => crate::proxy::relay_streams(&mut client, &mut upstream)
            .await
            .map_err(|e| e.to_string()),
    };
    if let Err(e) = relayed {
        exchange.fail(format_args!("upgraded stream: {e}"));
    }
    exchange.upgraded(
        traffic.up.load(Ordering::Relaxed),
        traffic.down.load(Ordering::Relaxed),
    );
}

#[cfg(test)]
mod tests;
