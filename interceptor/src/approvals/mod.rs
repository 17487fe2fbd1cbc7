//! Approvals: connections and requests that an `approve` rule holds in flight until a person
//! decides. The proxy calls [`Approvals::hold`] before anything goes upstream and waits; an
//! approver (identified by the control socket's peer credentials) approves, possibly for a
//! while (a grant: later matching traffic of the same workload and rule passes without
//! waiting), or denies; after the rule's timeout the hold expires. Every step is an
//! [`ApprovalEvent`] for the session store.

#[cfg(test)]
mod tests;
mod webhook;

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::agent::{HeldTool, ToolBinding};
use crate::policy::Approval;
pub use webhook::Webhooks;

/// The workload whose traffic is held.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workload {
    pub uid: u32,
    pub user: Option<String>,
    pub exe: Option<String>,
    pub comm: String,
    pub cgroup: Option<String>,
}

/// What the proxy holds.
#[derive(Clone, Debug)]
pub struct HoldRequest {
    /// The session (connection) held, to find it in the store.
    pub session: u64,
    /// The approve rule's name and its approval settings.
    pub rule: String,
    pub approval: Approval,
    pub workload: Workload,
    /// `host:port` or `ip:port`.
    pub destination: String,
    /// For HTTP: `METHOD path`; None for a raw TCP connection.
    pub request_line: Option<String>,
    /// Already masked by the caller.
    pub headers: Vec<(String, String)>,
    /// Already masked by the caller.
    pub body_preview: Option<String>,
    /// The tool call the request carries, arguments masked by the caller.
    pub tool: Option<HeldTool>,
}

/// A held connection or request, as `approvals list` shows it and the webhook receives it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Pending {
    pub id: u64,
    pub session: u64,
    pub rule: String,
    pub workload: Workload,
    pub destination: String,
    pub request_line: Option<String>,
    pub headers: Vec<(String, String)>,
    pub body_preview: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool: Option<HeldTool>,
    pub approver_users: Vec<String>,
    pub approver_groups: Vec<String>,
    #[serde(with = "humantime_serde")]
    pub created_at: SystemTime,
    #[serde(with = "humantime_serde")]
    pub expires_at: SystemTime,
}

/// Who decides: from the control socket's peer credentials.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approver {
    pub uid: u32,
    pub user: Option<String>,
    pub groups: Vec<String>,
}

impl Approver {
    /// The user name and groups of `uid` from the system's user database.
    pub fn of_uid(uid: u32) -> Approver {
        use nix::unistd::{Group, User, getgrouplist};
        let user = User::from_uid(uid.into()).ok().flatten();
        let groups = user
            .as_ref()
            .and_then(|u| {
                let name = std::ffi::CString::new(u.name.as_str()).ok()?;
                getgrouplist(&name, u.gid).ok()
            })
            .unwrap_or_default()
            .into_iter()
            .filter_map(|gid| Group::from_gid(gid).ok().flatten().map(|g| g.name))
            .collect();
        Approver {
            uid,
            user: user.map(|u| u.name),
            groups,
        }
    }

    fn may_approve(&self, users: &[String], groups: &[String]) -> bool {
        self.user.as_ref().is_some_and(|u| users.contains(u))
            || self.groups.iter().any(|g| groups.contains(g))
    }
}

/// How a hold ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum Outcome {
    /// A grant for this workload and rule was in force: not held.
    Granted { grant: u64 },
    Approved {
        by: Approver,
        reason: Option<String>,
    },
    /// Refuse with the approver's reason (HTTP 403; raw TCP: reset).
    Denied {
        by: Approver,
        reason: Option<String>,
    },
    /// Nobody decided within the rule's timeout (HTTP 403 saying so; raw TCP: reset).
    Expired,
}

impl Outcome {
    pub fn passes(&self) -> bool {
        matches!(self, Outcome::Granted { .. } | Outcome::Approved { .. })
    }
}

/// A time-boxed approval: traffic of `workload` matching `rule` passes until `until`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Grant {
    pub id: u64,
    pub rule: String,
    pub workload: Workload,
    pub approver_users: Vec<String>,
    pub approver_groups: Vec<String>,
    pub by: Approver,
    #[serde(with = "humantime_serde")]
    pub until: SystemTime,
    /// For a held tool call: the grant covers that tool with the same arguments only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool: Option<ToolBinding>,
}

/// What the session store records.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "approval")]
pub enum ApprovalEvent {
    Created(Pending),
    Approved {
        id: u64,
        by: Approver,
        reason: Option<String>,
        grant: Option<Grant>,
    },
    Denied {
        id: u64,
        by: Approver,
        reason: Option<String>,
    },
    Expired {
        id: u64,
    },
    Revoked {
        grant: u64,
        by: Approver,
    },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ApprovalError {
    #[error("no pending approval {0}")]
    NoSuchApproval(u64),
    #[error("no grant {0}")]
    NoSuchGrant(u64),
    #[error("a workload's own user cannot approve or deny its own traffic (uid {0})")]
    SelfApproval(u32),
    #[error(
        "{who} is not among the approvers of rule {rule:?} (users {users:?}, groups {groups:?})"
    )]
    NotAnApprover {
        who: String,
        rule: String,
        users: Vec<String>,
        groups: Vec<String>,
    },
}

/// An approver's decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Approve this one; with a duration, also grant later matching traffic until then.
    Approve {
        grant_for: Option<Duration>,
    },
    Deny,
}

struct Held {
    pending: Pending,
    tx: oneshot::Sender<Outcome>,
}

/// How a pending approval ended, as `approvals list --watch` reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resolution {
    pub id: u64,
    pub rule: String,
    pub destination: String,
    /// Approved, denied (by whom, why) or expired (also when the workload gave up).
    #[serde(flatten)]
    pub outcome: Outcome,
    #[serde(with = "humantime_serde")]
    pub at: SystemTime,
}

/// How many resolutions are remembered for watchers.
const RECENT_RESOLUTIONS: usize = 256;

#[derive(Default)]
struct State {
    next_id: u64,
    held: HashMap<u64, Held>,
    grants: Vec<Grant>,
    /// The latest resolutions, oldest first.
    resolved: VecDeque<Resolution>,
}

impl State {
    fn resolved(&mut self, pending: &Pending, outcome: Outcome) {
        if self.resolved.len() == RECENT_RESOLUTIONS {
            self.resolved.pop_front();
        }
        self.resolved.push_back(Resolution {
            id: pending.id,
            rule: pending.rule.clone(),
            destination: pending.destination.clone(),
            outcome,
            at: SystemTime::now(),
        });
    }
}

/// What survives a restart: grants, and the holds that were pending (recorded as expired on
/// the next start, since their workloads' connections are gone).
#[derive(Default, Serialize, Deserialize)]
struct Saved {
    next_id: u64,
    pending: Vec<Pending>,
    grants: Vec<Grant>,
}

type Recorder = Box<dyn Fn(ApprovalEvent) + Send + Sync>;

/// The pending approvals and grants of a daemon.
pub struct Approvals {
    state: Mutex<State>,
    record: Recorder,
    /// Where [`Saved`] is kept; None: in memory only.
    file: Option<PathBuf>,
    webhooks: Webhooks,
}

impl Approvals {
    /// `record` receives every event (to append it to the session store).
    pub fn new(record: impl Fn(ApprovalEvent) + Send + Sync + 'static) -> Arc<Approvals> {
        Arc::new(Approvals {
            state: Mutex::new(State {
                next_id: 1,
                ..State::default()
            }),
            record: Box::new(record),
            file: None,
            webhooks: Webhooks::default(),
        })
    }

    /// Like [`new`](Self::new), kept in `file` across restarts: grants survive, approvals
    /// that were pending are recorded as expired. Webhooks are sent with `webhooks`.
    pub fn open(
        file: &Path,
        webhooks: Webhooks,
        record: impl Fn(ApprovalEvent) + Send + Sync + 'static,
    ) -> std::io::Result<Arc<Approvals>> {
        let saved: Saved = match std::fs::read(file) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(std::io::Error::other)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Saved::default(),
            Err(e) => return Err(e),
        };
        for p in &saved.pending {
            tracing::info!(id = p.id, "approval pending at the last shutdown: expired");
            record(ApprovalEvent::Expired { id: p.id });
        }
        let now = SystemTime::now();
        let approvals = Approvals {
            state: Mutex::new(State {
                next_id: saved.next_id.max(1),
                grants: saved.grants.into_iter().filter(|g| g.until > now).collect(),
                ..State::default()
            }),
            record: Box::new(record),
            file: Some(file.to_path_buf()),
            webhooks,
        };
        approvals.save(&approvals.state());
        Ok(Arc::new(approvals))
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes what must survive a restart (called with the state locked, after a change).
    fn save(&self, s: &State) {
        let Some(file) = &self.file else { return };
        let saved = Saved {
            next_id: s.next_id,
            pending: s.held.values().map(|h| h.pending.clone()).collect(),
            grants: s.grants.clone(),
        };
        let tmp = file.with_extension("json.tmp");
        let written = serde_json::to_vec_pretty(&saved)
            .map_err(std::io::Error::other)
            .and_then(|bytes| std::fs::write(&tmp, bytes))
            .and_then(|()| std::fs::rename(&tmp, file));
        if let Err(e) = written {
            tracing::warn!(file = %file.display(), error = %e, "saving approvals failed");
        }
    }

    /// Holds until a grant, an approver or the timeout decides. The caller forwards the
    /// traffic only when the outcome [`passes`](Outcome::passes). Dropping the future (the
    /// workload went away) expires the pending approval at once.
    pub async fn hold(&self, req: HoldRequest) -> Outcome {
        let now = SystemTime::now();
        let (id, mut rx, pending) = {
            let mut s = self.state();
            s.grants.retain(|g| g.until > now);
            let tool = req.tool.as_ref().map(HeldTool::binding);
            if let Some(g) = s
                .grants
                .iter()
                .find(|g| g.rule == req.rule && g.workload == req.workload && g.tool == tool)
            {
                return Outcome::Granted { grant: g.id };
            }
            let id = s.next_id;
            s.next_id += 1;
            let pending = Pending {
                id,
                session: req.session,
                rule: req.rule,
                workload: req.workload,
                destination: req.destination,
                request_line: req.request_line,
                headers: req.headers,
                body_preview: req.body_preview,
                tool: req.tool,
                approver_users: req.approval.users,
                approver_groups: req.approval.groups,
                created_at: now,
                expires_at: now + req.approval.timeout,
            };
            let (tx, rx) = oneshot::channel();
            s.held.insert(
                id,
                Held {
                    pending: pending.clone(),
                    tx,
                },
            );
            self.save(&s);
            (id, rx, pending)
        };
        tracing::info!(id, rule = %pending.rule, destination = %pending.destination, uid = pending.workload.uid, "held for approval");
        (self.record)(ApprovalEvent::Created(pending.clone()));
        if let Some(url) = &req.approval.webhook {
            self.webhooks.notify(url.clone(), pending);
        }
        // Expires the hold also when this future is dropped (the workload went away).
        let guard = ExpireOnDrop {
            approvals: self,
            id,
        };
        let outcome = match tokio::time::timeout(req.approval.timeout, &mut rx).await {
            Ok(Ok(outcome)) => outcome,
            // A decision that raced the timeout was sent under the lock: it wins.
            _ if self.expire(id) => Outcome::Expired,
            _ => rx.try_recv().unwrap_or(Outcome::Expired),
        };
        std::mem::forget(guard);
        outcome
    }

    /// Removes hold `id` if no decision took it first; records the expiry. Returns whether
    /// it was still pending.
    fn expire(&self, id: u64) -> bool {
        let held = {
            let mut s = self.state();
            let held = s.held.remove(&id);
            if let Some(h) = &held {
                s.resolved(&h.pending, Outcome::Expired);
            }
            self.save(&s);
            held
        };
        if held.is_some() {
            tracing::info!(id, "approval expired");
            (self.record)(ApprovalEvent::Expired { id });
        }
        held.is_some()
    }

    /// Every pending approval, oldest first.
    pub fn pending(&self) -> Vec<Pending> {
        let mut list: Vec<Pending> = self
            .state()
            .held
            .values()
            .map(|h| h.pending.clone())
            .collect();
        list.sort_by_key(|p| p.id);
        list
    }

    /// The latest resolutions (at most a few hundred), oldest first.
    pub fn resolved(&self) -> Vec<Resolution> {
        self.state().resolved.iter().cloned().collect()
    }

    /// Grants in force.
    pub fn grants(&self) -> Vec<Grant> {
        let now = SystemTime::now();
        let mut s = self.state();
        s.grants.retain(|g| g.until > now);
        s.grants.clone()
    }

    /// An approver decides pending approval `id`.
    pub fn decide(
        &self,
        id: u64,
        by: &Approver,
        verdict: Verdict,
        reason: Option<String>,
    ) -> Result<Pending, ApprovalError> {
        let mut s = self.state();
        let held = s.held.get(&id).ok_or(ApprovalError::NoSuchApproval(id))?;
        let p = &held.pending;
        check_approver(
            by,
            &p.rule,
            &p.workload,
            &p.approver_users,
            &p.approver_groups,
        )?;
        let held = s.held.remove(&id).expect("present");
        let pending = held.pending;
        let (outcome, event) = match verdict {
            Verdict::Approve { grant_for } => {
                let grant = grant_for.map(|d| Grant {
                    id,
                    rule: pending.rule.clone(),
                    workload: pending.workload.clone(),
                    approver_users: pending.approver_users.clone(),
                    approver_groups: pending.approver_groups.clone(),
                    by: by.clone(),
                    until: SystemTime::now() + d,
                    tool: pending.tool.as_ref().map(HeldTool::binding),
                });
                s.grants.extend(grant.clone());
                let outcome = Outcome::Approved {
                    by: by.clone(),
                    reason: reason.clone(),
                };
                let event = ApprovalEvent::Approved {
                    id,
                    by: by.clone(),
                    reason,
                    grant,
                };
                (outcome, event)
            }
            Verdict::Deny => (
                Outcome::Denied {
                    by: by.clone(),
                    reason: reason.clone(),
                },
                ApprovalEvent::Denied {
                    id,
                    by: by.clone(),
                    reason,
                },
            ),
        };
        s.resolved(&pending, outcome.clone());
        // Sent under the lock, so a hold timing out now still sees the decision. The holder
        // may be gone (the workload hung up): the decision is recorded all the same.
        let _ = held.tx.send(outcome);
        self.save(&s);
        drop(s);
        tracing::info!(id, by = by.uid, ?verdict, "approval decided");
        (self.record)(event);
        Ok(pending)
    }

    /// Ends grant `id` early.
    pub fn revoke(&self, id: u64, by: &Approver) -> Result<Grant, ApprovalError> {
        let mut s = self.state();
        let i = s
            .grants
            .iter()
            .position(|g| g.id == id)
            .ok_or(ApprovalError::NoSuchGrant(id))?;
        let g = &s.grants[i];
        check_approver(
            by,
            &g.rule,
            &g.workload,
            &g.approver_users,
            &g.approver_groups,
        )?;
        let grant = s.grants.remove(i);
        self.save(&s);
        drop(s);
        (self.record)(ApprovalEvent::Revoked {
            grant: id,
            by: by.clone(),
        });
        Ok(grant)
    }
}

struct ExpireOnDrop<'a> {
    approvals: &'a Approvals,
    id: u64,
}

impl Drop for ExpireOnDrop<'_> {
    fn drop(&mut self) {
        self.approvals.expire(self.id);
    }
}

/// The workload's own user never decides about its own traffic; others must be listed.
fn check_approver(
    by: &Approver,
    rule: &str,
    workload: &Workload,
    users: &[String],
    groups: &[String],
) -> Result<(), ApprovalError> {
    if by.uid == workload.uid {
        return Err(ApprovalError::SelfApproval(by.uid));
    }
    if !by.may_approve(users, groups) {
        return Err(ApprovalError::NotAnApprover {
            who: by.user.clone().unwrap_or_else(|| format!("uid {}", by.uid)),
            rule: rule.to_string(),
            users: users.to_vec(),
            groups: groups.to_vec(),
        });
    }
    Ok(())
}
