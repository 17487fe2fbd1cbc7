//! After the dial: decide from the first bytes what the connection speaks, and hand it to
//! the layer that understands it (TLS, HTTP) or splice it as raw TCP.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use super::Proxy;
use super::counted::Counted;
use super::prefixed::Prefixed;
use super::scan::StreamScan;
use super::sniff::{MAX_SNIFF, NotHttp, Protocol, classify};
use super::upstream::Upstream;
use crate::gate::Tls as GateTls;
use crate::http::{ConnectionInfo, HttpError, Recorder, Version};
use crate::identity::Identity;
use crate::relay::{self, Side, Traffic};
use crate::sessions::{Event, Outcome, TlsInfo, TlsMode};
use crate::tls::HelloError;
use interceptor::relay_scan::{Counters, Peer as ScanPeer, ScanRelayError};

/// How much longer a client whose server spoke first has to speak for itself, where the
/// policy decides by HTTP requests (an h2c server sends SETTINGS before the client's preface).
const SERVER_FIRST_GRACE: Duration = Duration::from_millis(250);
/// A fatal `handshake_failure` alert record, for a client whose upstream we refused.
const HANDSHAKE_FAILURE: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28];
/// A fatal `access_denied` alert record, for a connection the policy refused.
const ACCESS_DENIED: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x31];

/// Who a connection comes from and where it goes: what the policy decides on.
pub struct Peer {
    pub id: u64,
    pub identity: Arc<Identity>,
    /// The enrollment's name, which policy rules can match.
    pub enrollment: Option<Arc<str>>,
    pub dest: SocketAddr,
}

pub type Ended = (Outcome, Option<String>);

/// A connection once it is set up: ended already, or the future that serves it until it
/// ends. Setting up (sniffing, handshakes, policy) needs far more state than serving an idle
/// connection does, and a task's future is as large as its largest state for as long as it
/// lives: the set-up runs boxed and is freed, and what serves comes boxed, sized for itself.
///
/// The set-up's larger steps (handshakes, policy holds, the rarer paths) are boxed in turn,
/// so that it is freed as small blocks: a large block freed after every set-up is where the
/// connection's long-lived buffers (hyper's 8 KiB ones) would go next, every page of it
/// written, where from fresh memory only the pages they use become resident.
pub enum Then<'a> {
    Ended(Ended),
    Serve(Pin<Box<dyn Future<Output = Ended> + Send + 'a>>),
}

impl From<Ended> for Then<'_> {
    fn from(ended: Ended) -> Self {
        Then::Ended(ended)
    }
}

fn serve<'a>(serving: impl Future<Output = Ended> + Send + 'a) -> Then<'a> {
    Then::Serve(Box::pin(serving))
}

impl Proxy {
    pub(super) async fn dispatch(
        &self,
        peer: Peer,
        client: TcpStream,
        mut upstream: Upstream,
        traffic: Arc<Traffic>,
    ) -> Then<'_> {
        let (id, dest) = (peer.id, peer.dest);
        let enrollment = peer.enrollment.as_deref();
        let needs_http = (self.gate).needs_http(&peer.identity, enrollment, None, dest);
        let sniffed = match upstream.sniff(&client, needs_http).await {
            Ok(s) => s,
            Err(e) => return super::dial_failed(&client, dest, &e).into(),
        };
        tracing::debug!(session = id, protocol = ?sniffed.protocol, "first bytes");
        let version = match sniffed.protocol {
            Protocol::Tls => {
                return self.terminate_tls(peer, client, upstream, traffic).await;
            }
            Protocol::Other => {
                let opaque =
                    (self.gate).on_opaque(id, &peer.identity, enrollment, None, dest, false);
                if let Err(why) = opaque.await {
                    relay::reset(&client);
                    return (Outcome::Denied, Some(why)).into();
                }
                let upstream = match upstream.connect().await {
                    Ok(u) => u,
                    Err(e) => return super::dial_failed(&client, dest, &e).into(),
                };
                // Scanned when the policy's decision for it selects secret rules.
                let scan = self.stream_scan(id, &peer.identity, enrollment, None, dest);
                if needs_http && sniffed.server_first {
                    let client = Counted::client(client, traffic.clone());
                    let upstream = Counted::upstream(upstream, traffic);
                    return serve(relay_unread(scan, client, upstream));
                }
                return match scan {
                    Some(scan) => serve(scan_tcp(scan, client, upstream, traffic)),
                    None => serve(splice(client, upstream, traffic)),
                };
            }
            Protocol::Http1 => Version::Http1,
            Protocol::H2Prior => Version::Http2,
        };
        let info = ConnectionInfo {
            session: id,
            destination: dest,
            sni: None,
            streams: self.stream_scan(id, &peer.identity, peer.enrollment.as_deref(), None, dest),
            identity: peer.identity,
            enrollment: peer.enrollment,
        };
        let upstream = match upstream.connect().await {
            Ok(u) => u,
            Err(e) => return super::dial_failed(&client, dest, &e).into(),
        };
        let client = Counted::client(client, traffic.clone());
        let upstream = Counted::upstream(upstream, traffic);
        self.serve_http(info, version, client, upstream)
    }

    async fn terminate_tls(
        &self,
        peer: Peer,
        mut client: TcpStream,
        upstream: Upstream,
        traffic: Arc<Traffic>,
    ) -> Then<'_> {
        let (id, dest) = (peer.id, peer.dest);
        let tls = &self.tls;
        let limit = tls.handshake_timeout;
        let hello = match timeout(limit, crate::tls::peek_client_hello(&client)).await {
            Ok(Ok(hello)) => hello,
            Ok(Err(HelloError::Malformed { error, alert })) => {
                let _ = client.write_all(&alert).await;
                return client_tls_error(format!("malformed ClientHello: {error}"));
            }
            Ok(Err(e)) => return client_tls_error(e.to_string()),
            Err(_) => {
                relay::reset(&client);
                return client_tls_error(format!("no complete ClientHello within {limit:?}"));
            }
        };
        let mut info = TlsInfo {
            id,
            sni: hello.sni.clone(),
            alpn_offered: hello.alpn.iter().map(|p| lossy(p)).collect(),
            alpn: None,
            mode: TlsMode::Terminated,
            policy: None,
        };
        let decided = self.gate.on_connection(
            id,
            &peer.identity,
            peer.enrollment.as_deref(),
            hello.sni.as_deref(),
            dest,
        );
        let (decision, allowed) = Box::pin(decided).await;
        info.policy = Some(decision);
        let policy_tls = match allowed {
            Ok(t) => t,
            Err(why) => {
                self.store.append(Event::Tls(info));
                let _ = client.write_all(&ACCESS_DENIED).await;
                return (Outcome::Denied, Some(why)).into();
            }
        };
        let upstream = match upstream.connect().await {
            Ok(u) => u,
            Err(e) => {
                self.store.append(Event::Tls(info));
                return super::dial_failed(&client, dest, &e).into();
            }
        };
        let passthrough = match policy_tls {
            GateTls::Passthrough => true,
            GateTls::Intercept => tls.is_passthrough(hello.sni.as_deref()),
            GateTls::Inspect => false,
        };
        if passthrough {
            info.mode = TlsMode::Passthrough;
            self.store.append(Event::Tls(info));
            return serve(splice(client, upstream, traffic));
        }
        // Without SNI the client dialled an address; that is the name it will verify.
        let name = hello.sni.clone().unwrap_or_else(|| dest.ip().to_string());
        let server_name = match ServerName::try_from(name.clone()) {
            Ok(n) => n,
            Err(e) => {
                let _ = client.write_all(&HANDSHAKE_FAILURE).await;
                return client_tls_error(format!("server name {name:?}: {e}"));
            }
        };
        let upstream = Counted::upstream(upstream, traffic.clone());
        let upstream = match Box::pin(timeout(
            limit,
            tls.connect_upstream(server_name, hello.alpn.clone(), upstream),
        ))
        .await
        {
            Ok(Ok(s)) => s,
            failed => {
                self.store.append(Event::Tls(info));
                let _ = client.write_all(&HANDSHAKE_FAILURE).await;
                let why = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => format!("no handshake within {limit:?}"),
                };
                return (
                    Outcome::UpstreamTlsError,
                    Some(format!("upstream TLS handshake for {name}: {why}")),
                )
                    .into();
            }
        };
        let alpn = upstream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        info.alpn = alpn.as_deref().map(lossy);
        self.store.append(Event::Tls(info));
        let config = match tls.server_config(&name, alpn.as_deref()) {
            Ok(c) => c,
            Err(e) => {
                let _ = client.write_all(&HANDSHAKE_FAILURE).await;
                return client_tls_error(e.to_string());
            }
        };
        let client = Counted::client(client, traffic.clone());
        let sni = hello.sni.clone();
        let accepted = async {
            hello
                .into_handshake(client)
                .await?
                .into_stream(config)
                .await
        };
        let client = match Box::pin(timeout(limit, accepted)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return client_tls_error(format!("client handshake: {e}")),
            Err(_) => {
                return client_tls_error(format!("client handshake not done within {limit:?}"));
            }
        };
        let enrollment = peer.enrollment.as_deref();
        let info = ConnectionInfo {
            session: id,
            destination: dest,
            streams: self.stream_scan(id, &peer.identity, enrollment, sni.as_deref(), dest),
            sni,
            identity: peer.identity,
            enrollment: peer.enrollment,
        };
        match alpn.as_deref() {
            Some(b"h2") => self.serve_http(info, Version::Http2, client, upstream),
            Some(b"http/1.1") => self.serve_http(info, Version::Http1, client, upstream),
            Some(_) => Box::pin(self.relay_opaque(info, client, upstream)).await,
            None => Box::pin(self.sniff_decrypted(info, client, upstream)).await,
        }
    }

    /// Without ALPN the first decrypted bytes tell: an HTTP request, or anything else
    /// (including a server that speaks first). A request that comes in small pieces is read
    /// until it is clear what it is. Where the policy decides the connection by its HTTP
    /// requests, a server that speaks first gives the client a little longer to speak for
    /// itself, and is then relayed with the client's first bytes checked not to be HTTP.
    async fn sniff_decrypted<C, U>(
        &self,
        info: ConnectionInfo,
        mut client: C,
        mut upstream: U,
    ) -> Then<'_>
    where
        C: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        U: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let needs_http = self.gate.needs_http(
            &info.identity,
            info.enrollment.as_deref(),
            info.sni.as_deref(),
            info.destination,
        );
        let (mut first, mut from_upstream) = (Vec::with_capacity(MAX_SNIFF), Vec::new());
        let mut piece = [0u8; MAX_SNIFF];
        let grace = tokio::time::sleep(Duration::MAX);
        tokio::pin!(grace);
        let protocol = loop {
            tokio::select! {
                n = client.read(&mut piece[..MAX_SNIFF - first.len()]) => match n {
                    Ok(n) if n > 0 => {
                        first.extend_from_slice(&piece[..n]);
                        if let Some(p) = classify(&first) {
                            break p;
                        }
                    }
                    _ => break Protocol::Other,
                },
                n = read_some(&mut upstream), if from_upstream.is_empty() && first.is_empty() => {
                    from_upstream = n.unwrap_or_default();
                    if !needs_http || from_upstream.is_empty() {
                        break Protocol::Other;
                    }
                    grace.as_mut().reset(tokio::time::Instant::now() + SERVER_FIRST_GRACE);
                }
                () = &mut grace, if first.is_empty() => {
                    let client = NotHttp::new(Prefixed::new(Vec::new(), client));
                    return self.relay_opaque(info, client, Prefixed::new(from_upstream, upstream)).await;
                }
            }
        };
        let client = Prefixed::new(first, client);
        let upstream = Prefixed::new(from_upstream, upstream);
        match protocol {
            Protocol::Http1 => self.serve_http(info, Version::Http1, client, upstream),
            Protocol::H2Prior => self.serve_http(info, Version::Http2, client, upstream),
            _ => self.relay_opaque(info, client, upstream).await,
        }
    }

    /// A decrypted stream that is not HTTP: decided by the policy without its HTTP rules
    /// (when HTTP rules were what sent it here), then relayed, through the scanner when
    /// secrets are masked.
    async fn relay_opaque<C, U>(
        &self,
        info: ConnectionInfo,
        mut client: C,
        mut upstream: U,
    ) -> Then<'_>
    where
        C: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        U: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let opaque = self.gate.on_opaque(
            info.session,
            &info.identity,
            info.enrollment.as_deref(),
            info.sni.as_deref(),
            info.destination,
            true,
        );
        if let Err(why) = opaque.await {
            return (Outcome::Denied, Some(why)).into();
        }
        match info.streams {
            // The wire bytes are counted under TLS already. The streams are relayed where
            // they are, not moved into the relay's state beside this one's.
            Some(scan) => serve(async move {
                match scan
                    .relay(&mut client, &mut upstream, &Counters::default())
                    .await
                {
                    Ok(()) => (Outcome::Closed, None),
                    Err(e) => scan_failed(&e, format!("decrypted relay: {e}")),
                }
            }),
            None => serve(async move { relay_decrypted(&mut client, &mut upstream).await }),
        }
    }

    fn serve_http<C, U>(
        &self,
        info: ConnectionInfo,
        version: Version,
        client: C,
        upstream: U,
    ) -> Then<'static>
    where
        C: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        U: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let store = self.store.clone();
        let recorder: Recorder = Arc::new(move |exchange| store.append(Event::Http(exchange)));
        // Boxed: awaited in place, not copied into the mapping's state.
        let served = Box::pin(self.http.serve(recorder, info, version, client, upstream));
        serve(async move { http_ended(served.await) })
    }
}

/// How an HTTP connection ended, for its session record.
fn http_ended(served: Result<(), HttpError>) -> Ended {
    match served {
        Ok(()) => (Outcome::Closed, None),
        Err(e @ HttpError::Handshake(_)) => (Outcome::UpstreamError, Some(e.to_string())),
        Err(e @ HttpError::UpstreamBody(_)) => (
            Outcome::UpstreamError,
            Some(format!("HTTP: {}", crate::errors::chain(&e))),
        ),
        Err(e @ (HttpError::Serve(_) | HttpError::HeaderTimeout(_))) => {
            // With its causes: "connection error" alone does not say reset or EOF.
            (
                Outcome::ClientError,
                Some(format!("HTTP: {}", crate::errors::chain(&e))),
            )
        }
    }
}

/// A decrypted stream that is not HTTP: relayed as it is.
async fn relay_decrypted<C, U>(client: &mut C, upstream: &mut U) -> Ended
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    match super::relay_streams(client, upstream).await {
        Ok(()) => (Outcome::Closed, None),
        Err(e) => (Outcome::ClientError, Some(format!("decrypted relay: {e}"))),
    }
}

/// Raw TCP with secret masking: copied through the scanning relay instead of spliced.
async fn scan_tcp(
    scan: Arc<StreamScan>,
    mut client: TcpStream,
    mut upstream: TcpStream,
    traffic: Arc<Traffic>,
) -> Ended {
    let counters = Counters::default();
    let relayed = scan.relay(&mut client, &mut upstream, &counters).await;
    traffic
        .up
        .store(counters.up.load(Ordering::Relaxed), Ordering::Relaxed);
    traffic
        .down
        .store(counters.down.load(Ordering::Relaxed), Ordering::Relaxed);
    match relayed {
        Ok(()) => (Outcome::Closed, None),
        Err(e) => {
            relay::reset(&client);
            relay::reset(&upstream);
            scan_failed(&e, e.to_string())
        }
    }
}

/// The outcome of a scanning relay that failed: blamed on the peer at fault.
fn scan_failed(e: &ScanRelayError, why: String) -> Ended {
    let outcome = match e.peer() {
        Some(ScanPeer::Upstream) => Outcome::UpstreamError,
        _ => Outcome::ClientError,
    };
    (outcome, Some(why))
}

fn client_tls_error<'a>(why: String) -> Then<'a> {
    (Outcome::ClientTlsError, Some(why)).into()
}

fn lossy(protocol: &[u8]) -> String {
    String::from_utf8_lossy(protocol).into_owned()
}

async fn splice(client: TcpStream, upstream: TcpStream, traffic: Arc<Traffic>) -> Ended {
    match relay::relay(client, upstream, &traffic).await {
        Ok(()) => (Outcome::Closed, None),
        Err(e) => {
            let outcome = match e.side {
                Side::Client => Outcome::ClientError,
                Side::Upstream => Outcome::UpstreamError,
            };
            (outcome, Some(e.to_string()))
        }
    }
}

/// A connection the policy decides by its HTTP requests whose server spoke first: relayed
/// (scanned if its decision masks) with the client's first bytes checked, and refused if the
/// client turns out to speak HTTP (it could only be relayed uninspected).
async fn relay_unread<C, U>(scan: Option<Arc<StreamScan>>, client: C, upstream: U) -> Ended
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let mut client = NotHttp::new(client);
    let mut upstream = upstream;
    let relayed = match &scan {
        Some(scan) => (scan
            .relay(&mut client, &mut upstream, &Counters::default())
            .await)
            .map_err(|e| scan_failed(&e, e.to_string())),
        None => (tokio::io::copy_bidirectional(&mut client, &mut upstream).await)
            .map(|_| ())
            .map_err(|e| (Outcome::ClientError, Some(e.to_string()))),
    };
    match relayed {
        Ok(()) => (Outcome::Closed, None),
        Err(_) if client.refused() => (
            Outcome::Denied,
            Some(
                "the client spoke HTTP after its server spoke first; the policy decides this \
                  connection by its HTTP requests, which could not be read"
                    .into(),
            ),
        ),
        Err(ended) => ended,
    }
}

/// One read's worth of bytes from `stream` (empty at its end).
async fn read_some<S: AsyncRead + Unpin>(stream: &mut S) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 4096];
    let n = stream.read(&mut buf).await?;
    buf.truncate(n);
    Ok(buf)
}
