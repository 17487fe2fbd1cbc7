//! `run --metrics-addr`: `GET /metrics` over plain HTTP/1.1.
//!
//! The endpoint has no authentication and its numbers describe the workloads' traffic
//! (findings, denials, approvals), so it binds only loopback addresses unless the operator
//! says otherwise (`--metrics-allow-remote`, for a scraper reached through a protected
//! network).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::limits::{Acceptor, Reserve};

/// A scraper that does not send its request head within this time is dropped.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error(
        "--metrics-addr {0}: not a loopback address; the metrics endpoint has no \
         authentication, so it listens on 127.0.0.1 or ::1 unless --metrics-allow-remote is given"
    )]
    NotLoopback(SocketAddr),
    #[error("--metrics-addr {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Binds the endpoint's listener, refusing a non-loopback address unless `allow_remote`.
pub async fn bind(addr: SocketAddr, allow_remote: bool) -> Result<TcpListener, EndpointError> {
    check(addr, allow_remote)?;
    TcpListener::bind(addr)
        .await
        .map_err(|source| EndpointError::Bind { addr, source })
}

fn check(addr: SocketAddr, allow_remote: bool) -> Result<(), EndpointError> {
    if addr.ip().is_loopback() || allow_remote {
        Ok(())
    } else {
        Err(EndpointError::NotLoopback(addr))
    }
}

/// Serves scrapes until the task is dropped, also at the descriptor limit (on a reserve
/// descriptor, [`Acceptor`]).
pub async fn serve(listener: TcpListener, registry: Arc<Registry>) {
    let mut acceptor = Acceptor::new(listener, "metrics", Reserve::new());
    loop {
        let ((stream, _), spent) = acceptor.next().await.into_parts();
        let registry = registry.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let page = respond(&registry, &req);
                async move { Ok::<_, Infallible>(page) }
            });
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = served {
                tracing::debug!(error = %e, "metrics scrape connection ended with an error");
            }
            drop(spent);
        });
    }
}

fn respond<B>(registry: &Registry, req: &Request<B>) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, content_type: &str, body: String| {
        Response::builder()
            .status(status)
            .header(hyper::header::CONTENT_TYPE, content_type)
            .body(Full::new(Bytes::from(body)))
            .expect("a valid response")
    };
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => reply(
            StatusCode::OK,
            CONTENT_TYPE,
            super::exposition::render(registry),
        ),
        (_, "/metrics") => reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        ),
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "metrics are at /metrics\n".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_unless_allowed() {
        let at = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(check(at("127.0.0.1:9100"), false).is_ok());
        assert!(check(at("[::1]:9100"), false).is_ok());
        let err = check(at("0.0.0.0:9100"), false).unwrap_err();
        assert!(err.to_string().contains("--metrics-allow-remote"), "{err}");
        assert!(check(at("0.0.0.0:9100"), true).is_ok());
    }
}
