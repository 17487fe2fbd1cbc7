//! The daemon at its limits. Its open-files limit is lowered (prlimit on its pid: the hard
//! limit of the machine is far more than a test should open) so that a few hundred
//! connections reach it: connections past its capacity are reset at once and counted,
//! `status` still answers, and the log stays short. Then, with no descriptor left at all
//! (the limit under what it has open), the control socket and the metrics endpoint still
//! answer on their reserve descriptors and new connections are still reset, not left to
//! hang.

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use interceptor_tests::*;
use serde_json::Value;

/// The soft limit for the first part: room for (600 - 300) / 2 = 150 connections.
const LOW_LIMIT: u64 = 600;
/// More connections than fit under [`LOW_LIMIT`].
const OPENED: usize = 200;
/// Under what the daemon holds open once [`OPENED`] connections are in: no descriptor left.
const EXHAUSTED_LIMIT: u64 = 40;
/// How long a control request, a scrape or one connection's echo may take.
const ANSWER: Duration = Duration::from_secs(5);
/// Warning lines the whole test may leave in the log (it used to be millions).
const MAX_WARNINGS: usize = 20;

/// The daemon's soft RLIMIT_NOFILE, set for the test and put back on drop.
struct SoftLimit {
    pid: libc::pid_t,
    old: libc::rlimit,
}

impl SoftLimit {
    fn lower(pid: u32, soft: u64) -> Result<SoftLimit> {
        let pid = pid as libc::pid_t;
        let mut old = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: a null new limit only reads the current one into `old`.
        let rc = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, std::ptr::null(), &mut old) };
        ensure!(rc == 0, "prlimit: {}", std::io::Error::last_os_error());
        let limit = SoftLimit { pid, old };
        limit.set(soft)?;
        Ok(limit)
    }

    fn set(&self, soft: u64) -> Result<()> {
        let new = libc::rlimit {
            rlim_cur: soft,
            rlim_max: self.old.rlim_max,
        };
        // SAFETY: `new` is a valid rlimit; no old value is asked for.
        let rc =
            unsafe { libc::prlimit(self.pid, libc::RLIMIT_NOFILE, &new, std::ptr::null_mut()) };
        ensure!(rc == 0, "prlimit: {}", std::io::Error::last_os_error());
        Ok(())
    }
}

impl Drop for SoftLimit {
    fn drop(&mut self) {
        // SAFETY: `old` is the limit read before.
        unsafe {
            libc::prlimit(
                self.pid,
                libc::RLIMIT_NOFILE,
                &self.old,
                std::ptr::null_mut(),
            )
        };
    }
}

/// `client.py hold` in the enrolled cgroup: its report, and the connections it keeps open
/// until dropped.
struct Holder {
    child: Child,
    report: ClientReport,
}

impl Holder {
    fn open(cg: &TestCgroup, server: &Server, conns: usize) -> Result<Holder> {
        let args = [
            "--connect".to_string(),
            server.addr(),
            "--conns".into(),
            conns.to_string(),
            "--wait".into(),
            ANSWER.as_secs().to_string(),
        ];
        let mut cmd: Command = client_command("hold", &args);
        in_cgroup(&mut cmd, cg.path())?;
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child.stdout.take().context("stdout")?;
        let report = first_line(stdout, Duration::from_secs(120)).and_then(|line| {
            serde_json::from_str(&line).with_context(|| format!("client report: {line}"))
        });
        match report {
            Ok(report) => Ok(Holder { child, report }),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(e)
            }
        }
    }

    /// (echoed, reset) connections; fails on any other outcome (a hang, an EOF).
    fn outcomes(&self) -> Result<(usize, usize)> {
        let (mut echoed, mut reset) = (0, 0);
        for r in &self.report.results {
            match &r.error {
                None if r.received == 5 => echoed += 1,
                Some(e) if matches!(e.errno, Some(libc::ECONNRESET | libc::EPIPE)) => reset += 1,
                _ => anyhow::bail!("connection neither echoed nor reset: {r:?}"),
            }
        }
        Ok((echoed, reset))
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        // Closing stdin lets the client close its connections and exit.
        drop(self.child.stdin.take());
        if self.child.wait().is_err() {
            let _ = self.child.kill();
        }
    }
}

/// The first line `out` prints, within `timeout`.
fn first_line(out: ChildStdout, timeout: Duration) -> Result<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let read = BufReader::new(out).read_line(&mut line).map(|_| line);
        let _ = tx.send(read);
    });
    Ok(rx
        .recv_timeout(timeout)
        .context("no report from the client")??)
}

/// `status --json`, which must answer within [`ANSWER`].
fn status(d: &Daemon) -> Result<Value> {
    let started = Instant::now();
    let out = run_with_timeout(&mut d.cli_command(["status", "--json"]), ANSWER)?;
    ensure!(
        out.status.success(),
        "status failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        started.elapsed() < ANSWER,
        "status took {:?}",
        started.elapsed()
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn refused(status: &Value) -> u64 {
    status["counts"]["drops"]["connections_refused"]
        .as_u64()
        .unwrap_or(0)
}

/// The metrics page, which must come within [`ANSWER`].
fn scrape(addr: &str) -> Result<String> {
    let url = format!("http://{addr}/metrics");
    let secs = ANSWER.as_secs().to_string();
    let out = run_ok(
        Command::new("curl").args(["-sS", "--max-time", &secs, &url]),
        ANSWER * 2,
    )?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn at_its_descriptor_limit_the_daemon_resets_what_does_not_fit_and_still_answers() -> Result<()> {
    require_root();
    let server = Server::echo("127.0.0.2")?;
    let d = Daemon::start_with(&["--metrics-addr", "127.0.0.1:0"])?;
    let metrics = status(&d)?["metrics_addr"]
        .as_str()
        .context("metrics address")?
        .to_owned();
    let cg = TestCgroup::new(None)?;
    d.enroll([cg.path().as_os_str(), "--include-loopback".as_ref()])?;
    let limit = SoftLimit::lower(d.pid().context("daemon pid")?, LOW_LIMIT)?;

    // Past the capacity the limit leaves room for, connections are reset at once.
    let held = Holder::open(&cg, &server, OPENED)?;
    let (echoed, reset) = held.outcomes()?;
    ensure!(
        echoed >= 100 && reset >= 30,
        "{echoed} echoed, {reset} reset of {OPENED}"
    );
    let first = status(&d)?;
    ensure!(refused(&first) >= reset as u64, "{first:#}");

    // No descriptor left: the control socket (several times) and the metrics endpoint
    // answer on their reserves, and new connections are still reset.
    limit.set(EXHAUSTED_LIMIT)?;
    for _ in 0..3 {
        status(&d)?;
    }
    let extra = Holder::open(&cg, &server, 20)?;
    let (echoed, reset) = extra.outcomes()?;
    ensure!(echoed == 0 && reset == 20, "{echoed} echoed, {reset} reset");
    let second = status(&d)?;
    ensure!(
        refused(&second) >= refused(&first) + 20,
        "refusals {} then {}",
        refused(&first),
        refused(&second)
    );
    let page = scrape(&metrics)?;
    ensure!(
        page.lines()
            .any(|l| l == format!("interceptor_connections_refused_total {}", refused(&second))),
        "{page}"
    );
    drop(limit);
    drop((held, extra));

    let log = d.log();
    let warnings: Vec<&str> = log.lines().filter(|l| l.contains(" WARN ")).collect();
    ensure!(
        warnings.len() <= MAX_WARNINGS,
        "{} warning lines:\n{}",
        warnings.len(),
        warnings
            .iter()
            .take(MAX_WARNINGS * 2)
            .copied()
            .collect::<Vec<_>>()
            .join("\n")
    );
    // The same daemon carries on as before.
    let after = Holder::open(&cg, &server, 3)?;
    ensure!(after.outcomes()? == (3, 0), "{:?}", after.report.results);
    Ok(())
}
