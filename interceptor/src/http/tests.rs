//! The HTTP layer between a real hyper client and a real hyper server on loopback, with
//! hooks that rewrite, transform and refuse.

use std::sync::Mutex;

use http_body_util::BodyExt;
use tokio::net::{TcpListener, TcpStream};

use super::hook::{BodyTransform, Decision, Hook, HookFuture};
use super::*;
use crate::sessions::HttpExchange;
use crate::test_net::pair;

/// Adds `x-hooked` to requests, refuses `/forbidden`, upper-cases request bodies (`/echo`,
/// `/framing`; `/hello` has none, and must go on without one).
struct TestHook;

struct Upper;

impl BodyTransform for Upper {
    fn chunk(&mut self, data: Bytes) -> Result<Bytes, hook::BoxError> {
        Ok(data.to_ascii_uppercase().into())
    }
    fn finish(&mut self) -> Result<Bytes, hook::BoxError> {
        Ok(Bytes::from_static(b"!"))
    }
}

impl Hook for TestHook {
    fn on_request<'a>(
        &'a self,
        info: &'a ExchangeInfo,
        head: &'a mut http::request::Parts,
    ) -> HookFuture<'a> {
        Box::pin(async move {
            assert!(info.destination.ip().is_loopback() && info.sni.is_none());
            head.headers
                .insert("x-hooked", format!("seq {}", info.seq).parse().unwrap());
            match head.uri.path() {
                "/forbidden" => Decision::forbidden("not on the list".into()),
                "/echo" | "/hello" | "/framing" => Decision {
                    verdict: Verdict::Forward,
                    body: Some(Box::new(Upper)),
                },
                _ => Decision::default(),
            }
        })
    }

    fn on_response<'a>(
        &'a self,
        _info: &'a ExchangeInfo,
        head: &'a mut http::response::Parts,
    ) -> HookFuture<'a> {
        Box::pin(async move {
            head.headers.insert("x-seen", "1".parse().unwrap());
            Decision::default()
        })
    }
}

/// Upstream: `/echo` echoes the body, CONNECT opens an echo tunnel, anything else answers
/// with the `x-hooked` header.
async fn upstream_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|mut req: Request<Incoming>| async move {
                    if req.method() == http::Method::CONNECT {
                        let upgrade = hyper::upgrade::on(&mut req);
                        tokio::spawn(async move {
                            let mut io = TokioIo::new(upgrade.await.unwrap());
                            let mut buf = [0u8; 64];
                            let n = tokio::io::AsyncReadExt::read(&mut io, &mut buf)
                                .await
                                .unwrap();
                            tokio::io::AsyncWriteExt::write_all(&mut io, &buf[..n])
                                .await
                                .unwrap();
                        });
                        return Ok::<_, Infallible>(Response::new(
                            Full::new(Bytes::new())
                                .map_err(|never: Infallible| match never {})
                                .boxed_unsync(),
                        ));
                    }
                    let body: HttpBody = if req.uri().path() == "/echo" {
                        req.into_body().map_err(Into::into).boxed_unsync()
                    } else {
                        let header = |name| {
                            req.headers()
                                .get(name)
                                .map_or("-".into(), |v| v.to_str().unwrap().to_owned())
                        };
                        let framing = format!(
                            "te={} cl={}",
                            header("transfer-encoding"),
                            header("content-length")
                        );
                        let hooked = header("x-hooked");
                        let framing_only = req.uri().path() == "/framing";
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let text = match framing_only {
                            true => format!("{framing} body={}", body.len()),
                            false => format!("{hooked} {framing} body={}", body.len()),
                        };
                        Full::new(Bytes::from(text))
                            .map_err(|never: Infallible| match never {})
                            .boxed_unsync()
                    };
                    Ok::<_, Infallible>(Response::new(body))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    addr
}

/// One proxied connection: `layer` serves the first client of a front listener toward
/// `upstream` as session `session`, recording its exchanges.
struct Proxied {
    front: std::net::SocketAddr,
    records: Arc<Mutex<Vec<HttpExchange>>>,
    task: tokio::task::JoinHandle<Result<(), HttpError>>,
}

async fn start_proxy(
    layer: HttpLayer,
    session: u64,
    version: Version,
    upstream: std::net::SocketAddr,
) -> Proxied {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let front = listener.local_addr().unwrap();
    let records = Arc::new(Mutex::new(Vec::new()));
    let sink = records.clone();
    let recorder: Recorder = Arc::new(move |x| sink.lock().unwrap().push(x));
    let task = tokio::spawn(async move {
        let (client, _) = listener.accept().await.unwrap();
        let up = TcpStream::connect(upstream).await.unwrap();
        let info = ConnectionInfo {
            session,
            destination: upstream,
            sni: None,
            streams: None,
            identity: Default::default(),
            enrollment: None,
        };
        layer.serve(recorder, info, version, client, up).await
    });
    Proxied {
        front,
        records,
        task,
    }
}

/// A request to `upstream` as a client of `version` writes it (HTTP/2: absolute URI).
fn request(
    version: Version,
    upstream: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> Request<Full<Bytes>> {
    let uri = match version {
        Version::Http1 => path.to_owned(),
        Version::Http2 => format!("http://{upstream}{path}"),
    };
    Request::builder()
        .method(method)
        .uri(uri)
        .header("host", upstream.to_string())
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap()
}

async fn run(version: Version) -> Vec<HttpExchange> {
    let upstream = upstream_server().await;
    let layer = HttpLayer {
        hooks: Hooks::new(vec![Arc::new(TestHook)]),
        header_timeout: Duration::from_secs(5),
    };
    let Proxied {
        front: front_addr,
        records,
        task: proxy,
    } = start_proxy(layer, 7, version, upstream).await;

    let io = TokioIo::new(TcpStream::connect(front_addr).await.unwrap());
    let requests = [
        ("GET", "/hello", "", "seq 0 te=- cl=- body=0"),
        ("POST", "/echo", "abc", "ABC!"),
        ("GET", "/forbidden", "", "not on the list"),
    ];
    let send =
        |method: &str, path: &str, body: &str| request(version, upstream, method, path, body);
    let mut statuses = Vec::new();
    match version {
        Version::Http1 => {
            let (mut tx, conn) = client1::handshake(io).await.unwrap();
            tokio::spawn(conn);
            for (m, p, b, want) in requests {
                let resp = tx.send_request(send(m, p, b)).await.unwrap();
                statuses.push(resp.status());
                let body = resp.into_body().collect().await.unwrap().to_bytes();
                assert_eq!(body, want.as_bytes(), "{p}");
            }
        }
        Version::Http2 => {
            let (tx, conn) = client2::handshake(TokioExecutor::new(), io).await.unwrap();
            tokio::spawn(conn);
            // All streams at once on the one connection.
            let streams: Vec<_> = requests
                .iter()
                .map(|(m, p, b, want)| {
                    let (mut tx, req) = (tx.clone(), send(m, p, b));
                    let (p, want) = (p.to_string(), want.to_string());
                    tokio::spawn(async move {
                        let resp = tx.send_request(req).await.unwrap();
                        let status = resp.status();
                        let body = resp.into_body().collect().await.unwrap().to_bytes();
                        assert_eq!(body, want.as_bytes(), "{p}");
                        status
                    })
                })
                .collect();
            for stream in streams {
                statuses.push(stream.await.unwrap());
            }
        }
    }
    assert_eq!(statuses, [200, 200, 403]);
    proxy.await.unwrap().unwrap();
    let mut records = records.lock().unwrap().clone();
    records.sort_by_key(|r| r.seq);
    records
}

fn check(records: &[HttpExchange], version: &str) {
    assert_eq!(records.len(), 3, "{records:#?}");
    let r = &records[1];
    assert_eq!((r.id, r.seq, r.method.as_str()), (7, 1, "POST"));
    assert_eq!((r.path.as_str(), r.status), ("/echo", Some(200)));
    assert_eq!(r.version, version);
    assert_eq!(r.request_body_bytes, 3);
    assert_eq!(
        r.response_body_bytes, 4,
        "the upstream echoed the transformed body"
    );
    assert!(r.error.is_none(), "{r:?}");
    let refused = &records[2];
    assert_eq!(refused.status, Some(403));
    assert_eq!(refused.error.as_deref(), Some("refused: not on the list"));
}

#[tokio::test]
async fn http1_keep_alive_through_hooks_and_records() {
    check(&run(Version::Http1).await, "HTTP/1.1");
}

#[tokio::test]
async fn http2_streams_through_hooks_and_records() {
    check(&run(Version::Http2).await, "HTTP/2.0");
}

#[tokio::test]
async fn a_small_request_body_a_transform_resizes_keeps_a_content_length() {
    for version in [Version::Http1, Version::Http2] {
        let upstream = upstream_server().await;
        let layer = HttpLayer::new(Hooks::new(vec![Arc::new(TestHook)]), Duration::from_secs(5));
        let proxied = start_proxy(layer, 1, version, upstream).await;
        let io = TokioIo::new(TcpStream::connect(proxied.front).await.unwrap());
        let large = "a".repeat(100 * 1024);
        // Upper-cased and one byte longer. Large bodies stream, chunked on HTTP/1.1.
        let cases = [
            ("abc", "te=- cl=4 body=4".to_owned()),
            (
                large.as_str(),
                match version {
                    Version::Http1 => "te=chunked cl=- body=102401".to_owned(),
                    Version::Http2 => "te=- cl=- body=102401".to_owned(),
                },
            ),
        ];
        let request = |body: &str| request(version, upstream, "POST", "/framing", body);
        let mut responses = Vec::new();
        match version {
            Version::Http1 => {
                let (mut tx, conn) = client1::handshake(io).await.unwrap();
                tokio::spawn(conn);
                for (body, _) in &cases {
                    responses.push(tx.send_request(request(body)).await.unwrap());
                }
            }
            Version::Http2 => {
                let (mut tx, conn) = client2::handshake(TokioExecutor::new(), io).await.unwrap();
                tokio::spawn(conn);
                for (body, _) in &cases {
                    responses.push(tx.send_request(request(body)).await.unwrap());
                }
            }
        }
        let mut answers = Vec::new();
        for resp in responses {
            answers.push(resp.into_body().collect().await.unwrap().to_bytes());
        }
        for ((_, want), got) in cases.iter().zip(&answers) {
            assert_eq!(got, want.as_bytes(), "{version:?}");
        }
        proxied.task.abort();
    }
}

#[tokio::test]
async fn connect_tunnels_are_relayed_and_counted() {
    let upstream = upstream_server().await;
    let layer = HttpLayer::new(Hooks::default(), Duration::from_secs(5));
    let Proxied {
        front: front_addr,
        records,
        task: proxy,
    } = start_proxy(layer, 1, Version::Http1, upstream).await;
    let io = TokioIo::new(TcpStream::connect(front_addr).await.unwrap());
    let (mut tx, conn) = client1::handshake(io).await.unwrap();
    tokio::spawn(conn.with_upgrades());
    let req = Request::connect("example.test:443")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = tx.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut tunnel = TokioIo::new(hyper::upgrade::on(resp).await.unwrap());
    tokio::io::AsyncWriteExt::write_all(&mut tunnel, b"inside the tunnel")
        .await
        .unwrap();
    let mut back = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut tunnel, &mut back)
        .await
        .unwrap();
    assert_eq!(back, b"inside the tunnel");
    drop(tunnel);
    proxy.await.unwrap().unwrap();
    let records = records.lock().unwrap();
    assert_eq!(records[0].method, "CONNECT");
    let upgraded = records[0].upgraded.unwrap();
    assert_eq!((upgraded.up, upgraded.down), (17, 17));
}

#[tokio::test]
async fn an_http2_client_that_resets_once_its_streams_are_done_has_closed() {
    let upstream = upstream_server().await;
    let layer = HttpLayer::new(Hooks::default(), Duration::from_secs(5));
    let proxied = start_proxy(layer, 1, Version::Http2, upstream).await;
    let tcp = TcpStream::connect(proxied.front)
        .await
        .unwrap()
        .into_std()
        .unwrap();
    let same_socket = tcp.try_clone().unwrap();
    let io = TokioIo::new(TcpStream::from_std(tcp).unwrap());
    let (mut tx, conn) = client2::handshake(TokioExecutor::new(), io).await.unwrap();
    let conn = tokio::spawn(conn);
    // An echo: the proxy still holds the request's stream while the response ends.
    let req = Request::post("http://example.test/echo")
        .body(Full::new(Bytes::from_static(b"ping")))
        .unwrap();
    let resp = tx.send_request(req).await.unwrap();
    resp.into_body().collect().await.unwrap();
    // Closed with SO_LINGER 0: the proxy reads a reset, not an end.
    socket2::SockRef::from(&same_socket)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    conn.abort();
    let _ = conn.await;
    drop((tx, same_socket));
    let served = tokio::time::timeout(Duration::from_secs(5), proxied.task)
        .await
        .expect("the proxy saw the connection end")
        .unwrap();
    assert!(served.is_ok(), "{served:?}");
    assert_eq!(proxied.records.lock().unwrap().len(), 1);
}

/// What serves a connection lives as long as the connection, mostly idle: it keeps no room
/// for the handshakes or for the connections' own state (each boxed, sized for the protocol
/// spoken), and holds no stream or connection twice. It was over 15 KiB.
#[tokio::test]
async fn serving_a_connection_keeps_little_state_of_its_own() {
    let layer = HttpLayer::new(Hooks::default(), Duration::from_secs(5));
    for version in [Version::Http1, Version::Http2] {
        let ((client, _workload), (upstream, _server)) = (pair().await, pair().await);
        let info = ConnectionInfo {
            session: 1,
            destination: upstream.peer_addr().unwrap(),
            sni: None,
            streams: None,
            identity: Default::default(),
            enrollment: None,
        };
        let served = layer.serve(Arc::new(|_| {}), info, version, client, upstream);
        let size = std::mem::size_of_val(&served);
        assert!(size < 1024, "{version:?}: {size} bytes per connection");
    }
}
