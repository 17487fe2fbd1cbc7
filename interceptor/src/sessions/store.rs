//! Durable, append-only, hash-chained event store.
//!
//! Events are appended as [`Record`]s (sequence number, time, hash of the previous record,
//! event) to segment files in frames that detect a torn write (see [`super::segment`]). One
//! writer thread owns the files: the proxy hands it events through an unbounded channel and
//! never waits on the disk. The writer fsyncs at the sync interval and after every batch that
//! ends a session, rolls segments at a size limit, applies retention, and publishes how far
//! the store is written so tailers can follow it without being in the proxy's way.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;

use super::chain::{Hash, Link, Record, RecordRef};
use super::index::StartIndex;
use super::record::{Event, Outcome, Session, SessionEnd};
use super::retention::{RemovedSegment, Retention, RetentionPolicy, SegmentMeta};
use super::segment::{Frames, Position, encode_frame, segment_name, segment_number, segment_paths};
use super::spans::{self, Spans};
use crate::metrics::Metrics;

/// How long the writer lets events gather after a write.
const BATCH_WINDOW: Duration = Duration::from_millis(2);
/// How long a session-end fsync waits for others to share it.
const GROUP_COMMIT: Duration = Duration::from_millis(5);
/// Largest batch written at once.
const BATCH_BYTES: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("session store {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "session store {path}: record at offset {offset} is not in the chained format ({source}); \
         stores written before tamper evidence (issue 6) are not read: move the directory away"
    )]
    Format {
        path: PathBuf,
        offset: usize,
        source: serde_json::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

#[derive(Clone, Copy, Debug)]
pub struct StoreOptions {
    /// Longest time a written record waits for fsync.
    pub sync_interval: Duration,
    /// A segment is closed and a new one started past this size.
    pub segment_bytes: u64,
    pub retention: RetentionPolicy,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            sync_interval: Duration::from_secs(1),
            segment_bytes: 64 << 20,
            retention: RetentionPolicy::default(),
        }
    }
}

/// Handle for appending events and following the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    dir: PathBuf,
    tx: mpsc::Sender<(SystemTime, Event)>,
    next_id: Arc<AtomicU64>,
    written: watch::Receiver<Position>,
    counters: Arc<Counters>,
    starts: StartIndex,
    metrics: Arc<Metrics>,
}

/// What `interceptor status` shows of the store.
#[derive(Clone, Copy, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct StoreStatus {
    /// Records written since the daemon started.
    pub recorded: u64,
    /// Handed to the store, not yet written.
    pub queued: u64,
    /// Lost because the writer had stopped or a write failed (never because of load).
    pub lost: u64,
    /// Size of the segments on disk.
    pub bytes: u64,
}

#[derive(Default)]
struct Counters {
    appended: AtomicU64,
    written: AtomicU64,
    send_lost: AtomicU64,
    write_lost: AtomicU64,
    bytes: AtomicU64,
}

/// The writer thread; `finish` drains every queued event to disk and syncs.
pub struct StoreWriter {
    thread: JoinHandle<()>,
}

impl Store {
    /// Opens (or creates) the store in `dir`, cuts a torn tail, and starts the writer.
    pub fn open(dir: &Path, options: StoreOptions) -> Result<(Store, StoreWriter), StoreError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        spans::remove_stale_temporaries(dir).map_err(io_err(dir))?;
        let state = recover(dir)?;
        let max_id = state.max_session_id;
        let (written_tx, written) = watch::channel(state.end());
        let interrupted = interrupted_ends(&state);
        let counters = Arc::new(Counters::default());
        let on_disk = state.closed.iter().map(|m| m.bytes).sum::<u64>() + state.current.bytes;
        counters.bytes.store(on_disk, Ordering::Relaxed);
        let starts = state.starts.clone();
        let writer = Writer::start(dir, options, state, written_tx, counters.clone())?;
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("session-store".into())
            .spawn(move || writer.run(rx))
            .map_err(io_err(dir))?;
        let store = Store {
            dir: dir.to_owned(),
            tx,
            next_id: Arc::new(AtomicU64::new(max_id + 1)),
            written,
            counters,
            starts,
            metrics: Arc::default(),
        };
        if !interrupted.is_empty() {
            tracing::warn!(
                sessions = interrupted.len(),
                "recording sessions the previous daemon left open as interrupted"
            );
        }
        interrupted.into_iter().for_each(|end| store.append(end));
        Ok((store, StoreWriter { thread }))
    }

    pub fn next_session_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Queues an event, stamped with the current time; never blocks.
    pub fn append(&self, event: Event) {
        self.metrics.observe(&event);
        if self.tx.send((SystemTime::now(), event)).is_ok() {
            self.counters.appended.fetch_add(1, Ordering::Relaxed);
        } else {
            self.counters.send_lost.fetch_add(1, Ordering::Relaxed);
            tracing::error!("session store writer has stopped; event lost");
        }
    }

    pub fn status(&self) -> StoreStatus {
        let c = &self.counters;
        let get = |n: &AtomicU64| n.load(Ordering::Relaxed);
        let (written, write_lost) = (get(&c.written), get(&c.write_lost));
        StoreStatus {
            recorded: written,
            queued: get(&c.appended).saturating_sub(written + write_lost),
            lost: write_lost + get(&c.send_lost),
            bytes: get(&c.bytes),
        }
    }

    /// Every session in the store, oldest first.
    pub fn sessions(&self) -> Result<Vec<Session>, StoreError> {
        read_sessions(&self.dir)
    }

    /// The newest `n` sessions, oldest first, read from the segment where they begin.
    pub fn newest_sessions(&self, n: u64) -> Result<Vec<Session>, StoreError> {
        let Some(newest) = self.starts.newest() else {
            return Ok(Vec::new());
        };
        let first = newest.saturating_sub(n.saturating_sub(1)).max(1);
        match self.starts.find_from(first) {
            Some(from) => fold_sessions(&self.dir, from.segment, first),
            None => Ok(Vec::new()),
        }
    }

    /// One session, read only from the segments (and in closed ones, the byte ranges) that
    /// hold its records; None when its start is not in the store.
    pub fn session(&self, id: u64) -> Result<Option<Session>, StoreError> {
        let Some(from) = self.starts.find(id) else {
            return Ok(None);
        };
        let writing = self.written.borrow().segment;
        read_session(&self.dir, id, from.segment, writing)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The daemon's counters, which every appended event moves.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Where each session's records begin.
    pub fn starts(&self) -> &StartIndex {
        &self.starts
    }

    /// How far the store is written; changes after every write.
    pub fn written(&self) -> watch::Receiver<Position> {
        self.written.clone()
    }
}

impl StoreWriter {
    /// Waits until every event queued before all `Store` handles were dropped is on disk.
    pub fn finish(self) {
        let _ = self.thread.join();
    }
}

/// Folds the events of every segment into sessions, oldest first.
pub fn read_sessions(dir: &Path) -> Result<Vec<Session>, StoreError> {
    fold_sessions(dir, 0, 0)
}

/// Folds the sessions with ids from `first_id` on, reading segments from `first_segment`.
fn fold_sessions(
    dir: &Path,
    first_segment: u64,
    first_id: u64,
) -> Result<Vec<Session>, StoreError> {
    let mut sessions: Vec<Session> = Vec::new();
    let mut index = HashMap::new();
    for path in segment_paths(dir).map_err(io_err(dir))? {
        if segment_number(&path).is_some_and(|n| n < first_segment) {
            continue;
        }
        let bytes = fs::read(&path).map_err(io_err(&path))?;
        for (_, payload) in Frames::new(&bytes) {
            let record: Record = match serde_json::from_slice(payload) {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!(error = %e, "skipping a record this version cannot read");
                    continue;
                }
            };
            match record.event {
                Event::Start(start) if start.id < first_id => {}
                Event::Start(start) => {
                    index.insert(start.id, sessions.len());
                    sessions.push(Session::from_start(start));
                }
                other => {
                    if let Some(&i) = index.get(&other.session_id()) {
                        sessions[i].apply(other);
                    }
                }
            }
        }
    }
    Ok(sessions)
}

/// Folds session `id` from segment `first` on; segments below `writing` (closed, never
/// written again) are read only where their span index puts the session's records.
fn read_session(
    dir: &Path,
    id: u64,
    first: u64,
    writing: u64,
) -> Result<Option<Session>, StoreError> {
    let mut session: Option<Session> = None;
    for path in segment_paths(dir).map_err(io_err(dir))? {
        let number = segment_number(&path).expect("listed as a segment");
        if number < first {
            continue;
        }
        let bytes = if number < writing {
            let spans = Spans::of_segment(dir, number).map_err(io_err(&path))?;
            let Some(range) = spans.sessions.get(&id) else {
                continue;
            };
            spans::read_range(dir, number, range.clone()).map_err(io_err(&path))?
        } else {
            fs::read(&path).map_err(io_err(&path))?
        };
        for (_, payload) in Frames::new(&bytes) {
            let link = serde_json::from_slice::<Link>(payload).ok();
            if link.and_then(|l| l.event.session()) != Some(id) {
                continue;
            }
            let Ok(record) = serde_json::from_slice::<Record>(payload) else {
                continue;
            };
            match (record.event, session.as_mut()) {
                (Event::Start(start), None) => session = Some(Session::from_start(start)),
                (Event::End(end), Some(s)) => {
                    s.apply(Event::End(end));
                    return Ok(session);
                }
                (event, Some(s)) => s.apply(event),
                (_, None) => {}
            }
        }
    }
    Ok(session)
}

/// What a scan of the segments on open finds.
struct Recovered {
    closed: VecDeque<SegmentMeta>,
    current: SegmentMeta,
    next_seq: u64,
    max_session_id: u64,
    /// Sessions with a start and no end: the daemon stopped under them.
    open_sessions: BTreeSet<u64>,
    starts: StartIndex,
}

/// End events for the sessions a previous daemon left open, dated at its last record.
fn interrupted_ends(state: &Recovered) -> Vec<Event> {
    let last = state
        .current
        .newest
        .or(state.closed.back().and_then(|m| m.newest));
    let ended_at = last.unwrap_or_else(SystemTime::now);
    state
        .open_sessions
        .iter()
        .map(|&id| {
            Event::End(SessionEnd {
                id,
                ended_at,
                bytes_up: 0,
                bytes_down: 0,
                outcome: Outcome::Interrupted,
                error: Some("the daemon stopped before the session ended".into()),
            })
        })
        .collect()
}

impl Recovered {
    fn end(&self) -> Position {
        Position {
            segment: self.current.number,
            offset: self.current.bytes,
        }
    }
}

/// Scans every segment: the chain head, the next sequence number, the highest session id,
/// and each segment's extent; cuts a damaged tail off the last segment (keeping the cut bytes
/// beside it in `<segment>.torn`).
fn recover(dir: &Path) -> Result<Recovered, StoreError> {
    let paths = segment_paths(dir).map_err(io_err(dir))?;
    let mut metas = VecDeque::new();
    let (mut head, mut next_seq, mut max_id) = (Hash::GENESIS, 0, 0);
    let mut open = BTreeSet::new();
    let starts = StartIndex::default();
    for (i, path) in paths.iter().enumerate() {
        let bytes = fs::read(path).map_err(io_err(path))?;
        let number = segment_number(path).expect("listed as a segment");
        let mut meta = SegmentMeta {
            number,
            bytes: 0,
            seqs: None,
            last_hash: head,
            newest: None,
        };
        let mut frames = Frames::new(&bytes);
        for (offset, payload) in frames.by_ref() {
            let link: Link =
                serde_json::from_slice(payload).map_err(|source| StoreError::Format {
                    path: path.clone(),
                    offset,
                    source,
                })?;
            head = Hash::of(payload);
            next_seq = link.seq + 1;
            max_id = max_id.max(link.event.session().unwrap_or(0));
            match (link.event.kind.as_str(), link.event.id) {
                ("start", Some(id)) => {
                    open.insert(id);
                    starts.note(number, id);
                }
                ("end", Some(id)) => {
                    open.remove(&id);
                }
                _ => {}
            }
            meta.seqs = Some((meta.seqs.map_or(link.seq, |s| s.0), link.seq));
            meta.last_hash = head;
            meta.newest = Some(link.at);
        }
        meta.bytes = frames.offset as u64;
        if let Some(damage) = frames.damage {
            let cut = &bytes[frames.offset..];
            if i + 1 == paths.len() {
                tracing::warn!(segment = %path.display(), kept = frames.offset, cut = cut.len(), ?damage,
                    "cutting the damaged tail of the last session segment (kept in .torn)");
                save_and_truncate(path, cut, frames.offset as u64)?;
            } else {
                tracing::error!(segment = %path.display(), offset = frames.offset, ?damage,
                    "damaged session segment; `interceptor sessions verify` reports it");
            }
        }
        metas.push_back(meta);
    }
    let current = metas.pop_back().unwrap_or(SegmentMeta {
        number: 1,
        bytes: 0,
        seqs: None,
        last_hash: Hash::GENESIS,
        newest: None,
    });
    Ok(Recovered {
        closed: metas,
        current,
        next_seq,
        max_session_id: max_id,
        open_sessions: open,
        starts,
    })
}

fn save_and_truncate(path: &Path, cut: &[u8], keep: u64) -> Result<(), StoreError> {
    let mut torn_name = path.as_os_str().to_owned();
    torn_name.push(".torn");
    let torn = PathBuf::from(torn_name);
    let mut saved = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&torn)
        .map_err(io_err(&torn))?;
    saved
        .write_all(cut)
        .and_then(|()| saved.sync_data())
        .map_err(io_err(&torn))?;
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_err(path))?;
    file.set_len(keep)
        .and_then(|()| file.sync_data())
        .map_err(io_err(path))
}

struct Writer {
    dir: PathBuf,
    options: StoreOptions,
    file: Arc<File>,
    syncer: Syncer,
    current: SegmentMeta,
    closed: VecDeque<SegmentMeta>,
    next_seq: u64,
    head: Hash,
    written: watch::Sender<Position>,
    counters: Arc<Counters>,
    buf: Vec<u8>,
    /// First sequence number and newest time in `buf`.
    batch: Option<(u64, SystemTime)>,
    /// Sessions started in `buf`.
    batch_starts: Vec<u64>,
    starts: StartIndex,
    ends_session: bool,
    dirty: bool,
    last_sync: Instant,
}

impl Writer {
    fn start(
        dir: &Path,
        options: StoreOptions,
        state: Recovered,
        written: watch::Sender<Position>,
        counters: Arc<Counters>,
    ) -> Result<Writer, StoreError> {
        let file = Arc::new(open_segment(dir, state.current.number)?);
        Ok(Writer {
            dir: dir.to_owned(),
            options,
            file,
            syncer: Syncer::start().map_err(io_err(dir))?,
            head: state.current.last_hash,
            current: state.current,
            closed: state.closed,
            next_seq: state.next_seq,
            written,
            counters,
            buf: Vec::with_capacity(BATCH_BYTES + (64 << 10)),
            batch: None,
            batch_starts: Vec::new(),
            starts: state.starts,
            ends_session: false,
            dirty: false,
            last_sync: Instant::now(),
        })
    }

    fn run(mut self, rx: mpsc::Receiver<(SystemTime, Event)>) {
        loop {
            // Wake at least once per sync interval so a quiet store still reaches the disk
            // and old segments still expire.
            match rx.recv_timeout(self.options.sync_interval) {
                Ok((at, event)) => {
                    self.encode(at, &event);
                    while self.buf.len() < BATCH_BYTES {
                        match rx.try_recv() {
                            Ok((at, event)) => self.encode(at, &event),
                            Err(_) => break,
                        }
                    }
                    let full = self.buf.len() >= BATCH_BYTES;
                    self.write_batch();
                    // Let the next events gather: under load the proxy then wakes this thread
                    // once per window instead of once per event. A full batch means more are
                    // already waiting.
                    if !full {
                        std::thread::sleep(BATCH_WINDOW);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
            if self.dirty
                && (self.ends_session || self.last_sync.elapsed() >= self.options.sync_interval)
            {
                self.sync();
            }
            self.apply_retention();
        }
        self.sync_now();
    }

    fn encode(&mut self, at: SystemTime, event: &Event) {
        let record = RecordRef {
            seq: self.next_seq,
            at,
            prev: self.head,
            event,
        };
        let payload = encode_frame(&mut self.buf, |out| {
            serde_json::to_writer(out, &record).expect("records always serialize")
        });
        self.head = Hash::of(&self.buf[payload]);
        let first = self.batch.map_or(self.next_seq, |b| b.0);
        self.batch = Some((first, at));
        self.next_seq += 1;
        self.ends_session |= matches!(event, Event::End(_));
        if let Event::Start(s) = event {
            self.batch_starts.push(s.id);
        }
    }

    fn write_batch(&mut self) {
        let Some((first, newest)) = self.batch.take() else {
            return;
        };
        if self.current.bytes >= self.options.segment_bytes {
            self.roll();
        }
        let records = self.next_seq - first;
        if let Err(e) = (&*self.file).write_all(&self.buf) {
            // The chain now has a gap the next records cannot hide: verify will name it.
            tracing::error!(error = %e, "writing session segment failed; events lost");
            self.counters
                .write_lost
                .fetch_add(records, Ordering::Relaxed);
            self.buf.clear();
            self.batch_starts.clear();
            return;
        }
        self.counters.written.fetch_add(records, Ordering::Relaxed);
        for id in self.batch_starts.drain(..) {
            self.starts.note(self.current.number, id);
        }
        self.counters
            .bytes
            .fetch_add(self.buf.len() as u64, Ordering::Relaxed);
        let meta = &mut self.current;
        meta.bytes += self.buf.len() as u64;
        meta.seqs = Some((meta.seqs.map_or(first, |s| s.0), self.next_seq - 1));
        meta.last_hash = self.head;
        meta.newest = Some(newest);
        self.buf.clear();
        self.dirty = true;
        self.written.send_replace(Position {
            segment: meta.number,
            offset: meta.bytes,
        });
    }

    fn roll(&mut self) {
        self.sync();
        let number = self.current.number + 1;
        match open_segment(&self.dir, number) {
            Ok(file) => {
                self.file = Arc::new(file);
                let next = SegmentMeta {
                    number,
                    bytes: 0,
                    seqs: None,
                    last_hash: self.current.last_hash,
                    newest: None,
                };
                self.closed
                    .push_back(std::mem::replace(&mut self.current, next));
            }
            Err(e) => tracing::error!(error = %e, "cannot start a new session segment"),
        }
    }

    /// Has what is written fsynced, without waiting for it.
    fn sync(&mut self) {
        self.syncer.request(&self.file);
        self.dirty = false;
        self.ends_session = false;
        self.last_sync = Instant::now();
    }

    /// Fsyncs what is written before going on.
    fn sync_now(&mut self) {
        sync_file(&self.file);
        self.dirty = false;
        self.ends_session = false;
        self.last_sync = Instant::now();
    }

    /// Removes what the policy says, after recording (and syncing) that it does.
    fn apply_retention(&mut self) {
        let closed = self.closed.make_contiguous();
        let Some((n, reason)) =
            self.options
                .retention
                .select(closed, self.current.bytes, SystemTime::now())
        else {
            return;
        };
        let removed: Vec<SegmentMeta> = self.closed.drain(..n).collect();
        let event = Event::Retention(Retention {
            reason: reason.to_owned(),
            removed: removed.iter().map(RemovedSegment::from_meta).collect(),
        });
        self.counters.appended.fetch_add(1, Ordering::Relaxed);
        self.encode(SystemTime::now(), &event);
        self.write_batch();
        self.sync_now();
        for meta in removed {
            let path = self.dir.join(segment_name(meta.number));
            match fs::remove_file(&path) {
                Ok(()) => {
                    // Derived data; absent when nobody asked about the segment.
                    let _ = fs::remove_file(spans::spans_path(&self.dir, meta.number));
                    self.counters.bytes.fetch_sub(meta.bytes, Ordering::Relaxed);
                    self.starts.remove(meta.number);
                    tracing::info!(segment = %path.display(), reason, "retention removed a session segment")
                }
                Err(e) => {
                    tracing::error!(segment = %path.display(), error = %e, "retention could not remove a session segment")
                }
            }
        }
    }
}

/// Fsyncs segment files on a thread of its own, so the writer never waits for the disk.
/// Requests that pile up during one fsync are served by the next.
struct Syncer {
    tx: Option<mpsc::Sender<Arc<File>>>,
    thread: Option<JoinHandle<()>>,
}

impl Syncer {
    fn start() -> io::Result<Syncer> {
        let (tx, rx) = mpsc::channel::<Arc<File>>();
        let thread = std::thread::Builder::new()
            .name("session-fsync".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    // Group commit: sessions that end within the window share one fsync
                    // instead of costing one each (a VM exit per fsync on virtual disks).
                    std::thread::sleep(GROUP_COMMIT);
                    let mut files = vec![first];
                    files.extend(rx.try_iter());
                    files.dedup_by(|a, b| Arc::ptr_eq(a, b));
                    files.iter().for_each(|f| sync_file(f));
                }
            })?;
        Ok(Syncer {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    fn request(&self, file: &Arc<File>) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(file.clone());
        }
    }
}

impl Drop for Syncer {
    /// Serves the requests still queued, then stops.
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn sync_file(file: &File) {
    if let Err(e) = file.sync_data() {
        tracing::error!(error = %e, "fsync of session segment failed");
    }
}

fn open_segment(dir: &Path, number: u64) -> Result<File, StoreError> {
    let path = dir.join(segment_name(number));
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(io_err(&path))
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use crate::identity::Identity;
    use crate::sessions::SessionStart;

    pub fn start(id: u64) -> Event {
        Event::Start(SessionStart {
            id,
            enrollment: 1,
            identity: Identity {
                pid: 42,
                comm: "curl".into(),
                ..Default::default()
            },
            destination: "127.0.0.2:80".into(),
            started_at: SystemTime::now(),
        })
    }

    pub fn end(id: u64, up: u64) -> Event {
        Event::End(SessionEnd {
            id,
            ended_at: SystemTime::now(),
            bytes_up: up,
            bytes_down: 7,
            outcome: Outcome::Closed,
            error: None,
        })
    }

    pub fn write_all(dir: &Path, options: StoreOptions, events: Vec<Event>) {
        let (store, writer) = Store::open(dir, options).unwrap();
        for e in events {
            store.append(e);
        }
        drop(store);
        writer.finish();
    }

    fn quick() -> StoreOptions {
        StoreOptions {
            sync_interval: Duration::from_millis(10),
            ..Default::default()
        }
    }

    #[test]
    fn sessions_fold_start_and_end_and_ids_continue_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        write_all(dir.path(), quick(), vec![start(1), start(2), end(1, 100)]);
        let sessions = read_sessions(dir.path()).unwrap();
        assert_eq!(sessions.len(), 2);
        assert_eq!(
            (sessions[0].outcome, sessions[0].bytes_up),
            (Outcome::Closed, 100)
        );
        assert_eq!(sessions[1].outcome, Outcome::Open);
        let (store, writer) = Store::open(dir.path(), quick()).unwrap();
        assert_eq!(store.next_session_id(), 3);
        drop(store);
        writer.finish();
    }

    #[test]
    fn sessions_left_open_are_ended_as_interrupted_on_reopen() {
        let dir = tempfile::tempdir().unwrap();
        write_all(dir.path(), quick(), vec![start(1), start(2), end(1, 5)]);
        write_all(dir.path(), quick(), vec![]);
        let sessions = read_sessions(dir.path()).unwrap();
        let outcomes: Vec<_> = sessions.iter().map(|s| s.outcome).collect();
        assert_eq!(outcomes, vec![Outcome::Closed, Outcome::Interrupted]);
        // Once recorded, a later start does not record it again.
        write_all(dir.path(), quick(), vec![]);
        assert_eq!(read_sessions(dir.path()).unwrap().len(), 2);
        let report = super::super::verify::verify(dir.path(), None).unwrap();
        assert_eq!((report.records, report.problem.is_none()), (4, true));
    }

    #[test]
    fn the_start_index_points_at_each_sessions_segment_also_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let options = StoreOptions {
            segment_bytes: 1,
            ..quick()
        };
        let (store, writer) = Store::open(dir.path(), options).unwrap();
        for id in 1..=3 {
            store.append(start(id));
            // One batch, and so one segment, each.
            std::thread::sleep(Duration::from_millis(20));
        }
        let found = |s: &Store| {
            (1..=4)
                .map(|id| s.starts().find(id).map(|p| p.segment))
                .collect::<Vec<_>>()
        };
        assert_eq!(found(&store), vec![Some(1), Some(2), Some(3), None]);
        drop(store);
        writer.finish();
        let (store, writer) = Store::open(dir.path(), options).unwrap();
        assert_eq!(found(&store)[..3], [Some(1), Some(2), Some(3)]);
        drop(store);
        writer.finish();
    }

    #[test]
    fn one_session_is_read_through_the_span_index_and_matches_the_full_fold() {
        let dir = tempfile::tempdir().unwrap();
        let options = StoreOptions {
            segment_bytes: 1,
            ..quick()
        };
        let (store, writer) = Store::open(dir.path(), options).unwrap();
        // One batch, and so one segment, each: 2 ends three segments after it started.
        let events = [start(1), start(2), end(1, 3), start(3), end(2, 9)];
        let n = events.len() as u64;
        for e in events {
            store.append(e);
            std::thread::sleep(Duration::from_millis(20));
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while store.status().recorded < n {
            assert!(Instant::now() < deadline, "not written");
            std::thread::sleep(Duration::from_millis(5));
        }
        let json = |s: &Session| serde_json::to_value(s).unwrap();
        let all = read_sessions(dir.path()).unwrap();
        assert_eq!(all.len(), 3);
        for s in &all {
            let one = store.session(s.id).unwrap().unwrap();
            assert_eq!(json(&one), json(s));
        }
        assert!(store.session(99).unwrap().is_none());
        // The newest n, from the segment where they begin.
        let ids = |v: Vec<Session>| v.iter().map(|s| s.id).collect::<Vec<_>>();
        assert_eq!(ids(store.newest_sessions(1).unwrap()), vec![3]);
        assert_eq!(ids(store.newest_sessions(2).unwrap()), vec![2, 3]);
        assert_eq!(ids(store.newest_sessions(9).unwrap()), vec![1, 2, 3]);
        assert_eq!(json(&store.newest_sessions(2).unwrap()[0]), json(&all[1]));
        // Closed segments that were asked about are indexed; the one being written is not.
        let writing = store.written().borrow().segment;
        assert_eq!(writing, 5);
        for number in 1..writing {
            assert!(spans::spans_path(dir.path(), number).exists(), "{number}");
        }
        assert!(!spans::spans_path(dir.path(), writing).exists());
        // The spans are what is read: without session 2 in its start segment's, its start
        // is not found there.
        let path = spans::spans_path(dir.path(), 2);
        let mut edited: Spans = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        edited.sessions.remove(&2);
        fs::write(&path, serde_json::to_vec(&edited).unwrap()).unwrap();
        assert!(store.session(2).unwrap().is_none());
        drop(store);
        writer.finish();
    }

    #[test]
    fn torn_tail_is_cut_kept_aside_and_everything_before_it_kept() {
        let dir = tempfile::tempdir().unwrap();
        write_all(dir.path(), quick(), vec![start(1), end(1, 5)]);
        let seg = segment_paths(dir.path()).unwrap().pop().unwrap();
        let two_frames = fs::metadata(&seg).unwrap().len() as usize;
        write_all(dir.path(), quick(), vec![start(2)]);
        let full = fs::read(&seg).unwrap();
        // Every possible torn length of the last frame.
        for cut in two_frames..full.len() {
            fs::write(&seg, &full[..cut]).unwrap();
            let (store, writer) = Store::open(dir.path(), quick()).unwrap();
            store.append(start(9));
            drop(store);
            writer.finish();
            let ids: Vec<u64> = read_sessions(dir.path())
                .unwrap()
                .iter()
                .map(|s| s.id)
                .collect();
            assert_eq!(ids, vec![1, 9], "cut at {cut}");
        }
        let torn = fs::metadata(dir.path().join("segment-00000001.log.torn")).unwrap();
        assert!(torn.len() > 0);
    }

    #[test]
    fn segments_roll_and_retention_removes_and_records_it() {
        let dir = tempfile::tempdir().unwrap();
        let options = StoreOptions {
            sync_interval: Duration::from_millis(10),
            segment_bytes: 1,
            retention: RetentionPolicy {
                max_age: None,
                max_bytes: Some(2000),
            },
        };
        // One event per batch (the writer sleeps between batches), so one segment each.
        let (store, writer) = Store::open(dir.path(), options).unwrap();
        for id in 1..=20 {
            store.append(start(id));
            std::thread::sleep(Duration::from_millis(5));
        }
        drop(store);
        writer.finish();
        let segments = segment_paths(dir.path()).unwrap();
        assert!(
            segment_number(&segments[0]).unwrap() > 1,
            "oldest segment still there: {segments:?}"
        );
        let mut removed = 0;
        for path in &segments {
            let bytes = fs::read(path).unwrap();
            for (_, payload) in Frames::new(&bytes) {
                let record: Record = serde_json::from_slice(payload).unwrap();
                if let Event::Retention(r) = record.event {
                    assert_eq!(r.reason, "size");
                    removed += r.removed.len();
                }
            }
        }
        assert!(removed > 0, "no retention event found");
        let report = super::super::verify::verify(dir.path(), None).unwrap();
        assert!(report.problem.is_none(), "{report:?}");
    }

    #[test]
    fn pre_chain_store_is_refused_with_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut buf = Vec::new();
        encode_frame(&mut buf, |o| serde_json::to_writer(o, &start(1)).unwrap());
        fs::write(dir.path().join(segment_name(1)), buf).unwrap();
        let err = Store::open(dir.path(), quick()).err().unwrap();
        assert!(err.to_string().contains("chained format"), "{err}");
    }

    #[test]
    fn written_position_follows_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let (store, writer) = Store::open(dir.path(), quick()).unwrap();
        let mut written = store.written();
        assert_eq!(
            *written.borrow_and_update(),
            Position {
                segment: 1,
                offset: 0
            }
        );
        store.append(start(1));
        let deadline = Instant::now() + Duration::from_secs(5);
        while !written.has_changed().unwrap() {
            assert!(Instant::now() < deadline, "position never moved");
            std::thread::sleep(Duration::from_millis(1));
        }
        let len = fs::metadata(dir.path().join(segment_name(1)))
            .unwrap()
            .len();
        assert_eq!(written.borrow().offset, len);
        drop(store);
        writer.finish();
    }
}
