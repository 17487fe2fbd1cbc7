//! Changes asked for on the control socket: authorised by the control roles
//! ([`super::roles`], [`super::coverage`]), made, and recorded in the session store with who
//! asked, whether they were made, refused or failed.

use std::os::fd::{AsFd, BorrowedFd};

use serde_json::Value;
use tokio::net::UnixStream;

use super::caller::Caller;
use super::coverage;
use super::protocol::{ApprovalsRequest, Reply, Request, Target};
use crate::daemon::Daemon;
use crate::sessions::Event;
use crate::sessions::damage;
use crate::sessions::record::{ControlChange, ControlOutcome};
use interceptor::approvals::{ApprovalError, Approver, Verdict};

/// Serves `request`, the change named `change` ([`Request::change`]), asked on `socket`. The
/// peer is identified only now: reading needs nothing from the user database or `/proc`.
pub async fn serve(
    daemon: &Daemon,
    request: Request,
    change: &'static str,
    socket: &UnixStream,
) -> Reply {
    let caller = &Caller::of(socket)
        .map_err(|e| format!("{change} refused: cannot tell who you are: {e}"))?;
    let socket = socket.as_fd();
    let sent = serde_json::to_value(&request).unwrap_or(Value::Null);
    let (reply, outcome) = match make(daemon, request, change, caller, socket).await {
        Ok((value, changed)) => (Ok(value), ControlOutcome::Done { changed }),
        Err(NotMade::Refused(reason)) => (Err(reason.clone()), ControlOutcome::Refused { reason }),
        Err(NotMade::Failed(error)) => (Err(error.clone()), ControlOutcome::Failed { error }),
    };
    match &outcome {
        ControlOutcome::Refused { reason } => {
            tracing::warn!(
                change,
                uid = caller.uid,
                pid = caller.pid,
                reason,
                "control change refused"
            )
        }
        _ => tracing::info!(
            change,
            uid = caller.uid,
            pid = caller.pid,
            ?outcome,
            "control change"
        ),
    }
    daemon.store().append(Event::Control(ControlChange {
        change: change.to_string(),
        request: sent,
        caller: caller.clone(),
        outcome,
        at: std::time::SystemTime::now(),
    }));
    reply
}

enum NotMade {
    Refused(String),
    Failed(String),
}

impl From<anyhow::Error> for NotMade {
    fn from(e: anyhow::Error) -> NotMade {
        NotMade::Failed(crate::errors::chain(e.as_ref()))
    }
}

impl From<serde_json::Error> for NotMade {
    fn from(e: serde_json::Error) -> NotMade {
        NotMade::Failed(e.to_string())
    }
}

impl From<ApprovalError> for NotMade {
    fn from(e: ApprovalError) -> NotMade {
        match e {
            ApprovalError::SelfApproval(_) | ApprovalError::NotAnApprover { .. } => {
                NotMade::Refused(e.to_string())
            }
            ApprovalError::NoSuchApproval(_) | ApprovalError::NoSuchGrant(_) => {
                NotMade::Failed(e.to_string())
            }
        }
    }
}

/// Makes the change; returns the reply and what changed.
async fn make(
    daemon: &Daemon,
    request: Request,
    change: &'static str,
    caller: &Caller,
    socket: BorrowedFd<'_>,
) -> Result<(Value, String), NotMade> {
    let process = caller.process(socket).map_err(NotMade::Refused)?;
    daemon
        .roles()
        .authorise(change, caller, &process)
        .map_err(NotMade::Refused)?;
    // Enrollments are checked under their lock, so no other change comes in between.
    let covered = |target: &Target, allow_root: bool, enrolled: &[_]| -> Result<(), NotMade> {
        match coverage::target_dir(target, allow_root, enrolled)? {
            Some(dir) => {
                coverage::check(change, &dir, enrolled, caller, &process).map_err(NotMade::Refused)
            }
            None => Ok(()),
        }
    };
    let approver = || Approver::of_uid(caller.uid);
    Ok(match request {
        Request::Enroll(req) => {
            let mut enrollments = daemon.enrollments().lock().await;
            covered(&req.target, req.allow_root, &enrollments.status())?;
            let e = enrollments.enroll(req).await?;
            let changed = format!("enrollment {} ({})", e.id, e.cgroup.display());
            (serde_json::to_value(e)?, changed)
        }
        Request::Unenroll { target } => {
            let mut enrollments = daemon.enrollments().lock().await;
            covered(&target, true, &enrollments.status())?;
            let e = enrollments.unenroll(&target)?;
            let changed = format!("enrollment {} ({})", e.id, e.cgroup.display());
            (serde_json::to_value(e)?, changed)
        }
        Request::PolicyReload => {
            let p = daemon.reload_policy("control").await?;
            let changed = format!("policy {} (sha256 {})", p.path.display(), p.sha256);
            (serde_json::to_value(p)?, changed)
        }
        Request::Approvals(ApprovalsRequest::Decide {
            id,
            approve,
            grant_for,
            reason,
        }) => {
            let verdict = match approve {
                true => Verdict::Approve { grant_for },
                false => Verdict::Deny,
            };
            let p = daemon
                .approvals()
                .decide(id, &approver(), verdict, reason)?;
            (serde_json::to_value(p)?, format!("approval {id}"))
        }
        Request::Approvals(ApprovalsRequest::Revoke { id }) => {
            let g = daemon.approvals().revoke(id, &approver())?;
            (serde_json::to_value(g)?, format!("grant {id}"))
        }
        Request::AcknowledgeDamage { segment, reason } => {
            let report = damage::acknowledge(daemon.store(), &segment, caller, reason).await?;
            (
                serde_json::to_value(report)?,
                format!("damage in {segment}"),
            )
        }
        other => {
            return Err(NotMade::Failed(format!(
                "{other:?} is served as a change but changes nothing"
            )));
        }
    })
}
