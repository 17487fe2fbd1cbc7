//! Retention: old segments are removed by age and by total size, and each removal is itself
//! recorded in the chain (what was removed and the hash it ended with), so `verify` can tell a
//! store that was trimmed by policy from one that was cut by hand.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::chain::Hash;

#[derive(Clone, Copy, Debug, Default)]
pub struct RetentionPolicy {
    /// Remove a segment once its newest record is older than this.
    pub max_age: Option<Duration>,
    /// Remove the oldest segments while the store is larger than this.
    pub max_bytes: Option<u64>,
}

/// What the writer knows of a segment.
#[derive(Clone, Debug)]
pub struct SegmentMeta {
    pub number: u64,
    pub bytes: u64,
    /// First and last record sequence numbers (none while the segment is empty).
    pub seqs: Option<(u64, u64)>,
    /// Hash of the last record in it (or of the chain before it, while empty).
    pub last_hash: Hash,
    pub newest: Option<SystemTime>,
}

/// The event recorded when segments are removed.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Retention {
    /// `age` or `size`.
    pub reason: String,
    pub removed: Vec<RemovedSegment>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RemovedSegment {
    pub segment: String,
    pub bytes: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    pub last_hash: Hash,
    #[serde(with = "humantime_serde::option")]
    pub newest: Option<SystemTime>,
}

impl RetentionPolicy {
    /// How many of the oldest closed segments to remove, and why. The segment being written
    /// (`current_bytes`) is never removed.
    pub fn select(
        &self,
        closed: &[SegmentMeta],
        current_bytes: u64,
        now: SystemTime,
    ) -> Option<(usize, &'static str)> {
        let expired = |m: &SegmentMeta| match (self.max_age, m.newest) {
            (Some(age), Some(newest)) => now.duration_since(newest).unwrap_or_default() > age,
            _ => false,
        };
        let by_age = closed.iter().take_while(|m| expired(m)).count();
        let mut total: u64 = closed.iter().map(|m| m.bytes).sum::<u64>() + current_bytes;
        let mut by_size = 0;
        if let Some(max) = self.max_bytes {
            for m in closed {
                if total <= max {
                    break;
                }
                total -= m.bytes;
                by_size += 1;
            }
        }
        match (by_age, by_size) {
            (0, 0) => None,
            (a, s) if a >= s => Some((a, "age")),
            (_, s) => Some((s, "size")),
        }
    }
}

impl RemovedSegment {
    pub fn from_meta(meta: &SegmentMeta) -> RemovedSegment {
        RemovedSegment {
            segment: super::segment::segment_name(meta.number),
            bytes: meta.bytes,
            first_seq: meta.seqs.map(|s| s.0),
            last_seq: meta.seqs.map(|s| s.1),
            last_hash: meta.last_hash,
            newest: meta.newest,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(number: u64, bytes: u64, age_s: u64, now: SystemTime) -> SegmentMeta {
        SegmentMeta {
            number,
            bytes,
            seqs: Some((number * 10, number * 10 + 9)),
            last_hash: Hash::GENESIS,
            newest: Some(now - Duration::from_secs(age_s)),
        }
    }

    #[test]
    fn selects_oldest_by_age_and_by_size() {
        let now = SystemTime::now();
        let closed = [
            meta(1, 100, 300, now),
            meta(2, 100, 200, now),
            meta(3, 100, 10, now),
        ];
        let none = RetentionPolicy::default();
        assert_eq!(none.select(&closed, 50, now), None);
        let age = RetentionPolicy {
            max_age: Some(Duration::from_secs(100)),
            max_bytes: None,
        };
        assert_eq!(age.select(&closed, 50, now), Some((2, "age")));
        let size = RetentionPolicy {
            max_age: None,
            max_bytes: Some(220),
        };
        // 350 bytes in all: removing 1 and 2 leaves 150.
        assert_eq!(size.select(&closed, 50, now), Some((2, "size")));
        let tiny = RetentionPolicy {
            max_age: None,
            max_bytes: Some(1),
        };
        assert_eq!(tiny.select(&closed, 50, now), Some((3, "size")));
    }
}
