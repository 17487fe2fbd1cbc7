//! Where sessions begin: per segment, the lowest and highest id of the sessions that started
//! in it. Ids are handed out in order and a start is appended right after, so the first
//! segment whose range holds an id is where that session's records begin: `replay` and
//! `tail --session` read from there, not from the oldest segment. A few numbers per segment,
//! rebuilt by the scan on open.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use super::segment::Position;

#[derive(Clone, Default)]
pub struct StartIndex(Arc<Mutex<BTreeMap<u64, (u64, u64)>>>);

impl StartIndex {
    /// Session `id` started in `segment`.
    pub fn note(&self, segment: u64, id: u64) {
        let mut map = self.0.lock().unwrap();
        let range = map.entry(segment).or_insert((id, id));
        *range = (range.0.min(id), range.1.max(id));
    }

    /// Retention removed `segment`.
    pub fn remove(&self, segment: u64) {
        self.0.lock().unwrap().remove(&segment);
    }

    /// The highest id of a session whose start is written.
    pub fn newest(&self) -> Option<u64> {
        self.0.lock().unwrap().values().map(|r| r.1).max()
    }

    /// Where to start reading for the sessions from `id` on: the first segment in which a
    /// session with an id as high started (every earlier one holds only lower ids).
    pub fn find_from(&self, id: u64) -> Option<Position> {
        let map = self.0.lock().unwrap();
        map.iter()
            .find(|(_, (_, high))| *high >= id)
            .map(|(&segment, _)| Position { segment, offset: 0 })
    }

    /// Where to start reading for session `id`, if its start is in the store.
    pub fn find(&self, id: u64) -> Option<Position> {
        let map = self.0.lock().unwrap();
        map.iter()
            .find(|(_, (low, high))| (*low..=*high).contains(&id))
            .map(|(&segment, _)| Position { segment, offset: 0 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_first_segment_whose_range_holds_the_id() {
        let index = StartIndex::default();
        for (segment, id) in [(1, 1), (1, 4), (2, 3), (2, 7), (3, 8)] {
            index.note(segment, id);
        }
        let at = |id| index.find(id).map(|p| p.segment);
        // 3 started in segment 2, after 4 in segment 1: reading from 1 still finds it.
        assert_eq!(
            (at(1), at(3), at(5), at(8), at(9)),
            (Some(1), Some(1), Some(2), Some(3), None)
        );
        assert_eq!(index.newest(), Some(8));
        let from = |id| index.find_from(id).map(|p| p.segment);
        assert_eq!(
            (from(2), from(5), from(8), from(9)),
            (Some(1), Some(2), Some(3), None)
        );
        index.remove(1);
        assert_eq!(at(3), Some(2));
    }
}
