//! Durable, append-only, hash-chained event store.
//!
//! Events are appended as [`Record`]s (sequence number, time, hash of the previous record,
//! event) to segment files in frames that detect a torn write (see [`super::segment`]). One
//! writer thread owns the files: the proxy hands it events through an unbounded channel and
//! never waits on the disk. The writer fsyncs at the sync interval and after every batch that
//! ends a session, rolls segments at a size limit, applies retention, and publishes how far
//! the store is written so tailers can follow it without being in the proxy's way.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use super::checkpoint::{self, Checkpointer};
use super::damage::{DamageEvent, StoreDamage};
use super::index::StartIndex;
use super::read::{fold_sessions, read_session, read_sessions};
use super::record::{Event, Session};
use super::recover::{interrupted_ends, recover};
use super::retention::RetentionPolicy;
use super::segment::Position;
use super::spans;
use super::writer::Writer;
use crate::metrics::Metrics;
use crate::private_fs;

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

pub(super) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
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
    /// How often the chain head is anchored in a signed checkpoint (None: never; the daemon
    /// always sets it).
    pub checkpoint_interval: Option<Duration>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            sync_interval: Duration::from_secs(1),
            segment_bytes: 64 << 20,
            retention: RetentionPolicy::default(),
            checkpoint_interval: None,
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
pub(super) struct Counters {
    pub appended: AtomicU64,
    pub written: AtomicU64,
    pub send_lost: AtomicU64,
    pub write_lost: AtomicU64,
    pub bytes: AtomicU64,
}

/// The writer thread; `finish` drains every queued event to disk and syncs.
pub struct StoreWriter {
    thread: JoinHandle<()>,
}

impl Store {
    /// Opens (or creates, 0700) the store in `dir`, cuts a torn tail, records damage, and
    /// starts the writer.
    pub fn open(dir: &Path, options: StoreOptions) -> Result<(Store, StoreWriter), StoreError> {
        private_fs::private_dir(dir).map_err(io_err(dir))?;
        spans::remove_stale_temporaries(dir).map_err(io_err(dir))?;
        let (anchor, untrusted) = match checkpoint::load(dir) {
            Ok(anchor) => (anchor, None),
            Err(e) => (None, Some(e)),
        };
        let checkpoints = match options.checkpoint_interval {
            Some(interval) => {
                let key = checkpoint::load_or_create_key(dir).map_err(io_err(dir))?;
                Some(Checkpointer::new(dir, key, interval))
            }
            None => None,
        };
        let mut state = recover(dir, anchor.as_ref())?;
        let mut damage = std::mem::take(&mut state.damage);
        if let Some(detail) = untrusted {
            let last = state.next_seq.checked_sub(1);
            damage.push(StoreDamage::untrusted_checkpoint(detail, last));
        }
        let max_id = state.max_session_id;
        let (written_tx, written) = watch::channel(state.end());
        let interrupted = interrupted_ends(&state);
        let counters = Arc::new(Counters::default());
        let on_disk = state.closed.iter().map(|m| m.bytes).sum::<u64>() + state.current.bytes;
        counters.bytes.store(on_disk, Ordering::Relaxed);
        let starts = state.starts.clone();
        let writer = Writer::start(
            dir,
            options,
            state,
            written_tx,
            counters.clone(),
            checkpoints,
        )?;
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
        // First in the new segment: what is damaged, and where.
        for d in damage {
            tracing::error!(damage = %d.describe(), "session store damage; kept in place and recorded, `interceptor sessions verify` fails until it is acknowledged");
            store.append(Event::Damage(DamageEvent::Found(d)));
        }
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

#[cfg(test)]
pub mod tests {
    use super::*;
    use crate::identity::Identity;
    use crate::sessions::SessionStart;
    use crate::sessions::chain::Record;
    use crate::sessions::record::{Outcome, SessionEnd};
    use crate::sessions::segment::{
        Frames, encode_frame, segment_name, segment_number, segment_paths,
    };
    use crate::sessions::spans::Spans;
    use std::fs;
    use std::time::Instant;

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
            ..Default::default()
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
