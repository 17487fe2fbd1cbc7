//! Redirect benchmark: bulk throughput and connect + first-byte latency through interceptor
//! versus a direct loopback connection, measured in the same run, written to
//! `docs/benchmarks.md`.
//!
//! Run (as root): `cargo xtask bench` (builds the release daemon, then runs this).
//! The same binary is the client: `redirect client bulk|latency ADDR`, started once directly
//! and once under `interceptor exec`, so both paths run identical code.
//!
//! A third path gives the floor any userspace proxy pays on this machine: a minimal tokio
//! forwarder (accept, dial, `copy_bidirectional`; no identity, policy or recording) that the
//! client connects to explicitly. What interceptor adds beyond it is what interceptor costs.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use interceptor_tests::Daemon;
use interceptor_tests::floor::tcp_forwarder;
use serde::{Deserialize, Serialize};

const BULK_BYTES: u64 = 4 << 30;
const LATENCY_ROUNDS: usize = 3000;
const WARMUP_ROUNDS: usize = 200;
const RUNS: usize = 3;
const SERVER_IP: &str = "127.0.0.2";

#[derive(Serialize, Deserialize, Debug, Clone, Copy)]
struct Measured {
    /// Bytes per second, workload → server.
    throughput: f64,
    p50_us: f64,
    p99_us: f64,
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("client") => client(&args[2], args[3].parse()?),
        // `cargo bench` passes `--bench`; anything else is the benchmark proper.
        _ => bench(),
    }
}

fn bench() -> Result<()> {
    interceptor_tests::bench_report::prepare("redirect")?;
    let bulk = serve(SERVER_IP, bulk_sink)?;
    let echo = serve(SERVER_IP, first_byte_echo)?;
    let floor = (tcp_forwarder(bulk)?, tcp_forwarder(echo)?);
    let daemon = Daemon::start()?;
    let me = std::env::current_exe()?;

    let (mut direct, mut forwarded, mut through) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..RUNS {
        direct.push(run_client(None, &me, bulk, echo)?);
        forwarded.push(run_client(None, &me, floor.0, floor.1)?);
        through.push(run_client(Some(&daemon), &me, bulk, echo)?);
    }
    let (d, f, t) = (median(&direct), median(&forwarded), median(&through));
    let row = |metric: &str, unit: &str, get: fn(&Measured) -> f64, vs: &str| {
        format!(
            "| {metric} | {:.1} {unit} | {:.1} {unit} | {:.1} {unit} | {vs} |\n",
            get(&d),
            get(&f),
            get(&t)
        )
    };
    let gbps = |m: &Measured| m.throughput / 1e9;
    let report = format!(
        "## Redirect: relay throughput and connection set-up (issue 2)\n\n\
         Command: `cargo xtask bench redirect` (release build; {RUNS} alternating runs each, median \
         shown). Client and server are the same binary on one host; the server listens on \
         {SERVER_IP}. \"through interceptor\" runs the client under `interceptor exec \
         --include-loopback`; \"plain forwarder\" is the floor of any userspace proxy here: a \
         minimal tokio forwarder (accept, dial, `copy_bidirectional`, nothing else) the client \
         connects to explicitly.\n\n\
         | metric | direct | plain forwarder | through interceptor | interceptor vs direct (target) · vs forwarder |\n\
         | --- | --- | --- | --- | --- |\n\
         {}{}{}",
        row(
            &format!("bulk throughput ({} GiB upload)", BULK_BYTES >> 30),
            "GB/s",
            gbps,
            &format!(
                "{:.0}% (≥ 80%) · {:.0}%",
                100.0 * t.throughput / d.throughput,
                100.0 * t.throughput / f.throughput
            ),
        ),
        row(
            "connect + first byte, p50",
            "µs",
            |m| m.p50_us,
            &format!(
                "+{:.1} µs (< 100 µs) · +{:.1} µs",
                t.p50_us - d.p50_us,
                t.p50_us - f.p50_us
            ),
        ),
        row(
            "connect + first byte, p99",
            "µs",
            |m| m.p99_us,
            &format!(
                "+{:.1} µs · +{:.1} µs",
                t.p99_us - d.p99_us,
                t.p99_us - f.p99_us
            ),
        ),
    );
    println!("{report}");
    interceptor_tests::bench_report::write_section("redirect", &report)?;
    drop(daemon);
    Ok(())
}

fn run_client(
    daemon: Option<&Daemon>,
    me: &std::path::Path,
    bulk: SocketAddr,
    echo: SocketAddr,
) -> Result<Measured> {
    let measure = |mode: &str, addr: SocketAddr| -> Result<Measured> {
        let program = [
            me.as_os_str().to_owned(),
            "client".into(),
            mode.into(),
            addr.to_string().into(),
        ];
        let out = interceptor_tests::bench_report::run_client(daemon, &program, mode)?;
        Ok(serde_json::from_slice(&out)?)
    };
    let b = measure("bulk", bulk)?;
    let l = measure("latency", echo)?;
    Ok(Measured {
        throughput: b.throughput,
        p50_us: l.p50_us,
        p99_us: l.p99_us,
    })
}

fn median(runs: &[Measured]) -> Measured {
    let pick = |f: fn(&Measured) -> f64| {
        let mut v: Vec<f64> = runs.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    Measured {
        throughput: pick(|m| m.throughput),
        p50_us: pick(|m| m.p50_us),
        p99_us: pick(|m| m.p99_us),
    }
}

fn client(mode: &str, addr: SocketAddr) -> Result<()> {
    let measured = match mode {
        "bulk" => {
            let mut s = TcpStream::connect(addr)?;
            let chunk = vec![0u8; 256 << 10];
            let start = Instant::now();
            let mut sent = 0u64;
            while sent < BULK_BYTES {
                s.write_all(&chunk)?;
                sent += chunk.len() as u64;
            }
            s.shutdown(Shutdown::Write)?;
            let mut ack = [0u8; 8];
            s.read_exact(&mut ack)?;
            if u64::from_le_bytes(ack) != sent {
                bail!(
                    "server received {} of {sent} bytes",
                    u64::from_le_bytes(ack)
                );
            }
            Measured {
                throughput: sent as f64 / start.elapsed().as_secs_f64(),
                p50_us: 0.0,
                p99_us: 0.0,
            }
        }
        "latency" => {
            let mut samples = Vec::with_capacity(LATENCY_ROUNDS);
            for round in 0..WARMUP_ROUNDS + LATENCY_ROUNDS {
                let start = Instant::now();
                let mut s = TcpStream::connect(addr)?;
                s.set_nodelay(true)?;
                s.write_all(b"x")?;
                let mut b = [0u8; 1];
                s.read_exact(&mut b)?;
                let took = start.elapsed();
                if round >= WARMUP_ROUNDS {
                    samples.push(took);
                }
            }
            samples.sort();
            let at =
                |q: f64| samples[((samples.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e6;
            Measured {
                throughput: 0.0,
                p50_us: at(0.50),
                p99_us: at(0.99),
            }
        }
        other => bail!("unknown client mode {other}"),
    };
    println!("{}", serde_json::to_string(&measured)?);
    Ok(())
}

/// Accepts forever on `ip`:0, one thread per connection.
fn serve(ip: &str, handler: fn(TcpStream) -> std::io::Result<()>) -> Result<SocketAddr> {
    let listener = TcpListener::bind((ip, 0))?;
    let addr = listener.local_addr()?;
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let _ = handler(stream);
            });
        }
    });
    Ok(addr)
}

fn bulk_sink(mut s: TcpStream) -> std::io::Result<()> {
    let mut buf = vec![0u8; 256 << 10];
    let mut total = 0u64;
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    s.write_all(&total.to_le_bytes())
}

fn first_byte_echo(mut s: TcpStream) -> std::io::Result<()> {
    s.set_nodelay(true)?;
    let mut b = [0u8; 1];
    s.read_exact(&mut b)?;
    s.write_all(&b)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let _ = s.read(&mut b);
    Ok(())
}
