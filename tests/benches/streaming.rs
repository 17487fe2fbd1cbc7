//! Streaming latency benchmark (issue 17): a server streams an OpenAI-style chat completion,
//! 400 content deltas 25 ms apart, and the client notes when each event arrives; per-event
//! delay (arrival minus the moment the server sent it, one clock for both processes) p50 /
//! p99 / max and time to first token, direct versus a minimal TLS-terminating proxy versus
//! interceptor (masking with the shipped rules), in one run. Three workloads: no secret, a
//! secret in one delta every 50 deltas, and a secret split across three deltas every 50.
//! Written to `docs/benchmarks.md`.
//!
//! Run (as root): `cargo xtask bench streaming` (builds the release daemon, then runs this).
//! The same binary is the client: `streaming client ADDR ROOTS PATH` (HTTP/1.1 over rustls +
//! hyper), started directly, against the minimal proxy, and under `interceptor exec`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use interceptor_tests::Daemon;
use interceptor_tests::bench_report::run_client;
use interceptor_tests::floor::{Sender, client_config, https_connect, tls_proxy};
use interceptor_tests::https::{TestPki, intercepting_daemon};
use interceptor_tests::llm_wire::Api;
use interceptor_tests::planted::masked;
use interceptor_tests::streaming::{StreamServer, monotonic_ns};
use serde::{Deserialize, Serialize};
use serde_json::Value;

const SERVER_IP: &str = "127.0.0.2";
const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
const DELTAS: usize = 400;
const PAUSE: Duration = Duration::from_millis(25);
const RUNS: usize = 2;
/// Every this many deltas, one carries (or starts) a secret.
const SECRET_EVERY: usize = 50;
/// The shipped `aws.access-key-id` rule's example key.
const SECRET: &str = "AKIAPTGZ6JFEBZSDOXRL";
/// An event that waited at least this long counts as held back.
const HELD: u64 = 5_000_000;

/// What the client saw of one streamed answer.
#[derive(Serialize, Deserialize)]
struct Seen {
    /// When the client started (before connecting), CLOCK_MONOTONIC ns.
    start: u64,
    /// When each event was complete at the client.
    arrivals: Vec<u64>,
    /// The answer's text as assembled.
    text: String,
}

#[derive(Clone, Copy)]
enum Workload {
    Clean,
    Whole,
    Split,
}

impl Workload {
    fn label(self) -> &'static str {
        match self {
            Workload::Clean => "no secret",
            Workload::Whole => "a secret in one delta every 50",
            Workload::Split => "a secret across 3 deltas every 50",
        }
    }

    /// The content deltas: prose, with the workload's secrets.
    fn deltas(self) -> Vec<String> {
        const WORDS: [&str; 16] = [
            " The", " build", " failed", " because", " the", " cache", " key", " changed", ";",
            " rerun", " it", " with", " a", " clean", " tree", ".",
        ];
        let mut deltas: Vec<String> = (0..DELTAS)
            .map(|i| WORDS[i % WORDS.len()].to_owned())
            .collect();
        for at in (SECRET_EVERY / 2..DELTAS).step_by(SECRET_EVERY) {
            match self {
                Workload::Clean => {}
                Workload::Whole => deltas[at] = format!(" {SECRET}"),
                Workload::Split => {
                    deltas[at] = format!(" {}", &SECRET[..6]);
                    deltas[at + 1] = SECRET[6..13].to_owned();
                    deltas[at + 2] = SECRET[13..].to_owned();
                }
            }
        }
        deltas
    }
}

/// Which way the client goes.
enum Path<'a> {
    Direct(&'a str),
    Floor(&'a str, SocketAddr),
    Interceptor(&'a Daemon),
}

impl Path<'_> {
    fn label(&self) -> &'static str {
        match self {
            Path::Direct(_) => "direct",
            Path::Floor(..) => "minimal proxy",
            Path::Interceptor(_) => "interceptor",
        }
    }
}

/// Per-event delays and times to first token of a path's runs.
#[derive(Default)]
struct Measured {
    delays: Vec<u64>,
    ttft: Vec<u64>,
    /// Secrets planted, and those the client got masked exactly (kept prefix, then `*`).
    planted: usize,
    masked: usize,
}

impl Measured {
    fn at(&self, q: f64) -> f64 {
        let mut v = self.delays.clone();
        v.sort_unstable();
        v[((v.len() - 1) as f64 * q) as usize] as f64 / 1e6
    }

    fn ttft_ms(&self) -> f64 {
        let mut v = self.ttft.clone();
        v.sort_unstable();
        v[v.len() / 2] as f64 / 1e6
    }

    fn held(&self) -> usize {
        self.delays.iter().filter(|&&d| d >= HELD).count()
    }
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("client") => client(args[2].parse()?, &args[3], &args[4]),
        // `cargo bench` passes `--bench`; anything else is the benchmark proper.
        _ => bench(),
    }
}

fn bench() -> Result<()> {
    interceptor_tests::bench_report::prepare("streaming")?;
    let pki = TestPki::new("bench upstream CA")?;
    let server = StreamServer::start(SERVER_IP, &pki)?;
    let ca = pki.ca_file.to_str().context("utf-8")?.to_owned();
    let rules = interceptor_tests::workspace_root().join("policies/rules");
    let daemon = intercepting_daemon(&pki, &["--rules", rules.to_str().context("utf-8")?])?;
    let floor = tls_proxy(
        pki.server_config(&["127.0.0.1"])?,
        client_config(&ca)?,
        server.server.addr,
    )?;
    let me = std::env::current_exe()?;
    let paths = [
        Path::Direct(&ca),
        Path::Floor(&ca, floor),
        Path::Interceptor(&daemon),
    ];
    let mut rows = Vec::new();
    for workload in [Workload::Clean, Workload::Whole, Workload::Split] {
        let mut measured: Vec<Measured> = paths.iter().map(|_| Measured::default()).collect();
        for _ in 0..RUNS {
            for (path, m) in paths.iter().zip(&mut measured) {
                run(&me, &server, path, workload, m)?;
            }
        }
        rows.push((workload, measured));
    }
    let report = report(&paths, &rows);
    println!("{report}");
    interceptor_tests::bench_report::write_section("streaming", &report)?;
    drop(daemon);
    Ok(())
}

/// One streamed answer over `path`; adds its delays and time to first token to `m`.
fn run(
    me: &std::path::Path,
    server: &StreamServer,
    path: &Path<'_>,
    workload: Workload,
    m: &mut Measured,
) -> Result<()> {
    let mut built = Api::OpenAiChat.stream(&workload.deltas(), &[]);
    let sent = Arc::new(Mutex::new(Vec::new()));
    built.reply.pause = PAUSE;
    built.reply.sent = Some(sent.clone());
    let base = server.add(built.reply.clone());
    let route = format!(
        "{}/v1/chat/completions",
        &base[base.rfind('/').unwrap_or(0)..]
    );
    let (roots, addr) = match path {
        Path::Direct(ca) => (ca.to_string(), server.server.addr),
        Path::Floor(ca, floor) => (ca.to_string(), *floor),
        Path::Interceptor(_) => (SYSTEM_BUNDLE.to_owned(), server.server.addr),
    };
    let program = [
        me.as_os_str().to_owned(),
        "client".into(),
        addr.to_string().into(),
        roots.into(),
        route.into(),
    ];
    let through = match path {
        Path::Interceptor(d) => Some(*d),
        _ => None,
    };
    let out = run_client(through, &program, &format!("via {}", path.label()))?;
    let seen: Seen = serde_json::from_slice(&out)?;
    let sent = sent.lock().unwrap().clone();
    if seen.arrivals.len() != sent.len() {
        bail!(
            "via {}: {} events sent, {} arrived",
            path.label(),
            sent.len(),
            seen.arrivals.len()
        );
    }
    for &at in &built.text_at {
        m.delays.push(seen.arrivals[at].saturating_sub(sent[at]));
    }
    m.ttft.push(seen.arrivals[built.text_at[0]] - seen.start);
    if !matches!(workload, Workload::Clean) {
        m.planted += DELTAS.div_ceil(SECRET_EVERY);
        m.masked += seen.text.matches(&masked(SECRET)).count();
    }
    Ok(())
}

fn report(paths: &[Path<'_>], rows: &[(Workload, Vec<Measured>)]) -> String {
    let mut report = format!(
        "## Streaming: per-event delay of a streamed LLM answer (issue 17)\n\n\
         Command: `cargo xtask bench streaming` (release build; {RUNS} runs per path and \
         workload, their events pooled). A hyper + rustls server on {SERVER_IP} streams an \
         OpenAI chat completion (`text/event-stream`): {DELTAS} content deltas {} ms apart, \
         one frame each. The client (HTTP/1.1, rustls + hyper) notes when each event is \
         complete; an event's delay is its arrival minus the moment the server handed it to \
         its connection (one clock for both processes). Time to first token runs from before \
         the client connects to the first content delta (the server sends it {} ms after the \
         headers). \"interceptor\" runs the client under `interceptor exec --include-loopback` \
         with masking on (the shipped rules); \"minimal proxy\" is rustls + hyper on both \
         sides and nothing else. Held: events that waited {} ms or more.\n\n\
         | workload | path | time to first token (median) | per-event delay p50 | p99 | max | held | secrets masked in what the client got |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- |\n",
        PAUSE.as_millis(),
        PAUSE.as_millis(),
        HELD / 1_000_000,
    );
    for (workload, measured) in rows {
        for (path, m) in paths.iter().zip(measured) {
            let masked = if matches!(workload, Workload::Clean) {
                "-".to_owned()
            } else {
                format!("{} of {}", m.masked, m.planted)
            };
            report.push_str(&format!(
                "| {} | {} | {:.1} ms | {:.2} ms | {:.2} ms | {:.1} ms | {} of {} | {masked} |\n",
                workload.label(),
                path.label(),
                m.ttft_ms(),
                m.at(0.50),
                m.at(0.99),
                m.at(1.0),
                m.held(),
                m.delays.len(),
            ));
        }
    }
    report.push_str("\nAgainst the targets (interceptor's p50 within 1 ms of the minimal proxy's, p99 under 30 ms):\n\n");
    for (workload, measured) in rows {
        let (floor, through) = (&measured[1], &measured[2]);
        report.push_str(&format!(
            "* {}: p50 {:+.2} ms over the minimal proxy, p99 {:.2} ms.\n",
            workload.label(),
            through.at(0.50) - floor.at(0.50),
            through.at(0.99),
        ));
    }
    report.push_str(
        "\nClient, server and proxy share the machine's 2 cores with other work, so the \
         numbers move between runs.\n",
    );
    report
}

// ---------------------------------------------------------------------------------------------
// client

fn client(addr: SocketAddr, roots: &str, path: &str) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let seen = rt.block_on(async {
        let start = monotonic_ns();
        let mut sender: Sender<Full<Bytes>> =
            https_connect(addr, client_config(roots)?, None).await?;
        let body = r#"{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"Why did the build fail?"}]}"#;
        let req = hyper::Request::post(path)
            .header("host", addr.to_string())
            .header("content-type", "application/json")
            .header("accept", "text/event-stream")
            .body(Full::new(Bytes::from_static(body.as_bytes())))?;
        let mut body = sender.send_request(req).await?.into_body();
        let (mut buf, mut arrivals, mut text) = (Vec::new(), Vec::new(), String::new());
        while let Some(frame) = body.frame().await {
            let now = monotonic_ns();
            let Ok(data) = frame?.into_data() else {
                continue;
            };
            buf.extend_from_slice(&data);
            while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
                let event: Vec<u8> = buf.drain(..end + 2).collect();
                arrivals.push(now);
                let data = String::from_utf8_lossy(&event);
                let json = data.trim().strip_prefix("data: ").unwrap_or_default();
                if let Ok(v) = serde_json::from_str::<Value>(json)
                    && let Some(t) = v["choices"][0]["delta"]["content"].as_str()
                {
                    text.push_str(t);
                }
            }
        }
        Ok::<_, anyhow::Error>(Seen {
            start,
            arrivals,
            text,
        })
    })?;
    println!("{}", serde_json::to_string(&seen)?);
    Ok(())
}
