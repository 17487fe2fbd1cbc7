//! The floor the daemon benchmarks compare against: the minimal userspace proxies built from
//! the same crates (no identity, policy, scanning or recording), and the HTTPS client every
//! benchmark path runs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use tokio::net::TcpStream;

/// A minimal userspace TCP forwarder to `to` on 127.0.0.1:0 (accept, dial,
/// `copy_bidirectional`), on a tokio runtime of its own with the daemon's defaults (one worker
/// per CPU).
pub fn tcp_forwarder(to: SocketAddr) -> Result<SocketAddr> {
    let runtime = tokio::runtime::Runtime::new()?;
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let addr = listener.local_addr()?;
    std::thread::spawn(move || {
        runtime.block_on(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let _ = client.set_nodelay(true);
                    let Ok(mut upstream) = TcpStream::connect(to).await else {
                        return;
                    };
                    let _ = upstream.set_nodelay(true);
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                });
            }
        })
    });
    Ok(addr)
}

/// The minimal TLS-terminating HTTP/1.1 proxy on 127.0.0.1:0: TLS in with `server`, one TLS
/// connection out to `upstream` per client connection, each request forwarded as it comes.
pub fn tls_proxy(
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
    upstream: SocketAddr,
) -> Result<SocketAddr> {
    let runtime = tokio::runtime::Runtime::new()?;
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let addr = listener.local_addr()?;
    let mut server = (*server).clone();
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    std::thread::spawn(move || {
        runtime.block_on(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, client) = (acceptor.clone(), client.clone());
                tokio::spawn(async move {
                    let _ = tcp.set_nodelay(true);
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let Ok(sender) = https_connect(upstream, client, None).await else {
                        return;
                    };
                    let sender = Arc::new(tokio::sync::Mutex::new(sender));
                    let forward = hyper::service::service_fn(move |req| {
                        let sender = sender.clone();
                        async move { sender.lock().await.send_request(req).await }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), forward)
                        .await;
                });
            }
        })
    });
    Ok(addr)
}

/// A rustls client trusting the certificates in the PEM file `roots`.
pub fn client_config(roots: &str) -> Result<Arc<rustls::ClientConfig>> {
    let mut store = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(roots)? {
        // A system bundle has a few entries rustls cannot use; skipping them is what any
        // client does.
        let _ = store.add(cert?);
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(store)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

pub type Sender<B = Empty<Bytes>> = http1::SendRequest<B>;

/// An HTTP/1.1 connection over TLS to `addr` (through the HTTP proxy `proxy` with CONNECT,
/// when given); its connection task runs on the current runtime.
pub async fn https_connect<B>(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    proxy: Option<SocketAddr>,
) -> Result<Sender<B>>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut tcp = TcpStream::connect(proxy.unwrap_or(addr)).await?;
    tcp.set_nodelay(true)?;
    if proxy.is_some() {
        tunnel(&mut tcp, addr).await?;
    }
    let tls = tokio_rustls::TlsConnector::from(config)
        .with_alpn(vec![b"http/1.1".to_vec()])
        .connect(ServerName::IpAddress(addr.ip().into()), tcp)
        .await
        .context("TLS handshake")?;
    let (sender, conn) = http1::handshake(TokioIo::new(tls)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

/// One GET of `path`; returns the body length.
pub async fn get(sender: &mut Sender, addr: SocketAddr, path: &str) -> Result<usize> {
    sender.ready().await?;
    let req = hyper::Request::get(path)
        .header("host", addr.to_string())
        .body(Empty::new())?;
    let resp = tokio::time::timeout(Duration::from_secs(30), sender.send_request(req)).await??;
    let body = resp.into_body().collect().await?.to_bytes();
    Ok(body.len())
}

/// Asks an HTTP proxy for a tunnel to `addr` (CONNECT) and waits for its 200.
async fn tunnel(tcp: &mut TcpStream, addr: SocketAddr) -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let request = format!("CONNECT {addr} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    tcp.write_all(request.as_bytes()).await?;
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        if tcp.read(&mut b).await? == 0 {
            bail!("proxy closed during CONNECT");
        }
        head.push(b[0]);
    }
    if !(head.starts_with(b"HTTP/1.1 200") || head.starts_with(b"HTTP/1.0 200")) {
        bail!("CONNECT refused: {}", String::from_utf8_lossy(&head));
    }
    Ok(())
}
