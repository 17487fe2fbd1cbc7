//! The HTTP layer's edges, end to end through `interceptor exec` with real clients: HTTP/1.1
//! pipelining and trailers over intercepted TLS, the HTTP/2 header timeout, secrets masked
//! in WebSocket frames and in decrypted streams that are not HTTP.

use std::process::Command;
use std::time::Duration;

use anyhow::{Result, ensure};
use interceptor_tests::https::{
    HttpsServer, TestPki, ended_session, exec_loopback, intercepting_daemon, sessions_json,
    tls_client,
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

/// Detected by the shipped rules: github.ghp going up, aws.access-key-id coming down.
const UP_SECRET: &str = "ghp_aB3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1xY3zA5";
const DOWN_SECRET: &str = "AKIAQYLPMN5HHHFPZAM2";

/// A daemon as `setup` makes it, masking secrets with the shipped rules, plus `extra`.
fn masking_daemon(pki: &TestPki, extra: &[&str]) -> Result<Daemon> {
    let rules = workspace_root().join("policies/rules");
    let mut args = vec!["--rules", rules.to_str().unwrap()];
    args.extend_from_slice(extra);
    intercepting_daemon(pki, &args)
}

/// `text` holds the secret masked in place: its first bytes, then `*`, same length.
fn masked_in(text: &str, secret: &str) -> bool {
    !text.contains(secret) && text.contains(&format!("{}*", &secret[..4]))
}

/// The session's findings as (rule, direction, location).
fn findings(s: &Value) -> Vec<(String, String, String)> {
    s["secrets"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|f| {
            let field = |k: &str| f[k].as_str().unwrap_or_default().to_owned();
            (field("rule"), field("direction"), field("location"))
        })
        .collect()
}

/// The session has a finding (rule, direction, location) `want`.
fn ensure_found(s: &Value, want: (&str, &str, &str)) -> Result<()> {
    ensure!(
        findings(s)
            .iter()
            .any(|f| (f.0.as_str(), f.1.as_str(), f.2.as_str()) == want),
        "no {want:?} finding: {s:#}"
    );
    Ok(())
}

fn ensure_found_both_ways(s: &Value) -> Result<()> {
    ensure_found(s, ("github.ghp", "up", "stream"))?;
    ensure_found(s, ("aws.access-key-id", "down", "stream"))
}

#[test]
fn secrets_in_trailers_are_masked_and_recorded() -> Result<()> {
    require_root();
    // Chunked HTTP/1.1 trailers, then HTTP/2 trailing HEADERS.
    for (mode, status) in [("trailers", "HTTP/1.1 200 OK"), ("h2trailers", "200")] {
        secret_in_a_trailer_is_masked(mode, status)?;
    }
    Ok(())
}

/// `tls_client.py MODE` sends a trailer holding a secret to the upstream's /echo, whose
/// answer (`status`) carries it back.
fn secret_in_a_trailer_is_masked(mode: &str, status: &str) -> Result<()> {
    let pki = TestPki::new("upstream test CA")?;
    let server = HttpsServer::start("127.0.0.2", pki.server_config(&["127.0.0.2"])?)?;
    let d = masking_daemon(&pki, &[])?;
    let port = server.addr.port().to_string();
    let value = format!("token {UP_SECRET}");
    let r = tls_client(&d, &[mode, "127.0.0.2", &port, &value])?;
    ensure!(
        r["status"] == status && r["body"] == "hello world",
        "{mode}: {r:#}"
    );
    // The upstream echoes the trailer it got: masked on the way up, same length.
    let echoed = r["trailers"]["x-checksum"].as_str().unwrap_or_default();
    ensure!(
        echoed.len() == value.len() && masked_in(echoed, UP_SECRET),
        "{mode}: {r:#}"
    );
    let s = ended_session(&d, server.addr.port())?;
    ensure_found(&s, ("github.ghp", "up", "trailer:x-checksum"))
}

#[test]
fn websocket_frames_are_unmasked_scanned_and_masked_again_both_ways() -> Result<()> {
    require_root();
    let pki = TestPki::new("upstream test CA")?;
    let d = masking_daemon(&pki, &[])?;
    let reply = format!("key {DOWN_SECRET}");
    let server = Server::start(
        "ws",
        "127.0.0.3",
        ServerOpts {
            seed: &reply,
            ..Default::default()
        },
    )?;
    let port = server.port().to_string();
    let r = tls_client(&d, &["wssecret", "127.0.0.3", &port, UP_SECRET])?;
    ensure!(
        r["status_line"] == "HTTP/1.1 101 Switching Protocols",
        "{r:#}"
    );
    let received: Vec<&str> = r["received"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    ensure!(
        received.len() == 2
            && received
                .iter()
                .all(|m| m.len() == reply.len() && masked_in(m, DOWN_SECRET)),
        "server frames must arrive with the secret masked: {r:#}"
    );
    // The close frame after them still parses: framing survived the masking.
    ensure!(r["close_hex"] == "880203e8", "{r:#}");
    let rec = &server.wait_records(1, Duration::from_secs(30))?[0];
    ensure!(
        rec.messages.len() == 2
            && rec.messages[0].len() == 6 + UP_SECRET.len()
            && rec.messages.iter().all(|m| masked_in(m, UP_SECRET)),
        "client frames must arrive unmasked by XOR, secret masked: {rec:?}"
    );
    ensure!(
        rec.received == 6 + UP_SECRET.len() as u64 + 70_000,
        "{rec:?}"
    );
    let s = ended_session(&d, server.port())?;
    ensure!(s["http"][0]["status"] == 101, "{s:#}");
    ensure_found_both_ways(&s)
}

#[test]
fn a_ping_inside_a_fragmented_message_is_masked_and_recorded() -> Result<()> {
    require_root();
    let pki = TestPki::new("upstream test CA")?;
    let d = masking_daemon(&pki, &[])?;
    let server = Server::start(
        "ws",
        "127.0.0.3",
        ServerOpts {
            seed: "ok",
            ..Default::default()
        },
    )?;
    let port = server.port().to_string();
    let r = tls_client(&d, &["wsping", "127.0.0.3", &port, UP_SECRET])?;
    // The server answers the message's first fragment ("ok", opcode 1) and the ping (its
    // pong, opcode 10, echoes the ping as the server got it).
    let answer = |opcode: u64| {
        r["frames"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|f| f[0] == opcode)
            .and_then(|f| f[1].as_str())
            .unwrap_or_default()
    };
    let pong = answer(10);
    ensure!(
        answer(1) == "ok"
            && pong.len() == 5 + UP_SECRET.len()
            && masked_in(pong, UP_SECRET)
            && r["close_hex"] == "880203e8",
        "{r:#}"
    );
    let rec = &server.wait_records(1, Duration::from_secs(30))?[0];
    ensure!(
        rec.messages.iter().any(|m| m.starts_with("ping:ping ghp_"))
            && rec.messages.iter().all(|m| !m.contains(UP_SECRET)),
        "the ping must arrive with the secret masked: {rec:?}"
    );
    let s = ended_session(&d, server.port())?;
    ensure_found(&s, ("github.ghp", "up", "websocket control frame"))?;
    d.ensure_not_stored(&[UP_SECRET])
}

#[test]
fn a_secret_in_tls_that_is_not_http_is_masked_both_ways() -> Result<()> {
    require_root();
    let pki = TestPki::new("upstream test CA")?;
    let d = masking_daemon(&pki, &[])?;
    let (chain, key) = pki.server_pem(&["127.0.0.2"])?;
    let reply = format!("key {DOWN_SECRET}");
    let server = Server::start(
        "say",
        "127.0.0.2",
        ServerOpts {
            seed: &reply,
            tls: Some((&chain, &key)),
            ..Default::default()
        },
    )?;
    let port = server.port().to_string();
    let r = tls_client(&d, &["tlssay", "127.0.0.2", &port, UP_SECRET])?;
    let got = r["reply"].as_str().unwrap_or_default();
    ensure!(
        got.len() == reply.len() && masked_in(got, DOWN_SECRET),
        "{r:#}"
    );
    let rec = &server.wait_records(1, Duration::from_secs(30))?[0];
    ensure!(
        rec.error.is_none()
            && rec.messages.len() == 1
            && rec.messages[0].len() == UP_SECRET.len()
            && masked_in(&rec.messages[0], UP_SECRET),
        "{rec:?}"
    );
    let s = ended_session(&d, server.port())?;
    ensure!(
        s["tls"]["mode"] == "terminated" && s["http"].as_array().is_none_or(Vec::is_empty),
        "{s:#}"
    );
    ensure_found_both_ways(&s)
}

#[test]
fn a_request_body_past_the_decoded_cap_gets_413_with_the_reason() -> Result<()> {
    require_root();
    let pki = TestPki::new("upstream test CA")?;
    let server = HttpsServer::start("127.0.0.2", pki.server_config(&["127.0.0.2"])?)?;
    let d = masking_daemon(&pki, &[])?;
    // 70 MiB of zeros, about 70 KB of gzip: past the 64 MiB a masked body may decode to.
    let bomb = d.tmp_dir().join("bomb.gz");
    let made = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "head -c {} /dev/zero | gzip -1 > {}",
            70 << 20,
            bomb.display()
        ))
        .status()?;
    ensure!(made.success(), "gzip failed");
    let upload = format!("@{}", bomb.display());
    for version in ["--http1.1", "--http2"] {
        let out = exec_loopback(
            &d,
            &[
                "curl",
                "-sS",
                version,
                "-w",
                "\n%{http_code}",
                "-H",
                "Content-Encoding: gzip",
                "--data-binary",
                &upload,
                &server.url("/upload"),
            ],
        )?;
        let text = String::from_utf8_lossy(&out.stdout);
        ensure!(
            text.ends_with("\n413") && text.contains("exceeds the cap"),
            "{version}: {text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let suffix = format!(":{}", server.addr.port());
    d.wait_for_matching(
        |s| s.destination.ends_with(&suffix) && s.outcome != "open",
        2,
        Duration::from_secs(30),
    )?;
    let mut versions = Vec::new();
    for s in sessions_json(&d)? {
        let x = &exchanges(&s)[0];
        ensure!(
            x["status"] == 413
                && x["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("exceeds the cap")),
            "{s:#}"
        );
        versions.push(x["version"].clone());
    }
    ensure!(
        versions == [json!("HTTP/1.1"), json!("HTTP/2.0")],
        "{versions:?}"
    );
    // Only that exchange: the same daemon serves the next request.
    let out = exec_loopback(&d, &["curl", "-sS", &server.url("/hello")])?;
    ensure!(out.stdout.starts_with(b"hello over"), "{out:?}");
    Ok(())
}

/// A chunked upload with a chunk size that is not hex is the workload's error: it gets a
/// 400 saying so, not a 502 that blames the upstream.
#[test]
fn a_malformed_chunked_request_body_gets_400() -> Result<()> {
    require_root();
    let (_pki, server, d) = setup(&[])?;
    let port = server.addr.port().to_string();
    let r = tls_client(&d, &["badchunk", "127.0.0.2", &port])?;
    ensure!(
        r["status"] == "HTTP/1.1 400 Bad Request"
            && r["body"]
                .as_str()
                .is_some_and(|b| b.contains("request body")),
        "{r:#}"
    );
    let s = ended_session(&d, server.addr.port())?;
    let x = &exchanges(&s)[0];
    ensure!(
        x["status"] == 400
            && x["error"]
                .as_str()
                .is_some_and(|e| e.starts_with("request body")),
        "{s:#}"
    );
    Ok(())
}

#[test]
fn websocket_over_http2_extended_connect_is_relayed_scanned_and_recorded() -> Result<()> {
    require_root();
    let pki = TestPki::new("upstream test CA")?;
    let server = HttpsServer::start("127.0.0.2", pki.server_config(&["127.0.0.2"])?)?;
    let d = masking_daemon(&pki, &["--header-timeout", "1s"])?;
    let port = server.addr.port().to_string();
    // Quiet for longer than the header timeout: an open WebSocket keeps its connection.
    let r = tls_client(&d, &["h2ws", "127.0.0.2", &port, UP_SECRET, "2.5"])?;
    ensure!(
        r["enable_connect_protocol"] == true && r["status"] == "200",
        "interceptor must offer and pass on extended CONNECT: {r:#}"
    );
    let payload = r["payload"].as_str().unwrap_or_default();
    ensure!(
        r["same_header"] == true
            && payload.len() == 6 + UP_SECRET.len()
            && masked_in(payload, UP_SECRET),
        "the echoed frame must keep its framing and carry the secret masked: {r:#}"
    );
    let s = ended_session(&d, server.addr.port())?;
    let x = &exchanges(&s)[0];
    ensure!(
        x["method"] == "CONNECT"
            && x["version"] == "HTTP/2.0"
            && x["status"] == 200
            && x["upgraded"]["up"].as_u64() > Some(0)
            && x["upgraded"]["down"].as_u64() > Some(0),
        "{s:#}"
    );
    ensure!(
        findings(&s).contains(&("github.ghp".into(), "up".into(), "stream".into())),
        "{s:#}"
    );
    Ok(())
}
