//! A streaming HTTPS test server: each reply is a list of events (SSE or NDJSON lines, as the
//! APIs in [`crate::llm_wire`] write them) sent one frame per event with a real pause between
//! them, optionally gzip-compressed with a flush per event, the way streaming LLM APIs send.
//! Replies are registered under a path prefix (`/s0`, `/s1`, …) that the client's base URL
//! carries, so one server serves every case of a test.

use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};

use crate::https::{Body, HttpsServer, TestPki, full};

/// One reply: its content type and events, sent `pause` apart.
#[derive(Clone, Debug)]
pub struct Reply {
    pub content_type: &'static str,
    pub events: Vec<String>,
    pub pause: Duration,
    /// `Content-Encoding: gzip`, each event flushed (`Z_SYNC_FLUSH`) as it goes.
    pub gzip: bool,
    /// Where the server notes when each event was handed to the connection
    /// ([`monotonic_ns`]), for latency measurements.
    pub sent: Option<Arc<Mutex<Vec<u64>>>>,
}

impl Reply {
    pub fn new(content_type: &'static str, events: Vec<String>) -> Reply {
        Reply {
            content_type,
            events,
            pause: Duration::from_millis(5),
            gzip: false,
            sent: None,
        }
    }

    /// The body as the client reads it (decompressed).
    pub fn body(&self) -> String {
        self.events.concat()
    }
}

/// CLOCK_MONOTONIC in nanoseconds: one clock for every process on the machine, so a server
/// and a client in another process can compare times.
pub fn monotonic_ns() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("clock");
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

/// Replies by path prefix, and the request bodies received under each.
#[derive(Default)]
struct Routes {
    replies: HashMap<String, Reply>,
    received: HashMap<String, Vec<Bytes>>,
}

type Shared = Arc<Mutex<Routes>>;

/// An HTTPS server answering `/PREFIX/…` with the reply registered under PREFIX (any method;
/// the request body is kept, see [`StreamServer::received`]). Drop stops it.
pub struct StreamServer {
    pub server: HttpsServer,
    routes: Shared,
    next: AtomicU64,
}

impl StreamServer {
    /// On `ip`, with a certificate for `ip` signed by `pki`.
    pub fn start(ip: &str, pki: &TestPki) -> Result<StreamServer> {
        let routes: Shared = Arc::default();
        let table = routes.clone();
        let server = HttpsServer::start_with_handler(
            ip,
            pki.server_config(&[ip])?,
            Arc::new(move |req| Box::pin(answer(req, table.clone()))),
        )?;
        Ok(StreamServer {
            server,
            routes,
            next: AtomicU64::new(0),
        })
    }

    /// Registers `reply`; returns the base URL that reaches it (`https://IP:PORT/sN`).
    pub fn add(&self, reply: Reply) -> String {
        let prefix = format!("s{}", self.next.fetch_add(1, Ordering::Relaxed));
        let mut routes = self.routes.lock().unwrap();
        routes.replies.insert(prefix.clone(), reply);
        self.server.url(&format!("/{prefix}"))
    }

    /// The request bodies received at the reply `base` (as [`add`](Self::add) returned it).
    pub fn received(&self, base: &str) -> Vec<Bytes> {
        let prefix = base.rsplit('/').next().unwrap_or_default();
        let routes = self.routes.lock().unwrap();
        routes.received.get(prefix).cloned().unwrap_or_default()
    }
}

async fn answer(req: Request<Incoming>, routes: Shared) -> Result<Response<Body>, hyper::Error> {
    let prefix = req.uri().path().split('/').nth(1).unwrap_or("").to_owned();
    // Read the request first: an answer before the body is in ends an HTTP/1.1 connection.
    let body = req.into_body().collect().await?.to_bytes();
    let reply = {
        let mut routes = routes.lock().unwrap();
        let reply = routes.replies.get(&prefix).cloned();
        routes.received.entry(prefix).or_default().push(body);
        reply
    };
    let Some(reply) = reply else {
        return Ok(Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(full("no such reply"))
            .unwrap());
    };
    let mut resp = Response::builder()
        .header("content-type", reply.content_type)
        .header("cache-control", "no-cache");
    if reply.gzip {
        resp = resp.header("content-encoding", "gzip");
    }
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(pace(reply, tx));
    Ok(resp.body(Paced(rx).boxed()).unwrap())
}

/// Sends the reply's events, one frame each, `pause` apart (the first at once).
async fn pace(reply: Reply, tx: tokio::sync::mpsc::Sender<Bytes>) {
    let mut gzip = reply
        .gzip
        .then(|| flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()));
    for (i, event) in reply.events.iter().enumerate() {
        if i > 0 {
            tokio::time::sleep(reply.pause).await;
        }
        let frame = match &mut gzip {
            Some(z) => {
                // Flushing a write encoder is a sync flush: this event decodes on its own.
                let _ = z.write_all(event.as_bytes());
                let _ = z.flush();
                Bytes::from(std::mem::take(z.get_mut()))
            }
            None => Bytes::from(event.clone()),
        };
        if let Some(sent) = &reply.sent {
            sent.lock().unwrap().push(monotonic_ns());
        }
        if tx.send(frame).await.is_err() {
            return;
        }
    }
    if let Some(z) = gzip
        && let Ok(tail) = z.finish()
    {
        let _ = tx.send(Bytes::from(tail)).await;
    }
}

/// A body fed frame by frame from [`pace`].
struct Paced(tokio::sync::mpsc::Receiver<Bytes>);

impl hyper::body::Body for Paced {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}
