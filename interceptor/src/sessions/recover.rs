//! What the store is on open: one scan of every segment finds the chain head, the next
//! sequence number, the sessions left open and each segment's extent.

use std::collections::{BTreeSet, VecDeque};
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::chain::{Hash, Link, Record};
use super::checkpoint::Checkpoint;
use super::damage::{DamageEvent, DamageKind, StoreDamage};
use super::index::StartIndex;
use super::record::{Event, Outcome, SessionEnd};
use super::retention::SegmentMeta;
use super::segment::{Damage, Frames, Position, segment_name, segment_number, segment_paths};
use super::store::{StoreError, io_err};

/// What a scan of the segments on open finds.
pub(super) struct Recovered {
    pub closed: VecDeque<SegmentMeta>,
    pub current: SegmentMeta,
    pub next_seq: u64,
    pub max_session_id: u64,
    /// Sessions with a start and no end: the daemon stopped under them.
    pub open_sessions: BTreeSet<u64>,
    pub starts: StartIndex,
    /// Damage found now that the chain does not hold yet: recorded first thing.
    pub damage: Vec<StoreDamage>,
}

/// End events for the sessions a previous daemon left open, dated at its last record.
pub(super) fn interrupted_ends(state: &Recovered) -> Vec<Event> {
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
    pub fn end(&self) -> Position {
        Position {
            segment: self.current.number,
            offset: self.current.bytes,
        }
    }
}

/// Scans every segment: the chain head, the next sequence number, the highest session id,
/// each segment's extent, and damage. Only a torn write (a short final frame with nothing
/// intact after it) is cut off the last segment, its bytes kept beside it in
/// `<segment>.torn`; other damage stays where it is, and when it is in the last segment the
/// writer goes on in a new one. A chain that falls short of `anchor` (a signed checkpoint)
/// is damage too, and its sequence numbers are not handed out again.
pub(super) fn recover(dir: &Path, anchor: Option<&Checkpoint>) -> Result<Recovered, StoreError> {
    let paths = segment_paths(dir).map_err(io_err(dir))?;
    let mut metas = VecDeque::new();
    let (mut head, mut next_seq, mut max_id) = (Hash::GENESIS, 0, 0);
    let mut last_seq = None;
    // The hash of the record the checkpoint names, once seen.
    let mut anchored = None;
    let mut open = BTreeSet::new();
    let starts = StartIndex::default();
    // Damage in the segments now, and damage the chain already holds.
    let (mut found, mut recorded) = (Vec::new(), Vec::new());
    let mut roll = false;
    for (i, path) in paths.iter().enumerate() {
        let bytes = fs::read(path).map_err(io_err(path))?;
        let number = segment_number(path).expect("listed as a segment");
        let name = segment_name(number);
        let mut meta = SegmentMeta {
            number,
            bytes: bytes.len() as u64,
            seqs: None,
            last_hash: head,
            newest: None,
        };
        let mut frames = Frames::new(&bytes);
        let mut skipped = 0;
        while let Some((offset, payload)) = frames.next() {
            for range in &frames.skipped[skipped..] {
                found.push(StoreDamage::corrupt(name.clone(), range.clone(), last_seq));
            }
            skipped = frames.skipped.len();
            let link: Link =
                serde_json::from_slice(payload).map_err(|source| StoreError::Format {
                    path: path.clone(),
                    offset,
                    source,
                })?;
            if link.event.kind == "damage"
                && let Ok(Record {
                    event: Event::Damage(event),
                    ..
                }) = serde_json::from_slice(payload)
            {
                match event {
                    DamageEvent::Found(d) => recorded.push(d),
                    DamageEvent::Acknowledged { damage, .. } => recorded.extend(damage),
                }
            }
            head = Hash::of(payload);
            if anchor.is_some_and(|c| c.head.seq == link.seq) {
                anchored = Some(head);
            }
            last_seq = Some(link.seq);
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
        for range in &frames.skipped[skipped..] {
            found.push(StoreDamage::corrupt(name.clone(), range.clone(), last_seq));
        }
        let last = i + 1 == paths.len();
        match frames.damage {
            None => {}
            Some(Damage::Torn) if last => {
                let cut = &bytes[frames.offset..];
                tracing::warn!(segment = %path.display(), kept = frames.offset, cut = cut.len(),
                    "cutting a torn write off the last session segment (kept in .torn)");
                save_and_truncate(path, cut, frames.offset as u64)?;
                meta.bytes = frames.offset as u64;
            }
            Some(_) => found.push(StoreDamage::corrupt(
                name.clone(),
                frames.offset..bytes.len(),
                last_seq,
            )),
        }
        roll |= last && found.iter().any(|d| d.segment == name);
        metas.push_back(meta);
    }
    if let Some(c) = anchor {
        let short = last_seq.is_none_or(|s| s < c.head.seq);
        if short || anchored.is_some_and(|h| h != c.head.hash) {
            let end = metas.back();
            found.push(StoreDamage {
                kind: DamageKind::MissingTail,
                segment: segment_name(end.map_or(1, |m| m.number)),
                offset: end.map_or(0, |m| m.bytes),
                bytes: 0,
                after_seq: last_seq,
                checkpoint: Some(c.head),
                detail: None,
            });
        }
        if short {
            next_seq = c.head.seq + 1;
        }
    }
    found.retain(|d| !recorded.iter().any(|r| r.same_place(d)));
    let current = match metas.back() {
        Some(m) if roll => SegmentMeta {
            number: m.number + 1,
            bytes: 0,
            seqs: None,
            last_hash: head,
            newest: None,
        },
        Some(_) => metas.pop_back().expect("there is a last segment"),
        None => SegmentMeta {
            number: 1,
            bytes: 0,
            seqs: None,
            last_hash: Hash::GENESIS,
            newest: None,
        },
    };
    Ok(Recovered {
        closed: metas,
        current,
        next_seq,
        max_session_id: max_id,
        open_sessions: open,
        starts,
        damage: found,
    })
}

fn save_and_truncate(path: &Path, cut: &[u8], keep: u64) -> Result<(), StoreError> {
    let mut torn_name = path.as_os_str().to_owned();
    torn_name.push(".torn");
    let torn = PathBuf::from(torn_name);
    let mut saved = crate::private_fs::private_file()
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::control::caller::Caller;
    use crate::sessions::checkpoint;
    use crate::sessions::read::read_sessions;
    use crate::sessions::store::StoreOptions;
    use crate::sessions::store::tests::{end, start, write_all};
    use crate::sessions::verify::verify;

    fn options(checkpoints: bool) -> StoreOptions {
        StoreOptions {
            sync_interval: Duration::from_millis(10),
            checkpoint_interval: checkpoints.then_some(Duration::from_secs(3600)),
            ..Default::default()
        }
    }

    fn offsets(bytes: &[u8]) -> Vec<usize> {
        Frames::new(bytes).map(|(o, _)| o).collect()
    }

    fn records(dir: &Path) -> Vec<Record> {
        segment_paths(dir)
            .unwrap()
            .iter()
            .flat_map(|p| {
                let bytes = fs::read(p).unwrap();
                Frames::new(&bytes)
                    .map(|(_, b)| serde_json::from_slice(b).unwrap())
                    .collect::<Vec<Record>>()
            })
            .collect()
    }

    fn found(dir: &Path) -> Vec<StoreDamage> {
        records(dir)
            .into_iter()
            .filter_map(|r| match r.event {
                Event::Damage(DamageEvent::Found(d)) => Some(d),
                _ => None,
            })
            .collect()
    }

    fn acknowledge(dir: &Path, damage: Vec<StoreDamage>, checkpoints: bool) {
        let by = Caller {
            uid: 0,
            user: Some("root".into()),
            gid: 0,
            pid: 1,
        };
        let ack = DamageEvent::Acknowledged {
            damage,
            by,
            reason: None,
        };
        write_all(dir, options(checkpoints), vec![Event::Damage(ack)]);
    }

    #[test]
    fn damage_stays_in_place_is_recorded_once_and_writing_goes_on_in_a_new_segment() {
        let dir = tempfile::tempdir().unwrap();
        let events = vec![start(1), end(1, 5), start(2), end(2, 5), start(3)];
        write_all(dir.path(), options(false), events);
        let seg = dir.path().join(segment_name(1));
        let clean = fs::read(&seg).unwrap();
        let at = offsets(&clean);
        // A flipped bit in start(2)'s length: longer than the rest of the segment.
        let mut bad = clean.clone();
        bad[at[2] + 2] ^= 1;
        fs::write(&seg, &bad).unwrap();

        write_all(dir.path(), options(false), vec![start(9)]);
        assert_eq!(
            fs::read(&seg).unwrap(),
            bad,
            "the damaged segment was changed"
        );
        assert!(!dir.path().join("segment-00000001.log.torn").exists());
        assert!(dir.path().join(segment_name(2)).exists(), "no new segment");
        // Records after the damage are read: session 3 (left open, so interrupted) and 9.
        let ids: Vec<u64> = read_sessions(dir.path())
            .unwrap()
            .iter()
            .map(|s| s.id)
            .collect();
        assert_eq!(ids, vec![1, 3, 9]);
        let damage = found(dir.path());
        assert_eq!(damage.len(), 1);
        assert_eq!(
            (
                damage[0].segment.as_str(),
                damage[0].offset,
                damage[0].after_seq
            ),
            ("segment-00000001.log", at[2] as u64, Some(1))
        );
        let report = verify(dir.path(), None).unwrap();
        let p = report.problem.unwrap();
        assert_eq!((p.seq, p.offset), (Some(2), at[2] as u64), "{p:?}");
        assert_eq!(
            report.records,
            4 + 3,
            "records after the damage not verified"
        );

        // Seen again on the next start, not recorded again; verify still fails.
        write_all(dir.path(), options(false), vec![]);
        assert_eq!(found(dir.path()).len(), 1);
        assert!(verify(dir.path(), None).unwrap().problem.is_some());

        acknowledge(dir.path(), damage, false);
        let report = verify(dir.path(), None).unwrap();
        assert!(report.problem.is_none(), "{report:?}");
        assert_eq!(report.damage.len(), 1);
        assert_eq!(report.damage[0].acknowledged_by.as_ref().unwrap().uid, 0);
    }

    #[test]
    fn a_tail_cut_after_the_checkpoint_is_damage_and_its_seqs_are_not_handed_out_again() {
        let dir = tempfile::tempdir().unwrap();
        let events = vec![start(1), end(1, 5), start(2), end(2, 5)];
        write_all(dir.path(), options(true), events);
        assert_eq!(checkpoint::load(dir.path()).unwrap().unwrap().head.seq, 3);
        let seg = dir.path().join(segment_name(1));
        let bytes = fs::read(&seg).unwrap();
        let at = offsets(&bytes);
        // Whole records off the end: the chain alone cannot tell.
        fs::write(&seg, &bytes[..at[2]]).unwrap();
        let p = verify(dir.path(), None).unwrap().problem.unwrap();
        assert!(p.reason.contains("missing tail"), "{p:?}");
        assert_eq!(p.seq, Some(2));

        write_all(dir.path(), options(true), vec![start(3)]);
        let seqs: Vec<u64> = records(dir.path()).iter().map(|r| r.seq).collect();
        assert_eq!(seqs[..3], [0, 1, 4], "cut seqs handed out again");
        let damage = found(dir.path());
        assert_eq!(damage.len(), 1);
        assert_eq!(damage[0].kind, DamageKind::MissingTail);
        // The new checkpoint covers the new head; the recorded cut still fails verify.
        let report = verify(dir.path(), None).unwrap();
        let p = report.problem.unwrap();
        assert!(p.reason.contains("reached seq 3"), "{p:?}");

        acknowledge(dir.path(), damage, true);
        let report = verify(dir.path(), None).unwrap();
        assert!(report.problem.is_none(), "{report:?}");
        assert_eq!(
            report.checkpoint.unwrap().head.seq,
            report.last_seq.unwrap()
        );
    }
}
