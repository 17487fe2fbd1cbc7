//! TLS re-termination and the HTTP layer, end to end: the real daemon and kernel hooks, real
//! clients (curl, python, openssl) under `interceptor exec`, HTTPS servers on 127.0.0.2+
//! with their own test CA (trusted by the daemon through `--upstream-ca`, never by the
//! client, which trusts interceptor's CA only through exec's private trust bundle).

use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{Result, ensure};
use interceptor_tests::https::{HttpsServer, TestPki};
use interceptor_tests::*;
use serde_json::Value;

const RUN: Duration = Duration::from_secs(60);
const SESSIONS: Duration = Duration::from_secs(30);

/// A daemon that trusts `pki` for upstreams, plus `extra` run arguments.
fn daemon(pki: &TestPki, extra: &[&str]) -> Result<Daemon> {
    let ca = pki.ca_file.to_str().unwrap().to_owned();
    let mut args = vec!["--upstream-ca", ca.as_str()];
    args.extend_from_slice(extra);
    Daemon::start_with(&args)
}

/// Runs `program` under `interceptor exec --include-loopback`.
fn exec(d: &Daemon, program: &[&str]) -> Result<Output> {
    run_with_timeout(&mut d.exec_command(&["--include-loopback"], program), RUN)
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Sessions as JSON (the harness model knows only the issue-2 fields).
fn sessions_json(d: &Daemon) -> Result<Vec<Value>> {
    d.cli_json(["sessions", "list", "--json"])
}

/// Waits for a finished session to `port` and returns it.
fn ended_session(d: &Daemon, port: u16) -> Result<Value> {
    let suffix = format!(":{port}");
    d.wait_for_matching(
        |s| s.destination.ends_with(&suffix) && s.outcome != "open",
        1,
        SESSIONS,
    )?;
    let all = sessions_json(d)?;
    all.into_iter()
        .rev()
        .find(|s| {
            s["destination"]
                .as_str()
                .is_some_and(|x| x.ends_with(&suffix))
        })
        .ok_or_else(|| anyhow::anyhow!("session vanished"))
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
    ensure!(
        stdout(&out) == "hello over HTTP/1.1",
        "body: {}",
        stdout(&out)
    );
    ensure!(
        stderr(&out).contains("O=interceptor"),
        "curl did not see interceptor's certificate:\n{}",
        stderr(&out)
    );
    let s = ended_session(&d, server.addr.port())?;
    ensure!(s["outcome"] == "closed", "session: {s:#}");
    ensure!(s["tls"]["mode"] == "terminated", "session: {s:#}");
    ensure!(s["tls"]["sni"].is_null(), "session: {s:#}");

    // By name (SNI), over HTTP/2.
    let resolve = format!("api.test:{}:127.0.0.2", server.addr.port());
    let url = format!("https://api.test:{}/hello", server.addr.port());
    let out = exec(&d, &["curl", "-sS", "--http2", "--resolve", &resolve, &url])?;
    ensure!(out.status.success(), "curl failed: {}", stderr(&out));
    ensure!(
        stdout(&out) == "hello over HTTP/2.0",
        "body: {}",
        stdout(&out)
    );
    let s = ended_session(&d, server.addr.port())?;
    ensure!(s["tls"]["sni"] == "api.test", "session: {s:#}");
    ensure!(s["tls"]["alpn"] == "h2", "session: {s:#}");

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
