//! What the session store holds: one event per line of history, folded into sessions on read.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::identity::Identity;

/// How a connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Still in progress (no end event yet).
    Open,
    /// Both sides closed normally.
    Closed,
    UpstreamRefused,
    UpstreamTimeout,
    UpstreamError,
    ClientError,
    /// `connect()` failed with EPERM in the kernel; never reached the proxy.
    Denied,
}

/// A stored event. Sessions are built from these, so later kinds of events (HTTP exchanges,
/// findings, approvals) are added as variants without rewriting what is on disk.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    Start(SessionStart),
    End(SessionEnd),
}

impl Event {
    pub fn session_id(&self) -> u64 {
        match self {
            Event::Start(s) => s.id,
            Event::End(e) => e.id,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SessionStart {
    pub id: u64,
    pub enrollment: u32,
    pub identity: Identity,
    pub destination: String,
    #[serde(with = "humantime_serde")]
    pub started_at: SystemTime,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SessionEnd {
    pub id: u64,
    #[serde(with = "humantime_serde")]
    pub ended_at: SystemTime,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub outcome: Outcome,
    pub error: Option<String>,
}

/// A connection as `sessions list` and `sessions show` print it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Session {
    #[serde(with = "id_as_string")]
    pub id: u64,
    pub enrollment: u32,
    pub identity: Identity,
    pub destination: String,
    #[serde(with = "humantime_serde")]
    pub started_at: SystemTime,
    #[serde(with = "humantime_serde::option")]
    pub ended_at: Option<SystemTime>,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub outcome: Outcome,
    pub error: Option<String>,
}

impl Session {
    pub fn from_start(start: SessionStart) -> Session {
        Session {
            id: start.id,
            enrollment: start.enrollment,
            identity: start.identity,
            destination: start.destination,
            started_at: start.started_at,
            ended_at: None,
            bytes_up: 0,
            bytes_down: 0,
            outcome: Outcome::Open,
            error: None,
        }
    }

    pub fn apply_end(&mut self, end: SessionEnd) {
        self.ended_at = Some(end.ended_at);
        self.bytes_up = end.bytes_up;
        self.bytes_down = end.bytes_down;
        self.outcome = end.outcome;
        self.error = end.error;
    }
}

/// Session ids are opaque strings to users (so the format can grow), numbers inside.
mod id_as_string {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(id: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(id)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        String::deserialize(d)?.parse().map_err(D::Error::custom)
    }
}
