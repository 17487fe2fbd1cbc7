//! HTTPS test servers (HTTP/1.1 and HTTP/2, hyper + rustls) with their own test CA, run on a
//! thread of the test process. Routes:
//!
//! * `GET /hello` → `hello over HTTP/x.y`
//! * `GET /bytes/N` → N bytes of `x`
//! * `GET /text/N` → N bytes of JSON log lines (realistic text without secrets), in 64 KiB
//!   frames that share one buffer
//! * `GET /delay/MS` → `late` after MS milliseconds
//! * `POST /upload` → the body's size in bytes, once all of it has arrived
//! * `POST /echo` → the request body (and the trailers its `Trailer` header announces),
//!   streamed back
//! * `GET /ws` with `Upgrade: websocket`, or HTTP/2's extended CONNECT to `/ws` → 101 or
//!   200, then every byte is echoed back raw
//! * `GET /planted-secret` → a body holding [`PLANTED_SECRET`] (a finding downstream)

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::Value;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{Daemon, python, run_with_timeout, scripts_dir};

const EXEC_TIMEOUT: Duration = Duration::from_secs(60);
const SESSIONS_TIMEOUT: Duration = Duration::from_secs(30);

/// A policy that allows everything and intercepts all TLS (`run --policy`), for tests whose
/// servers listen on ports the shipped default passes through.
pub fn intercept_all_policy() -> PathBuf {
    crate::workspace_root().join("tests/policies/intercept-all.toml")
}

/// A daemon that trusts `pki` for upstreams and intercepts all TLS, plus `extra` run
/// arguments.
pub fn intercepting_daemon(pki: &TestPki, extra: &[&str]) -> Result<Daemon> {
    policy_daemon(pki, &intercept_all_policy(), extra)
}

/// A daemon that trusts `pki` for upstreams and runs `policy`, plus `extra` run arguments.
pub fn policy_daemon(pki: &TestPki, policy: &Path, extra: &[&str]) -> Result<Daemon> {
    let mut args = vec![
        "--upstream-ca",
        pki.ca_file.to_str().context("CA path")?,
        "--policy",
        policy.to_str().context("policy path")?,
    ];
    args.extend_from_slice(extra);
    Daemon::start_with(&args)
}

/// The usual HTTPS set-up: a test CA, an HTTPS server on `ip` whose certificate (for `ip`)
/// it signs, and an [`intercepting_daemon`] trusting it with `extra` run arguments. Bind as
/// `let (_pki, server, d)`: the CA must outlive the daemon.
pub fn https_fixture(ip: &str, extra: &[&str]) -> Result<(TestPki, HttpsServer, Daemon)> {
    let pki = TestPki::new("upstream test CA")?;
    let server = HttpsServer::start(ip, pki.server_config(&[ip])?)?;
    let d = intercepting_daemon(&pki, extra)?;
    Ok((pki, server, d))
}

/// [`https_fixture`] with a plain-HTTP server on `ip` (the daemon still has a test CA).
pub fn plain_fixture(ip: &str, extra: &[&str]) -> Result<(TestPki, HttpsServer, Daemon)> {
    let pki = TestPki::new("upstream test CA")?;
    let server = HttpsServer::start_plain(ip)?;
    let d = intercepting_daemon(&pki, extra)?;
    Ok((pki, server, d))
}

/// Runs `program` under `interceptor exec --include-loopback` (bounded time).
pub fn exec_loopback(d: &Daemon, program: &[&str]) -> Result<Output> {
    run_with_timeout(
        &mut d.exec_command(&["--include-loopback"], program),
        EXEC_TIMEOUT,
    )
}

/// `openssl s_client -connect SERVER EXTRA… -verify_return_error -quiet` under exec,
/// sending `GET /hello` (bounded time); its output, whatever the exit code.
pub fn openssl_get_hello(d: &Daemon, server: &HttpsServer, extra: &[&str]) -> Result<Output> {
    let connect = server.addr.to_string();
    let mut argv = vec!["openssl", "s_client", "-connect", &connect];
    argv.extend_from_slice(extra);
    argv.extend_from_slice(&["-verify_return_error", "-quiet"]);
    let request = b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    crate::run_with_input(
        &mut d.exec_command(&["--include-loopback"], &argv),
        Some(request),
        EXEC_TIMEOUT,
    )
}

/// Runs tests/scripts/tls_client.py under exec; returns its JSON report.
pub fn tls_client(d: &Daemon, args: &[&str]) -> Result<Value> {
    let script = scripts_dir().join("tls_client.py");
    let mut argv = vec![
        python().to_str().context("path")?,
        script.to_str().context("path")?,
    ];
    argv.extend_from_slice(args);
    let out = exec_loopback(d, &argv)?;
    ensure!(
        out.status.success(),
        "tls_client.py {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).with_context(|| format!("tls_client.py printed {text}"))
}

/// Sessions as JSON (the harness model knows only the issue-2 fields).
pub fn sessions_json(d: &Daemon) -> Result<Vec<Value>> {
    d.cli_json(["sessions", "list", "--json"])
}

/// Waits for a finished session to `port` and returns the newest one.
pub fn ended_session(d: &Daemon, port: u16) -> Result<Value> {
    let suffix = format!(":{port}");
    d.wait_for_matching(
        |s| s.destination.ends_with(&suffix) && s.outcome != "open",
        1,
        SESSIONS_TIMEOUT,
    )?;
    sessions_json(d)?
        .into_iter()
        .rev()
        .find(|s| {
            s["destination"]
                .as_str()
                .is_some_and(|x| x.ends_with(&suffix))
        })
        .context("session vanished")
}

/// A secret the shipped rules find (`slack.bot-token`), planted in `/planted-secret`.
pub const PLANTED_SECRET: &str = "xoxb-983227406196-9740026249223-5hMAac3c0tfFVXPcWdPxLbH0";

/// A test CA whose certificate is written to a file (for `--upstream-ca`).
pub struct TestPki {
    _dir: TempDir,
    pub ca_file: PathBuf,
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl TestPki {
    pub fn new(name: &str) -> Result<TestPki> {
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
        let dir = tempfile::Builder::new()
            .prefix("interceptor-pki-")
            .tempdir()?;
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca.pem())?;
        Ok(TestPki {
            _dir: dir,
            ca_file,
            ca,
        })
    }

    /// A certificate for `names` signed by this CA, and its key, as PEM files (for servers
    /// that are not in this process); returns (chain, key).
    pub fn server_pem(&self, names: &[&str]) -> Result<(PathBuf, PathBuf)> {
        let key = KeyPair::generate()?;
        let params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
        let cert = params.signed_by(&key, &self.ca)?;
        let dir = self.ca_file.parent().context("CA dir")?;
        let (chain, key_file) = (
            dir.join(format!("{}.pem", names[0])),
            dir.join(format!("{}-key.pem", names[0])),
        );
        std::fs::write(&chain, cert.pem() + &self.ca.pem())?;
        std::fs::write(&key_file, key.serialize_pem())?;
        Ok((chain, key_file))
    }

    /// A server configuration with a certificate for `names` (DNS names or IPs) signed by
    /// this CA, offering h2 and http/1.1.
    pub fn server_config(&self, names: &[&str]) -> Result<Arc<ServerConfig>> {
        let key = KeyPair::generate()?;
        let params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
        let cert = params.signed_by(&key, &self.ca)?;
        let mut config =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()?
                .with_no_client_auth()
                .with_single_cert(
                    vec![
                        cert.der().clone(),
                        CertificateDer::from(self.ca.der().to_vec()),
                    ],
                    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
                )?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

/// A running HTTPS server; Drop stops it.
pub struct HttpsServer {
    pub addr: SocketAddr,
    pub connections: Arc<AtomicU64>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HttpsServer {
    pub fn start(ip: &str, config: Arc<ServerConfig>) -> Result<HttpsServer> {
        Self::spawn(ip, Some(config), Arc::new(|req| Box::pin(route(req))))
    }

    /// The same routes over plain HTTP (HTTP/1.1, or HTTP/2 with prior knowledge).
    pub fn start_plain(ip: &str) -> Result<HttpsServer> {
        Self::spawn(ip, None, Arc::new(|req| Box::pin(route(req))))
    }

    /// An HTTPS server that answers every request with `handler` instead of the routes.
    pub fn start_with_handler(
        ip: &str,
        config: Arc<ServerConfig>,
        handler: Handler,
    ) -> Result<HttpsServer> {
        Self::spawn(ip, Some(config), handler)
    }

    fn spawn(ip: &str, config: Option<Arc<ServerConfig>>, handler: Handler) -> Result<HttpsServer> {
        let listener =
            std::net::TcpListener::bind((ip, 0)).with_context(|| format!("bind {ip}"))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let connections = Arc::new(AtomicU64::new(0));
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let counter = connections.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                let acceptor = config.map(tokio_rustls::TlsAcceptor::from);
                let serve = async {
                    loop {
                        let Ok((tcp, _)) = listener.accept().await else {
                            continue;
                        };
                        counter.fetch_add(1, Ordering::Relaxed);
                        let _ = tcp.set_nodelay(true);
                        let (acceptor, handler) = (acceptor.clone(), handler.clone());
                        tokio::spawn(async move {
                            match acceptor {
                                Some(acceptor) => {
                                    if let Ok(tls) = acceptor.accept(tcp).await {
                                        serve(tls, handler).await;
                                    }
                                }
                                None => serve(tcp, handler).await,
                            }
                        });
                    }
                };
                tokio::select! {
                    _ = serve => {}
                    _ = stopped => {}
                }
            });
        });
        Ok(HttpsServer {
            addr,
            connections,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.addr)
    }

    pub fn plain_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for HttpsServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn serve<IO>(io: IO, handler: Handler)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder.http2().enable_connect_protocol();
    let service = hyper::service::service_fn(move |req| handler(req));
    let _ = builder
        .serve_connection_with_upgrades(TokioIo::new(io), service)
        .await;
}

/// A test server's response body.
pub type Body = BoxBody<Bytes, hyper::Error>;

/// Answers one request; an error ends the connection.
pub type Handler = Arc<
    dyn Fn(
            Request<Incoming>,
        ) -> Pin<Box<dyn Future<Output = Result<Response<Body>, hyper::Error>> + Send>>
        + Send
        + Sync,
>;

/// A whole body from `data`.
pub fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into())
        .map_err(|never: Infallible| match never {})
        .boxed()
}

/// 64 KiB of JSON log lines, built once: what an API or a log shipper sends. `escaped`:
/// with JSON-escaped URLs (`https:\/\/...`, as PHP writes them) and URL-encoded queries
/// (`red%20shoes`), which start the masker's decoded views; otherwise as Go, Python and
/// serde write them (`https://...`, `red+shoes`).
fn log_block(escaped: bool) -> Bytes {
    static BLOCKS: [std::sync::OnceLock<Bytes>; 2] =
        [std::sync::OnceLock::new(), std::sync::OnceLock::new()];
    let (slash, space) = if escaped { ("\\/", "%20") } else { ("/", "+") };
    BLOCKS[usize::from(escaped)]
        .get_or_init(|| {
            let mut block = String::new();
            for i in 0u64.. {
                let line = format!(
                    "{{\"ts\": \"2026-11-23T08:{:02}:{:02}Z\", \"level\": \"info\", \"user\": \"user{}\", \"msg\": \"GET /api/v1/items?q=red{space}shoes&page={} 200 {}ms\", \"img\": \"https:{slash}{slash}cdn.example.com{slash}img{slash}{}.png\", \"trace\": \"{:016x}\"}}\n",
                    i / 60 % 60,
                    i % 60,
                    i % 97,
                    i % 13,
                    i % 250,
                    i,
                    i.wrapping_mul(0x9e37_79b9_7f4a_7c15)
                );
                if block.len() + line.len() > 64 * 1024 {
                    break;
                }
                block.push_str(&line);
            }
            Bytes::from(block)
        })
        .clone()
}

/// `left` bytes of `block` repeated, each frame a slice of it (no copy per frame).
struct Repeat {
    block: Bytes,
    left: usize,
}

impl hyper::body::Body for Repeat {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
        let n = self.left.min(self.block.len());
        if n == 0 {
            return std::task::Poll::Ready(None);
        }
        self.left -= n;
        std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(self.block.slice(..n)))))
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.left as u64)
    }
}

async fn route(mut req: Request<Incoming>) -> Result<Response<Body>, hyper::Error> {
    let path = req.uri().path().to_owned();
    let response = if path == "/hello" {
        Response::new(full(format!("hello over {:?}", req.version())))
    } else if let Some(n) = path.strip_prefix("/bytes/") {
        let n: usize = n.parse().unwrap_or(0);
        Response::new(full(vec![b'x'; n]))
    } else if let Some((escaped, n)) = path
        .strip_prefix("/text/")
        .map(|n| (true, n))
        .or_else(|| path.strip_prefix("/ndjson/").map(|n| (false, n)))
    {
        Response::new(
            Repeat {
                block: log_block(escaped),
                left: n.parse().unwrap_or(0),
            }
            .boxed(),
        )
    } else if path == "/planted-secret" {
        Response::new(full(format!("{{\"token\": \"{PLANTED_SECRET}\"}}")))
    } else if let Some(ms) = path.strip_prefix("/delay/") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
        Response::new(full("late"))
    } else if path == "/upload" {
        match req.into_body().collect().await {
            Ok(body) => Response::new(full(body.to_bytes().len().to_string())),
            Err(e) => Response::builder()
                .status(StatusCode::BAD_REQUEST)
                .body(full(e.to_string()))
                .unwrap(),
        }
    } else if path == "/echo" {
        // Trailers come back too: hyper sends only those the `Trailer` header announces.
        let announced = req.headers().get(hyper::header::TRAILER).cloned();
        let mut resp = Response::new(req.into_body().boxed());
        if let Some(names) = announced {
            resp.headers_mut().insert(hyper::header::TRAILER, names);
        }
        resp
    } else if path == "/ws"
        && (req.headers().contains_key(hyper::header::UPGRADE)
            || req.method() == hyper::Method::CONNECT)
    {
        let h2 = req.method() == hyper::Method::CONNECT;
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let Ok(upgraded) = upgrade.await else { return };
            let mut io = TokioIo::new(upgraded);
            let mut buf = [0u8; 4096];
            while let Ok(n) = io.read(&mut buf).await {
                if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        });
        if h2 {
            // A 2xx to a CONNECT has no body, not even an empty one with a length.
            let empty = http_body_util::Empty::new().map_err(|never| match never {});
            return Ok(Response::new(empty.boxed()));
        }
        Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("upgrade", "websocket")
            .header("connection", "Upgrade")
            .body(full(""))
            .unwrap()
    } else {
        Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(full("not found"))
            .unwrap()
    };
    Ok(response)
}
