//! Reading sessions back: every session folded from its events, or one session read only
//! where its records lie.

use std::collections::HashMap;
use std::fs;
use std::path::Path;

use super::chain::{Link, Record};
use super::record::{Event, Session};
use super::segment::{Frames, segment_number, segment_paths};
use super::spans::{self, Spans};
use super::store::{StoreError, io_err};

/// Folds the events of every segment into sessions, oldest first.
pub fn read_sessions(dir: &Path) -> Result<Vec<Session>, StoreError> {
    fold_sessions(dir, 0, 0)
}

/// Folds the sessions with ids from `first_id` on, reading segments from `first_segment`.
pub fn fold_sessions(
    dir: &Path,
    first_segment: u64,
    first_id: u64,
) -> Result<Vec<Session>, StoreError> {
    let mut sessions: Vec<Session> = Vec::new();
    let mut index = HashMap::new();
    for path in segment_paths(dir).map_err(io_err(dir))? {
        if segment_number(&path).is_some_and(|n| n < first_segment) {
            continue;
        }
        let bytes = fs::read(&path).map_err(io_err(&path))?;
        for (_, payload) in Frames::new(&bytes) {
            let record: Record = match serde_json::from_slice(payload) {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!(error = %e, "skipping a record this version cannot read");
                    continue;
                }
            };
            match record.event {
                Event::Start(start) if start.id < first_id => {}
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

/// Folds session `id` from segment `first` on; segments below `writing` (closed, never
/// written again) are read only where their span index puts the session's records.
pub fn read_session(
    dir: &Path,
    id: u64,
    first: u64,
    writing: u64,
) -> Result<Option<Session>, StoreError> {
    let mut session: Option<Session> = None;
    for path in segment_paths(dir).map_err(io_err(dir))? {
        let number = segment_number(&path).expect("listed as a segment");
        if number < first {
            continue;
        }
        let bytes = if number < writing {
            let spans = Spans::of_segment(dir, number).map_err(io_err(&path))?;
            let Some(range) = spans.sessions.get(&id) else {
                continue;
            };
            spans::read_range(dir, number, range.clone()).map_err(io_err(&path))?
        } else {
            fs::read(&path).map_err(io_err(&path))?
        };
        for (_, payload) in Frames::new(&bytes) {
            let link = serde_json::from_slice::<Link>(payload).ok();
            if link.and_then(|l| l.event.session()) != Some(id) {
                continue;
            }
            let Ok(record) = serde_json::from_slice::<Record>(payload) else {
                continue;
            };
            match (record.event, session.as_mut()) {
                (Event::Start(start), None) => session = Some(Session::from_start(start)),
                (Event::End(end), Some(s)) => {
                    s.apply(Event::End(end));
                    return Ok(session);
                }
                (event, Some(s)) => s.apply(event),
                (_, None) => {}
            }
        }
    }
    Ok(session)
}
