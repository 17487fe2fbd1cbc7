//! HTTPS benchmark: requests per second and p50 / p99 latency of HTTPS keep-alive requests
//! (small and 1 MiB bodies) and of new TLS connections, direct versus through interceptor
//! (TLS re-terminated, every request parsed and recorded) versus through mitmproxy (regular
//! proxy mode, when `mitmdump` is installed: `pip install mitmproxy`), measured in the same
//! run and written to `docs/benchmarks.md`.
//!
//! Run (as root): `cargo xtask bench https` (builds the release daemon, then runs this).
//! The same binary is the client: `https client MODE ADDR ROOTS N [PROXY]`, started directly
//! (trusting the test server's CA), under `interceptor exec` (trusting the system bundle,
//! which exec extends with interceptor's CA) and through mitmproxy (CONNECT, trusting
//! mitmproxy's CA), so every path runs identical code.
//!
//! A fourth path is the floor of any TLS-terminating proxy on this machine: a minimal one built
//! from the same crates (rustls + hyper both sides, one upstream connection per client
//! connection, no identity, policy, scanning or recording), which the client addresses directly.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use interceptor_tests::Daemon;
use interceptor_tests::floor::{client_config, get, https_connect, tls_proxy};
use interceptor_tests::https::{HttpsServer, TestPki, intercepting_daemon};
use serde::{Deserialize, Serialize};

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
        Some("client") => {
            let proxy = args.get(6).map(|p| p.parse()).transpose()?;
            client(
                &args[2],
                args[3].parse()?,
                &args[4],
                args[5].parse()?,
                proxy,
            )
        }
        // `cargo bench` passes `--bench`; anything else is the benchmark proper.
        _ => bench(),
    }
}

fn bench() -> Result<()> {
    interceptor_tests::bench_report::prepare("https")?;
    let pki = TestPki::new("bench upstream CA")?;
    let server = HttpsServer::start(SERVER_IP, pki.server_config(&[SERVER_IP])?)?;
    let ca = pki.ca_file.to_str().unwrap().to_owned();
    // The shipped default policy decrypts only the usual ports; the server's port is random.
    let daemon = intercepting_daemon(&pki, &[])?;
    let mitm = Mitmproxy::start(&pki.ca_file)?;
    let floor = tls_proxy(
        pki.server_config(&["127.0.0.1"])?,
        client_config(&ca)?,
        server.addr,
    )?;
    let me = std::env::current_exe()?;

    let mut rows = Vec::new();
    for (mode, n) in MODES {
        let (mut direct, mut floored, mut through, mut mitmed) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let client = Client {
            me: &me,
            mode,
            addr: server.addr,
            n,
        };
        for _ in 0..RUNS {
            direct.push(client.run(Path::Direct(&ca))?);
            floored.push(client.run(Path::Floor(&ca, floor))?);
            through.push(client.run(Path::Interceptor(&daemon))?);
            if let Some(m) = &mitm {
                mitmed.push(client.run(Path::Mitmproxy(m))?);
            }
        }
        let mitmed = (!mitmed.is_empty()).then(|| median(&mitmed));
        rows.push((
            mode,
            n,
            median(&direct),
            median(&floored),
            median(&through),
            mitmed,
        ));
    }
    let label = |mode: &str| match mode {
        "small" => "keep-alive, small body (19 B)",
        "big" => "keep-alive, 1 MiB body",
        _ => "new TLS connection + 1 request",
    };
    let mitm_version = mitm
        .as_ref()
        .map_or("(not installed: skipped)".to_owned(), |m| m.version.clone());
    let mut report = format!(
        "## HTTPS: TLS re-termination and HTTP parsing (issue 3)\n\n\
         Command: `cargo xtask bench https` (release build; {RUNS} alternating runs each, median \
         shown). One client connection issuing requests back to back (HTTP/1.1, rustls + hyper \
         client), against a hyper + rustls server on {SERVER_IP}. \"interceptor\" runs the same \
         client under `interceptor exec --include-loopback`: the workload's TLS ends in \
         interceptor with a minted certificate, a second TLS connection goes to the server, and \
         every request is parsed and recorded. \"mitmproxy\" is `mitmdump` {mitm_version} in \
         regular proxy mode (the client sends CONNECT), verifying the server against the same \
         test CA. \"minimal proxy\" is the floor of any TLS-terminating proxy here: rustls + \
         hyper on both sides and nothing else, addressed directly by the client.\n\n\
         | workload | direct req/s | minimal proxy req/s (% of direct) | interceptor req/s (% of direct · % of minimal) | mitmproxy req/s | interceptor ÷ mitmproxy | direct p50 / p99 | minimal proxy p50 / p99 | interceptor p50 / p99 | mitmproxy p50 / p99 |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n"
    );
    for (mode, n, d, f, t, m) in &rows {
        let (m_rps, times, m_lat) = match m {
            Some(m) => (
                format!("{:.0}", m.rps),
                format!("{:.1}x", t.rps / m.rps),
                format!("{:.0} / {:.0} µs", m.p50_us, m.p99_us),
            ),
            None => ("-".into(), "-".into(), "-".into()),
        };
        report.push_str(&format!(
            "| {} ({n} requests) | {:.0} | {:.0} ({:.0}%) | {:.0} ({:.0}% · {:.0}%) | {m_rps} | {times} | {:.0} / {:.0} µs | {:.0} / {:.0} µs | {:.0} / {:.0} µs | {m_lat} |\n",
            label(mode),
            d.rps,
            f.rps,
            100.0 * f.rps / d.rps,
            t.rps,
            100.0 * t.rps / d.rps,
            100.0 * t.rps / f.rps,
            d.p50_us,
            d.p99_us,
            f.p50_us,
            f.p99_us,
            t.p50_us,
            t.p99_us,
        ));
    }
    report.push_str(
        "\nTargets (issue 3): keep-alive throughput at least 70% of direct; at least 10x \
         mitmproxy's requests per second; a new connection costs about one extra handshake \
         (certificates are cached per name, so minting is not in the steady state). The \
         machine has 2 cores, shared with other work: client, server and proxy compete for \
         them, so the numbers move between runs.\n",
    );
    println!("{report}");
    interceptor_tests::bench_report::write_section("https", &report)?;
    drop(daemon);
    Ok(())
}

/// Which way the client's connections go.
enum Path<'a> {
    /// Straight to the server, trusting the test CA (this file).
    Direct(&'a str),
    /// To the minimal TLS-terminating proxy at this address, trusting the test CA.
    Floor(&'a str, SocketAddr),
    Interceptor(&'a Daemon),
    Mitmproxy(&'a Mitmproxy),
}

struct Client<'a> {
    me: &'a std::path::Path,
    mode: &'a str,
    addr: SocketAddr,
    n: usize,
}

impl Client<'_> {
    fn run(&self, path: Path<'_>) -> Result<Measured> {
        let (roots, addr) = match &path {
            Path::Direct(ca) => (ca.to_string(), self.addr),
            Path::Floor(ca, floor) => (ca.to_string(), *floor),
            Path::Interceptor(_) => (SYSTEM_BUNDLE.to_owned(), self.addr),
            Path::Mitmproxy(m) => (m.ca.display().to_string(), self.addr),
        };
        let mut program = vec![
            self.me.as_os_str().to_owned(),
            "client".into(),
            self.mode.into(),
            addr.to_string().into(),
            roots.into(),
            self.n.to_string().into(),
        ];
        if let Path::Mitmproxy(m) = &path {
            program.push(m.addr.to_string().into());
        }
        let via = match &path {
            Path::Direct(_) => "direct",
            Path::Floor(..) => "minimal proxy",
            Path::Interceptor(_) => "interceptor",
            Path::Mitmproxy(_) => "mitmproxy",
        };
        let through = match path {
            Path::Interceptor(d) => Some(d),
            _ => None,
        };
        let what = format!("{} via {via}", self.mode);
        let out = interceptor_tests::bench_report::run_client(through, &program, &what)?;
        Ok(serde_json::from_slice(&out)?)
    }
}

/// `mitmdump` in regular proxy mode, stopped (by pid) on Drop.
struct Mitmproxy {
    child: std::process::Child,
    addr: SocketAddr,
    ca: std::path::PathBuf,
    version: String,
    _confdir: tempfile::TempDir,
}

impl Mitmproxy {
    /// `None` when mitmdump is not installed.
    fn start(upstream_ca: &std::path::Path) -> Result<Option<Mitmproxy>> {
        let Ok(out) = std::process::Command::new("mitmdump")
            .arg("--version")
            .output()
        else {
            eprintln!("mitmdump not found (pip install mitmproxy): skipping the comparison");
            return Ok(None);
        };
        let version = String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .and_then(|l| l.split_whitespace().last())
            .unwrap_or("?")
            .to_owned();
        let confdir = tempfile::Builder::new()
            .prefix("bench-mitmproxy-")
            .tempdir()?;
        let port = interceptor_tests::free_port()?;
        let log = std::fs::File::create(confdir.path().join("mitmdump.log"))?;
        let child = std::process::Command::new("mitmdump")
            .args(["--listen-host", "127.0.0.1"])
            .args(["--listen-port", &port.to_string()])
            .args(["--set", &format!("confdir={}", confdir.path().display())])
            .args([
                "--set",
                &format!("ssl_verify_upstream_trusted_ca={}", upstream_ca.display()),
            ])
            .args(["--set", "flow_detail=0", "-q"])
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting mitmdump")?;
        let m = Mitmproxy {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            ca: confdir.path().join("mitmproxy-ca-cert.pem"),
            version,
            _confdir: confdir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !(m.ca.exists() && std::net::TcpStream::connect(m.addr).is_ok()) {
            if Instant::now() > deadline {
                bail!("mitmdump did not start listening on {}", m.addr);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(Some(m))
    }
}

impl Drop for Mitmproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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

fn client(
    mode: &str,
    addr: SocketAddr,
    roots: &str,
    n: usize,
    proxy: Option<SocketAddr>,
) -> Result<()> {
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
                sender = Some(https_connect(addr, config.clone(), proxy).await?);
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
