//! Where each session's records lie in a closed segment: `segment-<n>.spans` maps a session
//! id to the byte range from its first to the end of its last record there. `sessions show ID`
//! reads just those bytes of the segments that hold the session (the start index says where it
//! begins) instead of folding the whole store.
//!
//! The file is derived data and never trusted blindly: it is written atomically (temporary
//! file, fsync, rename) the first time a closed segment is asked about, carries the segment's
//! length, and is rebuilt from the segment when it is missing, unreadable, or names another
//! length, so a `kill -9` at any moment leaves nothing to repair. Only segments below the one
//! being written are indexed, and those never change (retention removes the file with its
//! segment). The chain and `verify` read only the segments; frames read through a span are
//! still checked by their checksums.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use super::chain::Link;
use super::segment::{Frames, segment_name};

#[derive(Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spans {
    /// Length of the segment this describes.
    pub segment_bytes: u64,
    /// Session id → byte range of its records in the segment.
    pub sessions: BTreeMap<u64, Range<u64>>,
}

impl Spans {
    /// Scans a segment's frames.
    pub fn build(bytes: &[u8]) -> Spans {
        let mut sessions: BTreeMap<u64, Range<u64>> = BTreeMap::new();
        let mut frames = Frames::new(bytes);
        for (offset, payload) in frames.by_ref() {
            let Some(id) = serde_json::from_slice::<Link>(payload)
                .ok()
                .and_then(|l| l.event.session())
            else {
                continue;
            };
            let end = (offset + super::segment::FRAME_HEADER + payload.len()) as u64;
            sessions
                .entry(id)
                .and_modify(|r| r.end = end)
                .or_insert(offset as u64..end);
        }
        Spans {
            segment_bytes: frames.offset as u64,
            sessions,
        }
    }

    /// The spans of closed segment `number`, from its file when that is current, else built
    /// from the segment and saved.
    pub fn of_segment(dir: &Path, number: u64) -> io::Result<Spans> {
        let segment = dir.join(segment_name(number));
        let len = fs::metadata(&segment)?.len();
        let path = spans_path(dir, number);
        if let Some(spans) = fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<Spans>(&b).ok())
            .filter(|s| s.segment_bytes == len)
        {
            return Ok(spans);
        }
        let spans = Spans::build(&fs::read(&segment)?);
        if spans.segment_bytes == len {
            // A damaged segment is left unindexed: `verify` reports it, readers scan it.
            if let Err(e) = save(&path, &spans) {
                tracing::warn!(file = %path.display(), error = %e, "could not save a session span index");
            }
        }
        Ok(spans)
    }
}

/// Removes the temporary files of span indexes whose writer was killed mid-write.
pub fn remove_stale_temporaries(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with("segment-") && name.contains(".spans.") && name.ends_with(".tmp") {
            fs::remove_file(&path)?;
        }
    }
    Ok(())
}

pub fn spans_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(segment_name(number)).with_extension("spans")
}

fn save(path: &Path, spans: &Spans) -> io::Result<()> {
    // A name of its own per writer: two readers indexing the same segment at once must not
    // write into one temporary file.
    static WRITERS: AtomicU64 = AtomicU64::new(0);
    let n = WRITERS.fetch_add(1, Ordering::Relaxed);
    let tmp = path.with_extension(format!("spans.{}-{n}.tmp", std::process::id()));
    let bytes = serde_json::to_vec(spans).map_err(io::Error::other)?;
    crate::private_fs::replace(path, &tmp, &bytes)
}

/// The bytes of `range` in segment `number`.
pub fn read_range(dir: &Path, number: u64, range: Range<u64>) -> io::Result<Vec<u8>> {
    let mut file = File::open(dir.join(segment_name(number)))?;
    file.seek(SeekFrom::Start(range.start))?;
    let mut bytes = Vec::with_capacity((range.end - range.start) as usize);
    file.take(range.end - range.start).read_to_end(&mut bytes)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sessions::Event;
    use crate::sessions::chain::{Hash, RecordRef};
    use crate::sessions::segment::encode_frame;
    use crate::sessions::store::tests::{end, start};

    fn segment(events: &[Event]) -> Vec<u8> {
        let mut buf = Vec::new();
        for (seq, event) in events.iter().enumerate() {
            let record = RecordRef {
                seq: seq as u64,
                at: std::time::SystemTime::now(),
                prev: Hash::GENESIS,
                event,
            };
            encode_frame(&mut buf, |out| serde_json::to_writer(out, &record).unwrap());
        }
        buf
    }

    #[test]
    fn spans_cover_each_sessions_records_and_nothing_else() {
        let bytes = segment(&[start(1), start(2), end(1, 4), end(2, 5)]);
        let spans = Spans::build(&bytes);
        assert_eq!(spans.segment_bytes, bytes.len() as u64);
        let ids = |r: &Range<u64>| -> Vec<u64> {
            Frames::new(&bytes[r.start as usize..r.end as usize])
                .map(|(_, p)| serde_json::from_slice::<Link>(p).unwrap().event.id.unwrap())
                .collect()
        };
        assert_eq!(ids(&spans.sessions[&1]), vec![1, 2, 1]);
        assert_eq!(ids(&spans.sessions[&2]), vec![2, 1, 2]);
    }

    #[test]
    fn a_missing_stale_or_broken_file_is_rebuilt_from_the_segment() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = segment(&[start(1), end(1, 4)]);
        fs::write(dir.path().join(segment_name(3)), &bytes).unwrap();
        let built = Spans::of_segment(dir.path(), 3).unwrap();
        let path = spans_path(dir.path(), 3);
        assert_eq!(
            serde_json::from_slice::<Spans>(&fs::read(&path).unwrap()).unwrap(),
            built
        );
        // Stale (another length), then torn by a crash mid-write: rebuilt both times.
        let stale = Spans {
            segment_bytes: 1,
            ..Default::default()
        };
        fs::write(&path, serde_json::to_vec(&stale).unwrap()).unwrap();
        assert_eq!(Spans::of_segment(dir.path(), 3).unwrap(), built);
        fs::write(&path, b"{\"segment_b").unwrap();
        assert_eq!(Spans::of_segment(dir.path(), 3).unwrap(), built);
        assert_eq!(built.sessions[&1], 0..bytes.len() as u64);
        let stale = dir.path().join("segment-00000003.spans.77-0.tmp");
        fs::write(&stale, b"{").unwrap();
        remove_stale_temporaries(dir.path()).unwrap();
        assert!(!stale.exists() && path.exists());
    }
}
