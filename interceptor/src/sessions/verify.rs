//! `interceptor sessions verify`: checks every frame's checksum and every record's link to the
//! one before it, across segments, and names the first record that does not verify.

use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::chain::{Hash, Link, Record};
use super::record::Event;
use super::segment::{Damage, Frames, Position, segment_name, segment_number, segment_paths};

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct VerifyReport {
    pub segments: usize,
    pub records: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    /// Hash of the newest verified record: keep a copy elsewhere to also detect a cut tail.
    pub head: Option<Hash>,
    /// Things that are fine but worth saying (removed by retention, torn tail pending repair).
    pub notes: Vec<String>,
    /// The first record that does not verify, if any.
    pub problem: Option<Problem>,
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
}

/// Verifies the store in `dir`; with `end` (a running daemon's written position) only what
/// is written up to it, so a write in progress is not mistaken for a torn one.
pub fn verify(dir: &Path, end: Option<Position>) -> io::Result<VerifyReport> {
    let mut report = VerifyReport::default();
    let paths = segment_paths(dir)?;
    let mut last: Option<Verified> = None;
    // The first record, when it is not the first ever: retention must account for it.
    let mut first_link: Option<(u64, Hash, String)> = None;
    // (last seq, last hash) of every segment that retention says it removed.
    let mut removed: Vec<(Option<u64>, Hash)> = Vec::new();
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
        report.segments += 1;
        let mut frames = Frames::new(&bytes);
        for (offset, payload) in frames.by_ref() {
            let offset = offset as u64;
            let problem = |seq, reason: String| Problem {
                segment: name.clone(),
                offset,
                seq,
                reason,
            };
            let link: Link = match serde_json::from_slice(payload) {
                Ok(l) => l,
                Err(e) => {
                    let seq = last.as_ref().map(|v| v.seq + 1);
                    report.problem = Some(problem(seq, format!("not a chained record: {e}")));
                    return Ok(report);
                }
            };
            match &last {
                None if link.seq == 0 && link.prev == Hash::GENESIS => {}
                None => first_link = Some((link.seq, link.prev, name.clone())),
                Some(v) if link.prev != v.hash => {
                    report.problem = Some(Problem {
                        segment: v.segment.clone(),
                        offset: v.offset,
                        seq: Some(v.seq),
                        reason: format!(
                            "the next record (seq {}, {name} offset {offset}) links to {}, not to this record's hash {}: this record was altered, or the records after it were removed or replaced",
                            link.seq, link.prev, v.hash
                        ),
                    });
                    return Ok(report);
                }
                Some(v) if link.seq != v.seq + 1 => {
                    report.problem = Some(problem(
                        Some(link.seq),
                        format!("sequence jumps from {} to {}", v.seq, link.seq),
                    ));
                    return Ok(report);
                }
                Some(_) => {}
            }
            if link.event.kind == "retention"
                && let Ok(Record {
                    event: Event::Retention(r),
                    ..
                }) = serde_json::from_slice(payload)
            {
                removed.extend(r.removed.iter().map(|s| (s.last_seq, s.last_hash)));
            }
            report.first_seq.get_or_insert(link.seq);
            report.last_seq = Some(link.seq);
            report.records += 1;
            last = Some(Verified {
                hash: Hash::of(payload),
                seq: link.seq,
                segment: name.clone(),
                offset,
            });
        }
        match frames.damage {
            None => {}
            Some(Damage::Torn) if i + 1 == paths.len() && end.is_none() => {
                report.notes.push(format!(
                    "{name}: {} bytes of a torn write after offset {} (cut when the daemon next starts)",
                    bytes.len() - frames.offset,
                    frames.offset
                ));
            }
            Some(damage) => {
                report.problem = Some(Problem {
                    segment: name,
                    offset: frames.offset as u64,
                    seq: Some(last.as_ref().map_or(0, |v| v.seq + 1)),
                    reason: match damage {
                        Damage::Torn => "frame cut short in the middle of the store".into(),
                        Damage::Corrupt => {
                            "checksum or length does not match: the record was altered".into()
                        }
                    },
                });
                return Ok(report);
            }
        }
    }
    if let Some((seq, prev, segment)) = first_link {
        let accounted = removed
            .iter()
            .any(|&(last_seq, hash)| last_seq.map(|s| s + 1) == Some(seq) && hash == prev);
        if accounted {
            report.notes.push(format!(
                "records before seq {seq} were removed by retention (recorded in the chain)"
            ));
        } else {
            report.problem = Some(Problem {
                segment,
                offset: 0,
                seq: Some(seq),
                reason: format!(
                    "the store starts at seq {seq}, and no retention record accounts for the records before it"
                ),
            });
        }
    }
    report.head = last.map(|v| v.hash);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sessions::segment::FRAME_HEADER;
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
}
