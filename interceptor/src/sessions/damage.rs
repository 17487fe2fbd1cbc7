//! Damage to the store is evidence: it is never cut away or moved. The daemon records what
//! it finds on start (a store event naming what and where) and writes on in a new segment;
//! `verify` fails on it until an operator has looked and says so with
//! `interceptor sessions acknowledge-damage SEGMENT`, which is recorded with who did it.

use std::ops::Range;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use super::checkpoint::{CHECKPOINT_FILE, Head};
use super::record::Event;
use super::store::Store;
use super::verify::{VerifyReport, verify_running};
use crate::control::caller::Caller;

/// How long an acknowledgement may take to reach the disk.
const WRITE_WAIT: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DamageKind {
    /// Bytes that are not intact records (a changed byte, a wrong length, a cut frame with
    /// records after it); the intact records around them are read as before.
    Corrupt,
    /// The chain ends before the newest signed checkpoint, or differs from it there.
    MissingTail,
    /// The checkpoint's signature or key did not match when the daemon started (it then
    /// writes a new one, so this record is what is left of the evidence).
    UntrustedCheckpoint,
}

/// One damaged place.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreDamage {
    pub kind: DamageKind,
    pub segment: String,
    /// Where the damage starts (missing tail: where the store ended).
    pub offset: u64,
    pub bytes: u64,
    /// The last intact record before it.
    pub after_seq: Option<u64>,
    /// Missing tail: the checkpoint the chain falls short of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<Head>,
    /// Untrusted checkpoint: why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl StoreDamage {
    pub fn corrupt(segment: String, range: Range<usize>, after_seq: Option<u64>) -> StoreDamage {
        StoreDamage {
            kind: DamageKind::Corrupt,
            segment,
            offset: range.start as u64,
            bytes: (range.end - range.start) as u64,
            after_seq,
            checkpoint: None,
            detail: None,
        }
    }

    /// A checkpoint the daemon found it could not trust, when the chain ended at `after_seq`.
    pub fn untrusted_checkpoint(detail: String, after_seq: Option<u64>) -> StoreDamage {
        StoreDamage {
            kind: DamageKind::UntrustedCheckpoint,
            segment: CHECKPOINT_FILE.into(),
            offset: 0,
            bytes: 0,
            after_seq,
            checkpoint: None,
            detail: Some(detail),
        }
    }

    /// The same damage, seen again on a later start: the same bytes, or a shortfall from the
    /// same checkpoint (the store's end has moved on since).
    pub fn same_place(&self, other: &StoreDamage) -> bool {
        match self.kind {
            DamageKind::Corrupt => {
                (&self.segment, self.offset, self.bytes)
                    == (&other.segment, other.offset, other.bytes)
            }
            DamageKind::MissingTail => self.checkpoint == other.checkpoint,
            // Recorded on every start that finds one: the daemon replaces it at once.
            DamageKind::UntrustedCheckpoint => false,
        }
    }

    /// What verify and the daemon say about it.
    pub fn describe(&self) -> String {
        match (self.kind, self.checkpoint) {
            (DamageKind::Corrupt, _) => format!(
                "{} bytes at {} offset {} are not intact records (checksum or length wrong); kept in place",
                self.bytes, self.segment, self.offset
            ),
            (DamageKind::MissingTail, Some(c)) => format!(
                "the chain ended at seq {} in {} but a signed checkpoint says it reached seq {} (hash {}): records were cut from the tail or replaced",
                self.after_seq
                    .map_or_else(|| "(none)".to_owned(), |s| s.to_string()),
                self.segment,
                c.seq,
                c.hash
            ),
            (DamageKind::MissingTail, None) => format!("the tail of {} is missing", self.segment),
            (DamageKind::UntrustedCheckpoint, _) => format!(
                "the daemon started on a checkpoint it could not trust: {}",
                self.detail.as_deref().unwrap_or("?")
            ),
        }
    }
}

/// The store event.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum DamageEvent {
    /// Found when the daemon started.
    Found(StoreDamage),
    /// An operator has seen it: verify passes over it from now on, naming it and them.
    Acknowledged {
        damage: Vec<StoreDamage>,
        /// The peer of the control connection that asked (uid, user, gid, pid).
        by: Caller,
        reason: Option<String>,
    },
}

/// Damage `verify` found, and who acknowledged it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DamageStatus {
    #[serde(flatten)]
    pub damage: StoreDamage,
    pub acknowledged_by: Option<Caller>,
}

/// Records that `by` has looked into the unacknowledged damage in `segment`, waits until the
/// record is written, and returns the verify report that follows.
pub async fn acknowledge(
    store: &Store,
    segment: &str,
    by: &Caller,
    reason: Option<String>,
) -> anyhow::Result<VerifyReport> {
    let report = verify_now(store).await?;
    let pending: Vec<StoreDamage> = report
        .damage
        .into_iter()
        .filter(|d| d.acknowledged_by.is_none() && d.damage.segment == segment)
        .map(|d| d.damage)
        .collect();
    if pending.is_empty() {
        bail!("no unacknowledged damage in {segment} (`interceptor sessions verify` lists it)");
    }
    tracing::warn!(
        segment,
        uid = by.uid,
        pid = by.pid,
        "session store damage acknowledged"
    );
    let mut written = store.written();
    store.append(Event::Damage(DamageEvent::Acknowledged {
        damage: pending.clone(),
        by: by.clone(),
        reason,
    }));
    let settled = async {
        loop {
            written.changed().await?;
            let report = verify_now(store).await?;
            let acknowledged = |p: &StoreDamage| {
                report
                    .damage
                    .iter()
                    .any(|d| d.damage == *p && d.acknowledged_by.is_some())
            };
            if pending.iter().all(acknowledged) {
                return anyhow::Ok(report);
            }
        }
    };
    tokio::time::timeout(WRITE_WAIT, settled)
        .await
        .context("the acknowledgement was not written in time")?
}

async fn verify_now(store: &Store) -> anyhow::Result<VerifyReport> {
    let store = store.clone();
    Ok(tokio::task::spawn_blocking(move || verify_running(&store)).await??)
}
