//! `interceptor status` counters and the Prometheus endpoint (`run --metrics-addr`), moved by
//! real traffic: curl under `interceptor exec` to an HTTPS server (a secret each way), a host
//! the policy denies, a kernel deny list, an upstream that refuses. Run as root.

use std::collections::HashMap;
use std::process::Output;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use interceptor_tests::https::{HttpsServer, PLANTED_SECRET, TestPki, policy_daemon};
use interceptor_tests::*;
use serde_json::Value;

const RUN: Duration = Duration::from_secs(60);
const SESSIONS: Duration = Duration::from_secs(30);
/// Matches the shipped `aws.access-key-id` rule.
const BODY_SECRET: &str = "AKIAQYLPMN5HHHFPZAM2";

/// Everything allowed and decrypted, except TLS to `blocked.test`.
const POLICY: &str = r#"
[settings]
tls = "intercept"

[[rule]]
name = "blocked-host"
action = "deny"
reason = "not for tests"
[rule.match]
host = ["blocked.test"]

[default]
action = "allow"
"#;

struct Setup {
    d: Daemon,
    server: HttpsServer,
    metrics_port: u16,
    _policy: PolicyFile,
}

fn setup() -> Result<Setup> {
    let pki = TestPki::new("observability test CA")?;
    let server = HttpsServer::start(
        "127.0.0.2",
        pki.server_config(&["api.test", "blocked.test"])?,
    )?;
    let policy = PolicyFile::new(POLICY)?;
    let rules = workspace_root().join("policies/rules");
    let d = policy_daemon(
        &pki,
        policy.path(),
        &[
            "--rules",
            rules.to_str().context("utf-8")?,
            "--metrics-addr",
            "127.0.0.1:0",
        ],
    )?;
    let metrics_port = (d.status()?.metrics_addr)
        .context("status names no metrics address")?
        .port();
    Ok(Setup {
        d,
        server,
        metrics_port,
        _policy: policy,
    })
}

/// curl under `interceptor exec --include-loopback EXTRA…`, resolving `host` to the server.
fn curl(s: &Setup, extra: &[&str], host: &str, path: &str, args: &[&str]) -> Result<Output> {
    let port = s.server.addr.port();
    let resolve = format!("{host}:{port}:127.0.0.2");
    let url = format!("https://{host}:{port}{path}");
    let mut exec_args = vec!["--include-loopback"];
    exec_args.extend_from_slice(extra);
    let mut argv = vec!["curl", "-sS", "--resolve", &resolve];
    argv.extend_from_slice(args);
    argv.push(&url);
    run_with_timeout(&mut s.d.exec_command(&exec_args, &argv), RUN)
}

/// Five sessions: two HTTPS exchanges (a secret up in a body, one down in a response), a
/// host the policy denies, a destination on the kernel deny list, a port nobody listens on.
fn traffic(s: &Setup) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let body = dir.path().join("body.json");
    std::fs::write(&body, format!("{{\"key\": \"{BODY_SECRET}\"}}"))?;
    let data = format!("@{}", body.display());
    let echoed = curl(s, &[], "api.test", "/echo", &["--data-binary", &data])?;
    ensure!(echoed.status.success(), "echo: {echoed:?}");
    ensure!(
        !String::from_utf8_lossy(&echoed.stdout).contains(BODY_SECRET),
        "the secret went through unmasked"
    );
    let leaked = curl(s, &[], "api.test", "/planted-secret", &[])?;
    let text = String::from_utf8_lossy(&leaked.stdout);
    ensure!(
        leaked.status.success() && !text.contains(PLANTED_SECRET),
        "planted secret: {leaked:?}"
    );
    let blocked = curl(s, &[], "blocked.test", "/hello", &[])?;
    ensure!(!blocked.status.success(), "the denied host answered");
    let denied = run_with_timeout(
        &mut s.d.exec_command(
            &["--include-loopback", "--deny", "127.0.0.5/32"],
            &["curl", "-sS", "http://127.0.0.5:9/"],
        ),
        RUN,
    )?;
    ensure!(
        !denied.status.success(),
        "a kernel-denied connect succeeded"
    );
    let (_fd, port) = closed_port("127.0.0.2")?;
    let refused = run_with_timeout(
        &mut s.d.exec_command(
            &["--include-loopback"],
            &["curl", "-sS", &format!("http://127.0.0.2:{port}/")],
        ),
        RUN,
    )?;
    ensure!(!refused.status.success(), "a closed port answered");
    s.d.wait_for_sessions(
        |all| all.len() == 5 && all.iter().all(|x| x.outcome != "open"),
        SESSIONS,
    )?;
    Ok(())
}

#[test]
fn status_counts_sessions_findings_and_drops() -> Result<()> {
    require_root();
    let s = setup()?;
    let before: Value = s.d.cli_json(["status", "--json"])?;
    ensure!(
        before["counts"]["sessions_total"] == 0,
        "counts before any traffic: {before:#}"
    );
    traffic(&s)?;
    let status: Value = s.d.cli_json(["status", "--json"])?;
    let c = &status["counts"];
    let expect = [
        ("/sessions_total", 5),
        ("/findings/total", 2),
        ("/findings/up", 1),
        ("/findings/down", 1),
        ("/drops/kernel_denials", 1),
        ("/drops/proxy_denials", 1),
        ("/drops/upstream_failures", 1),
        ("/ended/denied", 2),
        ("/ended/closed", 2),
        ("/ended/upstream_refused", 1),
        ("/http_exchanges", 2),
        ("/approvals/held", 0),
        ("/tailers", 0),
    ];
    for (at, want) in expect {
        ensure!(
            c.pointer(at) == Some(&Value::from(want)),
            "counts{at}: want {want} in {c:#}"
        );
    }
    let human = s.d.cli_ok(["status"])?;
    for line in [
        "sessions: 5 total, 0 live; ended: closed 2, denied 2, upstream_refused 1",
        "secret findings: 2 (up 1, down 1)",
        "approvals: 0 held; 0 requested, 0 approved, 0 denied, 0 expired",
        "drops: 1 kernel denials, 1 proxy denials, 1 upstream failures, 0 client errors, 0 refused (no room), 0 records lost",
    ] {
        ensure!(human.contains(line), "{line:?} not in:\n{human}");
    }
    Ok(())
}

/// The page's samples: `name{labels}` → value.
fn scrape(port: u16, path: &str) -> Result<(String, String)> {
    let out = run_ok(
        std::process::Command::new("curl").args([
            "-sS",
            "-w",
            "\n%{http_code} %{content_type}",
            &format!("http://127.0.0.1:{port}{path}"),
        ]),
        RUN,
    )?;
    let text = String::from_utf8(out.stdout)?;
    let (page, status) = text.rsplit_once('\n').context("no status line")?;
    Ok((page.to_owned(), status.to_owned()))
}

fn samples(page: &str) -> Result<HashMap<String, f64>> {
    page.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (name, value) = l.rsplit_once(' ').context(l.to_owned())?;
            Ok((name.to_owned(), value.parse::<f64>().context(l.to_owned())?))
        })
        .collect()
}

/// A histogram's buckets are cumulative, end at +Inf with the count, and its sum is > 0.
fn check_histogram(all: &HashMap<String, f64>, name: &str, count: f64) -> Result<()> {
    let got = |k: &str| all.get(k).copied().with_context(|| format!("no {k}"));
    ensure!(
        got(&format!("{name}_count"))? == count,
        "{name}_count: want {count}"
    );
    ensure!(got(&format!("{name}_sum"))? > 0.0, "{name}_sum is 0");
    let mut buckets: Vec<(f64, f64)> = all
        .iter()
        .filter_map(|(k, v)| {
            let le = k.strip_prefix(&format!("{name}_bucket{{le=\""))?;
            let le = le.trim_end_matches("\"}");
            Some((
                if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                },
                *v,
            ))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    ensure!(buckets.len() > 5, "{name}: buckets {buckets:?}");
    ensure!(
        buckets.windows(2).all(|w| w[0].1 <= w[1].1),
        "{name}: not cumulative {buckets:?}"
    );
    ensure!(
        buckets.last() == Some(&(f64::INFINITY, count)),
        "{name}: +Inf bucket {buckets:?}"
    );
    Ok(())
}

#[test]
fn prometheus_endpoint_serves_the_counters_and_latency_histograms() -> Result<()> {
    require_root();
    let s = setup()?;
    traffic(&s)?;
    let (page, status) = scrape(s.metrics_port, "/metrics")?;
    ensure!(
        status.starts_with("200 application/openmetrics-text"),
        "status {status}"
    );
    ensure!(page.trim_end().ends_with("# EOF"), "no EOF marker:\n{page}");
    let all = samples(&page)?;
    let expect = [
        ("interceptor_sessions_total", 5.0),
        ("interceptor_kernel_denials_total", 1.0),
        ("interceptor_secret_findings_total{direction=\"up\"}", 1.0),
        ("interceptor_secret_findings_total{direction=\"down\"}", 1.0),
        ("interceptor_sessions_ended_total{outcome=\"denied\"}", 2.0),
        (
            "interceptor_sessions_ended_total{outcome=\"upstream_refused\"}",
            1.0,
        ),
        ("interceptor_http_exchanges_total", 2.0),
        ("interceptor_approvals_held", 0.0),
        ("interceptor_live_sessions", 0.0),
        ("interceptor_enrollments", 0.0),
    ];
    for (name, want) in expect {
        ensure!(
            all.get(name) == Some(&want),
            "{name}: want {want}, got {:?}\n{page}",
            all.get(name)
        );
    }
    ensure!(
        all["interceptor_store_records_total"] >= 10.0,
        "store records: {page}"
    );
    // Dialled upstream: both exchanges' connections; not the denied host's (host rules are
    // decided before the dial), the kernel-denied or the refused one.
    check_histogram(&all, "interceptor_connection_setup_seconds", 2.0)?;
    check_histogram(&all, "interceptor_http_request_duration_seconds", 2.0)?;
    let (_, status) = scrape(s.metrics_port, "/other")?;
    ensure!(status.starts_with("404"), "status {status}");
    Ok(())
}

#[test]
fn metrics_endpoint_refuses_a_non_loopback_address() -> Result<()> {
    require_root();
    let addr = "0.0.0.0:0";
    let err = match Daemon::start_with(&["--metrics-addr", addr]) {
        Ok(_) => anyhow::bail!("the daemon started with --metrics-addr {addr}"),
        Err(e) => format!("{e:#}"),
    };
    ensure!(
        err.contains("not a loopback address") && err.contains("--metrics-allow-remote"),
        "{err}"
    );
    Ok(())
}
