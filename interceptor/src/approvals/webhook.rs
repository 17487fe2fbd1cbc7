//! Webhook notification of a pending approval: an HTTP POST of its JSON, retried with
//! backoff from a task of its own, so traffic never waits on it.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

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
    #[error("only http:// webhooks are supported: {0}")]
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

/// Posts `pending` to `url` in the background.
pub fn notify(url: String, pending: Pending) {
    tokio::spawn(async move {
        let body =
            Bytes::from(serde_json::to_vec(&pending).expect("a pending approval serializes"));
        for (attempt, delay) in BACKOFF.iter().enumerate() {
            tokio::time::sleep(*delay).await;
            let result = tokio::time::timeout(ATTEMPT_TIMEOUT, post(&url, body.clone()))
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
    });
}

async fn post(url: &str, body: Bytes) -> Result<(), WebhookError> {
    let uri: hyper::Uri = url.parse().map_err(|_| WebhookError::Url(url.into()))?;
    if uri.scheme_str() != Some("http") {
        return Err(WebhookError::Scheme(url.into()));
    }
    let authority = uri
        .authority()
        .ok_or_else(|| WebhookError::Url(url.into()))?
        .clone();
    let port = authority.port_u16().unwrap_or(80);
    let stream = TcpStream::connect((authority.host().trim_matches(['[', ']']), port)).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let request = hyper::Request::post(path)
        .header(hyper::header::HOST, authority.as_str())
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(body))?;
    let status = sender.send_request(request).await?.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(WebhookError::Status(status.as_u16()))
    }
}
