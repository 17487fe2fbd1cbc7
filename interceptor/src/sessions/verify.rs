//! `interceptor sessions verify`: checks every frame's checksum and every record's link to the
//! one before it, across segments, the chain against the newest signed checkpoint (a cut
//! tail), and lists damage; it names the first record that does not verify.

use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::chain::{Hash, Link, Record};
use super::checkpoint::{self, Checkpoint};
use super::damage::{DamageEvent, DamageKind, DamageStatus, StoreDamage};
use super::record::Event;
use super::segment::{
    Damage, FRAME_HEADER, Frames, Position, segment_name, segment_number, segment_paths,
};
use super::store::Store;
use crate::control::caller::Caller;

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct VerifyReport {
    pub segments: usize,
    pub records: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    /// Hash of the newest verified record.
    pub head: Option<Hash>,
    /// Things that are fine but worth saying (removed by retention, torn tail pending repair).
    pub notes: Vec<String>,
    /// The first record that does not verify, if any.
    pub problem: Option<Problem>,
    /// Damage in the store, acknowledged or not (unacknowledged damage is a problem).
    #[serde(default)]
    pub damage: Vec<DamageStatus>,
    /// The newest signed checkpoint, which the chain reaches.
    #[serde(default)]
    pub checkpoint: Option<Checkpoint>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Problem {
    pub segment: String,
    pub offset: u64,
    /// The record's sequence number (as recorded, or as expected where unreadable).
    pub seq: Option<u64>,
    pub reason: String,
}

/// A record already verified, to check the next one against.
struct Verified {
    hash: Hash,
    seq: u64,
    segment: String,
    offset: u64,
    /// Where the record's frame ends.
    end: u64,
}

/// Verifies the store in `dir`; with `end` (a running daemon's written position) only what
/// is written up to it, so a write in progress is not mistaken for a torn one.
pub fn verify(dir: &Path, end: Option<Position>) -> io::Result<VerifyReport> {
    // Read before the segments: a checkpoint covers only records already on disk.
    let anchor = checkpoint::load(dir);
    Scan::new(anchor).run(dir, end)
}

/// Verifies a running daemon's store up to what it has written.
pub fn verify_running(store: &Store) -> io::Result<VerifyReport> {
    let anchor = checkpoint::load(store.dir());
    let end = *store.written().borrow();
    Scan::new(anchor).run(store.dir(), Some(end))
}

struct Scan {
    report: VerifyReport,
    anchor: Result<Option<Checkpoint>, String>,
    /// Where the checkpointed record is, and its hash, once seen.
    anchored: Option<(String, u64, Hash)>,
    last: Option<Verified>,
    /// Damage since `last`: the next record cannot be linked to it.
    gap: bool,
    /// The first record, when it is not the first ever: retention must account for it.
    first_link: Option<(u64, Hash, String)>,
    /// (last seq, last hash) of every segment that retention says it removed.
    removed: Vec<(Option<u64>, Hash)>,
    damage: Vec<StoreDamage>,
    acks: Vec<(StoreDamage, Caller)>,
    /// The first chain problem; scanning goes on to find the damage after it.
    broken: Option<Problem>,
}

impl Scan {
    fn new(anchor: Result<Option<Checkpoint>, String>) -> Scan {
        Scan {
            report: VerifyReport::default(),
            anchor,
            anchored: None,
            last: None,
            gap: false,
            first_link: None,
            removed: Vec::new(),
            damage: Vec::new(),
            acks: Vec::new(),
            broken: None,
        }
    }

    fn run(mut self, dir: &Path, end: Option<Position>) -> io::Result<VerifyReport> {
        let paths = segment_paths(dir)?;
        for (i, path) in paths.iter().enumerate() {
            let number = segment_number(path).expect("listed as a segment");
            if end.is_some_and(|e| number > e.segment) {
                break;
            }
            let name = segment_name(number);
            let mut bytes = std::fs::read(path)?;
            if let Some(e) = end.filter(|e| e.segment == number) {
                bytes.truncate(e.offset as usize);
            }
            self.report.segments += 1;
            let mut frames = Frames::new(&bytes);
            let mut skipped = 0;
            while let Some((offset, payload)) = frames.next() {
                for range in &frames.skipped[skipped..] {
                    self.damaged(StoreDamage::corrupt(
                        name.clone(),
                        range.clone(),
                        self.seq(),
                    ));
                }
                skipped = frames.skipped.len();
                self.record(&name, offset as u64, payload);
            }
            for range in &frames.skipped[skipped..] {
                self.damaged(StoreDamage::corrupt(
                    name.clone(),
                    range.clone(),
                    self.seq(),
                ));
            }
            match frames.damage {
                None => {}
                Some(Damage::Torn) if i + 1 == paths.len() && end.is_none() => {
                    self.report.notes.push(format!(
                        "{name}: {} bytes of a torn write after offset {} (cut when the daemon next starts)",
                        bytes.len() - frames.offset,
                        frames.offset
                    ));
                }
                Some(_) => {
                    let range = frames.offset..bytes.len();
                    self.damaged(StoreDamage::corrupt(name.clone(), range, self.seq()));
                }
            }
        }
        self.check_start();
        self.report.head = self.last.as_ref().map(|v| v.hash);
        let anchor_problem = self.check_anchor();
        let damage_problem = self.settle_damage();
        // The first in the store of a broken link and unacknowledged damage; else the anchor.
        self.report.problem = [self.broken, damage_problem]
            .into_iter()
            .flatten()
            .min_by(|a, b| (&a.segment, a.offset).cmp(&(&b.segment, b.offset)))
            .or(anchor_problem);
        Ok(self.report)
    }

    fn seq(&self) -> Option<u64> {
        self.last.as_ref().map(|v| v.seq)
    }

    fn damaged(&mut self, damage: StoreDamage) {
        self.damage.push(damage);
        self.gap = true;
    }

    fn broke(&mut self, problem: Problem) {
        self.broken.get_or_insert(problem);
    }

    fn record(&mut self, name: &str, offset: u64, payload: &[u8]) {
        let problem = |seq, reason: String| Problem {
            segment: name.to_owned(),
            offset,
            seq,
            reason,
        };
        let link: Link = match serde_json::from_slice(payload) {
            Ok(l) => l,
            Err(e) => {
                let seq = self.seq().map(|s| s + 1);
                self.broke(problem(seq, format!("not a chained record: {e}")));
                self.gap = true;
                return;
            }
        };
        let event = match link.event.kind.as_str() {
            "retention" | "damage" => serde_json::from_slice::<Record>(payload)
                .ok()
                .map(|r| r.event),
            _ => None,
        };
        match &self.last {
            None if link.seq == 0 && link.prev == Hash::GENESIS => {}
            None => self.first_link = Some((link.seq, link.prev, name.to_owned())),
            // Across damage the link cannot be checked; the order still can.
            Some(v) if self.gap => {
                if link.seq <= v.seq {
                    let reason = format!("sequence goes back from {} to {}", v.seq, link.seq);
                    self.broke(problem(Some(link.seq), reason));
                }
            }
            Some(v) if link.prev != v.hash => {
                let p = Problem {
                    segment: v.segment.clone(),
                    offset: v.offset,
                    seq: Some(v.seq),
                    reason: format!(
                        "the next record (seq {}, {name} offset {offset}) links to {}, not to this record's hash {}: this record was altered, or the records after it were removed or replaced",
                        link.seq, link.prev, v.hash
                    ),
                };
                self.broke(p);
            }
            // A missing tail the daemon recorded on start accounts for the seqs it skipped.
            Some(v)
                if link.seq != v.seq + 1
                    && !matches!(&event, Some(Event::Damage(DamageEvent::Found(d)))
                        if d.kind == DamageKind::MissingTail
                            && d.after_seq == Some(v.seq)
                            && d.checkpoint.map(|c| c.seq + 1) == Some(link.seq)) =>
            {
                let reason = format!("sequence jumps from {} to {}", v.seq, link.seq);
                self.broke(problem(Some(link.seq), reason));
            }
            Some(_) => {}
        }
        match event {
            Some(Event::Retention(r)) => self
                .removed
                .extend(r.removed.iter().map(|s| (s.last_seq, s.last_hash))),
            // Corrupt bytes are found by the scan itself; the rest only the daemon saw.
            Some(Event::Damage(DamageEvent::Found(d))) if d.kind != DamageKind::Corrupt => {
                self.damage.push(d)
            }
            Some(Event::Damage(DamageEvent::Acknowledged { damage, by, .. })) => self
                .acks
                .extend(damage.into_iter().map(|d| (d, by.clone()))),
            _ => {}
        }
        let hash = Hash::of(payload);
        if matches!(&self.anchor, Ok(Some(c)) if c.head.seq == link.seq) {
            self.anchored = Some((name.to_owned(), offset, hash));
        }
        let r = &mut self.report;
        r.first_seq.get_or_insert(link.seq);
        r.last_seq = Some(link.seq);
        r.records += 1;
        self.gap = false;
        self.last = Some(Verified {
            hash,
            seq: link.seq,
            segment: name.to_owned(),
            offset,
            end: offset + (FRAME_HEADER + payload.len()) as u64,
        });
    }

    /// A store that does not start at seq 0 must say where its first records went.
    fn check_start(&mut self) {
        let Some((seq, prev, segment)) = self.first_link.take() else {
            return;
        };
        let accounted = self
            .removed
            .iter()
            .any(|&(last_seq, hash)| last_seq.map(|s| s + 1) == Some(seq) && hash == prev);
        if accounted {
            self.report.notes.push(format!(
                "records before seq {seq} were removed by retention (recorded in the chain)"
            ));
        } else {
            self.broke(Problem {
                segment,
                offset: 0,
                seq: Some(seq),
                reason: format!(
                    "the store starts at seq {seq}, and no retention record accounts for the records before it"
                ),
            });
        }
    }

    /// The chain must reach the newest checkpoint, with the same hash there.
    fn check_anchor(&mut self) -> Option<Problem> {
        let checkpoint = match std::mem::replace(&mut self.anchor, Ok(None)) {
            Ok(None) => return None,
            Ok(Some(c)) => c,
            Err(reason) => {
                return Some(Problem {
                    segment: checkpoint::CHECKPOINT_FILE.into(),
                    offset: 0,
                    seq: None,
                    reason: format!("the checkpoint cannot be trusted: {reason}"),
                });
            }
        };
        let head = checkpoint.head;
        self.report.checkpoint = Some(checkpoint);
        match (self.anchored.take(), self.last.as_ref()) {
            (Some((_, _, hash)), _) if hash == head.hash => None,
            (Some((segment, offset, hash)), _) => Some(Problem {
                segment,
                offset,
                seq: Some(head.seq),
                reason: format!(
                    "the record has hash {hash}, but the signed checkpoint says {}: the chain was rewritten after it was anchored",
                    head.hash
                ),
            }),
            (None, Some(v)) if v.seq >= head.seq => None,
            (None, last) => Some(Problem {
                segment: last.map_or_else(|| segment_name(1), |v| v.segment.clone()),
                offset: last.map_or(0, |v| v.end),
                seq: Some(last.map_or(0, |v| v.seq + 1)),
                reason: format!(
                    "missing tail: the signed checkpoint says the chain reached seq {} (hash {}), but the store ends at seq {}: records were cut from the end",
                    head.seq,
                    head.hash,
                    last.map_or_else(|| "(none)".to_owned(), |v| v.seq.to_string())
                ),
            }),
        }
    }

    /// Lists the damage with who acknowledged it; the first not acknowledged is a problem.
    fn settle_damage(&mut self) -> Option<Problem> {
        let mut first = None;
        for damage in std::mem::take(&mut self.damage) {
            let by = self
                .acks
                .iter()
                .find(|(d, _)| *d == damage)
                .map(|(_, by)| by.clone());
            if by.is_none() && first.is_none() {
                first = Some(Problem {
                    segment: damage.segment.clone(),
                    offset: damage.offset,
                    seq: Some(damage.after_seq.map_or(0, |s| s + 1)),
                    reason: format!(
                        "{}; once looked into: interceptor sessions acknowledge-damage {}",
                        damage.describe(),
                        damage.segment
                    ),
                });
            }
            self.report.damage.push(DamageStatus {
                damage,
                acknowledged_by: by,
            });
        }
        first
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sessions::store::StoreOptions;
    use crate::sessions::store::tests::{end, start, write_all};
    use std::time::Duration;

    fn store_with(dir: &Path, n: u64) -> Vec<u8> {
        let options = StoreOptions {
            sync_interval: Duration::from_millis(10),
            ..Default::default()
        };
        let events = (1..=n).flat_map(|id| [start(id), end(id, id)]).collect();
        write_all(dir, options, events);
        std::fs::read(dir.join(segment_name(1))).unwrap()
    }

    fn offsets(bytes: &[u8]) -> Vec<usize> {
        Frames::new(bytes).map(|(o, _)| o).collect()
    }

    #[test]
    fn clean_store_verifies() {
        let dir = tempfile::tempdir().unwrap();
        store_with(dir.path(), 5);
        let report = verify(dir.path(), None).unwrap();
        assert!(report.problem.is_none(), "{report:?}");
        assert_eq!((report.records, report.last_seq), (10, Some(9)));
    }

    #[test]
    fn a_flipped_byte_names_its_record() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = store_with(dir.path(), 5);
        let at = offsets(&bytes);
        let mut bad = bytes.clone();
        bad[at[3] + FRAME_HEADER + 20] ^= 0x01;
        std::fs::write(dir.path().join(segment_name(1)), bad).unwrap();
        let p = verify(dir.path(), None).unwrap().problem.unwrap();
        assert_eq!((p.seq, p.offset), (Some(3), at[3] as u64), "{p:?}");
    }

    #[test]
    fn an_edit_with_a_fixed_checksum_is_caught_by_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = store_with(dir.path(), 5);
        let at = offsets(&bytes);
        // Re-frame record 5 with a changed payload, as someone with write access would.
        let mut payloads: Vec<Vec<u8>> = Frames::new(&bytes).map(|(_, p)| p.to_vec()).collect();
        let text = String::from_utf8(payloads[5].clone()).unwrap();
        payloads[5] = text
            .replace("\"bytes_up\":3", "\"bytes_up\":9")
            .into_bytes();
        assert_ne!(payloads[5], text.as_bytes());
        let mut out = Vec::new();
        for p in &payloads {
            super::super::segment::encode_frame(&mut out, |o| o.extend_from_slice(p));
        }
        std::fs::write(dir.path().join(segment_name(1)), out).unwrap();
        let p = verify(dir.path(), None).unwrap().problem.unwrap();
        assert_eq!((p.seq, p.offset), (Some(5), at[5] as u64), "{p:?}");
    }

    #[test]
    fn removed_records_and_missing_head_are_problems() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = store_with(dir.path(), 5);
        let at = offsets(&bytes);
        let seg = dir.path().join(segment_name(1));
        // Drop record 4 from the middle.
        let mut cut = bytes[..at[4]].to_vec();
        cut.extend_from_slice(&bytes[at[5]..]);
        std::fs::write(&seg, &cut).unwrap();
        assert_eq!(
            verify(dir.path(), None).unwrap().problem.unwrap().seq,
            Some(3)
        );
        // Drop the first records without a retention record.
        std::fs::write(&seg, &bytes[at[2]..]).unwrap();
        assert_eq!(
            verify(dir.path(), None).unwrap().problem.unwrap().seq,
            Some(2)
        );
        // A torn tail is a note, not a problem.
        std::fs::write(&seg, &bytes[..bytes.len() - 3]).unwrap();
        let report = verify(dir.path(), None).unwrap();
        assert!(
            report.problem.is_none() && report.notes.len() == 1,
            "{report:?}"
        );
    }

    #[test]
    fn a_flipped_bit_in_a_length_field_is_corruption_not_a_torn_write() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = store_with(dir.path(), 5);
        let at = offsets(&bytes);
        // Record 4 now claims 64 KiB more than the segment holds after it.
        let mut bad = bytes.clone();
        bad[at[4] + 2] ^= 0x01;
        std::fs::write(dir.path().join(segment_name(1)), bad).unwrap();
        let report = verify(dir.path(), None).unwrap();
        let p = report.problem.unwrap();
        assert_eq!(
            (p.seq, p.offset, p.segment.as_str()),
            (Some(4), at[4] as u64, "segment-00000001.log")
        );
        assert!(report.notes.is_empty(), "{:?}", report.notes);
        // The records after it are still read and checked.
        assert_eq!((report.records, report.last_seq), (9, Some(9)));
    }
}
