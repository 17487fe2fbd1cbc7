//! TLS re-termination and the HTTP layer, end to end: the real daemon and kernel hooks, real
//! clients (curl, python, openssl) under `interceptor exec`, HTTPS servers on 127.0.0.2+
//! with their own test CA (trusted by the daemon through `--upstream-ca`, never by the
//! client, which trusts interceptor's CA only through exec's private trust bundle).

use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{Result, ensure};
use interceptor_tests::https::{
    HttpsServer, TestPki, ended_session, exec_loopback as exec, https_fixture,
    intercepting_daemon as daemon, openssl_get_hello, plain_fixture, sessions_json,
    tls_client as py_client,
};
use interceptor_tests::*;
use serde_json::Value;

const RUN: Duration = Duration::from_secs(60);
const SESSIONS: Duration = Duration::from_secs(30);

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The client's output is exactly `body` (both streams in the message when not).
fn ensure_body(out: &Output, body: &str) -> Result<()> {
    ensure!(
        stdout(out) == body,
        "body: {}\nstderr: {}",
        stdout(out),
        stderr(out)
    );
    Ok(())
}

/// A string field of a client's JSON report ("" when missing).
fn text<'a>(report: &'a Value, key: &str) -> &'a str {
    report[key].as_str().unwrap_or_default()
}

/// The newest ended session to `port` has `outcome` and an error naming every one of `words`.
fn ensure_ended_with(d: &Daemon, port: u16, outcome: &str, words: &[&str]) -> Result<()> {
    let s = ended_session(d, port)?;
    ensure!(s["outcome"] == outcome, "session: {s:#}");
    let error = text(&s, "error");
    ensure!(
        words.iter().all(|w| error.contains(w)),
        "session error: {error}"
    );
    Ok(())
}

/// Waits for `n` sessions that ended with `outcome`; returns their errors.
fn failure_errors(d: &Daemon, outcome: &str, n: usize) -> Result<Vec<String>> {
    let sessions = d.wait_for_matching(|s| s.outcome == outcome, n, SESSIONS)?;
    Ok(sessions
        .into_iter()
        .map(|s| s.error.unwrap_or_default())
        .collect())
}

/// tls_client.py `mode` against `server`'s address and port, then `extra` arguments.
fn py_at(d: &Daemon, mode: &str, server: &HttpsServer, extra: &[&str]) -> Result<Value> {
    let (ip, port) = (server.addr.ip().to_string(), server.addr.port().to_string());
    let mut args = vec![mode, &ip, &port];
    args.extend_from_slice(extra);
    py_client(d, &args)
}

/// The daemon closed the client's stalled connection after its 1s timeout (not at once,
/// not never).
fn ensure_closed_after_1s(report: &Value) -> Result<()> {
    let after = report["closed_after"].as_f64().unwrap_or(99.0);
    ensure!(
        (0.8..5.0).contains(&after),
        "closed after {after}s: {report}"
    );
    Ok(())
}

/// curl for `/hello` over HTTP/2 with prior knowledge (h2c).
fn curl_h2c_hello(d: &Daemon, server: &HttpsServer) -> Result<Output> {
    exec(
        d,
        &[
            "curl",
            "-sS",
            "--http2-prior-knowledge",
            &server.plain_url("/hello"),
        ],
    )
}

#[test]
fn curl_trusts_the_minted_certificate_with_no_flag() -> Result<()> {
    require_root();
    let pki = TestPki::new("upstream test CA")?;
    let server = HttpsServer::start("127.0.0.2", pki.server_config(&["127.0.0.2", "api.test"])?)?;
    let d = daemon(&pki, &[])?;

    // By address (no SNI): the certificate is minted for the IP.
    let out = exec(
        &d,
        &["curl", "-sS", "-v", "--http1.1", &server.url("/hello")],
    )?;
    ensure!(out.status.success(), "curl failed: {}", stderr(&out));
    ensure_body(&out, "hello over HTTP/1.1")?;
    ensure!(
        stderr(&out).contains("O=interceptor"),
        "curl did not see interceptor's certificate:\n{}",
        stderr(&out)
    );
    let s = ended_session(&d, server.addr.port())?;
    ensure!(s["outcome"] == "closed", "session: {s:#}");
    ensure!(s["tls"]["mode"] == "terminated", "session: {s:#}");
    ensure!(s["tls"]["sni"].is_null(), "session: {s:#}");
    let h = &s["http"][0];
    ensure!(
        h["method"] == "GET" && h["path"] == "/hello" && h["status"] == 200,
        "exchange: {h:#}"
    );
    ensure!(
        h["version"] == "HTTP/1.1" && h["response_body_bytes"] == 19,
        "exchange: {h:#}"
    );

    // By name (SNI), over HTTP/2.
    let resolve = format!("api.test:{}:127.0.0.2", server.addr.port());
    let url = format!("https://api.test:{}/hello", server.addr.port());
    let out = exec(&d, &["curl", "-sS", "--http2", "--resolve", &resolve, &url])?;
    ensure!(out.status.success(), "curl failed: {}", stderr(&out));
    ensure_body(&out, "hello over HTTP/2.0")?;
    let s = ended_session(&d, server.addr.port())?;
    ensure!(s["tls"]["sni"] == "api.test", "session: {s:#}");
    ensure!(s["tls"]["alpn"] == "h2", "session: {s:#}");
    let h = &s["http"][0];
    ensure!(
        h["version"] == "HTTP/2.0" && h["authority"] == format!("api.test:{}", server.addr.port()),
        "exchange: {h:#}"
    );

    // Outside exec, the same curl does not trust interceptor's CA: exec's trust is private.
    let out = run_with_timeout(
        Command::new("curl").args(["-sS", "--cacert", "/dev/null", &server.url("/hello")]),
        RUN,
    )?;
    ensure!(
        !out.status.success(),
        "curl trusted a server it had no CA for"
    );
    Ok(())
}

#[test]
fn python_urllib_and_openssl_trust_the_system_store_under_exec() -> Result<()> {
    require_root();
    let (_pki, server, d) = https_fixture("127.0.0.2", &[])?;

    let r = py_client(&d, &["urllib", &server.url("/hello")])?;
    ensure!(
        r["status"] == 200 && r["body"] == "hello over HTTP/1.1",
        "{r}"
    );

    let out = openssl_get_hello(&d, &server, &[])?;
    ensure!(
        stdout(&out).contains("hello over HTTP/1.1"),
        "openssl s_client: {}\n{}",
        stdout(&out),
        stderr(&out)
    );
    Ok(())
}

#[test]
fn unverifiable_upstream_is_refused_with_an_alert_and_recorded() -> Result<()> {
    require_root();
    let trusted = TestPki::new("upstream test CA")?;
    let rogue = TestPki::new("rogue CA")?;
    let server = HttpsServer::start("127.0.0.3", rogue.server_config(&["127.0.0.3"])?)?;
    let d = daemon(&trusted, &[])?;
    let out = exec(&d, &["curl", "-sS", &server.url("/hello")])?;
    ensure!(!out.status.success(), "curl succeeded: {}", stdout(&out));
    ensure!(
        stderr(&out).contains("alert handshake failure"),
        "curl should see a TLS alert: {}",
        stderr(&out)
    );
    ensure_ended_with(
        &d,
        server.addr.port(),
        "upstream_tls_error",
        &["certificate"],
    )?;
    Ok(())
}

#[test]
fn passthrough_hosts_are_not_decrypted() -> Result<()> {
    require_root();
    let pki = TestPki::new("upstream test CA")?;
    let server = HttpsServer::start("127.0.0.2", pki.server_config(&["api.test"])?)?;
    let d = daemon(&pki, &["--passthrough", "api.test"])?;
    let resolve = format!("api.test:{}:127.0.0.2", server.addr.port());
    let url = format!("https://api.test:{}/hello", server.addr.port());
    let ca = pki.ca_file.to_str().unwrap();
    // The client trusts only the server's own CA: it works only if it sees the real cert.
    let out = exec(
        &d,
        &[
            "curl",
            "-sS",
            "-v",
            "--cacert",
            ca,
            "--resolve",
            &resolve,
            &url,
        ],
    )?;
    ensure!(out.status.success(), "curl failed: {}", stderr(&out));
    ensure!(
        stderr(&out).contains("CN=upstream test CA"),
        "{}",
        stderr(&out)
    );
    let s = ended_session(&d, server.addr.port())?;
    ensure!(
        s["tls"]["mode"] == "passthrough" && s["tls"]["sni"] == "api.test",
        "session: {s:#}"
    );
    ensure!(s["bytes_down"].as_u64() > Some(500), "session: {s:#}");
    Ok(())
}

#[test]
fn malformed_client_hello_does_not_disturb_a_concurrent_connection() -> Result<()> {
    require_root();
    let (_pki, server, d) = https_fixture("127.0.0.2", &[])?;
    let r = py_at(&d, "malformed", &server, &[&server.url("/hello")])?;
    ensure!(
        text(&r, "good_reply").ends_with("hello over HTTP/1.1"),
        "{r}"
    );
    // An alert record (content type 21) came back on the bad connection.
    ensure!(text(&r, "bad_reply_hex").starts_with("15"), "{r}");
    let errors = failure_errors(&d, "client_tls_error", 1)?;
    ensure!(errors[0].contains("malformed ClientHello"), "{errors:?}");
    Ok(())
}

#[test]
fn stalled_handshake_times_out_and_is_recorded() -> Result<()> {
    require_root();
    let (_pki, server, d) = https_fixture("127.0.0.2", &["--handshake-timeout", "1s"])?;
    ensure_closed_after_1s(&py_at(&d, "stall", &server, &["1"])?)?;
    ensure_ended_with(
        &d,
        server.addr.port(),
        "client_tls_error",
        &["ClientHello within 1s"],
    )?;
    Ok(())
}

fn exchanges(s: &Value) -> Vec<Value> {
    s["http"].as_array().cloned().unwrap_or_default()
}

#[test]
fn keep_alive_exchanges_are_recorded_one_by_one() -> Result<()> {
    require_root();
    let (_pki, server, d) = https_fixture("127.0.0.2", &[])?;
    let body = d.tmp_dir().join("upload.bin");
    std::fs::write(&body, payload("upload", 1 << 20))?;
    let upload = format!("@{}", body.display());
    let report = "%{http_code} %{size_download} %{num_connects}\\n";
    let out = exec(
        &d,
        &[
            "curl",
            "-sS",
            "--http1.1",
            "-o",
            "/dev/null",
            "-w",
            report,
            &server.url("/hello?token=SECRET-QUERY-VALUE"),
            "--next",
            "-sS",
            "--http1.1",
            "-o",
            "/dev/null",
            "-w",
            report,
            "-H",
            "Expect: 100-continue",
            "--data-binary",
            &upload,
            &server.url("/echo"),
        ],
    )?;
    ensure!(out.status.success(), "curl failed: {}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    ensure!(
        lines.len() == 2 && lines[0] == "200 19 1" && lines[1] == format!("200 {} 0", 1 << 20),
        "curl reports (second must reuse the connection): {text}"
    );
    ensure!(
        server
            .connections
            .load(std::sync::atomic::Ordering::Relaxed)
            == 1,
        "upstream connections"
    );
    let s = ended_session(&d, server.addr.port())?;
    let x = exchanges(&s);
    ensure!(x.len() == 2, "one session, two exchanges: {s:#}");
    // Wire bytes: the upload plus TLS and headers, counted once.
    let up = s["bytes_up"].as_u64().unwrap_or(0);
    ensure!(
        (1 << 20..(1 << 20) + (64 << 10)).contains(&up),
        "bytes_up {up}"
    );
    ensure!(x[0]["path"] == "/hello" && x[1]["seq"] == 1, "{s:#}");
    ensure!(
        x[1]["request_body_bytes"] == 1 << 20 && x[1]["response_body_bytes"] == 1 << 20,
        "{s:#}"
    );
    // curl's command line (in the identity) has it; the exchanges must not.
    let recorded = serde_json::to_string(&x)?;
    ensure!(
        !recorded.contains("SECRET-QUERY-VALUE"),
        "the query string was recorded"
    );
    Ok(())
}

#[test]
fn http2_requests_share_one_connection() -> Result<()> {
    require_root();
    let (_pki, server, d) = https_fixture("127.0.0.2", &[])?;
    let urls: Vec<String> = (1..=3)
        .map(|n| server.url(&format!("/bytes/{}", n * 1000)))
        .collect();
    let mut argv = vec!["curl", "-sS", "--http2"];
    argv.extend(urls.iter().map(String::as_str));
    let out = exec(&d, &argv)?;
    ensure!(out.status.success(), "curl failed: {}", stderr(&out));
    ensure!(out.stdout.len() == 6000, "got {} bytes", out.stdout.len());
    let s = ended_session(&d, server.addr.port())?;
    let mut sizes: Vec<u64> = exchanges(&s)
        .iter()
        .map(|x| x["response_body_bytes"].as_u64().unwrap_or(0))
        .collect();
    sizes.sort();
    ensure!(
        sizes == [1000, 2000, 3000],
        "exchanges on one session: {s:#}"
    );
    Ok(())
}

#[test]
fn plain_http_and_h2c_are_parsed_and_bad_http_is_refused_on_its_connection() -> Result<()> {
    require_root();
    let (_pki, server, d) = plain_fixture("127.0.0.3", &[])?;
    let out = exec(&d, &["curl", "-sS", &server.plain_url("/hello")])?;
    ensure_body(&out, "hello over HTTP/1.1")?;
    ensure_body(&curl_h2c_hello(&d, &server)?, "hello over HTTP/2.0")?;
    let sessions = d.wait_for_matching(|s| s.outcome == "closed", 2, SESSIONS)?;
    ensure!(sessions.len() == 2);
    let all = sessions_json(&d)?;
    let versions: Vec<&Value> = all.iter().map(|s| &s["http"][0]["version"]).collect();
    ensure!(versions == ["HTTP/1.1", "HTTP/2.0"], "{all:#?}");

    let r = py_at(&d, "badhttp", &server, &[])?;
    ensure!(text(&r, "reply").starts_with("HTTP/1.1 400"), "{r}");
    let errors = failure_errors(&d, "client_error", 1)?;
    ensure!(errors[0].starts_with("HTTP:"), "{errors:?}");
    Ok(())
}

#[test]
fn websocket_upgrade_is_relayed_and_counted() -> Result<()> {
    require_root();
    let (_pki, server, d) = https_fixture("127.0.0.2", &[])?;
    let r = py_at(&d, "websocket", &server, &[])?;
    ensure!(
        r["status_line"] == "HTTP/1.1 101 Switching Protocols",
        "{r}"
    );
    ensure!(
        r["echoed_hex"] == "818537fa213d7f9f4d5158".repeat(3),
        "frames must come back unchanged: {r}"
    );
    let s = ended_session(&d, server.addr.port())?;
    let x = &exchanges(&s)[0];
    ensure!(x["status"] == 101, "{s:#}");
    ensure!(
        x["upgraded"]["up"] == 33 && x["upgraded"]["down"] == 33,
        "{s:#}"
    );
    Ok(())
}

#[test]
fn ca_is_created_private_reused_and_exported() -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    require_root();
    let pki = TestPki::new("upstream test CA")?;
    let mut d = daemon(&pki, &[])?;
    let exported = d.cli_ok(["ca", "export"])?;
    let on_disk = std::fs::read_to_string(d.data_dir().join("tls/ca.pem"))?;
    ensure!(exported == on_disk && exported.starts_with("-----BEGIN CERTIFICATE-----"));
    let key = std::fs::metadata(d.data_dir().join("tls/ca-key.pem"))?;
    ensure!(
        key.permissions().mode() & 0o777 == 0o600,
        "key mode {:o}",
        key.permissions().mode()
    );
    d.restart()?;
    ensure!(
        d.cli_ok(["ca", "export"])? == exported,
        "the CA changed across a restart"
    );
    Ok(())
}

#[test]
fn an_operator_ca_signs_instead() -> Result<()> {
    require_root();
    // Any CA will do as the operator's: make one with a first daemon, then hand its files
    // to a second one.
    let (pki, server, first) = https_fixture("127.0.0.2", &[])?;
    first.cli_ok(["ca", "export"])?;
    let dir = tempfile::tempdir()?;
    for f in ["ca.pem", "ca-key.pem"] {
        std::fs::copy(first.data_dir().join("tls").join(f), dir.path().join(f))?;
    }
    drop(first);
    let (cert, key) = (dir.path().join("ca.pem"), dir.path().join("ca-key.pem"));
    let d = daemon(
        &pki,
        &[
            "--ca-cert",
            cert.to_str().unwrap(),
            "--ca-key",
            key.to_str().unwrap(),
        ],
    )?;
    ensure!(
        !d.data_dir().join("tls/ca.pem").exists(),
        "made its own CA anyway"
    );
    ensure!(d.cli_ok(["ca", "export"])? == std::fs::read_to_string(&cert)?);
    let out = exec(&d, &["curl", "-sS", &server.url("/hello")])?;
    ensure_body(&out, "hello over HTTP/2.0")?;
    Ok(())
}

#[test]
fn oversized_and_stalled_request_heads_end_only_their_connection() -> Result<()> {
    require_root();
    let (_pki, server, d) = plain_fixture("127.0.0.3", &["--header-timeout", "1s"])?;
    let big = py_at(&d, "bighead", &server, &[])?;
    ensure!(text(&big, "reply").starts_with("HTTP/1.1 431"), "{big}");
    ensure_closed_after_1s(&py_at(&d, "slowhead", &server, &[])?)?;
    // The server is still fine for everyone else.
    let out = exec(&d, &["curl", "-sS", &server.plain_url("/hello")])?;
    ensure_body(&out, "hello over HTTP/1.1")?;
    let errors = failure_errors(&d, "client_error", 2)?;
    ensure!(errors.iter().all(|e| e.starts_with("HTTP:")), "{errors:?}");
    Ok(())
}

#[test]
fn an_http2_protocol_error_ends_only_its_connection() -> Result<()> {
    require_root();
    let (_pki, server, d) = plain_fixture("127.0.0.3", &[])?;
    let r = py_at(&d, "h2error", &server, &[])?;
    ensure!(
        r["frame_types"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t == 7)),
        "expected a GOAWAY: {r}"
    );
    ensure_body(&curl_h2c_hello(&d, &server)?, "hello over HTTP/2.0")?;
    let errors = failure_errors(&d, "client_error", 1)?;
    ensure!(errors[0].starts_with("HTTP:"), "{errors:?}");
    Ok(())
}

#[test]
fn concurrent_tls_connections_each_get_their_own_session() -> Result<()> {
    require_root();
    let (_pki, server, d) = https_fixture("127.0.0.2", &[])?;
    let r = py_client(&d, &["parallel", &server.url("/hello"), "40"])?;
    let statuses = r["statuses"].as_array().cloned().unwrap_or_default();
    ensure!(
        statuses.len() == 40 && statuses.iter().all(|s| s == 200),
        "{r}"
    );
    ensure!(
        r["bodies"] == serde_json::json!(["hello over HTTP/1.1"]),
        "{r}"
    );
    let sessions = d.wait_for_matching(|s| s.outcome == "closed", 40, SESSIONS)?;
    ensure!(sessions.len() == 40, "{}", sessions.len());
    let all = sessions_json(&d)?;
    ensure!(
        all.iter().all(|s| exchanges(s).len() == 1),
        "every session has its one exchange"
    );
    Ok(())
}

#[test]
fn a_client_that_refuses_the_minted_certificate_is_recorded_as_such() -> Result<()> {
    require_root();
    let (pki, server, d) = https_fixture("127.0.0.2", &[])?;
    // A pinned client: it trusts only the server's own CA (curl also reads its built-in
    // CA directory, which exec's trust covers: point it at an empty one).
    let ca = pki.ca_file.to_str().unwrap();
    let empty = tempfile::tempdir()?;
    let capath = empty.path().to_str().unwrap();
    let out = exec(
        &d,
        &[
            "curl",
            "-sS",
            "--cacert",
            ca,
            "--capath",
            capath,
            &server.url("/hello"),
        ],
    )?;
    ensure!(
        !out.status.success(),
        "curl accepted the minted certificate"
    );
    ensure_ended_with(
        &d,
        server.addr.port(),
        "client_tls_error",
        &["client handshake", "UnknownCA"],
    )?;
    Ok(())
}

#[test]
fn ca_install_and_uninstall_change_the_trust_store_inside_a_private_namespace() -> Result<()> {
    require_root();
    let (_pki, server, d) = https_fixture("127.0.0.2", &[])?;
    let cg = TestCgroup::new(None)?;
    d.enroll([cg.path().as_os_str(), "--include-loopback".as_ref()])?;
    let bundle = std::path::Path::new("/etc/ssl/certs/ca-certificates.crt");
    let host_bundle = std::fs::read(bundle)?;
    let work = tempfile::tempdir()?;
    let ca = d.data_dir().join("tls/ca.pem");
    let script = scripts_dir().join("ca_trust.sh");
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh"])
        .arg(&script)
        .arg(work.path())
        .arg(interceptor_bin())
        .arg(d.socket())
        .arg(server.url("/hello"))
        .arg(&ca);
    let out = run_with_timeout(in_cgroup(&mut cmd, cg.path())?, RUN)?;
    let text = stdout(&out);
    ensure!(
        out.status.success(),
        "ca_trust.sh: {text}\n{}",
        stderr(&out)
    );
    let steps: Vec<&str> = text.lines().filter(|l| l.contains(" curl=")).collect();
    // curl 60: the peer's certificate was not trusted; openssl 2: verification failed.
    ensure!(
        steps
            == [
                "before curl=60 openssl=2",
                "installed curl=0 openssl=0",
                "removed curl=60 openssl=2",
            ],
        "trust inside the namespace: {text}\n{}",
        stderr(&out)
    );
    ensure!(
        text.contains("installed /usr/local/share/ca-certificates/interceptor-ca.crt"),
        "{text}"
    );
    // The host's store never saw any of it.
    ensure!(
        std::fs::read(bundle)? == host_bundle,
        "the host bundle changed"
    );
    ensure!(
        !std::path::Path::new("/usr/local/share/ca-certificates/interceptor-ca.crt").exists(),
        "the CA was installed on the host"
    );
    Ok(())
}
