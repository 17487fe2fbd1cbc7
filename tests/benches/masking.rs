//! Masked-throughput benchmark: large HTTPS responses (JSON log lines, no secrets, written
//! plainly and with escaped URLs and URL-encoded queries) through
//! interceptor with secret masking on (the shipped rules, every one masking) and off (a
//! policy rule with `secrets_mask = []`), in the same run, against the same daemon; the
//! direct download is shown for scale. Written to `docs/benchmarks.md`.
//!
//! Run (as root): `cargo xtask bench masking` (builds the release daemon, then runs this).
//! The client is curl (HTTP/1.1), under `interceptor exec` for the proxied runs.

use std::process::Command;

use anyhow::{Context, Result, bail};
use interceptor_tests::https::{HttpsServer, PLANTED_SECRET, TestPki};
use interceptor_tests::{Daemon, workspace_root};

/// The daemon masks traffic to this server with every rule ...
const MASKED_IP: &str = "127.0.0.2";
/// ... and scans nothing on its way to this one (the policy's `bench-unmasked` rule).
const UNMASKED_IP: &str = "127.0.0.3";
const RUNS: usize = 5;
/// (payload, server route): log lines as most encoders write them, and with escapes.
const PAYLOADS: [(&str, &str); 2] = [
    ("JSON logs, unescaped", "ndjson"),
    ("JSON logs, `\\/` and `%20` escapes", "text"),
];
/// Bytes per download (env `MASKING_BENCH_MIB` overrides).
const DEFAULT_MIB: usize = 1024;

const POLICY: &str = r#"[settings]
tls = "intercept"
record_body_bytes = 0

[[rule]]
name = "bench-unmasked"
action = "allow"
[rule.match]
cidr = ["127.0.0.3/32"]
[rule.settings]
secrets_mask = []

[default]
action = "allow"
"#;

fn main() -> Result<()> {
    interceptor_tests::bench_report::prepare("masking")?;
    let mib: usize = match std::env::var("MASKING_BENCH_MIB") {
        Ok(v) => v.parse().context("MASKING_BENCH_MIB")?,
        Err(_) => DEFAULT_MIB,
    };
    let size = mib << 20;
    let pki = TestPki::new("bench upstream CA")?;
    let config = pki.server_config(&[MASKED_IP, UNMASKED_IP])?;
    let masked = HttpsServer::start(MASKED_IP, config.clone())?;
    let unmasked = HttpsServer::start(UNMASKED_IP, config)?;
    let dir = tempfile::tempdir()?;
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, POLICY)?;
    let (ca, rules) = (
        pki.ca_file.to_str().unwrap(),
        workspace_root().join("policies/rules"),
    );
    let daemon = Daemon::start_with(&[
        "--upstream-ca",
        ca,
        "--rules",
        rules.to_str().unwrap(),
        "--policy",
        policy.to_str().unwrap(),
    ])?;
    // The two paths really differ: a planted secret is masked on one, not on the other.
    for (server, masks) in [(&masked, true), (&unmasked, false)] {
        let body = fetch(Some(&daemon), ca, &server.url("/planted-secret"), &[])?;
        if body.contains(PLANTED_SECRET) == masks {
            bail!(
                "{}: masking should be {}: {body}",
                server.addr,
                if masks { "on" } else { "off" }
            );
        }
    }
    let mut rows = String::new();
    for (payload, route) in PAYLOADS {
        let path = format!("/{route}/{size}");
        let (mut direct, mut on, mut off) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..RUNS {
            direct.push(download(None, ca, &masked.url(&path), size)?);
            off.push(download(Some(&daemon), ca, &unmasked.url(&path), size)?);
            on.push(download(Some(&daemon), ca, &masked.url(&path), size)?);
        }
        let (direct, on, off) = (median(direct), median(on), median(off));
        let mb = |bps: f64| format!("{:.0} MB/s", bps / 1e6);
        rows += &format!(
            "| {payload} | {} | {} | {} | **{:.0}%** |\n",
            mb(direct),
            mb(off),
            mb(on),
            100.0 * on / off
        );
    }
    let report = format!(
        "## Masking: proxy throughput with secret masking on and off (issue 4)\n\n\
         Command: `cargo xtask bench masking` (release build; {RUNS} alternating runs each, \
         median shown). curl downloads {mib} MiB of JSON log lines (no secrets) over HTTPS \
         (HTTP/1.1) from a hyper + rustls server. Through interceptor, TLS is re-terminated \
         and the response streams through the HTTP layer; \"masking on\" scans it with every \
         shipped rule (stream mode, escape-tolerant, masking), \"masking off\" goes to a server \
         that a policy rule with `secrets_mask = []` covers (nothing scanned). Both use the \
         same daemon, with `record_body_bytes = 0`. Two payloads: lines as Go, Python or \
         serde write them (`https://...`, `q=red+shoes`), and the same lines with \
         `\\/`-escaped URLs (as PHP writes them) and `%20`-encoded queries, which the \
         rules' escape-tolerant forms take.\n\n\
         | payload | direct (no proxy) | masking off | masking on | on ÷ off |\n\
         | --- | --- | --- | --- | --- |\n\
         {rows}\n\
         Target: masking on keeps at least 75% of the throughput with masking off. Client, \
         server and proxy share the machine's 2 cores, so the numbers move between runs.\n",
    );
    println!("{report}");
    interceptor_tests::bench_report::write_section("masking", &report)?;
    drop(daemon);
    Ok(())
}

/// One download to /dev/null; bytes per second.
fn download(through: Option<&Daemon>, ca: &str, url: &str, size: usize) -> Result<f64> {
    let args = [
        "-o",
        "/dev/null",
        "-w",
        "%{size_download} %{speed_download}",
    ];
    let text = fetch(through, ca, url, &args)?;
    let (got, speed) = text.split_once(' ').context("curl's -w output")?;
    if got.parse::<usize>()? != size {
        bail!("{url}: got {got} bytes, expected {size}");
    }
    Ok(speed.trim().parse()?)
}

/// curl's output for `url` (directly, trusting the test CA, or under `interceptor exec`,
/// trusting the system bundle exec extends).
fn fetch(through: Option<&Daemon>, ca: &str, url: &str, args: &[&str]) -> Result<String> {
    let mut curl = vec!["curl", "-sS", "--http1.1"];
    curl.extend_from_slice(args);
    let mut cmd = match through {
        Some(d) => {
            curl.push(url);
            d.exec_command(&["--include-loopback"], &curl)
        }
        None => {
            curl.extend(["--cacert", ca, url]);
            let mut c = Command::new(curl[0]);
            c.args(&curl[1..]);
            c
        }
    };
    let out = cmd.output()?;
    if !out.status.success() {
        bail!("curl {url}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn median(mut runs: Vec<f64>) -> f64 {
    runs.sort_by(f64::total_cmp);
    runs[runs.len() / 2]
}
