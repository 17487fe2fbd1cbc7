//! `sessions tail | replay | export | verify`.

use std::io::{self, BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};

use super::args::TailArgs;
use crate::control::client;
use crate::control::protocol::Request;
use crate::sessions::Event;
use crate::sessions::chain::Record;
use crate::sessions::retention::RetentionPolicy;
use crate::sessions::store::StoreOptions;
use crate::sessions::tail::{TailFilter, TailRequest};
use crate::sessions::verify::{self, VerifyReport};

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
    let colour = !a.json && io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    print_stream(socket, request, |out, line| {
        if a.json {
            writeln!(out, "{line}")
        } else {
            match serde_json::from_str::<Record>(line) {
                Ok(record) => writeln!(out, "{}", human(&record, colour)),
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
    let colour = !json && io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let mut out = io::stdout().lock();
    let mut previous = records[0].0.at;
    for (record, line) in &records {
        let gap = record.at.duration_since(previous).unwrap_or_default();
        std::thread::sleep(Duration::from_secs_f64(gap.as_secs_f64() / speed));
        previous = record.at;
        let shown = if json {
            writeln!(out, "{line}")
        } else {
            writeln!(out, "{}", human(record, colour))
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
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for note in &report.notes {
            println!("note: {note}");
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
fn human(r: &Record, colour: bool) -> String {
    const CYAN: &str = "36";
    const GREEN: &str = "32";
    const RED: &str = "1;31";
    const BOLD: &str = "1";
    const YELLOW: &str = "33";
    let paint = |code: &str, text: String| {
        if colour {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text
        }
    };
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
                CYAN,
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
            paint(if ok { GREEN } else { RED }, text)
        }
        Event::Http(h) => paint(
            BOLD,
            format!(
                "http   {} {}{} -> {}  {}",
                h.method,
                h.authority.as_deref().unwrap_or(""),
                h.path,
                h.status
                    .map_or_else(|| "no response".into(), |s| s.to_string()),
                humantime::format_duration(Duration::from_millis(h.duration.as_millis() as u64))
            ),
        ),
        Event::Secret(f) => paint(
            RED,
            format!(
                "secret {} {:?} {} (hash {}){}",
                f.finding.rule,
                f.direction,
                f.location,
                f.finding.hash,
                if f.finding.forwarded_unmasked > 0 {
                    "  PARTLY FORWARDED"
                } else {
                    "  masked"
                }
            ),
        ),
        Event::PolicyLoaded(p) => paint(
            YELLOW,
            format!(
                "policy {} in force ({} rules, {}), sha256 {}",
                p.path,
                p.rules,
                p.trigger,
                &p.sha256[..p.sha256.len().min(12)]
            ),
        ),
        Event::Retention(ret) => paint(
            YELLOW,
            format!(
                "store  retention removed {} segment(s) ({})",
                ret.removed.len(),
                ret.reason
            ),
        ),
        other => {
            let json = serde_json::to_value(other).unwrap_or_default();
            let kind = json["event"].as_str().unwrap_or("event").to_owned();
            paint(YELLOW, format!("{kind:<6} {json}"))
        }
    };
    if id == 0 {
        format!("{time}  {:>6}  {body}", "-")
    } else {
        format!("{time}  #{id:<5}  {body}")
    }
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
        }
    }
}
