//! The policy at the proxy's door: before a redirected connection is dialed, the policy
//! decides it when it can without the host name (see `Policy::decide_before_dial`). A deny
//! refuses the connection (reset); an approve holds it until a person decides, and nothing
//! reaches the upstream meanwhile. Everything else goes on to the TLS/HTTP layers, which
//! decide again with the SNI and per request.

use std::net::SocketAddr;
use std::sync::Arc;

use interceptor::approvals::{Approvals, HoldRequest, Outcome, Workload};
use interceptor::policy::{self, ConnectionFacts, Verdict};

use crate::identity::Identity;

pub struct Gate {
    pub policy: policy::Current,
    pub approvals: Arc<Approvals>,
}

impl Gate {
    /// Ok to dial; Err(why) to refuse the connection.
    pub async fn before_dial(
        &self,
        session: u64,
        identity: &Identity,
        enrollment: Option<&str>,
        dest: SocketAddr,
    ) -> Result<(), String> {
        let policy = self.policy.get();
        let facts = ConnectionFacts {
            cgroup: identity.cgroup.as_deref(),
            container_id: identity.container.as_ref().map(|c| c.id.as_str()),
            container_name: None,
            exe: identity.exe.as_deref(),
            comm: &identity.comm,
            uid: identity.uid,
            user: identity.user.as_deref(),
            enrollment,
            host: None,
            ip: Some(dest.ip()),
            port: dest.port(),
        };
        let d = match policy.decide_before_dial(&facts) {
            Some(d) if matches!(d.verdict, Verdict::Deny | Verdict::Approve) => d,
            _ => return Ok(()),
        };
        let because = d.reason.map(|r| format!(": {r}")).unwrap_or_default();
        let approval = match (d.verdict, d.approval) {
            (Verdict::Approve, Some(approval)) => approval.clone(),
            _ => return Err(format!("denied by policy rule {:?}{because}", d.name)),
        };
        let hold = HoldRequest {
            session,
            rule: d.name.to_string(),
            approval,
            workload: Workload {
                uid: identity.uid,
                user: identity.user.clone(),
                exe: identity.exe.clone(),
                comm: identity.comm.clone(),
                cgroup: identity.cgroup.clone(),
            },
            destination: dest.to_string(),
            request_line: None,
            headers: Vec::new(),
            body_preview: None,
        };
        // The policy snapshot is not kept across the wait: reloads go on meanwhile.
        drop(policy);
        match self.approvals.hold(hold).await {
            Outcome::Granted { .. } | Outcome::Approved { .. } => Ok(()),
            Outcome::Denied { by, reason } => Err(format!(
                "approval denied by {}{}",
                by.user.unwrap_or_else(|| format!("uid {}", by.uid)),
                reason.map(|r| format!(": {r}")).unwrap_or_default()
            )),
            Outcome::Expired => Err("timed out awaiting approval".into()),
        }
    }
}
