//! What the daemon counts as it runs: sessions, outcomes, findings, approvals, drops, and
//! latency histograms. `interceptor status` shows the counts, and `run --metrics-addr`
//! serves them (and the histograms) to Prometheus ([`exposition`], [`endpoint`]).
//!
//! Most counts come from the events the session store is handed ([`Metrics::observe`],
//! called by `Store::append`): every event passes there once, so nothing is counted twice
//! and no layer needs its own counter. Each update is one relaxed atomic add.

pub mod endpoint;
pub mod exposition;
mod histogram;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::sessions::{Event, Outcome};
use interceptor::approvals::ApprovalEvent;
use interceptor::relay_scan::Direction;

pub use histogram::Histogram;

#[derive(Debug, Default)]
pub struct Metrics {
    sessions: AtomicU64,
    /// Sessions ended, indexed by `Outcome as usize`.
    ended: [AtomicU64; Outcome::ALL.len()],
    kernel_denials: AtomicU64,
    /// Proxied connections reset at once: no room (capacity, file descriptors).
    connections_refused: AtomicU64,
    /// Indexed by [`direction_index`].
    findings: [AtomicU64; 2],
    http_exchanges: AtomicU64,
    approvals: [AtomicU64; APPROVAL_EVENTS.len()],
    tailers: AtomicU64,
    /// From accept to the upstream connection being established (what the dial waited for
    /// included: an approval, the client's first bytes when the policy needs its host name).
    pub connection_setup: Histogram,
    /// From an HTTP request's head to the end of its response.
    pub http_duration: Histogram,
}

/// The approval events counted, in the order of `Metrics::approvals`.
const APPROVAL_EVENTS: [&str; 4] = ["requested", "approved", "denied", "expired"];

fn direction_index(d: Direction) -> usize {
    match d {
        Direction::Up => 0,
        Direction::Down => 1,
    }
}

impl Metrics {
    /// Counts what an event stands for.
    pub fn observe(&self, event: &Event) {
        let add = |n: &AtomicU64| {
            n.fetch_add(1, Ordering::Relaxed);
        };
        match event {
            Event::Start(_) => add(&self.sessions),
            Event::End(e) => add(&self.ended[e.outcome as usize]),
            Event::Secret(s) => add(&self.findings[direction_index(s.direction)]),
            Event::Http(h) => {
                add(&self.http_exchanges);
                self.http_duration.observe(h.duration);
            }
            Event::Approval(a) => {
                let kind = match a {
                    ApprovalEvent::Created(_) => 0,
                    ApprovalEvent::Approved { .. } => 1,
                    ApprovalEvent::Denied { .. } => 2,
                    ApprovalEvent::Expired { .. } => 3,
                    ApprovalEvent::Revoked { .. } => return,
                };
                add(&self.approvals[kind]);
            }
            Event::Tls(_)
            | Event::Stream(_)
            | Event::ToolCall(_)
            | Event::McpServer(_)
            | Event::Retention(_)
            | Event::PolicyLoaded(_)
            | Event::Damage(_)
            | Event::Control(_) => {}
        }
    }

    /// A connect() the kernel refused (its session is also counted as ended `denied`).
    pub fn kernel_denial(&self) {
        self.kernel_denials.fetch_add(1, Ordering::Relaxed);
    }

    /// A proxied connection reset at once for want of room.
    pub fn connection_refused(&self) {
        self.connections_refused.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a live tailer until the guard is dropped.
    pub fn tailer(&self) -> TailerGuard<'_> {
        self.tailers.fetch_add(1, Ordering::Relaxed);
        TailerGuard(&self.tailers)
    }

    fn ended(&self, outcome: Outcome) -> u64 {
        self.ended[outcome as usize].load(Ordering::Relaxed)
    }

    /// The counts since the daemon started; `held_approvals` and `store_lost` are the
    /// approvals' and the store's own numbers.
    pub fn counts(&self, held_approvals: u64, store_lost: u64) -> Counts {
        let get = |n: &AtomicU64| n.load(Ordering::Relaxed);
        let (up, down) = (get(&self.findings[0]), get(&self.findings[1]));
        let kernel_denials = get(&self.kernel_denials);
        let sum = |outcomes: &[Outcome]| outcomes.iter().map(|&o| self.ended(o)).sum();
        let approval = |i: usize| get(&self.approvals[i]);
        Counts {
            sessions_total: get(&self.sessions),
            ended: Outcome::ALL
                .iter()
                .filter(|&&o| self.ended(o) > 0)
                .map(|&o| (o.name().to_owned(), self.ended(o)))
                .collect(),
            http_exchanges: get(&self.http_exchanges),
            findings: Findings {
                total: up + down,
                up,
                down,
            },
            approvals: ApprovalCounts {
                held: held_approvals,
                requested: approval(0),
                approved: approval(1),
                denied: approval(2),
                expired: approval(3),
            },
            drops: Drops {
                kernel_denials,
                proxy_denials: self.ended(Outcome::Denied).saturating_sub(kernel_denials),
                upstream_failures: sum(&[
                    Outcome::UpstreamRefused,
                    Outcome::UpstreamTimeout,
                    Outcome::UpstreamError,
                    Outcome::UpstreamTlsError,
                ]),
                client_errors: sum(&[Outcome::ClientError, Outcome::ClientTlsError]),
                connections_refused: get(&self.connections_refused),
                store_lost,
            },
            tailers: get(&self.tailers),
        }
    }
}

pub struct TailerGuard<'a>(&'a AtomicU64);

impl Drop for TailerGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What `interceptor status` shows of the daemon's counters (since it started).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Counts {
    /// Sessions started (kernel denials included).
    pub sessions_total: u64,
    /// Sessions ended, by outcome (outcomes seen so far).
    pub ended: BTreeMap<String, u64>,
    pub http_exchanges: u64,
    pub findings: Findings,
    pub approvals: ApprovalCounts,
    pub drops: Drops,
    /// `sessions tail`, `replay` and `export` streams being served.
    pub tailers: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Findings {
    pub total: u64,
    /// Workload → upstream (requests, command lines).
    pub up: u64,
    /// Upstream → workload.
    pub down: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ApprovalCounts {
    /// Waiting for a person now.
    pub held: u64,
    pub requested: u64,
    pub approved: u64,
    pub denied: u64,
    pub expired: u64,
}

/// Connections and records that did not get through.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Drops {
    /// connect() failed with EPERM in the kernel (deny lists).
    pub kernel_denials: u64,
    /// Refused by the proxy: policy deny, approval denied or expired.
    pub proxy_denials: u64,
    /// The upstream refused, timed out, failed, or failed TLS verification.
    pub upstream_failures: u64,
    /// The workload's side failed (TLS handshake, malformed HTTP, reset).
    pub client_errors: u64,
    /// Redirected connections reset on arrival because the daemon had no room for them (its
    /// connection capacity, or no file descriptor left); not recorded as sessions.
    #[serde(default)]
    pub connections_refused: u64,
    /// Session records lost (the store's writer stopped or a write failed).
    pub store_lost: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sessions::store::tests::{end, start};

    #[test]
    fn outcome_names_and_indexes_match_the_stored_form() {
        for (i, o) in Outcome::ALL.iter().enumerate() {
            assert_eq!(*o as usize, i);
            assert_eq!(serde_json::to_value(o).unwrap(), o.name());
        }
    }

    #[test]
    fn events_move_the_counts() {
        let m = Metrics::default();
        m.observe(&start(1));
        m.observe(&start(2));
        m.observe(&end(1, 3));
        let Event::End(mut denied) = end(2, 0) else {
            unreachable!()
        };
        denied.outcome = Outcome::Denied;
        m.observe(&Event::End(denied));
        m.kernel_denial();
        m.connection_refused();
        let _tail = m.tailer();
        let c = m.counts(2, 5);
        assert_eq!((c.sessions_total, c.tailers), (2, 1));
        assert_eq!(c.ended.get("closed"), Some(&1));
        assert_eq!(c.ended.get("denied"), Some(&1));
        assert_eq!((c.drops.kernel_denials, c.drops.proxy_denials), (1, 0));
        assert_eq!((c.approvals.held, c.drops.store_lost), (2, 5));
        assert_eq!(c.drops.connections_refused, 1);
        drop(_tail);
        assert_eq!(m.counts(0, 0).tailers, 0);
    }
}
