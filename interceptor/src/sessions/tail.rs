//! Following the store: `sessions tail`, `replay` and `export` all read records from the
//! segment files, from a per-tailer position, up to what the writer has published.
//!
//! Tailers never sit between the proxy and the disk: the writer only publishes its position
//! (a `watch`, which never blocks), and each tailer reads the bytes from the page cache at its
//! own pace. A tailer that stops reading (a paused terminal, a slow pipe) only falls behind in
//! the files, and catches up when it reads again; nothing is queued for it in memory, so
//! nothing is dropped.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::chain::{Link, Record};
use super::record::{Event, SessionStart};
use super::segment::{Frames, Payloads, Position, read_frames, segment_number, segment_paths};
use super::store::Store;

/// How much a tailer reads from the files per step.
const READ_BUDGET: usize = 1 << 20;
/// Records are stamped by the threads that append them, so their order and their times may
/// disagree by a little; an `until` range keeps reading this much past its end.
const CLOCK_SLACK: Duration = Duration::from_secs(1);

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TailRequest {
    /// Start with the records from this time on (default: only new ones when following,
    /// everything otherwise).
    #[serde(with = "humantime_serde::option")]
    pub since: Option<SystemTime>,
    /// Stop after the records up to this time.
    #[serde(with = "humantime_serde::option")]
    pub until: Option<SystemTime>,
    /// Keep streaming new records as they are written.
    pub follow: bool,
    pub filter: TailFilter,
}

/// Which sessions to show; empty fields match everything. Store events (retention) are shown
/// unless a filter is set.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TailFilter {
    pub session: Option<u64>,
    /// Container id or id prefix.
    pub container: Option<String>,
    /// Executable path, or its file name, or the process name.
    pub exe: Option<String>,
    /// Destination address or host name (also matched against TLS SNI and HTTP authority).
    pub host: Option<String>,
}

impl TailFilter {
    fn is_empty(&self) -> bool {
        self.session.is_none()
            && self.container.is_none()
            && self.exe.is_none()
            && self.host.is_none()
    }

    /// The identity filters (container, exe), decided at the session's start.
    fn identity_matches(&self, s: &SessionStart) -> bool {
        let id = &s.identity;
        let container = self.container.as_deref().is_none_or(|want| {
            id.container
                .as_ref()
                .is_some_and(|c| c.id.starts_with(want))
        });
        let exe = self.exe.as_deref().is_none_or(|want| {
            id.comm == want
                || id.exe.as_deref().is_some_and(|exe| {
                    exe == want || Path::new(exe).file_name().is_some_and(|n| n == want)
                })
        });
        container && exe
    }

    fn destination_matches(&self, destination: &str) -> bool {
        self.host
            .as_deref()
            .is_none_or(|want| host_of(destination) == want.trim_matches(['[', ']']))
    }

    /// A later event naming the host the session's destination address did not.
    fn names_host(&self, event: &Event) -> bool {
        let Some(want) = self.host.as_deref() else {
            return false;
        };
        match event {
            Event::Tls(t) => t.sni.as_deref() == Some(want),
            Event::Http(h) => h.authority.as_deref().map(host_of) == Some(want),
            _ => false,
        }
    }
}

/// The host part of `host:port`, `[v6]:port`, or a bare host.
fn host_of(addr: &str) -> &str {
    if let Some(rest) = addr.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match addr.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && port.parse::<u16>().is_ok() => host,
        _ => addr,
    }
}

/// Decides per record, remembering what each session's start decided.
struct Matcher {
    filter: TailFilter,
    sessions: HashMap<u64, SessionMatch>,
}

#[derive(Clone, Copy)]
struct SessionMatch {
    identity: bool,
    host: bool,
}

impl Matcher {
    /// Decodes the record only when a filter needs its event (the common unfiltered tail
    /// forwards the stored bytes as they are).
    fn matches(&mut self, payload: &[u8]) -> bool {
        if self.filter.is_empty() {
            return true;
        }
        match serde_json::from_slice::<Record>(payload) {
            Ok(record) => self.event_matches(&record.event),
            Err(_) => false,
        }
    }

    fn event_matches(&mut self, event: &Event) -> bool {
        let id = event.session_id();
        if self.filter.session.is_some_and(|want| id != want) {
            return false;
        }
        let f = &self.filter;
        if f.container.is_none() && f.exe.is_none() && f.host.is_none() {
            return true;
        }
        let m = match event {
            Event::Start(s) => {
                let m = SessionMatch {
                    identity: f.identity_matches(s),
                    host: f.destination_matches(&s.destination),
                };
                self.sessions.insert(id, m);
                m
            }
            // A session whose start came before this tailer's first record is not shown.
            _ => match self.sessions.get_mut(&id) {
                Some(m) => {
                    m.host |= f.names_host(event);
                    *m
                }
                None => return false,
            },
        };
        if matches!(event, Event::End(_)) {
            self.sessions.remove(&id);
        }
        m.identity && m.host
    }
}

/// The time range of a request.
struct Window {
    since: Option<SystemTime>,
    until: Option<SystemTime>,
}

enum Place {
    Before,
    Within,
    /// After `until`, but maybe followed by records stamped a little earlier.
    After,
    /// Well past `until`: nothing more can be within.
    Past,
}

impl Window {
    fn place(&self, payload: &[u8]) -> Place {
        if self.since.is_none() && self.until.is_none() {
            return Place::Within;
        }
        let Ok(link) = serde_json::from_slice::<Link>(payload) else {
            return Place::Before;
        };
        match (self.since, self.until) {
            (Some(since), _) if link.at < since => Place::Before,
            (_, Some(until)) if link.at > until + CLOCK_SLACK => Place::Past,
            (_, Some(until)) if link.at > until => Place::After,
            _ => Place::Within,
        }
    }
}

/// Serves one tail request: writes every matching record as a JSON line, from the request's
/// starting point up to the end of the store, then (when following) every new one.
pub async fn stream<W: AsyncWrite + Unpin>(
    store: &Store,
    request: TailRequest,
    out: &mut W,
) -> io::Result<()> {
    let _counted = store.metrics().tailer();
    let dir = store.dir().to_owned();
    let mut written = store.written();
    let mut end = *written.borrow_and_update();
    let session = request.filter.session;
    let mut pos = match (request.since, session, request.follow) {
        (Some(since), ..) => {
            let dir = dir.clone();
            tokio::task::spawn_blocking(move || start_for(&dir, since))
                .await
                .map_err(io::Error::other)??
        }
        (None, Some(id), follow) => match store.starts().find(id) {
            Some(start) => start,
            None if follow => end,
            None => return Ok(()),
        },
        (None, None, true) => end,
        (None, None, false) => Position::default(),
    };
    let mut matcher = Matcher {
        filter: request.filter,
        sessions: HashMap::new(),
    };
    let window = Window {
        since: request.since,
        until: request.until,
    };
    loop {
        while pos < end {
            let (frames, next) = read_step(&dir, pos, end).await?;
            if next == pos {
                break; // damaged or missing: wait for more to be written
            }
            pos = next;
            let mut lines = Vec::with_capacity(READ_BUDGET);
            for (_, payload) in frames {
                match window.place(&payload) {
                    Place::Before | Place::After => continue,
                    Place::Past => {
                        out.write_all(&lines).await?;
                        return out.flush().await;
                    }
                    Place::Within => {}
                }
                if matcher.matches(&payload) {
                    lines.extend_from_slice(&payload);
                    lines.push(b'\n');
                    // One session, not following: its end is the end of the stream.
                    if session.is_some() && !request.follow && is_end(&payload) {
                        out.write_all(&lines).await?;
                        return out.flush().await;
                    }
                }
            }
            out.write_all(&lines).await?;
        }
        out.flush().await?;
        if !request.follow || written.changed().await.is_err() {
            return Ok(());
        }
        end = *written.borrow_and_update();
    }
}

fn is_end(payload: &[u8]) -> bool {
    serde_json::from_slice::<Link>(payload).is_ok_and(|l| l.event.kind == "end")
}

async fn read_step(dir: &Path, pos: Position, end: Position) -> io::Result<(Payloads, Position)> {
    let dir: PathBuf = dir.to_owned();
    tokio::task::spawn_blocking(move || read_frames(&dir, pos, end, READ_BUDGET))
        .await
        .map_err(io::Error::other)?
}

/// Where to start reading for records from `since` on: the start of the last segment whose
/// first record is not newer than `since` (records before `since` are then skipped).
fn start_for(dir: &Path, since: SystemTime) -> io::Result<Position> {
    let mut start = Position::default();
    for path in segment_paths(dir)? {
        let number = segment_number(&path).expect("listed as a segment");
        let mut head = vec![0; 64 << 10];
        let n = read_prefix(&path, &mut head)?;
        let first = Frames::new(&head[..n])
            .next()
            .and_then(|(_, p)| serde_json::from_slice::<Link>(p).ok());
        match first {
            Some(link) if link.at > since => break,
            _ => {
                start = Position {
                    segment: number,
                    offset: 0,
                }
            }
        }
    }
    Ok(start)
}

fn read_prefix(path: &Path, buf: &mut [u8]) -> io::Result<usize> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}
