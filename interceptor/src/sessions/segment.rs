//! Segment files and their framing.
//!
//! A segment (`segment-<n>.log`) is a sequence of frames `[len: u32 LE][crc32: u32 LE][payload]`:
//! a torn write at the tail (power loss, `kill -9` mid-write) or a changed byte is detected by
//! the length and checksum before the payload is ever parsed.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub const FRAME_HEADER: usize = 8;
/// A frame larger than this is corruption, not data.
pub const MAX_FRAME: usize = 16 << 20;

/// Where a frame starts (or where the store ends): segment number and byte offset in it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Position {
    pub segment: u64,
    pub offset: u64,
}

/// Frame payloads with the positions they were read at.
pub type Payloads = Vec<(Position, Vec<u8>)>;

/// Why decoding stopped before the end of the bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Damage {
    /// The last frame is cut short: a write that did not finish.
    Torn,
    /// A complete frame whose checksum or length is wrong.
    Corrupt,
}

/// The segment files in `dir`, oldest first.
pub fn segment_paths(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| segment_number(p).is_some())
        .collect();
    paths.sort_by_key(|p| segment_number(p));
    Ok(paths)
}

pub fn segment_number(path: &Path) -> Option<u64> {
    path.file_name()?
        .to_str()?
        .strip_prefix("segment-")?
        .strip_suffix(".log")?
        .parse()
        .ok()
}

pub fn segment_name(n: u64) -> String {
    format!("segment-{n:08}.log")
}

/// Appends one frame whose payload `write` produces; returns the payload's range in `out`.
pub fn encode_frame(out: &mut Vec<u8>, write: impl FnOnce(&mut Vec<u8>)) -> Range<usize> {
    let start = out.len();
    out.extend_from_slice(&[0; FRAME_HEADER]);
    write(out);
    let payload = start + FRAME_HEADER..out.len();
    let (len, crc) = (payload.len() as u32, crc32fast::hash(&out[payload.clone()]));
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    payload
}

/// The intact frames of a buffer, in order, as `(offset, payload)`. A damaged stretch that
/// intact frames follow is skipped (and listed in `skipped`), so one bad record does not
/// hide the ones after it. After the iteration, `damage` tells whether the buffer ends in
/// damage and `offset` where it begins (or the end of the last intact frame).
pub struct Frames<'a> {
    bytes: &'a [u8],
    pub offset: usize,
    pub damage: Option<Damage>,
    /// Damaged stretches with intact frames after them.
    pub skipped: Vec<Range<usize>>,
}

/// Why the bytes at a frame's start are not an intact frame.
enum Bad {
    /// Header or payload runs past the end: what a cut write leaves.
    Short,
    /// A length that is no frame's, or a checksum that does not match.
    Wrong,
}

/// The payload length of the intact frame at the start of `rest`.
fn intact(rest: &[u8]) -> Result<usize, Bad> {
    if rest.len() < FRAME_HEADER {
        return Err(Bad::Short);
    }
    let len = u32::from_le_bytes(rest[..4].try_into().unwrap()) as usize;
    let crc = u32::from_le_bytes(rest[4..8].try_into().unwrap());
    // No record is empty: zeros are not a frame.
    if len == 0 || len > MAX_FRAME {
        return Err(Bad::Wrong);
    }
    if rest.len() - FRAME_HEADER < len {
        return Err(Bad::Short);
    }
    if crc32fast::hash(&rest[FRAME_HEADER..FRAME_HEADER + len]) != crc {
        return Err(Bad::Wrong);
    }
    Ok(len)
}

impl<'a> Frames<'a> {
    pub fn new(bytes: &'a [u8]) -> Frames<'a> {
        Frames {
            bytes,
            offset: 0,
            damage: None,
            skipped: Vec::new(),
        }
    }

    /// Where the next intact frame after `from` starts. Record payloads are JSON text, which
    /// holds no NUL byte, so inside one no length up to MAX_FRAME reads as plausible and the
    /// search costs about a length check per byte.
    fn resync(&self, from: usize) -> Option<usize> {
        (from + 1..self.bytes.len()).find(|&at| intact(&self.bytes[at..]).is_ok())
    }
}

impl<'a> Iterator for Frames<'a> {
    type Item = (usize, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let rest = &self.bytes[self.offset..];
            if rest.is_empty() {
                return None;
            }
            match intact(rest) {
                Ok(len) => {
                    let at = self.offset;
                    self.offset += FRAME_HEADER + len;
                    return Some((at, &rest[FRAME_HEADER..FRAME_HEADER + len]));
                }
                Err(bad) => match self.resync(self.offset) {
                    Some(next) => {
                        self.skipped.push(self.offset..next);
                        self.offset = next;
                    }
                    // Only a short final frame with nothing intact after it is a torn write.
                    None => {
                        self.damage = Some(match bad {
                            Bad::Short => Damage::Torn,
                            Bad::Wrong => Damage::Corrupt,
                        });
                        return None;
                    }
                },
            }
        }
    }
}

/// Reads whole frames from `from` up to (not past) `end`, at most about `budget` bytes of
/// them, crossing into later segments as needed. Returns `(position, payload)` pairs and the
/// position after the last one. A segment removed under the reader (retention) is skipped;
/// damage in a segment ends that segment for this reader (`verify` is what reports it).
pub fn read_frames(
    dir: &Path,
    from: Position,
    end: Position,
    budget: usize,
) -> io::Result<(Payloads, Position)> {
    let mut out = Vec::new();
    let mut pos = from;
    let mut used = 0;
    while pos < end && used < budget {
        let path = dir.join(segment_name(pos.segment));
        let mut file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                pos = next_segment(dir, pos.segment)?.unwrap_or(end);
                continue;
            }
            Err(e) => return Err(e),
        };
        let stop = if pos.segment == end.segment {
            end.offset
        } else {
            file.metadata()?.len()
        };
        let avail = stop.saturating_sub(pos.offset) as usize;
        let mut want = avail.min(budget - used);
        let bytes = loop {
            let mut bytes = Vec::with_capacity(want);
            file.seek(SeekFrom::Start(pos.offset))?;
            (&mut file).take(want as u64).read_to_end(&mut bytes)?;
            let mut probe = Frames::new(&bytes);
            // A frame larger than the budget (or damage with no frame after it within the
            // budget): read more.
            if want < avail && probe.next().is_none() && probe.damage.is_some() {
                want = avail.min(want.max(FRAME_HEADER) * 2);
                continue;
            }
            break bytes;
        };
        let mut frames = Frames::new(&bytes);
        for (at, payload) in frames.by_ref() {
            out.push((
                Position {
                    segment: pos.segment,
                    offset: pos.offset + at as u64,
                },
                payload.to_vec(),
            ));
        }
        used += frames.offset;
        pos.offset += frames.offset as u64;
        // Damage with nothing intact after it ends the segment for a reader, unless only the
        // budget cut it short; a torn frame may be one the writer is still appending.
        let damaged = frames.damage.is_some() && bytes.len() == avail;
        if damaged || !frames.skipped.is_empty() {
            tracing::warn!(segment = %path.display(), offset = pos.offset, "damaged frames skipped; `interceptor sessions verify` reports them");
        }
        if pos.segment < end.segment && (pos.offset >= stop || damaged) {
            pos = next_segment(dir, pos.segment)?.unwrap_or(end);
        } else if frames.offset == 0 {
            break;
        }
    }
    Ok((out, pos))
}

/// The start of the first segment after `n`, if there is one.
fn next_segment(dir: &Path, n: u64) -> io::Result<Option<Position>> {
    Ok(segment_paths(dir)?
        .iter()
        .filter_map(|p| segment_number(p))
        .find(|&m| m > n)
        .map(|segment| Position { segment, offset: 0 }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(out: &mut Vec<u8>, text: &str) {
        encode_frame(out, |o| o.extend_from_slice(text.as_bytes()));
    }

    #[test]
    fn frames_stop_at_torn_and_corrupt_frames() {
        let mut buf = Vec::new();
        frame(&mut buf, "one");
        let first = buf.len();
        frame(&mut buf, "two");
        let all: Vec<_> = Frames::new(&buf).map(|(_, p)| p.to_vec()).collect();
        assert_eq!(all, vec![b"one".to_vec(), b"two".to_vec()]);

        let mut torn = Frames::new(&buf[..buf.len() - 1]);
        assert_eq!(torn.by_ref().count(), 1);
        assert_eq!((torn.offset, torn.damage), (first, Some(Damage::Torn)));

        let mut bad = buf.clone();
        bad[first + FRAME_HEADER] ^= 1;
        let mut corrupt = Frames::new(&bad);
        assert_eq!(corrupt.by_ref().count(), 1);
        assert_eq!(corrupt.damage, Some(Damage::Corrupt));
    }

    #[test]
    fn read_frames_crosses_segments_and_skips_removed_ones() {
        let dir = tempfile::tempdir().unwrap();
        for (n, texts) in [(1, ["a", "b"]), (2, ["c", "d"]), (3, ["e", "f"])] {
            let mut buf = Vec::new();
            for t in texts {
                frame(&mut buf, t);
            }
            std::fs::write(dir.path().join(segment_name(n)), buf).unwrap();
        }
        std::fs::remove_file(dir.path().join(segment_name(2))).unwrap();
        let end = Position {
            segment: 3,
            offset: (FRAME_HEADER + 1) as u64,
        };
        let (frames, next) = read_frames(dir.path(), Position::default(), end, 1 << 20).unwrap();
        let texts: Vec<_> = frames.iter().map(|(_, p)| p.clone()).collect();
        assert_eq!(texts, vec![b"a".to_vec(), b"b".to_vec(), b"e".to_vec()]);
        assert_eq!(next, end);
    }
}
