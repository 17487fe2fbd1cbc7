//! Approvals end to end for raw TCP: a connection matching an approve rule is held before
//! anything is dialed; `interceptor approvals approve|deny` (as root, through the control
//! socket's peer credentials) lets it through or resets it; nobody deciding resets it after
//! the rule's timeout; the workload's own user and users outside the approvers cannot
//! decide; a grant (`--for`) lets the same workload through without waiting until revoked.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use interceptor_tests::https::TestPki;
use interceptor_tests::*;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);

const POLICY: &str = r#"
[[rule]]
name = "hold-seven"
action = "approve"
reason = "needs a person"
[rule.match]
cidr = ["127.0.0.7/32"]
[rule.approval]
users = ["root"]
timeout = "3s"

[[rule]]
name = "hold-eight"
action = "approve"
[rule.match]
cidr = ["127.0.0.8/32"]
[rule.approval]
groups = ["no-such-approver-group"]
timeout = "2s"

[default]
action = "allow"
"#;

/// A client connecting once to `addr` from `cgroup`, as `uid` (65534: nobody); killed by
/// pid on drop.
struct HeldClient(Option<Child>);

impl HeldClient {
    fn start(cgroup: &std::path::Path, uid: u32, addr: &str) -> Result<HeldClient> {
        HeldClient::run(cgroup, uid, "connect", &["--connect".into(), addr.into()])
    }

    fn run(cgroup: &std::path::Path, uid: u32, mode: &str, args: &[String]) -> Result<HeldClient> {
        let argv = client_argv(mode, args);
        let mut cmd = Command::new("setpriv");
        cmd.args([
            format!("--reuid={uid}"),
            format!("--regid={uid}"),
            "--clear-groups".into(),
        ])
        .args(&argv)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        in_cgroup(&mut cmd, cgroup)?;
        Ok(HeldClient(Some(cmd.spawn()?)))
    }

    fn report(mut self) -> Result<ClientReport> {
        let child = self.0.take().context("already waited")?;
        parse_report(&child.wait_with_output()?)
    }
}

impl Drop for HeldClient {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn pending(d: &Daemon) -> Result<Vec<Value>> {
    d.cli_json(["approvals", "list", "--json"])
}

/// Waits for exactly one pending approval; returns it.
fn one_pending(d: &Daemon) -> Result<Value> {
    poll(
        "a pending approval",
        WAIT,
        Duration::from_millis(50),
        || {
            let list = pending(d)?;
            ensure!(list.len() <= 1, "more than one pending: {list:?}");
            Ok(list.into_iter().next())
        },
    )
}

fn cli_err(d: &Daemon, args: &[&str]) -> Result<String> {
    let out = d.cli(args)?;
    ensure!(!out.status.success(), "`{args:?}` succeeded");
    Ok(String::from_utf8_lossy(&out.stderr).into_owned())
}

fn reset(r: &ConnResult) -> bool {
    r.error
        .as_ref()
        .is_some_and(|e| e.errno == Some(libc::ECONNRESET))
}

#[test]
fn raw_tcp_held_until_approved_denied_or_expired() -> Result<()> {
    require_root();
    let policy = PolicyFile::new(POLICY)?;
    let d = Daemon::start_with(&["--policy", policy.arg()?])?;
    let seven = Server::hash("127.0.0.7", 10, "a7")?;
    let eight = Server::hash("127.0.0.8", 10, "a8")?;
    let cg = TestCgroup::new(None)?;
    d.enroll([cg.path().as_os_str(), "--include-loopback".as_ref()])?;
    let nobody = 65534;

    // Approved: held (nothing dialed) until root approves, then relayed.
    let client = HeldClient::start(cg.path(), nobody, &seven.addr())?;
    let p = one_pending(&d)?;
    assert_eq!(p["rule"], "hold-seven", "{p}");
    assert_eq!(p["destination"], seven.addr(), "{p}");
    assert_eq!(p["workload"]["uid"], nobody, "{p}");
    std::thread::sleep(Duration::from_millis(300));
    assert!(seven.records()?.is_empty(), "dialed before approval");
    let id = p["id"].to_string();
    d.cli_ok(["approvals", "approve", &id, "--reason", "looks fine"])?;
    let r = client.report()?;
    let c = &r.results[0];
    assert!(c.error.is_none() && c.eof && c.received == 10, "{c:?}");

    // Denied: reset, recorded with the approver and the reason.
    let client = HeldClient::start(cg.path(), nobody, &seven.addr())?;
    let id = one_pending(&d)?["id"].to_string();
    d.cli_ok(["approvals", "deny", &id, "--reason", "not now"])?;
    let r = client.report()?;
    assert!(reset(&r.results[0]), "{:?}", r.results[0]);
    let s = d.wait_for_matching(|s| s.identity.pid == r.pid, 1, WAIT)?;
    assert_eq!(s[0].outcome, "denied");
    assert_eq!(
        s[0].error.as_deref(),
        Some("approval denied by root: not now")
    );

    // Nobody decides: reset after the rule's timeout (3 s).
    let started = Instant::now();
    let client = HeldClient::start(cg.path(), nobody, &seven.addr())?;
    let r = client.report()?;
    assert!(reset(&r.results[0]), "{:?}", r.results[0]);
    assert!(started.elapsed() >= Duration::from_secs(3));
    let s = d.wait_for_matching(|s| s.identity.pid == r.pid, 1, WAIT)?;
    assert_eq!(s[0].error.as_deref(), Some("timed out awaiting approval"));

    // The workload's own user (root here) cannot approve its own connection.
    let client = HeldClient::start(cg.path(), 0, &seven.addr())?;
    let id = one_pending(&d)?["id"].to_string();
    let e = cli_err(&d, &["approvals", "approve", &id])?;
    assert!(e.contains("cannot approve or deny its own traffic"), "{e}");
    assert!(reset(&client.report()?.results[0]), "self-approved");

    // Root is not in the approver group of 127.0.0.8.
    let client = HeldClient::start(cg.path(), nobody, &eight.addr())?;
    let id = one_pending(&d)?["id"].to_string();
    let e = cli_err(&d, &["approvals", "approve", &id])?;
    assert!(e.contains("root is not among the approvers"), "{e}");
    assert!(reset(&client.report()?.results[0]));
    assert!(
        eight.records()?.is_empty(),
        "the unapproved server was reached"
    );

    // A grant lets the same workload through without waiting, until revoked.
    let client = HeldClient::start(cg.path(), nobody, &seven.addr())?;
    let id = one_pending(&d)?["id"].to_string();
    d.cli_ok(["approvals", "approve", &id, "--for", "10m"])?;
    client.report()?;
    let started = Instant::now();
    let r = HeldClient::start(cg.path(), nobody, &seven.addr())?.report()?;
    assert!(
        r.results[0].eof && r.results[0].received == 10,
        "{:?}",
        r.results[0]
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "held despite the grant"
    );
    let grants: Vec<Value> = d.cli_json(["approvals", "grants", "--json"])?;
    assert_eq!(grants.len(), 1, "{grants:?}");
    d.cli_ok(["approvals", "revoke", &grants[0]["id"].to_string()])?;
    let client = HeldClient::start(cg.path(), nobody, &seven.addr())?;
    let id = one_pending(&d)?["id"].to_string();
    d.cli_ok(["approvals", "deny", &id])?;
    assert!(reset(&client.report()?.results[0]));

    // Every step is in the session store.
    let store = std::fs::read_dir(d.data_dir().join("sessions"))?
        .map(|e| std::fs::read(e?.path()).map_err(anyhow::Error::from))
        .collect::<Result<Vec<_>>>()?
        .concat();
    let store = String::from_utf8_lossy(&store);
    for kind in ["created", "approved", "denied", "expired", "revoked"] {
        if !store.contains(&format!("\"approval\":\"{kind}\"")) {
            bail!("no {kind} approval event in the store");
        }
    }
    Ok(())
}

/// `approvals list --watch`, started before anything is held, prints a held connection when
/// it appears and, once approved, by whom and why.
#[test]
fn watch_shows_a_held_connection_then_its_resolution() -> Result<()> {
    use std::io::BufRead;
    require_root();
    let policy = PolicyFile::new(POLICY)?;
    let d = Daemon::start_with(&["--policy", policy.arg()?])?;
    let seven = Server::hash("127.0.0.7", 10, "v7")?;
    let cg = TestCgroup::new(None)?;
    d.enroll([cg.path().as_os_str(), "--include-loopback".as_ref()])?;

    // Killed by its pid on drop, like a held client.
    let mut watcher = HeldClient(Some(
        d.cli_command(["approvals", "list", "--watch"])
            .stdout(Stdio::piped())
            .spawn()?,
    ));
    let stdout = (watcher.0.as_mut())
        .and_then(|c| c.stdout.take())
        .context("watcher stdout")?;
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            if line.map(|l| tx.send(l)).is_err() {
                break;
            }
        }
    });
    let next_line = |what: &str| -> Result<String> {
        lines
            .recv_timeout(WAIT)
            .with_context(|| format!("the watcher printed no {what}"))
    };
    // Nothing is held yet: the watcher has nothing to say.
    ensure!(
        lines.recv_timeout(Duration::from_millis(700)).is_err(),
        "the watcher printed before anything was held"
    );

    let client = HeldClient::start(cg.path(), 65534, &seven.addr())?;
    let held = next_line("held connection")?;
    let id = one_pending(&d)?["id"].to_string();
    ensure!(
        held.starts_with(&format!("{id}\tpending\trule hold-seven"))
            && held.contains(&seven.addr()),
        "{held}"
    );
    d.cli_ok(["approvals", "approve", &id, "--reason", "looks fine"])?;
    let resolved = next_line("resolution")?;
    ensure!(
        resolved
            == format!(
                "{id}\tapproved by root: looks fine\trule hold-seven\t{}",
                seven.addr()
            ),
        "{resolved}"
    );
    ensure!(client.report()?.results[0].received == 10);
    Ok(())
}

trait Stream: Read + Write {}
impl<T: Read + Write> Stream for T {}

/// Reads HTTP requests on `listener` (over TLS with `tls`) and answers 200; returns the JSON
/// bodies of `n` POSTs.
fn webhook_bodies(
    listener: TcpListener,
    n: usize,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> std::thread::JoinHandle<Result<Vec<Value>>> {
    std::thread::spawn(move || {
        let mut bodies = Vec::new();
        let deadline = Instant::now() + WAIT;
        listener.set_nonblocking(true)?;
        while bodies.len() < n {
            let tcp = match listener.accept() {
                Ok((tcp, _)) => tcp,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    ensure!(
                        Instant::now() < deadline,
                        "only {} webhooks arrived",
                        bodies.len()
                    );
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            tcp.set_nonblocking(false)?;
            tcp.set_read_timeout(Some(WAIT))?;
            let mut conn: Box<dyn Stream> = match &tls {
                Some(config) => Box::new(rustls::StreamOwned::new(
                    rustls::ServerConnection::new(config.clone())?,
                    tcp,
                )),
                None => Box::new(tcp),
            };
            let mut buf = Vec::new();
            let mut chunk = [0u8; 8192];
            let body = loop {
                let got = conn.read(&mut chunk)?;
                ensure!(got > 0, "webhook connection closed early");
                buf.extend_from_slice(&chunk[..got]);
                let text = String::from_utf8_lossy(&buf).into_owned();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len: usize = head
                        .lines()
                        .find_map(|l| {
                            let l = l.to_ascii_lowercase();
                            l.strip_prefix("content-length:").map(|v| v.trim().parse())
                        })
                        .context("no content-length")??;
                    if body.len() >= len {
                        ensure!(head.starts_with("POST /hook HTTP/1.1"), "{head}");
                        break body.to_string();
                    }
                }
            };
            conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")?;
            bodies.push(serde_json::from_str(&body)?);
        }
        Ok(bodies)
    })
}

/// A policy holding connections to 127.0.0.7 for root, announced at `webhook`.
fn webhook_policy(dir: &std::path::Path, webhook: &str) -> Result<std::path::PathBuf> {
    let file = dir.join("policy.toml");
    std::fs::write(
        &file,
        format!(
            "[[rule]]\nname = \"hold-seven\"\naction = \"approve\"\n[rule.match]\n\
             cidr = [\"127.0.0.7/32\"]\n[rule.approval]\nusers = [\"root\"]\ntimeout = \"60s\"\n\
             webhook = \"{webhook}\"\n\n[default]\naction = \"allow\"\n"
        ),
    )?;
    Ok(file)
}

/// An https webhook is verified against the system's roots plus `--upstream-ca` (here the
/// only CA that signed its certificate) and receives the pending approval's JSON.
#[test]
fn https_webhook_verified_with_the_upstream_ca() -> Result<()> {
    require_root();
    let pki = TestPki::new("webhook test CA")?;
    let hook = TcpListener::bind("127.0.0.1:0")?;
    let url = format!("https://127.0.0.1:{}/hook", hook.local_addr()?.port());
    let hooks = webhook_bodies(hook, 1, Some(pki.server_config(&["127.0.0.1"])?));
    let dir = tempfile::tempdir()?;
    let file = webhook_policy(dir.path(), &url)?;
    let d = Daemon::start_with(&[
        "--policy",
        file.to_str().context("utf-8")?,
        "--upstream-ca",
        pki.ca_file.to_str().context("utf-8")?,
    ])?;
    let seven = Server::hash("127.0.0.7", 10, "w7")?;
    let cg = TestCgroup::new(None)?;
    d.enroll([cg.path().as_os_str(), "--include-loopback".as_ref()])?;
    let client = HeldClient::start(cg.path(), 65534, &seven.addr())?;
    let p = one_pending(&d)?;
    let bodies = hooks.join().expect("webhook thread")?;
    ensure!(
        bodies[0]["id"] == p["id"]
            && bodies[0]["rule"] == "hold-seven"
            && bodies[0]["destination"] == seven.addr().as_str(),
        "webhook: {} pending: {p}",
        bodies[0]
    );
    d.cli_ok(["approvals", "approve", &p["id"].to_string()])?;
    let r = client.report()?;
    ensure!(r.results[0].received == 10, "{:?}", r.results[0]);
    Ok(())
}

/// 100 connections held at once, each announced by the webhook, all approved in one command;
/// every one then completes its echo exchange.
#[test]
fn hundred_held_connections_approved_in_one_go_with_webhooks() -> Result<()> {
    require_root();
    let hook = TcpListener::bind("127.0.0.1:0")?;
    let url = format!("http://{}/hook", hook.local_addr()?);
    let hooks = webhook_bodies(hook, 100, None);
    let dir = tempfile::tempdir()?;
    let file = webhook_policy(dir.path(), &url)?;
    let d = Daemon::start_with(&["--policy", file.to_str().context("utf-8")?])?;
    let echo = Server::echo("127.0.0.7")?;
    let cg = TestCgroup::new(None)?;
    d.enroll([cg.path().as_os_str(), "--include-loopback".as_ref()])?;
    let args: Vec<String> = [
        "--connect",
        &echo.addr(),
        "--conns",
        "100",
        "--bytes",
        "2000",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let client = HeldClient::run(cg.path(), 65534, "echo-many", &args)?;
    let held = poll(
        "100 pending approvals",
        WAIT,
        Duration::from_millis(100),
        || {
            let list = pending(&d)?;
            Ok((list.len() == 100).then_some(list))
        },
    )?;
    let mut approve = vec!["approvals".to_string(), "approve".into()];
    approve.extend(held.iter().map(|p| p["id"].to_string()));
    d.cli_ok(&approve)?;
    let report = client.report()?;
    assert_eq!(report.results.len(), 100);
    for r in &report.results {
        assert!(r.error.is_none() && r.r#match == Some(true), "{r:?}");
    }
    let bodies = hooks.join().expect("webhook thread")?;
    let mut ids: Vec<u64> = bodies
        .iter()
        .map(|b| b["id"].as_u64().unwrap_or(0))
        .collect();
    ids.sort_unstable();
    let mut want: Vec<u64> = held.iter().map(|p| p["id"].as_u64().unwrap_or(0)).collect();
    want.sort_unstable();
    assert_eq!(ids, want, "one webhook per held connection");
    assert!(
        bodies
            .iter()
            .all(|b| b["rule"] == "hold-seven" && b["workload"]["uid"] == 65534)
    );
    Ok(())
}
