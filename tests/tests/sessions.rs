//! Session recording end to end: the hash chain and `verify`, durability across `kill -9`,
//! live tail (also paused), `--since`, export, replay and retention, with the real daemon and
//! real clients. Run as root.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use interceptor_tests::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

const RUN: Duration = Duration::from_secs(180);

/// A policy that scans and records no stream: the tail tests count session starts and
/// ends, and the shipped policy (every secret rule, 1 MiB of every body) adds the scanned
/// raw streams' records between them.
const UNSCANNED: &str = r#"
[settings]
secrets_mask = []
record_body_bytes = 0

[default]
action = "allow"
"#;

/// A daemon on [`UNSCANNED`]; the policy file lives as long as the returned guard.
fn unscanned_daemon() -> Result<(Daemon, PolicyFile)> {
    let policy = PolicyFile::new(UNSCANNED)?;
    let path = policy.path().to_str().context("utf-8")?.to_owned();
    Ok((Daemon::start_with(&["--policy", &path])?, policy))
}
const SESSIONS: Duration = Duration::from_secs(60);

fn s(x: impl ToString) -> String {
    x.to_string()
}

/// `n` concurrent echo connections of `bytes` each from one client under `exec`.
fn echo_many(d: &Daemon, srv: &Server, n: usize, bytes: usize, seed: &str) -> Result<ClientReport> {
    let args = [
        s("--connect"),
        srv.addr(),
        s("--conns"),
        s(n),
        s("--bytes"),
        s(bytes),
        s("--seed"),
        s(seed),
    ];
    let out = run_with_timeout(
        &mut d.exec_command(&["--include-loopback"], &client_argv("echo-many", &args)),
        RUN,
    )?;
    parse_report(&out)
}

fn closed_from(d: &Daemon, pid: u32, n: usize) -> Result<Vec<Session>> {
    d.wait_for_matching(
        |x| x.identity.pid == pid && x.outcome == "closed",
        n,
        SESSIONS,
    )
}

/// Kills the daemon with SIGKILL: no chance to flush or clean up.
fn kill_9(d: &Daemon) -> Result<()> {
    let pid = d.pid().context("daemon pid")?;
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL)?;
    Ok(())
}

/// [`echo_many`], then its `n` closed sessions.
fn closed_echoes(
    d: &Daemon,
    srv: &Server,
    n: usize,
    bytes: usize,
    seed: &str,
) -> Result<(ClientReport, Vec<Session>)> {
    let report = echo_many(d, srv, n, bytes, seed)?;
    let sessions = closed_from(d, report.pid, n)?;
    Ok((report, sessions))
}

/// `sessions verify --json` (through the daemon, or of a data dir) whatever its exit code.
fn verify(d: &Daemon, data_dir: bool) -> Result<(bool, Value)> {
    let mut args = vec![s("sessions"), s("verify"), s("--json")];
    if data_dir {
        args.extend([s("--data-dir"), d.data_dir().display().to_string()]);
    }
    let out = d.cli(&args)?;
    let report: Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "verify printed no JSON: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    let ok = out.status.success();
    ensure!(
        ok == report["problem"].is_null(),
        "exit status {} disagrees with the report {report}",
        out.status
    );
    Ok((ok, report))
}

fn verify_ok(d: &Daemon) -> Result<Value> {
    for data_dir in [false, true] {
        let (ok, report) = verify(d, data_dir)?;
        ensure!(ok, "verify (data dir: {data_dir}) failed: {report:#}");
    }
    Ok(verify(d, false)?.1)
}

/// NDJSON lines of a CLI command, parsed.
fn ndjson(d: &Daemon, args: &[&str]) -> Result<Vec<Value>> {
    d.cli_ok(args)?
        .lines()
        .map(|l| serde_json::from_str(l).with_context(|| format!("not JSON: {l}")))
        .collect()
}

fn segments(d: &Daemon) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(d.data_dir().join("sessions"))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    v.retain(|p| p.extension().is_some_and(|e| e == "log"));
    v.sort();
    Ok(v)
}

/// `(offset, payload)` of each frame `[len u32 LE][crc32 u32 LE][payload]` of a segment.
fn frames(bytes: &[u8]) -> Vec<(usize, &[u8])> {
    let mut out = Vec::new();
    let mut at = 0;
    while bytes.len() - at >= 8 {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        if bytes.len() - at - 8 < len {
            break;
        }
        out.push((at, &bytes[at + 8..at + 8 + len]));
        at += 8 + len;
    }
    out
}

fn seqs(records: &[Value]) -> Vec<u64> {
    records.iter().map(|r| r["seq"].as_u64().unwrap()).collect()
}

/// Records of these kinds for these sessions, as `(session id, kind)` in stream order.
fn session_events(records: &[Value], ids: &[String]) -> Vec<(String, String)> {
    records
        .iter()
        .filter_map(|r| {
            let id = r["event"]["id"].as_u64()?.to_string();
            ids.contains(&id)
                .then(|| (id, r["event"]["event"].as_str().unwrap_or("").to_owned()))
        })
        .collect()
}

fn check_consecutive(records: &[Value]) -> Result<()> {
    let seqs = seqs(records);
    for w in seqs.windows(2) {
        ensure!(
            w[1] == w[0] + 1,
            "records not consecutive: {} then {}",
            w[0],
            w[1]
        );
    }
    Ok(())
}

/// A `sessions tail` process writing to a file; killed (by pid) on drop.
struct Tailer {
    child: Child,
    out: PathBuf,
}

impl Tailer {
    fn start(d: &Daemon, args: &[&str]) -> Result<Tailer> {
        let out = d.tmp_dir().join(format!("tail-{}.out", next_id()));
        let mut cmd = d.cli_command(["sessions", "tail"]);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(File::create(&out)?)
            .stderr(File::create(out.with_extension("err"))?);
        let log_mark = d.log().matches("tail started").count();
        let child = cmd.spawn()?;
        // The daemon says when it serves the request: from then on nothing is missed.
        poll(
            "the daemon to start serving the tailer",
            Duration::from_secs(20),
            Duration::from_millis(20),
            || Ok((d.log().matches("tail started").count() > log_mark).then_some(())),
        )?;
        Ok(Tailer { child, out })
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    fn records(&self) -> Result<Vec<Value>> {
        let text = std::fs::read_to_string(&self.out)?;
        // The last line may be half written.
        Ok(text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect())
    }

    fn wait_for(&self, n: usize, timeout: Duration) -> Result<Vec<Value>> {
        let deadline = Instant::now() + timeout;
        loop {
            let records = self.records()?;
            if records.len() >= n {
                return Ok(records);
            }
            if Instant::now() >= deadline {
                bail!(
                    "tailer printed {} records, expected {n}; stderr: {}",
                    records.len(),
                    std::fs::read_to_string(self.out.with_extension("err")).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Tailer {
    fn drop(&mut self) {
        let _ = kill(self.pid(), Signal::SIGCONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn verify_names_the_record_whose_byte_was_flipped() -> Result<()> {
    require_root();
    let d = Daemon::start()?;
    let srv = Server::echo("127.0.0.2")?;
    closed_echoes(&d, &srv, 4, 100, "verify")?;
    let report = verify_ok(&d)?;
    ensure!(report["records"].as_u64() >= Some(8), "{report:#}");

    let seg = segments(&d)?.pop().context("no segment")?;
    let clean = std::fs::read(&seg)?;
    let (offset, payload) = frames(&clean)[3];
    let seq3: Value = serde_json::from_slice(payload)?;
    ensure!(seq3["seq"] == 3, "fourth record is not seq 3: {seq3}");
    let mut bad = clean.clone();
    bad[offset + 8 + payload.len() / 2] ^= 0x20;
    std::fs::write(&seg, &bad)?;
    for data_dir in [false, true] {
        let (ok, report) = verify(&d, data_dir)?;
        ensure!(!ok, "verify passed on an altered store");
        let p = &report["problem"];
        ensure!(
            p["seq"] == 3
                && p["offset"] == offset
                && p["segment"] == seg.file_name().unwrap().to_str().unwrap(),
            "verify named another record: {p}"
        );
    }
    std::fs::write(&seg, &clean)?;
    verify_ok(&d)?;
    Ok(())
}

#[test]
fn torn_tail_is_cut_on_restart_and_the_chain_still_verifies() -> Result<()> {
    require_root();
    let mut d = Daemon::start()?;
    let srv = Server::echo("127.0.0.2")?;
    let (first, _) = closed_echoes(&d, &srv, 3, 100, "torn-a")?;
    kill_9(&d)?;
    // Half a frame, as a write cut by power loss leaves it.
    let seg = segments(&d)?.pop().unwrap();
    let mut f = std::fs::OpenOptions::new().append(true).open(&seg)?;
    std::io::Write::write_all(&mut f, &[200, 0, 0, 0, 1, 2, 3, 4, b'{', b'"'])?;
    drop(f);
    let (_, offline) = verify(&d, true)?;
    ensure!(
        offline["notes"].to_string().contains("torn"),
        "no torn note: {offline:#}"
    );
    d.restart()?;
    ensure!(
        std::fs::metadata(seg.with_extension("log.torn"))?.len() == 10,
        "cut bytes not kept aside"
    );
    closed_echoes(&d, &srv, 3, 100, "torn-b")?;
    closed_from(&d, first.pid, 3)?;
    let report = verify_ok(&d)?;
    ensure!(report["notes"].as_array().unwrap().is_empty(), "{report:#}");
    Ok(())
}

#[test]
fn kill_9_during_50_transfers_keeps_every_completed_session() -> Result<()> {
    require_root();
    let mut d = Daemon::start()?;
    let srv = Server::echo("127.0.0.2")?;
    let (_, completed) = closed_echoes(&d, &srv, 20, 10_000, "before")?;

    // 50 transfers of 4 MB each: the client computes its payloads after all 50 are open,
    // so they are in flight for seconds.
    let args = [
        s("--connect"),
        srv.addr(),
        s("--conns"),
        s(50),
        s("--bytes"),
        s(4_000_000),
        s("--seed"),
        s("during"),
    ];
    let mut cmd = d.exec_command(&["--include-loopback"], &client_argv("echo-many", &args));
    let mut client = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn()?;
    let live = poll(
        "50 live connections",
        Duration::from_secs(60),
        Duration::from_millis(20),
        || {
            Ok(d.status()
                .ok()
                .filter(|s| s.live_connections >= 50)
                .map(|s| s.live_connections))
        },
    );
    std::thread::sleep(Duration::from_millis(300));
    let before = d.sessions()?;
    kill_9(&d)?;
    let live = live?;
    d.restart()?;
    let _ = wait_child(&mut client, RUN);

    let report = verify_ok(&d)?;
    let after = d.sessions()?;
    eprintln!(
        "{live} live at the kill; {} sessions before, {} after; {report}",
        before.len(),
        after.len()
    );
    for old in before.iter().chain(&completed) {
        let now = after
            .iter()
            .find(|x| x.id_str() == old.id_str())
            .with_context(|| format!("session {} lost: {}", old.id_str(), old.brief()))?;
        if old.outcome != "open" {
            ensure!(
                (now.outcome.as_str(), now.bytes_up, now.bytes_down)
                    == (old.outcome.as_str(), old.bytes_up, old.bytes_down),
                "session {} changed: {} -> {}",
                old.id_str(),
                old.brief(),
                now.brief()
            );
        }
    }
    // What was in flight is closed as interrupted by the restarted daemon (or ended just
    // before the kill).
    let in_flight: Vec<&Session> = before.iter().filter(|x| x.outcome == "open").collect();
    ensure!(!in_flight.is_empty(), "nothing was in flight at the kill");
    let interrupted = after.iter().filter(|x| x.outcome == "interrupted").count();
    ensure!(
        after.iter().all(|x| x.outcome != "open") && interrupted > 0,
        "sessions left open after the restart:\n{}",
        open_or_interrupted(&after)
    );
    Ok(())
}

fn open_or_interrupted(sessions: &[Session]) -> String {
    sessions
        .iter()
        .filter(|x| x.outcome == "open" || x.outcome == "interrupted")
        .map(Session::brief)
        .collect::<Vec<_>>()
        .join("\n")
}

fn wait_child(child: &mut Child, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while child.try_wait()?.is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            bail!("process {} did not exit in {timeout:?}", child.id());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

#[test]
fn tailer_started_before_traffic_sees_every_event_in_order() -> Result<()> {
    require_root();
    let (d, _policy) = unscanned_daemon()?;
    let srv = Server::echo("127.0.0.2")?;
    // Records the daemon wrote at start (policy) come before the tailer.
    let earlier = ndjson(&d, &["sessions", "export"])?.len();
    let tailer = Tailer::start(&d, &["-f", "--json"])?;
    let (_, sessions) = closed_echoes(&d, &srv, 30, 1000, "tail")?;
    let ids: Vec<String> = sessions.iter().map(Session::id_str).collect();
    let stored = ndjson(&d, &["sessions", "export"])?.split_off(earlier);
    let live = tailer.wait_for(stored.len(), SESSIONS)?;
    ensure!(
        seqs(&live) == seqs(&stored),
        "tailer saw {:?}\nstore has {:?}",
        seqs(&live),
        seqs(&stored)
    );
    check_consecutive(&live)?;
    let status: Value = d.cli_json(["status", "--json"])?;
    let store = &status["store"];
    ensure!(
        store["recorded"].as_u64() >= Some(stored.len() as u64)
            && store["lost"] == 0
            && store["queued"] == 0
            && store["bytes"].as_u64() > Some(0),
        "status: {store}"
    );
    let events = session_events(&live, &ids);
    ensure!(
        events.len() == 60,
        "expected a start and an end per session: {events:?}"
    );
    for id in &ids {
        let kinds: Vec<&str> = events
            .iter()
            .filter(|e| &e.0 == id)
            .map(|e| e.1.as_str())
            .collect();
        ensure!(kinds == ["start", "end"], "session {id}: {kinds:?}");
    }

    // The human form: one line per event.
    let human = d.cli_ok(["sessions", "tail", "--session", &ids[0]])?;
    let lines: Vec<&str> = human.lines().collect();
    ensure!(lines.len() == 2, "{human}");
    ensure!(
        lines[0].contains("start") && lines[0].contains(&srv.addr()) && lines[1].contains("end"),
        "{human}"
    );
    ensure!(
        !human.contains('\x1b'),
        "colour when not a terminal: {human:?}"
    );
    // Store events have lines of their own too: the policy put in force at start.
    let all = d.cli_ok(["sessions", "tail"])?;
    ensure!(
        all.lines()
            .any(|l| l.contains("policy") && l.contains("in force")),
        "{all}"
    );
    Ok(())
}

#[test]
fn tailer_with_since_sees_earlier_events_then_live_ones() -> Result<()> {
    require_root();
    let (d, _policy) = unscanned_daemon()?;
    let srv = Server::echo("127.0.0.2")?;
    // The daemon is younger than this: everything it recorded.
    let since = "10m";
    let (_, early) = closed_echoes(&d, &srv, 5, 100, "early")?;
    let early_ids: Vec<String> = early.iter().map(Session::id_str).collect();
    let tailer = Tailer::start(
        &d,
        &[
            "-f",
            "--json",
            "--since",
            since,
            "--exe",
            python().to_str().unwrap(),
        ],
    )?;
    let (_, late) = closed_echoes(&d, &srv, 5, 100, "late")?;
    let late_ids: Vec<String> = late.iter().map(Session::id_str).collect();
    let records = tailer.wait_for(20, SESSIONS)?;
    let mut seen_early = session_events(&records, &early_ids);
    let seen_late = session_events(&records, &late_ids);
    ensure!(
        seen_early.len() == 10 && seen_late.len() == 10,
        "{records:#?}"
    );
    ensure!(
        records.len() == 20,
        "the --exe filter let through others: {records:#?}"
    );
    check_consecutive(&records[..10])?;
    seen_early.dedup_by(|a, b| a.0 == b.0);
    // A filter that matches nothing prints nothing.
    let none = d.cli_ok(["sessions", "tail", "--since", since, "--exe", "no-such-exe"])?;
    ensure!(none.is_empty(), "{none}");
    Ok(())
}

#[test]
fn paused_tailer_gets_all_10000_events_after_it_resumes() -> Result<()> {
    require_root();
    let d = Daemon::start()?;
    let srv = Server::echo("127.0.0.2")?;
    let earlier = ndjson(&d, &["sessions", "export"])?.len();
    let tailer = Tailer::start(&d, &["-f", "--json"])?;
    let started = Instant::now();
    pings(&d, &srv, 500)?;
    let baseline = started.elapsed();
    let before = tailer.wait_for(1000, SESSIONS)?.len();

    kill(tailer.pid(), Signal::SIGSTOP)?;
    let paused_at = Instant::now();
    let mut slowest = Duration::ZERO;
    for _ in 0..10 {
        let t = Instant::now();
        pings(&d, &srv, 500)?;
        slowest = slowest.max(t.elapsed());
    }
    // All of it is recorded while the tailer is still stopped: it held nothing up.
    poll(
        "a start and an end recorded per connection",
        SESSIONS,
        Duration::from_millis(100),
        || {
            let records = verify_ok(&d)?["records"].as_u64().unwrap_or(0) as usize;
            Ok((records >= earlier + 11 * 1000).then_some(()))
        },
    )?;
    eprintln!("baseline run {baseline:?}, slowest run while paused {slowest:?}");
    ensure!(
        slowest < baseline * 4 + Duration::from_secs(5),
        "traffic slowed while the tailer was paused: {slowest:?} vs {baseline:?}"
    );
    if let Some(rest) = Duration::from_secs(10).checked_sub(paused_at.elapsed()) {
        std::thread::sleep(rest);
    }
    let printed_while_paused = tailer.records()?.len();
    let stored = ndjson(&d, &["sessions", "export"])?.split_off(earlier);
    ensure!(
        stored.len() >= before + 10_000,
        "only {} records written while paused",
        stored.len() - before
    );
    ensure!(
        printed_while_paused < stored.len(),
        "the tailer was not behind"
    );
    kill(tailer.pid(), Signal::SIGCONT)?;
    let resumed = Instant::now();
    let records = tailer.wait_for(stored.len(), Duration::from_secs(120))?;
    eprintln!(
        "{} records caught up in {:?}; test ran {:?}",
        records.len() - printed_while_paused,
        resumed.elapsed(),
        started.elapsed()
    );
    check_consecutive(&records)?;
    ensure!(
        seqs(&records) == seqs(&stored),
        "tailer and store differ: {} vs {} records",
        records.len(),
        stored.len()
    );
    Ok(())
}

/// `n` sequential connections, each sending `ping` and reading the echo, from one client.
fn pings(d: &Daemon, srv: &Server, n: usize) -> Result<ClientReport> {
    let args: Vec<String> = (0..n).flat_map(|_| [s("--connect"), srv.addr()]).collect();
    let out = run_with_timeout(
        &mut d.exec_command(&["--include-loopback"], &client_argv("connect", &args)),
        RUN,
    )?;
    let rep = parse_report(&out)?;
    let bad = rep
        .results
        .iter()
        .find(|r| r.error.is_some() || r.received != 5);
    ensure!(bad.is_none(), "a connection failed: {bad:?}");
    Ok(rep)
}

#[test]
fn export_by_time_range_and_replay_with_timing() -> Result<()> {
    require_root();
    let (d, _policy) = unscanned_daemon()?;
    let srv = Server::echo("127.0.0.2")?;
    let (a, _) = closed_echoes(&d, &srv, 2, 100, "a")?;
    std::thread::sleep(Duration::from_millis(1500));
    // One session held open for a second: its start and end are a second apart.
    let out = run_with_timeout(
        &mut d.exec_command(
            &["--include-loopback"],
            &[python().to_str().unwrap(), "-c", &format!(
                "import socket,time; s=socket.create_connection(('127.0.0.2',{})); s.sendall(b'x'); s.recv(1); time.sleep(1); s.shutdown(socket.SHUT_WR); s.recv(1); s.close()",
                srv.port()
            )],
        ),
        RUN,
    )?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let held = d.wait_for_matching(
        |x| {
            x.outcome == "closed"
                && x.identity.comm.starts_with("python")
                && x.identity.pid != a.pid
        },
        1,
        SESSIONS,
    )?;
    std::thread::sleep(Duration::from_millis(1500));
    closed_echoes(&d, &srv, 2, 100, "b")?;

    // The range from the held session's start to its end, as the store timed them.
    let id = held[0].id_str();
    let all = ndjson(&d, &["sessions", "export"])?;
    let in_sessions = all.iter().filter(|r| r["event"]["id"].is_u64()).count();
    ensure!(in_sessions == 10, "{in_sessions} session records in all");
    let times: Vec<&str> = all
        .iter()
        .filter(|r| r["event"]["id"].as_u64().map(|i| i.to_string()) == Some(id.clone()))
        .map(|r| r["at"].as_str().unwrap())
        .collect();
    ensure!(times.len() == 2, "{all:#?}");
    let range = ndjson(
        &d,
        &[
            "sessions", "export", "--since", times[0], "--until", times[1],
        ],
    )?;
    let ids: Vec<String> = range
        .iter()
        .filter_map(|r| r["event"]["id"].as_u64())
        .map(|i| i.to_string())
        .collect();
    ensure!(
        ids == [id.clone(), id.clone()],
        "export of the range: {range:#?}"
    );

    let t = Instant::now();
    let replay = d.cli_ok(["sessions", "replay", &id])?;
    let normal = t.elapsed();
    let t = Instant::now();
    d.cli_ok(["sessions", "replay", &id, "--speed", "10"])?;
    let fast = t.elapsed();
    ensure!(replay.lines().count() == 2, "{replay}");
    ensure!(
        normal >= Duration::from_millis(950),
        "replay took {normal:?}, the session lasted a second"
    );
    ensure!(
        fast < Duration::from_millis(800),
        "--speed 10 took {fast:?}"
    );
    let missing = d.cli(["sessions", "replay", "999999"])?;
    ensure!(
        !missing.status.success(),
        "replay of a missing session succeeded"
    );
    Ok(())
}

#[test]
fn retention_removes_old_segments_and_records_it() -> Result<()> {
    require_root();
    let d = Daemon::start_with(&["--segment-bytes", "2000", "--retain-bytes", "8000"])?;
    let srv = Server::echo("127.0.0.2")?;
    for i in 0..4 {
        // Not waiting for the sessions in the list: retention removes the early ones.
        echo_many(&d, &srv, 10, 100, &format!("ret-{i}"))?;
    }
    // Later removals may remove earlier retention records too: the newest one is kept.
    let records = poll(
        "a retention record",
        SESSIONS,
        Duration::from_millis(100),
        || {
            let records = ndjson(&d, &["sessions", "export"])?;
            let found = records.iter().any(|r| r["event"]["event"] == "retention");
            Ok(found.then_some(records))
        },
    )?;
    let segs = segments(&d)?;
    let first = segs[0].file_name().unwrap().to_str().unwrap().to_owned();
    ensure!(first != "segment-00000001.log", "nothing removed: {segs:?}");
    let total: u64 = segs
        .iter()
        .map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .sum();
    ensure!(total < 8000 + 64 * 1024, "store still {total} bytes");
    let removals: Vec<&Value> = records
        .iter()
        .filter(|r| r["event"]["event"] == "retention")
        .collect();
    ensure!(!removals.is_empty(), "no retention record");
    ensure!(
        removals.iter().all(|r| r["event"]["reason"] == "size"
            && !r["event"]["removed"].as_array().unwrap().is_empty()),
        "{removals:#?}"
    );
    let report = verify_ok(&d)?;
    ensure!(
        report["notes"].to_string().contains("retention"),
        "{report:#}"
    );
    let human = d.cli_ok(["sessions", "tail"])?;
    ensure!(human.contains("retention removed"), "{human}");
    Ok(())
}

#[test]
fn tail_filters_by_host_and_by_session() -> Result<()> {
    require_root();
    let (d, _policy) = unscanned_daemon()?;
    let a = Server::echo("127.0.0.2")?;
    let b = Server::echo("127.0.0.3")?;
    let to_a = pings(&d, &a, 3)?;
    let to_b = pings(&d, &b, 2)?;
    closed_from(&d, to_a.pid, 3)?;
    let b_ids: Vec<String> = closed_from(&d, to_b.pid, 2)?
        .iter()
        .map(Session::id_str)
        .collect();
    let only_b = ndjson(&d, &["sessions", "tail", "--json", "--host", "127.0.0.3"])?;
    ensure!(
        session_events(&only_b, &b_ids).len() == 4 && only_b.len() == 4,
        "--host 127.0.0.3: {only_b:#?}"
    );
    let one = ndjson(&d, &["sessions", "tail", "--json", "--session", &b_ids[1]])?;
    let kinds: Vec<&str> = one
        .iter()
        .map(|r| r["event"]["event"].as_str().unwrap_or(""))
        .collect();
    ensure!(
        kinds == ["start", "end"],
        "--session {}: {one:#?}",
        b_ids[1]
    );
    Ok(())
}

/// `sessions show ID --json` of every session equals its entry in `sessions list --json`.
fn show_matches_list(d: &Daemon) -> Result<usize> {
    let all: Vec<Value> = d.cli_json(["sessions", "list", "--json"])?;
    for s in &all {
        let id = s["id"].as_str().context("id")?;
        let shown: Value = d.cli_json(["sessions", "show", id, "--json"])?;
        ensure!(&shown == s, "show {id}: {shown:#}\nlist: {s:#}");
    }
    Ok(all.len())
}

fn span_files(d: &Daemon) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(d.data_dir().join("sessions"))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    v.retain(|p| p.extension().is_some_and(|e| e == "spans"));
    v.sort();
    Ok(v)
}

#[test]
fn show_reads_sessions_across_rolled_segments_also_after_kill_9() -> Result<()> {
    require_root();
    // Small segments: the sessions spread over many, most of them closed.
    let mut d = Daemon::start_with(&["--segment-bytes", "1500"])?;
    let srv = Server::echo("127.0.0.2")?;
    // In rounds: the writer rolls segments between batches, and one burst of connections
    // may land in a few large batches.
    for round in 0..4 {
        closed_echoes(&d, &srv, 3, 1000, &format!("spans{round}"))?;
    }
    ensure!(segments(&d)?.len() > 3, "segments: {:?}", segments(&d)?);
    ensure!(show_matches_list(&d)? == 12);
    let spans = span_files(&d)?;
    ensure!(spans.len() >= 3, "span indexes: {spans:?}");
    // A torn index (a crash mid-write) and a missing one, then kill -9: rebuilt when asked.
    std::fs::write(&spans[0], b"{\"segment_bytes\":")?;
    std::fs::remove_file(&spans[1])?;
    kill_9(&d)?;
    d.restart()?;
    ensure!(show_matches_list(&d)? == 12);
    ensure!(span_files(&d)?.len() >= spans.len());
    let unparsed = std::fs::read(&spans[0])?;
    ensure!(
        serde_json::from_slice::<Value>(&unparsed).is_ok(),
        "torn index not rebuilt"
    );
    // The newest few (the highest ids: concurrent connections may record their starts out of
    // id order), read from where they begin, in store order like the full list.
    let all: Vec<Value> = d.cli_json(["sessions", "list", "--json"])?;
    let last: Vec<Value> = d.cli_json(["sessions", "list", "--last", "3", "--json"])?;
    let id = |s: &Value| s["id"].as_str().and_then(|i| i.parse::<u64>().ok());
    let newest = all.iter().filter_map(id).max().context("no sessions")?;
    let expected: Vec<Value> = all
        .iter()
        .filter(|s| id(s).is_some_and(|i| i + 3 > newest))
        .cloned()
        .collect();
    ensure!(last == expected, "--last 3: {last:#?}");
    verify_ok(&d)?;
    Ok(())
}

fn file_name(p: &std::path::Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

/// Every directory and file under `root` (itself included) with its mode and owner.
fn walk(root: &std::path::Path) -> Result<Vec<(PathBuf, u32, u32, bool)>> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(path) = todo.pop() {
        let meta = std::fs::symlink_metadata(&path)?;
        if meta.is_dir() {
            for e in std::fs::read_dir(&path)? {
                todo.push(e?.path());
            }
        }
        out.push((path, meta.mode() & 0o7777, meta.uid(), meta.is_dir()));
    }
    Ok(out)
}

#[test]
fn every_file_the_daemon_creates_is_private_whatever_its_umask() -> Result<()> {
    require_root();
    // Small segments, so some close and `show` indexes them (span files).
    let mut d = Daemon::start_with_umask(0o000, &["--segment-bytes", "1000"])?;
    let srv = Server::echo("127.0.0.2")?;
    let (_, sessions) = closed_echoes(&d, &srv, 6, 100, "private")?;
    for s in &sessions {
        d.cli_ok(["sessions", "show", s.id.as_str().context("id")?])?;
    }
    // A clean stop writes the last checkpoint; the second start finds everything there.
    d.restart()?;
    let data = d.data_dir().to_path_buf();
    let open: Vec<String> = walk(&data)?
        .into_iter()
        .filter(|(_, mode, uid, dir)| *mode != if *dir { 0o700 } else { 0o600 } || *uid != 0)
        .map(|(p, mode, uid, _)| format!("{} {mode:o} uid {uid}", p.display()))
        .collect();
    ensure!(open.is_empty(), "not private to root: {open:#?}");
    // What the walk must have seen.
    for name in [
        "sessions/checkpoint.json",
        "sessions/checkpoint.key",
        "tls/ca-key.pem",
    ] {
        ensure!(data.join(name).exists(), "{name} not created");
    }
    ensure!(
        std::fs::read_dir(data.join("sessions"))?
            .any(|e| e.is_ok_and(|e| file_name(&e.path()).ends_with(".spans"))),
        "no span index created"
    );
    Ok(())
}

#[test]
fn a_flipped_length_bit_is_damage_kept_in_place_until_acknowledged() -> Result<()> {
    require_root();
    let mut d = Daemon::start()?;
    let srv = Server::echo("127.0.0.2")?;
    closed_echoes(&d, &srv, 6, 100, "damage-a")?;
    kill_9(&d)?;
    let seg = segments(&d)?.pop().context("no segment")?;
    let clean = std::fs::read(&seg)?;
    let all = frames(&clean);
    let (offset, payload) = all[all.len() / 2];
    let hit: Value = serde_json::from_slice(payload)?;
    let seq = hit["seq"].as_u64().context("seq")?;
    let kept: Vec<u64> = all
        .iter()
        .map(|(_, p)| {
            serde_json::from_slice::<Value>(p).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .filter(|&s| s != seq)
        .collect();
    // The record now claims 64 KiB more than the segment holds: a torn write, to a reader
    // that does not look past it.
    let mut bad = clean.clone();
    bad[offset + 2] ^= 0x01;
    std::fs::write(&seg, &bad)?;
    let names_it = |report: &Value| {
        let p = &report["problem"];
        p["seq"] == seq && p["offset"] == offset && p["segment"] == file_name(&seg)
    };
    let (ok, offline) = verify(&d, true)?;
    ensure!(!ok && names_it(&offline), "damage not named: {offline:#}");

    d.restart()?;
    ensure!(
        std::fs::read(&seg)? == bad,
        "the damaged segment was changed"
    );
    ensure!(
        !seg.with_extension("log.torn").exists(),
        "records moved to .torn"
    );
    let (ok, report) = verify(&d, false)?;
    ensure!(
        !ok && names_it(&report),
        "damage not named after restart: {report:#}"
    );
    // The records after the damage are still read.
    let exported = seqs(&ndjson(&d, &["sessions", "export"])?);
    let lost: Vec<&u64> = kept.iter().filter(|s| !exported.contains(s)).collect();
    ensure!(lost.is_empty(), "records {lost:?} no longer read");
    // New traffic goes to a new segment; verify keeps failing.
    let (report_b, _) = closed_echoes(&d, &srv, 2, 100, "damage-b")?;
    let newest = segments(&d)?.pop().unwrap();
    ensure!(newest != seg, "still writing to the damaged segment");
    let new_records: Vec<Value> = frames(&std::fs::read(&newest)?)
        .iter()
        .map(|(_, p)| serde_json::from_slice(p))
        .collect::<serde_json::Result<_>>()?;
    ensure!(
        new_records[0]["event"]["event"] == "damage"
            && new_records[0]["event"]["segment"] == file_name(&seg),
        "the damage is not the new segment's first record: {:#}",
        new_records[0]
    );
    ensure!(
        new_records
            .iter()
            .any(|r| r["event"]["identity"]["pid"] == report_b.pid),
        "new sessions not in the new segment"
    );
    ensure!(
        !verify(&d, false)?.0,
        "verify passed on unacknowledged damage"
    );

    let ack = d.cli(["sessions", "acknowledge-damage", &file_name(&seg)])?;
    ensure!(ack.status.success(), "acknowledge-damage failed: {ack:?}");
    let report = verify_ok(&d)?;
    let damage = &report["damage"][0];
    ensure!(
        damage["segment"] == file_name(&seg) && damage["acknowledged_by"]["uid"] == 0,
        "acknowledged damage not reported: {report:#}"
    );
    let acks: Vec<Value> = ndjson(&d, &["sessions", "export"])?
        .into_iter()
        .filter(|r| r["event"]["action"] == "acknowledged")
        .collect();
    ensure!(
        acks.len() == 1
            && acks[0]["event"]["by"]["uid"] == 0
            && acks[0]["event"]["by"]["pid"].is_u64(),
        "who acknowledged is not recorded: {acks:#?}"
    );
    Ok(())
}

/// The checkpoint's `seq`, once the file exists.
fn checkpoint_seq(d: &Daemon) -> Result<Option<u64>> {
    let path = d.data_dir().join("sessions/checkpoint.json");
    match std::fs::read(&path) {
        Ok(b) => Ok(serde_json::from_slice::<Value>(&b)?["seq"].as_u64()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

#[test]
fn a_tail_cut_after_the_checkpoint_or_a_forged_checkpoint_fails_verify() -> Result<()> {
    require_root();
    let mut d = Daemon::start()?;
    let srv = Server::echo("127.0.0.2")?;
    closed_echoes(&d, &srv, 4, 100, "anchor")?;
    let last = verify_ok(&d)?["last_seq"].as_u64().context("no records")?;
    poll(
        "a checkpoint of the head",
        SESSIONS,
        Duration::from_millis(100),
        || Ok(checkpoint_seq(&d)?.filter(|&s| s >= last)),
    )?;
    kill_9(&d)?;
    let seg = segments(&d)?.pop().unwrap();
    let clean = std::fs::read(&seg)?;
    let all = frames(&clean);
    // Whole records off the end: every link that is left still holds.
    let (cut_at, first_cut) = all[all.len() - 2];
    let first_cut = serde_json::from_slice::<Value>(first_cut)?["seq"].clone();
    std::fs::write(&seg, &clean[..cut_at])?;
    let (ok, report) = verify(&d, true)?;
    let p = &report["problem"];
    ensure!(
        !ok && p["seq"] == first_cut && p["reason"].to_string().contains("missing tail"),
        "cut tail not reported: {report:#}"
    );

    std::fs::write(&seg, &clean)?;
    ensure!(verify(&d, true)?.0, "the intact store fails");
    let checkpoint = d.data_dir().join("sessions/checkpoint.json");
    let signed = std::fs::read_to_string(&checkpoint)?;
    let mut forged: Value = serde_json::from_str(&signed)?;
    forged["seq"] = Value::from(last - 1);
    std::fs::write(&checkpoint, serde_json::to_vec(&forged)?)?;
    let (ok, report) = verify(&d, true)?;
    ensure!(
        !ok && report["problem"]["reason"].to_string().contains("altered"),
        "forged checkpoint accepted: {report:#}"
    );

    // A daemon started on it records that it could not trust it, and anchors anew.
    d.restart()?;
    let (ok, report) = verify(&d, false)?;
    ensure!(
        !ok && report["damage"][0]["kind"] == "untrusted_checkpoint",
        "forged checkpoint forgotten after a restart: {report:#}"
    );
    // Its exit status says whether the forged checkpoint was replaced yet.
    let ack = d.cli([
        "sessions",
        "acknowledge-damage",
        "checkpoint.json",
        "--json",
    ])?;
    let report: Value = serde_json::from_slice(&ack.stdout)?;
    ensure!(
        report["damage"][0]["acknowledged_by"]["uid"] == 0,
        "not acknowledged: {report:#}"
    );
    poll(
        "verify to pass",
        SESSIONS,
        Duration::from_millis(100),
        || Ok(verify(&d, true)?.0.then_some(())),
    )?;
    verify_ok(&d)?;

    // A daemon started on a cut store records the cut; verify keeps failing on it.
    kill_9(&d)?;
    std::fs::write(&checkpoint, &signed)?;
    std::fs::write(&seg, &clean[..cut_at])?;
    d.restart()?;
    let (ok, report) = verify(&d, false)?;
    ensure!(
        !ok && report["damage"][0]["kind"] == "missing_tail",
        "cut tail forgotten after a restart: {report:#}"
    );
    Ok(())
}
