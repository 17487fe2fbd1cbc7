//! Durable, append-only event store.
//!
//! Events are appended to segment files (`segment-<n>.log`) as frames
//! `[len: u32 LE][crc32: u32 LE][JSON payload]`, so a torn write at the tail (power loss,
//! `kill -9`) is detected and cut off on the next start, and every frame before it is kept.
//! One writer thread owns the files: the proxy hands it events through a channel and never
//! waits on the disk.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use std::sync::mpsc;

use super::record::{Event, Session};

const FRAME_HEADER: usize = 8;
const SEGMENT_LIMIT: u64 = 64 << 20;
/// How long the writer lets events gather after a write.
const BATCH_WINDOW: Duration = Duration::from_millis(2);
/// A frame larger than this is corruption, not data.
const MAX_FRAME: usize = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("session store {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Handle for appending events; cheap to clone.
#[derive(Clone)]
pub struct Store {
    dir: PathBuf,
    tx: mpsc::Sender<Event>,
    next_id: Arc<AtomicU64>,
}

/// The writer thread; `finish` drains every queued event to disk and syncs.
pub struct StoreWriter {
    thread: JoinHandle<()>,
}

impl Store {
    /// Opens (or creates) the store in `dir`, repairs a torn tail, and starts the writer.
    pub fn open(dir: &Path, sync_interval: Duration) -> Result<(Store, StoreWriter), StoreError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let segments = segment_paths(dir)?;
        let mut max_id = 0;
        for (i, path) in segments.iter().enumerate() {
            let bytes = fs::read(path).map_err(io_err(path))?;
            let (events, good_len) = decode_frames(&bytes);
            max_id = events.iter().map(Event::session_id).fold(max_id, u64::max);
            if good_len < bytes.len() {
                tracing::warn!(segment = %path.display(), kept = good_len, dropped = bytes.len() - good_len,
                    "truncating torn tail of session segment");
                if i + 1 == segments.len() {
                    let file = OpenOptions::new()
                        .write(true)
                        .open(path)
                        .map_err(io_err(path))?;
                    file.set_len(good_len as u64).map_err(io_err(path))?;
                }
            }
        }
        let (tx, rx) = mpsc::channel();
        let writer = SegmentWriter::open(dir, segments.last().cloned())?;
        let thread = std::thread::Builder::new()
            .name("session-store".into())
            .spawn(move || writer.run(rx, sync_interval))
            .map_err(io_err(dir))?;
        let store = Store {
            dir: dir.to_owned(),
            tx,
            next_id: Arc::new(AtomicU64::new(max_id + 1)),
        };
        Ok((store, StoreWriter { thread }))
    }

    pub fn next_session_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Queues an event; never blocks.
    pub fn append(&self, event: Event) {
        if self.tx.send(event).is_err() {
            tracing::error!("session store writer has stopped; event lost");
        }
    }

    /// Every session in the store, oldest first.
    pub fn sessions(&self) -> Result<Vec<Session>, StoreError> {
        read_sessions(&self.dir)
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
    let mut sessions: Vec<Session> = Vec::new();
    let mut index = std::collections::HashMap::new();
    for path in segment_paths(dir)? {
        let bytes = fs::read(&path).map_err(io_err(&path))?;
        for event in decode_frames(&bytes).0 {
            match event {
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

fn segment_paths(dir: &Path) -> Result<Vec<PathBuf>, StoreError> {
    let mut paths: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(io_err(dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| segment_number(p).is_some())
        .collect();
    paths.sort_by_key(|p| segment_number(p));
    Ok(paths)
}

fn segment_number(path: &Path) -> Option<u64> {
    path.file_name()?
        .to_str()?
        .strip_prefix("segment-")?
        .strip_suffix(".log")?
        .parse()
        .ok()
}

fn segment_name(n: u64) -> String {
    format!("segment-{n:08}.log")
}

/// Decodes frames until the end or the first frame that is torn or corrupt; returns the
/// events and the length of the intact prefix.
fn decode_frames(bytes: &[u8]) -> (Vec<Event>, usize) {
    let mut events = Vec::new();
    let mut at = 0;
    while bytes.len() - at >= FRAME_HEADER {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        let crc = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap());
        let body = at + FRAME_HEADER;
        if len > MAX_FRAME || bytes.len() - body < len {
            break;
        }
        let payload = &bytes[body..body + len];
        if crc32fast::hash(payload) != crc {
            break;
        }
        match serde_json::from_slice(payload) {
            Ok(event) => events.push(event),
            // An intact frame of a kind this version does not know: skip it, keep going.
            Err(e) => tracing::debug!(error = %e, "skipping unknown session event"),
        }
        at = body + len;
    }
    (events, at)
}

fn encode_frame(event: &Event, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; FRAME_HEADER]);
    serde_json::to_writer(&mut *out, event).expect("events always serialize");
    let payload = &out[start + FRAME_HEADER..];
    let (len, crc) = (payload.len() as u32, crc32fast::hash(payload));
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

struct SegmentWriter {
    dir: PathBuf,
    number: u64,
    file: File,
    len: u64,
}

impl SegmentWriter {
    fn open(dir: &Path, last: Option<PathBuf>) -> Result<SegmentWriter, StoreError> {
        let number = last.as_deref().and_then(segment_number).unwrap_or(1);
        let path = dir.join(segment_name(number));
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        let len = file.metadata().map_err(io_err(&path))?.len();
        Ok(SegmentWriter {
            dir: dir.to_owned(),
            number,
            file,
            len,
        })
    }

    fn run(mut self, rx: mpsc::Receiver<Event>, sync_interval: Duration) {
        let mut buf = Vec::with_capacity(64 << 10);
        let mut last_sync = Instant::now();
        let mut dirty = false;
        loop {
            // Wake at least once per sync interval so a quiet store still reaches the disk.
            let first = match rx.recv_timeout(sync_interval) {
                Ok(e) => Some(e),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            };
            buf.clear();
            if let Some(e) = first {
                encode_frame(&e, &mut buf);
                while buf.len() < (1 << 20) {
                    match rx.try_recv() {
                        Ok(e) => encode_frame(&e, &mut buf),
                        Err(_) => break,
                    }
                }
                self.write(&buf);
                dirty = true;
                // Let the next events gather: under load the proxy then wakes this thread once
                // per window instead of once per event, which on a small host costs latency.
                std::thread::sleep(BATCH_WINDOW);
            }
            if dirty && last_sync.elapsed() >= sync_interval {
                self.sync();
                dirty = false;
                last_sync = Instant::now();
            }
        }
        self.sync();
    }

    fn write(&mut self, frames: &[u8]) {
        if self.len >= SEGMENT_LIMIT {
            self.roll();
        }
        match self.file.write_all(frames) {
            Ok(()) => self.len += frames.len() as u64,
            Err(e) => tracing::error!(error = %e, "writing session segment failed; events lost"),
        }
    }

    fn roll(&mut self) {
        self.sync();
        let path = self.dir.join(segment_name(self.number + 1));
        match OpenOptions::new().create(true).append(true).open(&path) {
            Ok(file) => {
                self.file = file;
                self.number += 1;
                self.len = 0;
            }
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "cannot start a new session segment")
            }
        }
    }

    fn sync(&mut self) {
        if let Err(e) = self.file.sync_data() {
            tracing::error!(error = %e, "fsync of session segment failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;
    use crate::sessions::{Outcome, SessionEnd, SessionStart};
    use std::time::SystemTime;

    fn start(id: u64) -> Event {
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

    fn end(id: u64, up: u64) -> Event {
        Event::End(SessionEnd {
            id,
            ended_at: SystemTime::now(),
            bytes_up: up,
            bytes_down: 7,
            outcome: Outcome::Closed,
            error: None,
        })
    }

    fn write_all(dir: &Path, events: Vec<Event>) {
        let (store, writer) = Store::open(dir, Duration::from_millis(10)).unwrap();
        for e in events {
            store.append(e);
        }
        drop(store);
        writer.finish();
    }

    #[test]
    fn sessions_fold_start_and_end_and_ids_continue_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        write_all(dir.path(), vec![start(1), start(2), end(1, 100)]);
        let sessions = read_sessions(dir.path()).unwrap();
        assert_eq!(sessions.len(), 2);
        assert_eq!(
            (sessions[0].outcome, sessions[0].bytes_up),
            (Outcome::Closed, 100)
        );
        assert_eq!(sessions[1].outcome, Outcome::Open);
        let (store, writer) = Store::open(dir.path(), Duration::from_millis(10)).unwrap();
        assert_eq!(store.next_session_id(), 3);
        drop(store);
        writer.finish();
    }

    #[test]
    fn torn_tail_is_cut_and_everything_before_it_kept() {
        let dir = tempfile::tempdir().unwrap();
        write_all(dir.path(), vec![start(1), end(1, 5)]);
        let seg = segment_paths(dir.path()).unwrap().pop().unwrap();
        let two_frames = fs::metadata(&seg).unwrap().len() as usize;
        write_all(dir.path(), vec![start(2)]);
        let full = fs::read(&seg).unwrap();
        // Every possible torn length of the last frame.
        for cut in two_frames..full.len() {
            fs::write(&seg, &full[..cut]).unwrap();
            let (store, writer) = Store::open(dir.path(), Duration::from_millis(10)).unwrap();
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
    }

    #[test]
    fn corrupt_byte_stops_decoding_at_that_frame() {
        let mut buf = Vec::new();
        encode_frame(&start(1), &mut buf);
        let first = buf.len();
        encode_frame(&start(2), &mut buf);
        buf[first + 12] ^= 0xff;
        let (events, good) = decode_frames(&buf);
        assert_eq!((events.len(), good), (1, first));
    }
}
