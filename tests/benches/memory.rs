//! Memory benchmark: the daemon's resident memory per idle connection, beside the minimal
//! forwarders' (`floor.rs`) measured in the same run, written to `docs/benchmarks.md`.
//!
//! Run (as root): `cargo xtask bench memory` (builds the release daemon, then runs this).
//! For each kind of connection, a client process opens 1,000 connections, does one exchange
//! on each (so each is fully set up) and leaves them idle; a second client adds 4,000 more.
//! The proxy's VmRSS is read before and at each step, once it has settled. The same binary is
//! the client (`memory client tcp|tls ADDR N [ROOTS]`, run under `interceptor exec` for the
//! daemon) and the floor proxies (`memory floor ...`, each in its own process so its RSS is
//! its own). Clients, servers and proxies are separate processes: 5,000 proxied connections
//! cost a proxy 10,000 descriptors.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use interceptor_tests::Daemon;
use interceptor_tests::floor::{client_config, get, https_connect, tcp_forwarder, tls_proxy};
use interceptor_tests::https::{HttpsServer, TestPki, intercept_all_policy};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SERVER_IP: &str = "127.0.0.2";
const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// Connections open at each measurement: the first step, then the total.
const STEPS: [usize; 2] = [1000, 5000];
/// Connections a client sets up at once (the listen backlog must hold them).
const BATCH: usize = 100;
/// Per-connection budget (issue 15.10), MiB per 1,000 idle connections.
const TARGET_MIB: f64 = 48.0;
/// Longer than the bench: the daemon closes HTTP connections idle for this long.
const HEADER_TIMEOUT: &str = "1h";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("client") => client(&args[2], args[3].parse()?, args[4].parse()?, args.get(5)),
        Some("floor") => floor(&args[2..]),
        // `cargo bench` passes `--bench`; anything else is the benchmark proper.
        _ => bench(),
    }
}

/// One row of the report: per-1,000 figures at each step, floor and daemon.
struct Row {
    label: &'static str,
    floor: Vec<f64>,
    daemon: Vec<f64>,
}

fn bench() -> Result<()> {
    interceptor_tests::bench_report::prepare("memory")?;
    raise_fd_limit()?;
    let echo = echo_server(SERVER_IP)?;
    let pki = TestPki::new("bench upstream CA")?;
    let https = HttpsServer::start(SERVER_IP, pki.server_config(&[SERVER_IP])?)?;
    let ca = pki.ca_file.to_str().context("CA path")?.to_owned();
    let me = std::env::current_exe()?;
    let root = interceptor_tests::workspace_root();
    let rules = root.join("policies/rules");
    let rules = rules.to_str().context("rules path")?;
    let shipped = root.join("policies/default.toml");
    let shipped = shipped.to_str().context("policy path")?;
    let intercept = intercept_all_policy();
    let intercept = intercept.to_str().context("policy path")?;

    let tcp_floor = {
        let (floor, addr) = start_floor(&me, &["tcp", &echo.to_string()])?;
        measure(floor.pid(), |n| {
            start_client(None, &me, "tcp", addr, n, None)
        })?
    };
    let tls_floor = {
        let (cert, key) = pki.server_pem(&["127.0.0.1"])?;
        let args = [
            "tls",
            &https.addr.to_string(),
            &ca,
            cert.to_str().context("cert path")?,
            key.to_str().context("key path")?,
        ];
        let (floor, addr) = start_floor(&me, &args)?;
        measure(floor.pid(), |n| {
            start_client(None, &me, "tls", addr, n, Some(&ca))
        })?
    };
    let through = |daemon_args: &[&str], kind: &str, addr: SocketAddr, roots: Option<&str>| {
        let daemon = Daemon::start_with(daemon_args)?;
        let pid = daemon.pid().context("daemon pid")?;
        measure(pid, |n| {
            start_client(Some(&daemon), &me, kind, addr, n, roots)
        })
    };
    let rows = [
        Row {
            label: "raw TCP, spliced (no secret rules)",
            floor: tcp_floor.clone(),
            daemon: through(&[], "tcp", echo, None)?,
        },
        Row {
            label: "raw TCP, scanned for secrets (shipped policy, `--rules policies/rules`)",
            floor: tcp_floor,
            daemon: through(&["--policy", shipped, "--rules", rules], "tcp", echo, None)?,
        },
        Row {
            label: "HTTPS keep-alive (TLS re-terminated, HTTP/1.1, secret rules)",
            floor: tls_floor,
            daemon: through(
                &[
                    "--upstream-ca",
                    &ca,
                    "--policy",
                    intercept,
                    "--rules",
                    rules,
                    "--header-timeout",
                    HEADER_TIMEOUT,
                ],
                "tls",
                https.addr,
                Some(SYSTEM_BUNDLE),
            )?,
        },
    ];
    let report = render(&rows);
    println!("{report}");
    interceptor_tests::bench_report::write_section("memory", &report)?;
    Ok(())
}

fn render(rows: &[Row]) -> String {
    let mut report = format!(
        "## Memory per idle connection (issue 15.10)\n\n\
         Command: `cargo xtask bench memory` (release build). A client process opens \
         {} connections through the proxy, does one exchange on each (raw TCP: one byte echoed \
         by a server on {SERVER_IP}; HTTPS: one GET on a kept-alive HTTP/1.1 connection to a \
         hyper + rustls server on {SERVER_IP}) and leaves them open and idle; a second client \
         then adds {} more. Figures are the proxy process's VmRSS growth over its RSS before \
         the first connection, per 1,000 open connections, in MiB, read once RSS has settled. \
         \"minimal proxy\" is the floor any userspace proxy pays here, built from the same \
         crates and run in its own process: for raw TCP a tokio forwarder (accept, dial, \
         `copy_bidirectional`), for HTTPS rustls + hyper on both sides (the same floors as the \
         redirect and https benchmarks). The daemon runs under `interceptor exec \
         --include-loopback` with the arguments the row names. Target: at most \
         {TARGET_MIB:.0} MiB per 1,000 idle connections of either kind.\n\n\
         | connections | minimal proxy @ {a} | interceptor @ {a} | minimal proxy @ {b} | interceptor @ {b} | interceptor ÷ minimal proxy @ {b} |\n\
         | --- | --- | --- | --- | --- | --- |\n",
        STEPS[0],
        STEPS[1] - STEPS[0],
        a = STEPS[0],
        b = STEPS[1],
    );
    for row in rows {
        let last = STEPS.len() - 1;
        report.push_str(&format!(
            "| {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1}x |\n",
            row.label,
            row.floor[0],
            row.daemon[0],
            row.floor[last],
            row.daemon[last],
            row.daemon[last] / row.floor[last],
        ));
    }
    report.push_str(
        "\nThe machine has 2 cores and other work on it; RSS moves by a few MiB between runs \
         (allocator arenas, when the kernel reclaims pages).\n",
    );
    report
}

/// MiB of VmRSS growth per 1,000 connections of `pid` at each of [`STEPS`], the clients
/// started by `start(n)` keeping theirs open until all steps are measured.
fn measure(pid: u32, start: impl Fn(usize) -> Result<Helper>) -> Result<Vec<f64>> {
    let before = settled_rss(pid)?;
    let (mut clients, mut open, mut per_thousand) = (Vec::new(), 0, Vec::new());
    for step in STEPS {
        clients.push(start(step - open)?);
        open = step;
        let grown = settled_rss(pid)?.saturating_sub(before);
        per_thousand.push(grown as f64 / 1024.0 / (open as f64 / 1000.0));
        eprintln!(
            "pid {pid}: {open} connections, RSS {} MiB over {} MiB",
            grown / 1024,
            before / 1024
        );
    }
    for client in clients {
        client.finish()?;
    }
    Ok(per_thousand)
}

/// VmRSS of `pid` in KiB once two reads half a second apart agree within 1%.
fn settled_rss(pid: u32) -> Result<u64> {
    let mut last = rss_kib(pid)?;
    interceptor_tests::poll(
        "the proxy's RSS to settle",
        Duration::from_secs(60),
        Duration::from_millis(500),
        || {
            let now = rss_kib(pid)?;
            let settled = now.abs_diff(last) * 100 <= last;
            last = now;
            Ok(settled.then_some(now))
        },
    )
}

fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .context("no VmRSS line")?;
    Ok(line.trim().trim_end_matches("kB").trim().parse()?)
}

/// 5,000 proxied connections need 10,000 descriptors in the proxy; the soft limit is often
/// 1,024. The daemon and every client inherit this.
fn raise_fd_limit() -> Result<()> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    let need = 2 * STEPS[STEPS.len() - 1] as u64 + 1000;
    if hard < need {
        bail!("the fd hard limit {hard} is below the {need} this benchmark needs");
    }
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    Ok(())
}

/// A helper process (this binary: a client, a floor proxy): says one line once it is ready,
/// runs until its stdin closes; killed on Drop if it still runs.
struct Helper {
    child: Child,
    said: String,
}

impl Helper {
    fn start(mut cmd: Command) -> Result<Helper> {
        let child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting a helper process")?;
        let mut helper = Helper {
            child,
            said: String::new(),
        };
        let stdout = helper.child.stdout.as_mut().context("helper stdout")?;
        BufReader::new(stdout).read_line(&mut helper.said)?;
        Ok(helper)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Closes its stdin (it then exits, closing its connections) and waits for it.
    fn finish(mut self) -> Result<()> {
        drop(self.child.stdin.take());
        let status = self.child.wait()?;
        if !status.success() {
            bail!("helper exited with {status}");
        }
        Ok(())
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A client process of `addr` holding its connections open, through `daemon` (under
/// `interceptor exec`) when given; returns once every connection is set up and idle.
fn start_client(
    daemon: Option<&Daemon>,
    me: &Path,
    kind: &str,
    addr: SocketAddr,
    n: usize,
    roots: Option<&str>,
) -> Result<Helper> {
    let mut program = vec![
        me.display().to_string(),
        "client".into(),
        kind.into(),
        addr.to_string(),
        n.to_string(),
    ];
    program.extend(roots.map(str::to_owned));
    let client = Helper::start(match daemon {
        Some(d) => d.exec_command(&["--include-loopback"], &program),
        None => {
            let mut cmd = Command::new(&program[0]);
            cmd.args(&program[1..]);
            cmd
        }
    })?;
    if client.said.trim() != "ready" {
        bail!(
            "the client did not get its connections set up (said {:?})",
            client.said
        );
    }
    Ok(client)
}

/// The client: opens `n` connections to `addr`, does one exchange on each, says "ready" and
/// keeps them open until its stdin closes.
fn client(kind: &str, addr: SocketAddr, n: usize, roots: Option<&String>) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let tls = match kind {
            "tcp" => None,
            "tls" => Some(client_config(roots.context("tls needs ROOTS")?)?),
            other => bail!("unknown client kind {other}"),
        };
        let mut open = Vec::with_capacity(n);
        while open.len() < n {
            let mut batch = tokio::task::JoinSet::new();
            for _ in 0..BATCH.min(n - open.len()) {
                let tls = tls.clone();
                batch.spawn(async move { connect_once(addr, tls).await });
            }
            while let Some(conn) = batch.join_next().await {
                open.push(conn??);
            }
        }
        println!("ready");
        std::io::stdout().flush()?;
        // EOF on stdin: the bench has measured.
        let mut stdin = tokio::io::stdin();
        let mut sink = Vec::new();
        stdin.read_to_end(&mut sink).await?;
        drop(open);
        Ok(())
    })
}

/// What keeps one idle connection open on the client: its stream, or its HTTP sender.
type Open = Box<dyn std::any::Any + Send>;

async fn connect_once(addr: SocketAddr, tls: Option<Arc<rustls::ClientConfig>>) -> Result<Open> {
    match tls {
        None => {
            let mut s = tokio::net::TcpStream::connect(addr).await?;
            s.write_all(b"x").await?;
            let mut b = [0u8; 1];
            s.read_exact(&mut b).await?;
            Ok(Box::new(s))
        }
        Some(config) => {
            let mut sender = https_connect(addr, config, None).await?;
            let got = get(&mut sender, addr, "/hello").await?;
            if got == 0 {
                bail!("empty response");
            }
            Ok(Box::new(sender))
        }
    }
}

/// A floor proxy in its own process (so its RSS is its own), and its address.
fn start_floor(me: &Path, args: &[&str]) -> Result<(Helper, SocketAddr)> {
    let mut cmd = Command::new(me);
    cmd.arg("floor").args(args);
    let floor = Helper::start(cmd)?;
    let addr = (floor.said.trim().parse())
        .with_context(|| format!("floor proxy said {:?}", floor.said))?;
    Ok((floor, addr))
}

/// `floor tcp TO` or `floor tls UPSTREAM CA CERT KEY`.
fn floor(args: &[String]) -> Result<()> {
    let addr = match args.first().map(String::as_str) {
        Some("tcp") => tcp_forwarder(args[1].parse()?)?,
        Some("tls") => {
            let chain = CertificateDer::pem_file_iter(&args[3])?.collect::<Result<Vec<_>, _>>()?;
            let key = PrivateKeyDer::from_pem_file(&args[4])?;
            let server = rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
            tls_proxy(Arc::new(server), client_config(&args[2])?, args[1].parse()?)?
        }
        other => bail!("unknown floor {other:?}"),
    };
    println!("{addr}");
    std::io::stdout().flush()?;
    std::io::copy(&mut std::io::stdin(), &mut std::io::sink())?;
    Ok(())
}

/// Echoes whatever comes, on `ip`:0, on a runtime of its own.
fn echo_server(ip: &str) -> Result<SocketAddr> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let listener = runtime.block_on(tokio::net::TcpListener::bind((ip, 0)))?;
    let addr = listener.local_addr()?;
    std::thread::spawn(move || {
        runtime.block_on(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut rx, mut tx) = s.split();
                    let _ = tokio::io::copy(&mut rx, &mut tx).await;
                });
            }
        })
    });
    Ok(addr)
}
