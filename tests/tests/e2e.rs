//! End-to-end tests: a private daemon per test, the real kernel hooks, real clients (curl,
//! python3). Run as root. Every test makes its own daemon, cgroups, namespaces and servers,
//! and they are removed on Drop even when the test fails (the daemon log is printed then).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use interceptor_tests::model::brief_all;
use interceptor_tests::*;

/// Upper bound for one client run.
const RUN: Duration = Duration::from_secs(180);
/// Upper bound for a session to show up after its connection ended.
const SESSIONS: Duration = Duration::from_secs(30);

fn s(x: impl ToString) -> String {
    x.to_string()
}

fn hash_args(targets: &[String], send_bytes: usize, seed: &str) -> Vec<String> {
    let mut v = Vec::new();
    for t in targets {
        v.push(s("--connect"));
        v.push(t.clone());
    }
    v.extend([s("--send-bytes"), s(send_bytes), s("--seed"), s(seed)]);
    v
}

fn connect_args(targets: &[String]) -> Vec<String> {
    targets
        .iter()
        .flat_map(|t| [s("--connect"), t.clone()])
        .collect()
}

/// Runs the Python client under `interceptor exec EXEC_ARGS… --` and parses its report.
fn exec_client(
    d: &Daemon,
    exec_args: &[&str],
    mode: &str,
    args: &[String],
) -> Result<ClientReport> {
    let out = run_with_timeout(
        &mut d.exec_command(exec_args, &client_argv(mode, args)),
        RUN,
    )?;
    let rep = parse_report(&out)?;
    eprintln!(
        "client report: {}",
        String::from_utf8_lossy(&out.stdout).trim()
    );
    Ok(rep)
}

/// Runs the Python client (optionally inside a cgroup) without `exec`.
fn run_client(cgroup: Option<&Path>, mode: &str, args: &[String]) -> Result<ClientReport> {
    let mut cmd = client_command(mode, args);
    if let Some(cg) = cgroup {
        in_cgroup(&mut cmd, cg)?;
    }
    let out = run_with_timeout(&mut cmd, RUN)?;
    eprintln!(
        "client report: {}",
        String::from_utf8_lossy(&out.stdout).trim()
    );
    parse_report(&out)
}

/// Asserts that a hash exchange went through intact in both directions.
fn check_hash_exchange(
    r: &ConnResult,
    rec: &ServerRecord,
    up: (&str, usize),
    down: (&str, usize),
) -> Result<()> {
    ensure!(r.error.is_none(), "client error: {r:?}");
    ensure!(r.eof, "client did not see a clean EOF: {r:?}");
    ensure!(rec.error.is_none(), "server error: {rec:?}");
    ensure!(
        rec.received == up.1 as u64,
        "server received {} bytes, client sent {}",
        rec.received,
        up.1
    );
    ensure!(
        rec.sha256.as_deref() == Some(sha256_hex(&payload(up.0, up.1)).as_str()),
        "upload corrupted: server sha256 {:?}",
        rec.sha256
    );
    ensure!(
        r.received == down.1 as u64,
        "client received {} bytes, server sent {}",
        r.received,
        down.1
    );
    ensure!(
        r.received_sha256.as_deref() == Some(sha256_hex(&payload(down.0, down.1)).as_str()),
        "download corrupted: client sha256 {:?}",
        r.received_sha256
    );
    Ok(())
}

/// The server record of the connection whose client-side address was `local`, if the
/// connection reached the server directly (not through the proxy).
fn direct_record<'a>(recs: &'a [ServerRecord], local: &Option<String>) -> Option<&'a ServerRecord> {
    recs.iter().find(|r| Some(&r.peer) == local.as_ref())
}

/// The sessions of process `pid` that have ended (their byte counts come with the end).
fn ended_by(pid: u32) -> impl Fn(&Session) -> bool {
    move |x| x.identity.pid == pid && x.outcome != "open"
}

fn one_session(sessions: Vec<Session>) -> Result<Session> {
    ensure!(
        sessions.len() == 1,
        "expected exactly one session, got {}:\n{}",
        sessions.len(),
        brief_all(&sessions)
    );
    Ok(sessions.into_iter().next().unwrap())
}

fn check_exec_cgroup_removed(sess: &Session) -> Result<()> {
    let dir = cgroup2_mount().join(sess.identity.cgroup.trim_start_matches('/'));
    poll(
        &format!("exec cgroup {} to be removed", dir.display()),
        Duration::from_secs(10),
        Duration::from_millis(50),
        || Ok((!dir.exists()).then_some(())),
    )
}

// 1a. exec + Python client to the hash server: data both ways, full identity.
#[test]
fn exec_python_hash_identity() -> Result<()> {
    require_root();
    let d = Daemon::start()?;
    let srv = Server::hash("127.0.0.2", 3_000_000, "down-1")?;
    let rep = exec_client(
        &d,
        &["--include-loopback"],
        "hash",
        &hash_args(&[srv.addr()], 4_000_000, "up-1"),
    )?;
    let r = &rep.results[0];
    let recs = srv.wait_records(1, RUN)?;
    check_hash_exchange(r, &recs[0], ("up-1", 4_000_000), ("down-1", 3_000_000))?;
    ensure!(
        direct_record(&recs, &r.local).is_none(),
        "the connection reached the server directly, not through the proxy: {r:?} {recs:?}"
    );

    let sess = one_session(d.wait_for_matching(
        |x| x.identity.pid == rep.pid && x.destination == srv.addr() && x.outcome != "open",
        1,
        SESSIONS,
    )?)?;
    eprintln!("session: {sess:#?}");
    let id = &sess.identity;
    let py = python().to_string_lossy().into_owned();
    assert_eq!(rep.exe, py, "client's own /proc/self/exe");
    assert_eq!(id.exe.as_deref(), Some(py.as_str()), "exe");
    assert_eq!(id.comm, rep.comm, "comm");
    assert_eq!(id.uid, 0, "uid");
    assert_eq!(id.gid, 0, "gid");
    assert_eq!(id.user.as_deref(), Some("root"), "user");
    assert!(
        id.cgroup.starts_with("/interceptor/exec-"),
        "cgroup {:?}",
        id.cgroup
    );
    assert!(
        id.cmdline.iter().any(|a| a.ends_with("client.py")) && id.cmdline.contains(&srv.addr()),
        "cmdline {:?}",
        id.cmdline
    );
    assert!(id.container.is_none(), "container {:?}", id.container);
    assert_eq!(sess.destination, srv.addr());
    assert_eq!(sess.bytes_up, 4_000_000, "bytes_up");
    assert_eq!(sess.bytes_down, 3_000_000, "bytes_down");
    assert_eq!(sess.outcome, "closed");
    assert!(sess.error.is_none(), "error {:?}", sess.error);
    assert!(sess.ended_at.is_some(), "ended_at");
    assert!(sess.enrollment.is_some(), "enrollment");
    for ts in [Some(&sess.started_at), sess.ended_at.as_ref()]
        .into_iter()
        .flatten()
    {
        assert!(
            ts.len() >= 20 && ts.as_bytes()[4] == b'-' && ts.as_bytes()[10] == b'T',
            "not RFC3339: {ts}"
        );
    }
    // `sessions show ID --json` returns the same session.
    let shown: serde_json::Value = d.cli_json(["sessions", "show", &sess.id_str(), "--json"])?;
    assert_eq!(shown["destination"], srv.addr());
    assert_eq!(shown["identity"]["pid"], rep.pid);
    check_exec_cgroup_removed(&sess)
}

// 1b. exec + curl POSTing 3 MB to an HTTP server that echoes it.
#[test]
fn exec_curl_http_post() -> Result<()> {
    require_root();
    let d = Daemon::start()?;
    let srv = Server::http("127.0.0.3")?;
    let dir = d.tmp_dir();
    let body = payload("curl-body", 3_000_000);
    let (inp, outp, pidf) = (
        dir.join("body.in"),
        dir.join("body.out"),
        dir.join("curl.pid"),
    );
    std::fs::write(&inp, &body)?;
    let url = format!("http://{}/upload", srv.addr());
    // sh records its pid and execs curl, so the pid is curl's.
    let script = "echo $$ > \"$0\"; exec curl -sS --fail --noproxy '*' --max-time 120 \
                  -H 'Expect:' --data-binary @\"$1\" -o \"$2\" \"$3\"";
    let argv: Vec<String> = vec![
        s("sh"),
        s("-c"),
        s(script),
        pidf.display().to_string(),
        inp.display().to_string(),
        outp.display().to_string(),
        url.clone(),
    ];
    let out = run_with_timeout(&mut d.exec_command(&["--include-loopback"], &argv), RUN)?;
    ensure!(
        out.status.success(),
        "curl via exec failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let got = std::fs::read(&outp).context("curl output file")?;
    assert_eq!(got.len(), body.len(), "echoed body length");
    assert_eq!(sha256_hex(&got), sha256_hex(&body), "echoed body differs");
    let rec = srv.wait_records(1, RUN)?[0].clone();
    assert!(rec.error.is_none(), "{rec:?}");
    assert_eq!(rec.received, body.len() as u64);
    assert_eq!(rec.sha256, Some(sha256_hex(&body)));

    let pid: u32 = std::fs::read_to_string(&pidf)?.trim().parse()?;
    let sess = one_session(d.wait_for_matching(
        |x| x.identity.pid == pid && x.destination == srv.addr() && x.outcome != "open",
        1,
        SESSIONS,
    )?)?;
    eprintln!("session: {sess:#?}");
    let id = &sess.identity;
    let curl = which_real("curl")?.display().to_string();
    assert_eq!(id.comm, "curl");
    assert_eq!(id.exe.as_deref(), Some(curl.as_str()));
    assert_eq!(id.uid, 0);
    assert_eq!(id.user.as_deref(), Some("root"));
    assert!(id.cgroup.starts_with("/interceptor/exec-"), "{}", id.cgroup);
    assert!(
        id.cmdline.first().is_some_and(|a| a.ends_with("curl")) && id.cmdline.contains(&url),
        "cmdline {:?}",
        id.cmdline
    );
    let n = body.len() as u64;
    // Body plus HTTP headers each way.
    assert!(
        (n..n + 4096).contains(&sess.bytes_up),
        "bytes_up {} for a {n}-byte body",
        sess.bytes_up
    );
    assert!(
        (n..n + 4096).contains(&sess.bytes_down),
        "bytes_down {} for a {n}-byte body",
        sess.bytes_down
    );
    assert_eq!(sess.outcome, "closed");
    check_exec_cgroup_removed(&sess)
}

// 1c. exec passes stdio through and returns the command's exit code.
#[test]
fn exec_exit_code_and_stdio() -> Result<()> {
    require_root();
    let d = Daemon::start()?;
    let out = run_with_timeout(
        &mut d.exec_command(
            &["--include-loopback"],
            &["sh", "-c", "echo to-stdout; echo to-stderr >&2; exit 7"],
        ),
        RUN,
    )?;
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("to-stdout"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("to-stderr"));
    Ok(())
}

// 2. A process outside every enrolled cgroup is not redirected and creates no session.
#[test]
fn unenrolled_process_not_recorded() -> Result<()> {
    require_root();
    let d = Daemon::start()?;
    let srv = Server::hash("127.0.0.2", 50_000, "down-2")?;
    let enrolled = TestCgroup::new(None)?;
    let outside = TestCgroup::new(None)?;
    let enr = d.enroll([enrolled.path().as_os_str(), "--include-loopback".as_ref()])?;
    assert_eq!(Path::new(&enr.cgroup), enrolled.path());

    // First the outsider, then a control in the enrolled cgroup: once the control's
    // session is there, the outsider's would be too, had it been redirected.
    let out = run_client(
        Some(outside.path()),
        "hash",
        &hash_args(&[srv.addr()], 100_000, "up-2"),
    )?;
    let recs = srv.wait_records(1, RUN)?;
    check_hash_exchange(
        &out.results[0],
        &recs[0],
        ("up-2", 100_000),
        ("down-2", 50_000),
    )?;
    let ctl = run_client(
        Some(enrolled.path()),
        "hash",
        &hash_args(&[srv.addr()], 100_000, "up-2"),
    )?;
    let recs = srv.wait_records(2, RUN)?;
    let sessions = d.wait_for_matching(
        |x| x.identity.pid == ctl.pid && x.destination == srv.addr(),
        1,
        SESSIONS,
    )?;
    assert_eq!(sessions[0].identity.cgroup, enrolled.rel_path());

    let all = d.sessions()?;
    let stray: Vec<_> = all
        .iter()
        .filter(|x| x.identity.pid == out.pid || x.identity.cgroup == outside.rel_path())
        .cloned()
        .collect();
    assert!(
        stray.is_empty(),
        "sessions for the unenrolled process:\n{}",
        brief_all(&stray)
    );
    assert_eq!(
        all.iter().filter(|x| x.destination == srv.addr()).count(),
        1,
        "only the control's connection is recorded:\n{}",
        brief_all(&all)
    );
    // Kernel-level check: the outsider reached the server directly, the control did not.
    assert!(
        direct_record(&recs, &out.results[0].local).is_some(),
        "outsider not direct: {recs:?}"
    );
    assert!(
        direct_record(&recs, &ctl.results[0].local).is_none(),
        "control not proxied: {recs:?}"
    );
    Ok(())
}

// 3. IPv6 to a test host in a netns over veth (ULA addresses).
#[test]
fn ipv6_to_netns_host() -> Result<()> {
    require_root();
    let d = Daemon::start()?;
    let ns = Netns::new()?;
    let link = veth(None, &ns)?;
    let srv = Server::hash_in(&ns, link.b_v6.into(), 1_500_000, "down-3")?;
    assert!(srv.addr().starts_with("[fd00:"));
    let rep = exec_client(
        &d,
        &["--include-loopback"],
        "hash",
        &hash_args(&[srv.addr()], 2_000_000, "up-3"),
    )?;
    let recs = srv.wait_records(1, RUN)?;
    check_hash_exchange(
        &rep.results[0],
        &recs[0],
        ("up-3", 2_000_000),
        ("down-3", 1_500_000),
    )?;
    let sess = one_session(d.wait_for_matching(ended_by(rep.pid), 1, SESSIONS)?)?;
    assert_eq!(sess.destination, format!("[{}]:{}", link.b_v6, srv.port()));
    assert_eq!(sess.bytes_up, 2_000_000);
    assert_eq!(sess.bytes_down, 1_500_000);
    assert_eq!(sess.outcome, "closed");
    Ok(())
}

// 4. An AF_INET6 socket dialling ::ffff:127.0.0.2 is redirected; recorded as IPv4.
#[test]
fn v4_mapped_ipv6_socket() -> Result<()> {
    require_root();
    let d = Daemon::start()?;
    let srv = Server::hash("127.0.0.2", 700_000, "down-4")?;
    let target = format!("[::ffff:127.0.0.2]:{}", srv.port());
    let rep = exec_client(
        &d,
        &["--include-loopback"],
        "hash",
        &hash_args(&[target], 900_000, "up-4"),
    )?;
    let recs = srv.wait_records(1, RUN)?;
    check_hash_exchange(
        &rep.results[0],
        &recs[0],
        ("up-4", 900_000),
        ("down-4", 700_000),
    )?;
    let sess = one_session(d.wait_for_matching(ended_by(rep.pid), 1, SESSIONS)?)?;
    assert_eq!(sess.destination, format!("127.0.0.2:{}", srv.port()));
    assert_eq!((sess.bytes_up, sess.bytes_down), (900_000, 700_000));
    Ok(())
}

// 5. A "container": its own netns and a docker-<id>.scope cgroup, enrolled with --netns.
#[test]
fn netns_container_identity() -> Result<()> {
    require_root();
    let d = Daemon::start()?;
    let client_ns = Netns::new()?;
    let server_ns = Netns::new()?;
    let link = veth(Some(&client_ns), &server_ns)?;
    let srv = Server::hash_in(&server_ns, link.b_v4.into(), 1_000_000, "down-5")?;
    let cid = sha256_hex(format!("container-{}-{}", std::process::id(), next_id()).as_bytes());
    let cg = TestCgroup::new(Some(&format!("docker-{cid}.scope")))?;
    let ns_path = client_ns.path().display().to_string();
    let enr = d.enroll([cg.path().as_os_str(), "--netns".as_ref(), ns_path.as_ref()])?;
    assert_eq!(enr.netns.as_deref(), Some(ns_path.as_str()), "{enr:?}");

    let mut cmd = client_ns.command(python());
    cmd.arg(scripts_dir().join("client.py"))
        .arg("hash")
        .args(hash_args(&[srv.addr()], 1_200_000, "up-5"));
    in_cgroup(&mut cmd, cg.path())?;
    let out = run_with_timeout(&mut cmd, RUN)?;
    eprintln!(
        "client report: {}",
        String::from_utf8_lossy(&out.stdout).trim()
    );
    let rep = parse_report(&out)?;
    let recs = srv.wait_records(1, RUN)?;
    check_hash_exchange(
        &rep.results[0],
        &recs[0],
        ("up-5", 1_200_000),
        ("down-5", 1_000_000),
    )?;
    assert!(
        direct_record(&recs, &rep.results[0].local).is_none(),
        "not proxied: {recs:?} {:?}",
        rep.results[0]
    );
    let sess = one_session(d.wait_for_matching(ended_by(rep.pid), 1, SESSIONS)?)?;
    eprintln!("session: {sess:#?}");
    assert_eq!(
        sess.identity.container,
        Some(Container {
            id: cid.clone(),
            runtime: s("docker")
        })
    );
    assert_eq!(sess.identity.cgroup, cg.rel_path());
    assert_eq!(sess.identity.cgroup_id, cg.id()?);
    assert_eq!(sess.enrollment, Some(enr.id));
    assert_eq!(sess.destination, srv.addr());
    assert_eq!((sess.bytes_up, sess.bytes_down), (1_200_000, 1_000_000));
    Ok(())
}

// 6. --ports: only the listed port is redirected and recorded.
#[test]
fn port_filter() -> Result<()> {
    require_root();
    let d = Daemon::start()?;
    let s1 = Server::hash("127.0.0.2", 20_000, "down-6")?;
    let s2 = Server::hash("127.0.0.2", 20_000, "down-6")?;
    let p1 = s(s1.port());
    // The unlisted port first: once the listed one's session shows, the other would have too.
    let rep = exec_client(
        &d,
        &["--include-loopback", "--ports", &p1],
        "hash",
        &hash_args(&[s2.addr(), s1.addr()], 30_000, "up-6"),
    )?;
    let (r2, r1) = (&rep.results[0], &rep.results[1]);
    let recs1 = s1.wait_records(1, RUN)?;
    let recs2 = s2.wait_records(1, RUN)?;
    check_hash_exchange(r1, &recs1[0], ("up-6", 30_000), ("down-6", 20_000))?;
    check_hash_exchange(r2, &recs2[0], ("up-6", 30_000), ("down-6", 20_000))?;
    one_session(d.wait_for_matching(
        |x| x.identity.pid == rep.pid && x.destination == s1.addr(),
        1,
        SESSIONS,
    )?)?;
    let all = d.sessions()?;
    assert!(
        !all.iter().any(|x| x.destination == s2.addr()),
        "unlisted port recorded:\n{}",
        brief_all(&all)
    );
    assert!(
        direct_record(&recs2, &r2.local).is_some(),
        "unlisted port not direct"
    );
    assert!(
        direct_record(&recs1, &r1.local).is_none(),
        "listed port not proxied"
    );
    Ok(())
}

// 7. --deny: connect() fails with EPERM in the kernel; a "denied" session and log line.
#[test]
fn kernel_deny() -> Result<()> {
    require_root();
    let d = Daemon::start()?;
    let denied = Server::hash("127.0.0.5", 10, "down-7")?;
    let allowed = Server::hash("127.0.0.2", 10, "down-7")?;
    let rep = exec_client(
        &d,
        &["--include-loopback", "--deny", "127.0.0.5/32"],
        "connect",
        &connect_args(&[denied.addr(), allowed.addr()]),
    )?;
    let (rd, ra) = (&rep.results[0], &rep.results[1]);
    let e = rd
        .error
        .as_ref()
        .with_context(|| format!("connect to a denied address succeeded: {rd:?}"))?;
    assert_eq!(
        (e.stage.as_str(), e.errno),
        ("connect", Some(libc::EPERM)),
        "{e:?}"
    );
    assert!(
        ra.error.is_none() && ra.eof && ra.received == 10,
        "allowed: {ra:?}"
    );
    let sess = one_session(d.wait_for_matching(
        |x| x.identity.pid == rep.pid && x.destination == denied.addr(),
        1,
        SESSIONS,
    )?)?;
    assert_eq!(sess.outcome, "denied", "{}", sess.brief());
    assert_eq!((sess.bytes_up, sess.bytes_down), (0, 0));
    let line = d.wait_for_log_line("denied", SESSIONS)?;
    eprintln!("denial log line: {line}");
    assert!(
        denied.records()?.is_empty(),
        "the denied server was reached"
    );
    d.wait_for_matching(
        |x| x.identity.pid == rep.pid && x.destination == allowed.addr() && x.outcome == "closed",
        1,
        SESSIONS,
    )?;
    Ok(())
}

// 8. Enrollment survives a daemon restart (pinned programs, saved state).
#[test]
fn enrollment_survives_restart() -> Result<()> {
    require_root();
    let mut d = Daemon::start()?;
    let srv = Server::hash("127.0.0.2", 30_000, "down-8")?;
    let cg = TestCgroup::new(None)?;
    let enr = d.enroll([cg.path().as_os_str(), "--include-loopback".as_ref()])?;
    let before = run_client(
        Some(cg.path()),
        "hash",
        &hash_args(&[srv.addr()], 40_000, "up-8"),
    )?;
    d.wait_for_matching(|x| x.identity.pid == before.pid, 1, SESSIONS)?;
    let old_pid = d.status()?.daemon_pid;

    d.restart()?;
    let st = d.status()?;
    assert_ne!(st.daemon_pid, old_pid, "daemon did not restart");
    assert_eq!(st.proxy_port, d.proxy_port());
    let e = st
        .enrollments
        .iter()
        .find(|e| e.id == enr.id)
        .with_context(|| format!("enrollment {} gone after restart: {st:?}", enr.id))?;
    assert_eq!(Path::new(&e.cgroup), cg.path());
    assert!(e.include_loopback);

    let after = run_client(
        Some(cg.path()),
        "hash",
        &hash_args(&[srv.addr()], 40_000, "up-8"),
    )?;
    let recs = srv.wait_records(2, RUN)?;
    // Records are in the order the connections finished: the second is the new client's.
    check_hash_exchange(
        &after.results[0],
        &recs[1],
        ("up-8", 40_000),
        ("down-8", 30_000),
    )?;
    assert!(
        direct_record(&recs, &after.results[0].local).is_none(),
        "after restart the connection went direct: {recs:?}"
    );
    let sess = one_session(d.wait_for_matching(
        |x| x.identity.pid == after.pid && x.destination == srv.addr() && x.outcome != "open",
        1,
        SESSIONS,
    )?)?;
    assert_eq!(sess.identity.cgroup, cg.rel_path());
    assert_eq!((sess.bytes_up, sess.bytes_down), (40_000, 30_000));
    Ok(())
}

// 9. Upstream refuses: the client sees a reset, not a clean EOF.
#[test]
fn upstream_refused_resets_client() -> Result<()> {
    require_root();
    let d = Daemon::start()?;
    let (_hold, port) = closed_port("127.0.0.2")?;
    let target = format!("127.0.0.2:{port}");
    // Control: without interception the port really is closed.
    let direct = run_client(
        None,
        "connect",
        &connect_args(std::slice::from_ref(&target)),
    )?;
    let e = direct.results[0]
        .error
        .as_ref()
        .context("closed port accepted")?;
    assert_eq!(e.errno, Some(libc::ECONNREFUSED), "{e:?}");

    let rep = exec_client(
        &d,
        &["--include-loopback"],
        "connect",
        &connect_args(std::slice::from_ref(&target)),
    )?;
    let r = &rep.results[0];
    assert!(!r.eof, "client saw a clean EOF instead of a reset: {r:?}");
    let e = r.error.as_ref().context("no error")?;
    // Usually on send/recv; when the proxy's reset wins the race with the client's
    // non-blocking connect completing, already at connect, or (the socket reset before it
    // saw its connect complete) as ENOTCONN on send. Either way a reset, never
    // ECONNREFUSED and never a clean EOF.
    assert!(
        e.errno == Some(libc::ECONNRESET) || (e.errno == Some(libc::ENOTCONN) && e.stage == "send"),
        "{e:?}"
    );
    let sess = one_session(d.wait_for_matching(
        |x| x.identity.pid == rep.pid && x.destination == target,
        1,
        SESSIONS,
    )?)?;
    assert_eq!(sess.outcome, "upstream_refused", "{}", sess.brief());
    assert!(sess.error.is_some(), "{}", sess.brief());
    Ok(())
}

// 10. 200 concurrent connections from one process, 64 KiB each way.
#[test]
fn concurrent_200_connections() -> Result<()> {
    require_root();
    const N: usize = 200;
    const BYTES: u64 = 65_536;
    let d = Daemon::start()?;
    let srv = Server::echo("127.0.0.2")?;
    let rep = exec_client(
        &d,
        &["--include-loopback"],
        "echo-many",
        &[
            s("--connect"),
            srv.addr(),
            s("--conns"),
            s(N),
            s("--bytes"),
            s(BYTES),
            s("--seed"),
            s("many"),
        ],
    )?;
    assert_eq!(rep.results.len(), N);
    let bad: Vec<_> = rep
        .results
        .iter()
        .filter(|r| {
            r.error.is_some() || r.r#match != Some(true) || r.sent != BYTES || r.received != BYTES
        })
        .collect();
    assert!(
        bad.is_empty(),
        "{} bad connections, e.g. {:?}",
        bad.len(),
        bad.first()
    );
    let recs = srv.wait_records(N, RUN)?;
    assert!(
        recs.iter()
            .all(|r| r.error.is_none() && r.received == BYTES),
        "server side: {:?}",
        recs.iter()
            .find(|r| r.error.is_some() || r.received != BYTES)
    );
    // Ended ones: the scanning relay reports its byte counts when the session ends.
    let sessions = d.wait_for_matching(
        |x| x.identity.pid == rep.pid && x.destination == srv.addr() && x.outcome != "open",
        N,
        Duration::from_secs(60),
    )?;
    assert_eq!(sessions.len(), N, "sessions");
    let wrong: Vec<_> = sessions
        .iter()
        .filter(|x| x.bytes_up != BYTES || x.bytes_down != BYTES || x.outcome != "closed")
        .cloned()
        .collect();
    assert!(
        wrong.is_empty(),
        "sessions with wrong counts:\n{}",
        brief_all(&wrong)
    );
    let mut ids: Vec<String> = sessions.iter().map(|x| x.id_str()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), N, "session ids not unique");
    Ok(())
}

fn combined(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

// 11. CLI errors and idempotent enroll.
#[test]
fn cli_errors_and_idempotent_enroll() -> Result<()> {
    require_root();
    let d = Daemon::start()?;

    let missing = cgroup2_mount().join(format!("interceptor-test-{}-missing", std::process::id()));
    let not_cgroup = d.tmp_dir().to_path_buf();
    let root = cgroup2_mount().to_path_buf();
    for (what, path) in [
        ("nonexistent path", &missing),
        ("non-cgroup directory", &not_cgroup),
        ("root cgroup without --allow-root", &root),
    ] {
        let out = d.cli([Path::new("enroll"), path.as_path()])?;
        if out.status.success() {
            // Never leave anything attached to a cgroup we don't own.
            let _ = d.cli([Path::new("unenroll"), path.as_path()]);
            bail!(
                "enroll of {what} {} succeeded: {}",
                path.display(),
                combined(&out)
            );
        }
        let msg = combined(&out);
        assert!(
            msg.contains(&path.display().to_string()),
            "{what}: the message does not name {}: {msg}",
            path.display()
        );
    }

    let cg = TestCgroup::new(None)?;
    let e1 = d.enroll([cg.path()])?;
    let e2 = d.enroll([cg.path()])?;
    assert_eq!(e1.id, e2.id, "enrolling twice gave two ids");
    // Relative to the cgroup2 mount: the same cgroup, the same id.
    let e3 = d.enroll([cg.rel_path().trim_start_matches('/')])?;
    assert_eq!(e1.id, e3.id, "relative path gave another id");
    let st = d.status()?;
    let n = st
        .enrollments
        .iter()
        .filter(|e| Path::new(&e.cgroup) == cg.path())
        .count();
    assert_eq!(n, 1, "{st:?}");
    // Plain output: "enrolled <id> <path>".
    let plain = d.cli_ok([Path::new("enroll"), cg.path()])?;
    assert!(
        plain.starts_with(&format!("enrolled {} ", e1.id)),
        "plain enroll output: {plain}"
    );
    d.cli_ok(["unenroll", "--id", &e1.id.to_string()])?;
    let st = d.status()?;
    assert!(
        !st.enrollments.iter().any(|e| e.id == e1.id),
        "still enrolled: {st:?}"
    );

    // No daemon behind the socket: the message names the socket.
    let nosock = d.tmp_dir().join("no-daemon.sock");
    let out = run_with_timeout(
        Command::new(interceptor_bin())
            .arg("--socket")
            .arg(&nosock)
            .args(["status", "--json"]),
        RUN,
    )?;
    assert!(!out.status.success(), "status without a daemon succeeded");
    assert!(
        combined(&out).contains(&nosock.display().to_string()),
        "message does not name the socket: {}",
        combined(&out)
    );
    Ok(())
}
