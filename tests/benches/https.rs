//! HTTPS benchmark: requests per second and p50 / p99 latency of HTTPS keep-alive requests
//! (small and 1 MiB bodies) and of new TLS connections, direct versus through interceptor
//! (TLS re-terminated, every request parsed and recorded), measured in the same run and
//! written to `docs/benchmarks.md`.
//!
//! Run (as root): `cargo xtask bench https` (builds the release daemon, then runs this).
//! The same binary is the client: `https client MODE ADDR ROOTS N`, started once directly
//! (trusting the test server's CA) and once under `interceptor exec` (trusting the system
//! bundle, which exec extends with interceptor's CA), so both paths run identical code.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use interceptor_tests::Daemon;
use interceptor_tests::https::{HttpsServer, TestPki};
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;

const SERVER_IP: &str = "127.0.0.2";
const RUNS: usize = 3;
const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
const BIG: usize = 1 << 20;

/// (mode, requests per run): small keep-alive, 1 MiB keep-alive, new connection per request.
const MODES: [(&str, usize); 3] = [("small", 5000), ("big", 300), ("connect", 500)];

#[derive(Serialize, Deserialize, Debug, Clone, Copy)]
struct Measured {
    rps: f64,
    p50_us: f64,
    p99_us: f64,
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("client") => client(&args[2], args[3].parse()?, &args[4], args[5].parse()?),
        // `cargo bench` passes `--bench`; anything else is the benchmark proper.
        _ => bench(),
    }
}

fn bench() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the https benchmark needs root (it loads eBPF programs)");
    }
    if std::env::var_os("INTERCEPTOR_BIN").is_none() {
        let release = interceptor_tests::workspace_root().join("target/release/interceptor");
        // SAFETY: single-threaded at this point.
        unsafe { std::env::set_var("INTERCEPTOR_BIN", &release) };
    }
    let pki = TestPki::new("bench upstream CA")?;
    let server = HttpsServer::start(SERVER_IP, pki.server_config(&[SERVER_IP])?)?;
    let ca = pki.ca_file.to_str().unwrap().to_owned();
    let daemon = Daemon::start_with(&["--upstream-ca", &ca])?;
    let me = std::env::current_exe()?;

    let mut rows = Vec::new();
    for (mode, n) in MODES {
        let (mut direct, mut through) = (Vec::new(), Vec::new());
        for _ in 0..RUNS {
            direct.push(run_client(None, &me, mode, server.addr, &ca, n)?);
            through.push(run_client(
                Some(&daemon),
                &me,
                mode,
                server.addr,
                SYSTEM_BUNDLE,
                n,
            )?);
        }
        rows.push((mode, n, median(&direct), median(&through)));
    }
    let label = |mode: &str| match mode {
        "small" => "keep-alive, small body (19 B)",
        "big" => "keep-alive, 1 MiB body",
        _ => "new TLS connection + 1 request",
    };
    let mut report = format!(
        "## HTTPS: TLS re-termination and HTTP parsing (issue 3)\n\n\
         Command: `cargo xtask bench https` (release build; {RUNS} alternating runs each, median \
         shown). One client connection issuing requests back to back (HTTP/1.1, rustls + hyper \
         client), against a hyper + rustls server on {SERVER_IP}. \"through interceptor\" runs \
         the same client under `interceptor exec --include-loopback`: the workload's TLS ends \
         in interceptor with a minted certificate, a second TLS connection goes to the server, \
         and every request is parsed and recorded.\n\n\
         | workload | direct req/s | through req/s | ratio | direct p50 / p99 | through p50 / p99 |\n\
         | --- | --- | --- | --- | --- | --- |\n"
    );
    for (mode, n, d, t) in &rows {
        report.push_str(&format!(
            "| {} ({n} requests) | {:.0} | {:.0} | {:.0}% | {:.0} / {:.0} µs | {:.0} / {:.0} µs |\n",
            label(mode),
            d.rps,
            t.rps,
            100.0 * t.rps / d.rps,
            d.p50_us,
            d.p99_us,
            t.p50_us,
            t.p99_us,
        ));
    }
    report.push_str(
        "\nTargets (issue 3): keep-alive throughput at least 70% of direct; a new connection \
         costs about one extra handshake (certificates are cached per name, so minting is not \
         in the steady state).\n",
    );
    println!("{report}");
    write_section(&report)?;
    drop(daemon);
    Ok(())
}

/// Replaces this benchmark's section of `docs/benchmarks.md`, keeping the others.
fn write_section(report: &str) -> Result<()> {
    const START: &str = "<!-- bench:https -->";
    const END: &str = "<!-- /bench:https -->";
    let path = interceptor_tests::workspace_root().join("docs/benchmarks.md");
    let old = std::fs::read_to_string(&path).unwrap_or_else(|_| "# Benchmarks\n\n".into());
    let section = format!("{START}\n{report}{END}");
    let new = match (old.find(START), old.find(END)) {
        (Some(a), Some(b)) => format!("{}{section}{}", &old[..a], &old[b + END.len()..]),
        _ => format!("{}\n{section}\n", old.trim_end()),
    };
    std::fs::write(&path, new).with_context(|| format!("writing {}", path.display()))
}

fn run_client(
    daemon: Option<&Daemon>,
    me: &std::path::Path,
    mode: &str,
    addr: SocketAddr,
    roots: &str,
    n: usize,
) -> Result<Measured> {
    let program = [
        me.as_os_str().to_owned(),
        "client".into(),
        mode.into(),
        addr.to_string().into(),
        roots.into(),
        n.to_string().into(),
    ];
    let mut cmd = match daemon {
        Some(d) => d.exec_command(&["--include-loopback"], &program),
        None => {
            let mut c = std::process::Command::new(&program[0]);
            c.args(&program[1..]);
            c
        }
    };
    let out = cmd.output()?;
    if !out.status.success() {
        bail!(
            "client {mode} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn median(runs: &[Measured]) -> Measured {
    let pick = |f: fn(&Measured) -> f64| {
        let mut v: Vec<f64> = runs.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    Measured {
        rps: pick(|m| m.rps),
        p50_us: pick(|m| m.p50_us),
        p99_us: pick(|m| m.p99_us),
    }
}

// ---------------------------------------------------------------------------------------------
// client

type Sender = http1::SendRequest<Empty<Bytes>>;

fn client(mode: &str, addr: SocketAddr, roots: &str, n: usize) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let measured = rt.block_on(async {
        let config = client_config(roots)?;
        let (path, expect) = match mode {
            "big" => (format!("/bytes/{BIG}"), BIG),
            _ => ("/hello".to_owned(), 19),
        };
        let warmup = n / 10;
        let mut samples = Vec::with_capacity(n);
        let started = Instant::now();
        let mut sender = None;
        let mut measured_from = started;
        for i in 0..warmup + n {
            if i == warmup {
                measured_from = Instant::now();
            }
            let t = Instant::now();
            if mode == "connect" || sender.is_none() {
                sender = Some(connect(addr, config.clone()).await?);
            }
            let got = get(sender.as_mut().unwrap(), addr, &path).await?;
            if got != expect {
                bail!("got {got} bytes, expected {expect}");
            }
            if i >= warmup {
                samples.push(t.elapsed());
            }
        }
        let total = measured_from.elapsed();
        samples.sort();
        let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e6;
        Ok::<_, anyhow::Error>(Measured {
            rps: n as f64 / total.as_secs_f64(),
            p50_us: at(0.50),
            p99_us: at(0.99),
        })
    })?;
    println!("{}", serde_json::to_string(&measured)?);
    Ok(())
}

fn client_config(roots: &str) -> Result<Arc<rustls::ClientConfig>> {
    let mut store = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(roots)? {
        // A system bundle has a few entries rustls cannot use; skipping them is what any
        // client does.
        let _ = store.add(cert?);
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(store)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

async fn connect(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> Result<Sender> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let tls = tokio_rustls::TlsConnector::from(config)
        .with_alpn(vec![b"http/1.1".to_vec()])
        .connect(ServerName::IpAddress(addr.ip().into()), tcp)
        .await
        .context("TLS handshake")?;
    let (sender, conn) = http1::handshake(TokioIo::new(tls)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

/// One GET; returns the body length.
async fn get(sender: &mut Sender, addr: SocketAddr, path: &str) -> Result<usize> {
    sender.ready().await?;
    let req = hyper::Request::get(path)
        .header("host", addr.to_string())
        .body(Empty::new())?;
    let resp = tokio::time::timeout(Duration::from_secs(30), sender.send_request(req)).await??;
    let body = resp.into_body().collect().await?.to_bytes();
    Ok(body.len())
}
