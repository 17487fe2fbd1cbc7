//! The writer thread, which owns the segment files, and the fsync thread beside it.

use std::collections::VecDeque;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;

use super::chain::{Hash, RecordRef};
use super::checkpoint::{Checkpointer, Head};
use super::index::StartIndex;
use super::record::Event;
use super::recover::Recovered;
use super::retention::{RemovedSegment, Retention, SegmentMeta};
use super::segment::{Position, encode_frame, segment_name};
use super::spans;
use super::store::{Counters, StoreError, StoreOptions, io_err};

/// How long the writer lets events gather after a write.
const BATCH_WINDOW: Duration = Duration::from_millis(2);
/// How long a session-end fsync waits for others to share it.
const GROUP_COMMIT: Duration = Duration::from_millis(5);
/// Largest batch written at once.
const BATCH_BYTES: usize = 1 << 20;

pub(super) struct Writer {
    dir: PathBuf,
    options: StoreOptions,
    file: Arc<File>,
    syncer: Syncer,
    current: SegmentMeta,
    closed: VecDeque<SegmentMeta>,
    next_seq: u64,
    head: Hash,
    /// The newest record written (what an fsync now makes durable).
    written_head: Option<Head>,
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
    pub fn start(
        dir: &Path,
        options: StoreOptions,
        state: Recovered,
        written: watch::Sender<Position>,
        counters: Arc<Counters>,
        checkpoints: Option<Checkpointer>,
    ) -> Result<Writer, StoreError> {
        let file = Arc::new(open_segment(dir, state.current.number)?);
        Ok(Writer {
            dir: dir.to_owned(),
            options,
            file,
            syncer: Syncer::start(checkpoints).map_err(io_err(dir))?,
            head: state.current.last_hash,
            written_head: None,
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

    pub fn run(mut self, rx: mpsc::Receiver<(SystemTime, Event)>) {
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
        // Served before the fsync thread stops, which then anchors the last head.
        self.sync();
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
        // Session ends and damage records reach the disk (and the checkpoint) at once.
        self.ends_session |= matches!(event, Event::End(_) | Event::Damage(_));
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
        self.written_head = Some(Head {
            seq: self.next_seq - 1,
            hash: self.head,
        });
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
        self.syncer.request(&self.file, self.written_head);
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
/// Requests that pile up during one fsync are served by the next. Each carries the chain head
/// written so far; once that is on disk, the checkpointer (if any) may anchor it.
struct Syncer {
    tx: Option<mpsc::Sender<(Arc<File>, Option<Head>)>>,
    thread: Option<JoinHandle<()>>,
}

impl Syncer {
    fn start(mut checkpoints: Option<Checkpointer>) -> io::Result<Syncer> {
        let (tx, rx) = mpsc::channel::<(Arc<File>, Option<Head>)>();
        let thread = std::thread::Builder::new()
            .name("session-fsync".into())
            .spawn(move || {
                loop {
                    let wait = checkpoints.as_ref().map_or(Duration::MAX, |c| c.wait());
                    let first = match rx.recv_timeout(wait) {
                        Ok(first) => first,
                        Err(mpsc::RecvTimeoutError::Timeout) => {
                            checkpoints.iter_mut().for_each(Checkpointer::flush);
                            continue;
                        }
                        Err(mpsc::RecvTimeoutError::Disconnected) => break,
                    };
                    // Group commit: sessions that end within the window share one fsync
                    // instead of costing one each (a VM exit per fsync on virtual disks).
                    std::thread::sleep(GROUP_COMMIT);
                    let mut requests = vec![first];
                    requests.extend(rx.try_iter());
                    let head = requests.iter().filter_map(|r| r.1).max_by_key(|h| h.seq);
                    let mut files: Vec<_> = requests.into_iter().map(|r| r.0).collect();
                    files.dedup_by(|a, b| Arc::ptr_eq(a, b));
                    files.iter().for_each(|f| sync_file(f));
                    if let (Some(c), Some(head)) = (checkpoints.as_mut(), head) {
                        c.synced(head);
                    }
                }
                // The store is closing: anchor its last head.
                checkpoints.iter_mut().for_each(Checkpointer::flush);
            })?;
        Ok(Syncer {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    fn request(&self, file: &Arc<File>, head: Option<Head>) {
        if let Some(tx) = &self.tx {
            let _ = tx.send((file.clone(), head));
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
    crate::private_fs::private_file()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(io_err(&path))
}
