//! `sessions tail | replay | export | verify`.

use std::io::{self, BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};

use super::args::TailArgs;
use super::print::{self, Paint};
use crate::control::client;
use crate::control::protocol::Request;
use crate::sessions::Event;
use crate::sessions::chain::Record;
use crate::sessions::damage::DamageEvent;
use crate::sessions::record::{ControlChange, ControlOutcome};
use crate::sessions::retention::RetentionPolicy;
use crate::sessions::store::StoreOptions;
use crate::sessions::tail::{TailFilter, TailRequest};
use crate::sessions::verify::{self, VerifyReport};
use interceptor::approvals::{ApprovalEvent, Approver};

/// `--since`/`--until`: an RFC 3339 time, or a duration meaning that long ago.
pub fn parse_time(text: &str) -> Result<SystemTime, String> {
    if let Ok(t) = humantime::parse_rfc3339_weak(text) {
        return Ok(t);
    }
    humantime::parse_duration(text)
        .map(|ago| SystemTime::now() - ago)
        .map_err(|_| format!("{text:?} is neither an RFC 3339 time nor a duration (10m, 2h)"))
}

pub fn tail(socket: &Path, a: TailArgs) -> anyhow::Result<i32> {
    let request = TailRequest {
        since: a.since,
        until: None,
        follow: a.follow,
        filter: TailFilter {
            session: a.session,
            container: a.container,
            exe: a.exe,
            host: a.host,
        },
    };
    let paint = Paint::stdout(a.json);
    print_stream(socket, request, |out, line| {
        if a.json {
            writeln!(out, "{line}")
        } else {
            match serde_json::from_str::<Record>(line) {
                Ok(record) => writeln!(out, "{}", human(&record, paint)),
                Err(_) => writeln!(out, "{line}"),
            }
        }
    })
}

pub fn export(
    socket: &Path,
    since: Option<SystemTime>,
    until: Option<SystemTime>,
) -> anyhow::Result<i32> {
    let request = TailRequest {
        since,
        until,
        ..Default::default()
    };
    print_stream(socket, request, |out, line| writeln!(out, "{line}"))
}

/// Streams records to stdout, flushing whenever the daemon has nothing more buffered; a
/// closed stdout (`| head`) ends quietly.
fn print_stream(
    socket: &Path,
    request: TailRequest,
    mut print: impl FnMut(&mut dyn Write, &str) -> io::Result<()>,
) -> anyhow::Result<i32> {
    let mut reader = client::stream(socket, &Request::Tail(request))?;
    let mut out = io::BufWriter::new(io::stdout().lock());
    let mut line = String::new();
    loop {
        line.clear();
        if reader
            .read_line(&mut line)
            .context("reading from the daemon")?
            == 0
        {
            break;
        }
        let mut done = print(&mut out, line.trim_end());
        if done.is_ok() && reader.buffer().is_empty() {
            done = out.flush();
        }
        match done {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(0),
            Err(e) => return Err(e.into()),
        }
    }
    match out.flush() {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(0),
    }
}

pub fn replay(socket: &Path, id: &str, speed: f64, json: bool) -> anyhow::Result<i32> {
    if !(speed > 0.0 && speed.is_finite()) {
        bail!("--speed must be a positive number");
    }
    let session: u64 = id
        .parse()
        .with_context(|| format!("no session with id {id}"))?;
    let request = TailRequest {
        filter: TailFilter {
            session: Some(session),
            ..Default::default()
        },
        ..Default::default()
    };
    let mut records = Vec::new();
    for line in client::stream(socket, &Request::Tail(request))?.lines() {
        let line = line.context("reading from the daemon")?;
        let record: Record = serde_json::from_str(&line).context("decoding a record")?;
        records.push((record, line));
    }
    if records.is_empty() {
        bail!("no session with id {id}");
    }
    let paint = Paint::stdout(json);
    let mut out = io::stdout().lock();
    let mut previous = records[0].0.at;
    for (record, line) in &records {
        let gap = record.at.duration_since(previous).unwrap_or_default();
        std::thread::sleep(Duration::from_secs_f64(gap.as_secs_f64() / speed));
        previous = record.at;
        let shown = if json {
            writeln!(out, "{line}")
        } else {
            writeln!(out, "{}", human(record, paint))
        };
        if let Err(e) = shown.and_then(|()| out.flush()) {
            if e.kind() == io::ErrorKind::BrokenPipe {
                break;
            }
            return Err(e.into());
        }
    }
    Ok(0)
}

pub fn verify(socket: &Path, data_dir: Option<PathBuf>, json: bool) -> anyhow::Result<i32> {
    let report: VerifyReport = match data_dir {
        Some(dir) => {
            let dir = dir.join("sessions");
            verify::verify(&dir, None).with_context(|| format!("reading {}", dir.display()))?
        }
        None => client::call(socket, &Request::Verify)?,
    };
    print_report(&report, json)
}

pub fn acknowledge_damage(
    socket: &Path,
    segment: String,
    reason: Option<String>,
    json: bool,
) -> anyhow::Result<i32> {
    let report: VerifyReport =
        client::call(socket, &Request::AcknowledgeDamage { segment, reason })?;
    print_report(&report, json)
}

/// A verify report; exit status 1 when it names a problem.
fn print_report(report: &VerifyReport, json: bool) -> anyhow::Result<i32> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        for note in &report.notes {
            println!("note: {note}");
        }
        for d in &report.damage {
            match &d.acknowledged_by {
                Some(by) => println!(
                    "damage (acknowledged by {by} pid {}): {}",
                    by.pid,
                    d.damage.describe()
                ),
                None => println!("DAMAGE: {}", d.damage.describe()),
            }
        }
        if let Some(c) = &report.checkpoint {
            println!(
                "checkpoint: seq {} hash {} signed {} by key {}",
                c.head.seq,
                c.head.hash,
                humantime::format_rfc3339_seconds(c.at),
                c.key
            );
        }
        match &report.problem {
            None => println!(
                "ok: {} records in {} segments verify; head {}",
                report.records,
                report.segments,
                report
                    .head
                    .map_or_else(|| "(empty store)".to_owned(), |h| h.to_string())
            ),
            Some(p) => println!(
                "FAILED: record {} at {} offset {} does not verify: {}",
                p.seq.map_or_else(|| "?".to_owned(), |s| s.to_string()),
                p.segment,
                p.offset,
                p.reason
            ),
        }
    }
    Ok(if report.problem.is_some() { 1 } else { 0 })
}

/// One compact line per record; with colour, outcomes, exchanges and store events stand out.
fn human(r: &Record, p: Paint) -> String {
    let paint = |code: &str, text: String| p.paint(code, text);
    let time = humantime::format_rfc3339_millis(r.at);
    let id = r.event.session_id();
    let body = match &r.event {
        Event::Start(s) => {
            let who = &s.identity;
            let container = who
                .container
                .as_ref()
                .map(|c| format!("  container {}", &c.id[..c.id.len().min(12)]))
                .unwrap_or_default();
            paint(
                Paint::CYAN,
                format!(
                    "start  {}[{}] {} -> {}{container}",
                    who.comm,
                    who.pid,
                    who.exe.as_deref().unwrap_or("?"),
                    s.destination
                ),
            )
        }
        Event::End(e) => {
            let text = format!(
                "end    {:?} up {} down {}{}",
                e.outcome,
                e.bytes_up,
                e.bytes_down,
                e.error
                    .as_deref()
                    .map(|x| format!("  ({x})"))
                    .unwrap_or_default()
            );
            let ok = matches!(e.outcome, crate::sessions::Outcome::Closed);
            paint(if ok { Paint::GREEN } else { Paint::RED }, text)
        }
        Event::Http(h) => format!("http   {}", print::exchange_line(h, 0, p)),
        Event::Tls(t) => format!("tls    {}", print::tls_line(t, p)),
        Event::Secret(f) => format!("secret {}", print::finding_line(f, p)),
        Event::Stream(d) => format!("stream {}", print::stream_line(d)),
        Event::ToolCall(t) => format!("tool   {}", print::tool_line(t)),
        Event::McpServer(m) => format!("mcp    {}", print::mcp_server_line(m)),
        Event::Approval(a) => approval_line(a, p),
        Event::Control(c) => control_line(c, p),
        Event::PolicyLoaded(pl) => paint(
            Paint::YELLOW,
            format!(
                "policy {} in force ({} rules, {}), sha256 {}",
                pl.path,
                pl.rules,
                pl.trigger,
                &pl.sha256[..pl.sha256.len().min(12)]
            ),
        ),
        Event::Retention(ret) => paint(
            Paint::YELLOW,
            format!(
                "store  retention removed {} segment(s) ({})",
                ret.removed.len(),
                ret.reason
            ),
        ),
        Event::Damage(DamageEvent::Found(d)) => {
            paint(Paint::RED, format!("store  DAMAGE {}", d.describe()))
        }
        Event::Damage(DamageEvent::Acknowledged { damage, by, .. }) => paint(
            Paint::YELLOW,
            format!(
                "store  damage acknowledged by {by} pid {}: {}",
                by.pid,
                damage
                    .iter()
                    .map(|d| format!("{} offset {}", d.segment, d.offset))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ),
    };
    if id == 0 {
        format!("{time}  {:>6}  {body}", "-")
    } else {
        format!("{time}  #{id:<5}  {body}")
    }
}

/// An approval's request and its fate: held requests stand out, decisions say by whom.
fn approval_line(a: &ApprovalEvent, p: Paint) -> String {
    let who = |by: &Approver| by.user.clone().unwrap_or_else(|| format!("uid {}", by.uid));
    let why = |reason: &Option<String>| {
        reason
            .as_deref()
            .map(|r| format!(": {r}"))
            .unwrap_or_default()
    };
    let (code, text) = match a {
        ApprovalEvent::Created(h) => (
            Paint::YELLOW,
            format!(
                "approval #{} HELD for session {} by rule {}: {} {}",
                h.id,
                h.session,
                h.rule,
                h.destination,
                h.request_line.as_deref().unwrap_or("(connection)")
            ),
        ),
        ApprovalEvent::Approved {
            id,
            by,
            reason,
            grant,
        } => (
            Paint::GREEN,
            format!(
                "approval #{id} approved by {}{}{}",
                who(by),
                why(reason),
                grant
                    .as_ref()
                    .map(|g| format!(" (grant #{})", g.id))
                    .unwrap_or_default()
            ),
        ),
        ApprovalEvent::Denied { id, by, reason } => (
            Paint::RED,
            format!("approval #{id} denied by {}{}", who(by), why(reason)),
        ),
        ApprovalEvent::Expired { id } => (Paint::RED, format!("approval #{id} expired")),
        ApprovalEvent::Revoked { grant, by } => (
            Paint::YELLOW,
            format!("approval grant #{grant} revoked by {}", who(by)),
        ),
    };
    p.paint(code, text)
}

/// A change on the control socket: what, by whom, and what became of it.
fn control_line(c: &ControlChange, p: Paint) -> String {
    let by = format!("{} pid {}", c.caller, c.caller.pid);
    let (code, text) = match &c.outcome {
        ControlOutcome::Done { changed } => (
            Paint::YELLOW,
            format!("control {} by {by}: {changed}", c.change),
        ),
        ControlOutcome::Refused { reason } => (
            Paint::RED,
            format!("control {} by {by} REFUSED: {reason}", c.change),
        ),
        ControlOutcome::Failed { error } => (
            Paint::RED,
            format!("control {} by {by} failed: {error}", c.change),
        ),
    };
    p.paint(code, text)
}

impl super::args::RunArgs {
    pub fn store_options(&self) -> StoreOptions {
        StoreOptions {
            sync_interval: self.sync_interval,
            segment_bytes: self.segment_bytes,
            retention: RetentionPolicy {
                max_age: self.retain_age,
                max_bytes: self.retain_bytes,
            },
            checkpoint_interval: Some(self.checkpoint_interval),
        }
    }
}
