//! The restart gap: while the daemon is down (killed, or restarting) its kernel programs stay
//! attached to enrolled cgroups. A local user who binds the proxy port in that window must
//! receive none of the enrolled workloads' connections; they fail closed instead, and flow
//! through the daemon again once it is back. In the daemon's namespace and in a workload's.

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use interceptor_tests::*;
use serde::Deserialize;

/// Upper bound for one client run.
const RUN: Duration = Duration::from_secs(60);
/// Upper bound for a session to show up, or for the squatter to answer.
const WAIT: Duration = Duration::from_secs(30);
/// The `SO_MARK` the daemon puts on its sockets (`BYPASS_MARK` in the daemon): the squatter
/// tries it too.
const DAEMON_MARK: u32 = 0x696e_7463;

#[derive(Debug, Deserialize)]
struct Listening {
    uid: u32,
    /// Why setting the mark failed; None: it was set.
    mark: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Accepted {
    accepted: Vec<String>,
}

/// tests/scripts/squatter.py as another user, in `ns` (None: the host's namespace), on the
/// proxy port; killed by pid on drop.
struct Squatter {
    child: Reaped,
    lines: mpsc::Receiver<String>,
}

impl Squatter {
    fn start(user: &TestUser, ns: Option<&Netns>, port: u16) -> Result<(Squatter, Listening)> {
        let mut cmd = match ns {
            Some(ns) => ns.command("setpriv"),
            None => Command::new("setpriv"),
        };
        user.wrap(&mut cmd)
            .arg(python())
            .arg(scripts_dir().join("squatter.py"))
            .args([port.to_string(), DAEMON_MARK.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        let mut child = cmd.spawn().context("starting the squatter")?;
        let stdout = child.stdout.take().context("squatter stdout")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut squatter = Squatter {
            child: Reaped(child),
            lines,
        };
        let listening = squatter.next()?;
        Ok((squatter, listening))
    }

    fn next<T: serde::de::DeserializeOwned>(&mut self) -> Result<T> {
        let line = self
            .lines
            .recv_timeout(WAIT)
            .context("no answer from the squatter (its stderr is above)")?;
        serde_json::from_str(&line).with_context(|| format!("squatter said {line:?}"))
    }

    /// What reached its accept queues; it exits then.
    fn accepted(mut self) -> Result<Vec<String>> {
        use std::io::Write as _;
        let mut stdin = self.child.0.stdin.take().context("squatter stdin")?;
        stdin.write_all(b"report\n")?;
        let report: Accepted = self.next()?;
        self.child.0.wait()?;
        Ok(report.accepted)
    }
}

/// The test client's `connect` mode (send "ping\n", read to EOF) from `cgroup`, in `ns`,
/// started in the background: the receiver gets its output.
fn start_client(
    cgroup: &TestCgroup,
    ns: Option<&Netns>,
    targets: &[String],
) -> Result<mpsc::Receiver<Result<std::process::Output>>> {
    let args: Vec<String> = targets
        .iter()
        .flat_map(|t| ["--connect".to_string(), t.clone()])
        .collect();
    let mut cmd = match ns {
        Some(ns) => {
            let mut c = ns.command(python());
            c.args(&client_argv("connect", &args)[1..]);
            c
        }
        None => client_command("connect", &args),
    };
    in_cgroup(&mut cmd, cgroup.path())?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(run_with_timeout(&mut cmd, RUN));
    });
    Ok(rx)
}

fn client_report(out: Result<std::process::Output>) -> Result<ClientReport> {
    let out = out?;
    eprintln!(
        "client report: {}",
        String::from_utf8_lossy(&out.stdout).trim()
    );
    parse_report(&out)
}

fn connect_from(
    cgroup: &TestCgroup,
    ns: Option<&Netns>,
    targets: &[String],
) -> Result<ClientReport> {
    client_report(start_client(cgroup, ns, targets)?.recv()?)
}

fn nobody_else_gets_redirected_connections(ns: Option<&Netns>) -> Result<()> {
    require_root();
    let mut d = Daemon::start()?;
    // The "remote" server: 127.0.0.2 of the workload's own loopback.
    let srv = match ns {
        Some(ns) => Server::echo_in(ns, "127.0.0.2".parse()?)?,
        None => Server::echo("127.0.0.2")?,
    };
    let cg = TestCgroup::new(None)?;
    let mut enroll = vec![
        cg.path().as_os_str().to_owned(),
        "--include-loopback".into(),
    ];
    if let Some(ns) = ns {
        enroll.extend(["--netns".into(), ns.path().into_os_string()]);
    }
    d.enroll(&enroll)?;
    // IPv4, and an IPv6 socket dialling a v4-mapped address (connect6).
    let targets = [srv.addr(), format!("[::ffff:127.0.0.2]:{}", srv.port())];
    let port = d.proxy_port();

    d.kill()?;
    let user = TestUser::new("sq", &[])?;
    let (squatter, listening) = Squatter::start(&user, ns, port)?;
    ensure!(
        listening.uid == user.uid(),
        "squatter runs as {listening:?}"
    );
    ensure!(
        listening.mark.as_deref() == Some("EPERM"),
        "an unprivileged user could set the daemon's mark: {listening:?}"
    );

    let client = start_client(&cg, ns, &targets)?;
    // Refused connects end the client at once. One that reached the squatter waits for an
    // answer, so give it a moment to arrive, then ask the squatter (it closes what it got,
    // which ends the client).
    let early = client.recv_timeout(Duration::from_secs(5)).ok();
    let stolen = squatter.accepted()?;
    ensure!(
        stolen.is_empty(),
        "the other user's listener received redirected connections: {stolen:?}"
    );
    let during = client_report(match early {
        Some(out) => out,
        None => client.recv()?,
    })?;
    for r in &during.results {
        let e = r
            .error
            .as_ref()
            .with_context(|| format!("connected while the daemon was down: {r:?}"))?;
        ensure!(
            (e.stage.as_str(), e.errno) == ("connect", Some(libc::EPERM)),
            "expected connect() to fail with EPERM: {r:?}"
        );
    }
    ensure!(srv.records()?.is_empty(), "the server was reached directly");

    d.start_again()?;
    let st = d.status()?;
    ensure!(
        st.refused_no_proxy >= targets.len() as u64,
        "refusals not counted: {st:?}"
    );
    d.wait_for_log_line("no daemon listener was up", WAIT)?;
    let after = connect_from(&cg, ns, &targets)?;
    for r in &after.results {
        ensure!(
            r.error.is_none() && r.eof && r.received == 5,
            "no echo through the restarted daemon: {r:?}"
        );
    }
    d.wait_for_matching(|s| s.identity.pid == after.pid, targets.len(), WAIT)?;
    Ok(())
}

#[test]
fn restart_gap_host_netns() -> Result<()> {
    nobody_else_gets_redirected_connections(None)
}

#[test]
fn restart_gap_workload_netns() -> Result<()> {
    let ns = Netns::new()?;
    nobody_else_gets_redirected_connections(Some(&ns))
}
