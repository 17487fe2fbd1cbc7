//! Webhook notification of a pending approval: an HTTP POST of its JSON (over TLS for an
//! https:// URL), retried with backoff from a task of its own, so traffic never waits on it.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::Pending;

/// Delays before each attempt.
const BACKOFF: [Duration; 5] = [
    Duration::ZERO,
    Duration::from_millis(250),
    Duration::from_secs(1),
    Duration::from_secs(4),
    Duration::from_secs(15),
];
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
enum WebhookError {
    #[error("a webhook must be an http:// or https:// URL: {0}")]
    Scheme(String),
    #[error("bad URL {0:?}")]
    Url(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Http(#[from] hyper::Error),
    #[error("{0}")]
    Request(#[from] hyper::http::Error),
    #[error("timed out")]
    Timeout,
    #[error("answered {0}")]
    Status(u16),
}

/// Sends webhooks; https ones are verified with its TLS client configuration.
#[derive(Clone)]
pub struct Webhooks {
    tls: TlsConnector,
}

impl Default for Webhooks {
    /// HTTPS verified against the system's roots.
    fn default() -> Self {
        let mut roots = rustls::RootCertStore::empty();
        roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        let config =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("ring supports the default protocol versions")
                .with_root_certificates(roots)
                .with_no_client_auth();
        Webhooks::new(TlsConnector::from(Arc::new(config)))
    }
}

impl Webhooks {
    /// HTTPS through `tls` (the daemon's: system roots plus `--upstream-ca`).
    pub fn new(tls: TlsConnector) -> Self {
        Webhooks { tls }
    }

    /// Posts `pending` to `url` in the background.
    pub fn notify(&self, url: String, pending: Pending) {
        let tls = self.tls.clone();
        tokio::spawn(notify(tls, url, pending));
    }
}

/// Posts `pending` to `url`, retried with backoff until accepted.
async fn notify(tls: TlsConnector, url: String, pending: Pending) {
    let body = Bytes::from(serde_json::to_vec(&pending).expect("a pending approval serializes"));
    for (attempt, delay) in BACKOFF.iter().enumerate() {
        tokio::time::sleep(*delay).await;
        let result = tokio::time::timeout(ATTEMPT_TIMEOUT, post(&tls, &url, body.clone()))
            .await
            .unwrap_or(Err(WebhookError::Timeout));
        match result {
            Ok(()) => return,
            Err(e @ (WebhookError::Scheme(_) | WebhookError::Url(_))) => {
                tracing::warn!(id = pending.id, %url, error = %e, "approval webhook not sent");
                return;
            }
            Err(e) => {
                tracing::warn!(id = pending.id, %url, attempt, error = %e, "approval webhook failed")
            }
        }
    }
    tracing::warn!(id = pending.id, %url, "approval webhook given up");
}

async fn post(tls: &TlsConnector, url: &str, body: Bytes) -> Result<(), WebhookError> {
    let uri: hyper::Uri = url.parse().map_err(|_| WebhookError::Url(url.into()))?;
    let https = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return Err(WebhookError::Scheme(url.into())),
    };
    let authority = uri
        .authority()
        .ok_or_else(|| WebhookError::Url(url.into()))?
        .clone();
    let host = authority.host().trim_matches(['[', ']']);
    let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let request = hyper::Request::post(path)
        .header(hyper::header::HOST, authority.as_str())
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(body))?;
    let tcp = TcpStream::connect((host, port)).await?;
    if !https {
        return send(tcp, request).await;
    }
    let name = ServerName::try_from(host.to_owned()).map_err(|_| WebhookError::Url(url.into()))?;
    send(tls.connect(name, tcp).await?, request).await
}

/// One request on a new HTTP/1.1 connection over `io`.
async fn send<IO>(io: IO, request: hyper::Request<Full<Bytes>>) -> Result<(), WebhookError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(conn);
    let status = sender.send_request(request).await?.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(WebhookError::Status(status.as_u16()))
    }
}
