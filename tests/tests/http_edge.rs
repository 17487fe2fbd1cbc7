//! The HTTP layer's edges, end to end through `interceptor exec` with real clients: HTTP/1.1
//! pipelining and trailers over intercepted TLS, the HTTP/2 header timeout.

use anyhow::{Result, ensure};
use interceptor_tests::https::{
    HttpsServer, TestPki, ended_session, exec_loopback, intercepting_daemon, tls_client,
};
use interceptor_tests::*;
use serde_json::{Value, json};

fn exchanges(s: &Value) -> Vec<Value> {
    s["http"].as_array().cloned().unwrap_or_default()
}

/// A server on 127.0.0.2 with its own CA, and a daemon that intercepts it.
fn setup(extra: &[&str]) -> Result<(TestPki, HttpsServer, Daemon)> {
    let pki = TestPki::new("upstream test CA")?;
    let server = HttpsServer::start("127.0.0.2", pki.server_config(&["127.0.0.2"])?)?;
    let d = intercepting_daemon(&pki, extra)?;
    Ok((pki, server, d))
}

#[test]
fn pipelined_requests_are_answered_in_order_and_recorded() -> Result<()> {
    require_root();
    let (_pki, server, d) = setup(&[])?;
    let port = server.addr.port().to_string();
    let r = tls_client(&d, &["pipeline", "127.0.0.2", &port])?;
    ensure!(
        r["responses"]
            == json!([
                {"status": "HTTP/1.1 200 OK", "body": "xxx"},
                {"status": "HTTP/1.1 200 OK", "body": "second body"},
                {"status": "HTTP/1.1 200 OK", "body": "hello over HTTP/1.1"},
            ]),
        "{r:#}"
    );
    let s = ended_session(&d, server.addr.port())?;
    let x = exchanges(&s);
    let seen: Vec<(&Value, &Value, &Value)> = x
        .iter()
        .map(|e| (&e["seq"], &e["path"], &e["response_body_bytes"]))
        .collect();
    ensure!(
        seen == [
            (&json!(0), &json!("/bytes/3"), &json!(3)),
            (&json!(1), &json!("/echo"), &json!(11)),
            (&json!(2), &json!("/hello"), &json!(19)),
        ],
        "one session, three exchanges in order: {s:#}"
    );
    Ok(())
}

#[test]
fn chunked_bodies_with_trailers_pass_both_ways_and_are_recorded() -> Result<()> {
    require_root();
    let (_pki, server, d) = setup(&[])?;
    let port = server.addr.port().to_string();
    let r = tls_client(&d, &["trailers", "127.0.0.2", &port])?;
    ensure!(
        r["status"] == "HTTP/1.1 200 OK" && r["body"] == "hello world",
        "{r:#}"
    );
    ensure!(
        r["headers"]["transfer-encoding"] == "chunked",
        "the response must stay chunked to carry trailers: {r:#}"
    );
    // The upstream echoes the request's trailers: they crossed the proxy both ways.
    ensure!(r["trailers"] == json!({"x-checksum": "abc123"}), "{r:#}");
    let s = ended_session(&d, server.addr.port())?;
    let x = &exchanges(&s)[0];
    ensure!(
        x["status"] == 200
            && x["request_body_bytes"] == 11
            && x["response_body_bytes"] == 11
            && x["error"].is_null(),
        "{s:#}"
    );
    ensure!(
        x["request_headers"]
            .as_array()
            .is_some_and(|h| h.contains(&json!(["transfer-encoding", "chunked"]))),
        "{s:#}"
    );
    Ok(())
}

#[test]
fn an_http2_client_that_never_finishes_its_headers_is_closed_after_the_header_timeout() -> Result<()>
{
    require_root();
    let (_pki, server, d) = setup(&["--header-timeout", "1s"])?;
    let port = server.addr.port().to_string();
    let r = tls_client(&d, &["h2stall", "127.0.0.2", &port])?;
    ensure!(r["alpn"] == "h2", "{r:#}");
    let after = r["closed_after"].as_f64().unwrap_or(99.0);
    ensure!((0.8..5.0).contains(&after), "closed after {after}s: {r:#}");
    ensure!(
        r["frame_types"]
            .as_array()
            .is_some_and(|t| t.contains(&json!(7))),
        "expected a GOAWAY: {r:#}"
    );
    let s = ended_session(&d, server.addr.port())?;
    ensure!(s["outcome"] == "client_error", "{s:#}");
    ensure!(
        s["error"]
            .as_str()
            .is_some_and(|e| e.contains("HTTP/2") && e.contains("header timeout")),
        "{s:#}"
    );
    // A request in progress is not cut, however long its answer takes.
    let out = exec_loopback(&d, &["curl", "-sS", "--http2", &server.url("/delay/2500")])?;
    ensure!(
        out.stdout == b"late",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = ended_session(&d, server.addr.port())?;
    ensure!(
        s["outcome"] == "closed" && s["http"][0]["status"] == 200,
        "{s:#}"
    );
    Ok(())
}
