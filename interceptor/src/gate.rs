//! The policy at the proxy's door: before a redirected connection is dialed, the policy
//! decides it when it can without the host name (see `Policy::decide_before_dial`). A deny
//! refuses the connection (reset); an approve holds it until a person decides, and nothing
//! reaches the upstream meanwhile. Everything else goes on to the TLS/HTTP layers, which
//! decide again with the SNI ([`Gate::on_connection`]) and per request (`http::policy_hook`).

use std::net::SocketAddr;
use std::sync::Arc;

use interceptor::approvals::{Approvals, HoldRequest, Outcome, Workload};
use interceptor::policy::{self, ConnectionFacts, Decision, Policy, TlsMode, Verdict};

use crate::identity::Identity;
use crate::sessions::PolicyDecision;

#[derive(Clone)]
pub struct Gate {
    pub policy: policy::Current,
    pub approvals: Arc<Approvals>,
}

/// What the TLS layer does with a connection the policy let through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tls {
    /// HTTP rules decide its requests: it must be decrypted whatever `--passthrough` says.
    Inspect,
    Intercept,
    Passthrough,
}

/// When to dial a connection that the policy let through before dialing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dial {
    /// Its decision is final: no host name or stream can change it.
    Now,
    /// A later stage (the SNI, a stream that is not HTTP) may still refuse or hold it: dial
    /// only once that stage has let it through, so nothing held or refused reaches upstream.
    Later,
}

impl Gate {
    /// When to dial; Err(why) to refuse the connection. An approve holds it here.
    pub async fn before_dial(
        &self,
        session: u64,
        identity: &Identity,
        enrollment: Option<&str>,
        dest: SocketAddr,
    ) -> Result<Dial, String> {
        let policy = self.policy.get();
        let facts = facts(identity, enrollment, None, dest);
        let d = match policy.decide_before_dial(&facts) {
            Some(d) if matches!(d.verdict, Verdict::Deny | Verdict::Approve) => d,
            Some(d) if d.verdict == Verdict::Allow => return Ok(Dial::Now),
            _ => return Ok(Dial::Later),
        };
        let hold = held(&d, session, identity, dest.to_string())?;
        // The policy snapshot is not kept across the wait: reloads go on meanwhile.
        drop(policy);
        self.hold(hold).await.map(|()| Dial::Now)
    }

    /// A connection with its host name (the SNI) known, before anything is sent upstream:
    /// the deciding rule, and Err(why) to refuse it; an approve holds it here. Ok says how
    /// to treat its TLS.
    pub async fn on_connection(
        &self,
        session: u64,
        identity: &Identity,
        enrollment: Option<&str>,
        host: Option<&str>,
        dest: SocketAddr,
    ) -> (PolicyDecision, Result<Tls, String>) {
        let policy = self.policy.get();
        let facts = facts(identity, enrollment, host, dest);
        let d = policy.decide_connection(&facts);
        let decision = PolicyDecision {
            rule: d.name.to_owned(),
            verdict: d.verdict,
        };
        let tls = match (d.verdict, d.settings.tls) {
            (Verdict::Inspect, _) => Tls::Inspect,
            (_, TlsMode::Intercept) => Tls::Intercept,
            (_, TlsMode::Passthrough) => Tls::Passthrough,
        };
        if !matches!(d.verdict, Verdict::Deny | Verdict::Approve)
            || settled_before_dial(&policy, &facts)
        {
            return (decision, Ok(tls));
        }
        let hold = match held(&d, session, identity, destination(host, dest)) {
            Ok(hold) => hold,
            Err(why) => return (decision, Err(why)),
        };
        drop(policy);
        (decision, self.hold(hold).await.map(|()| tls))
    }

    /// Whether this connection's HTTP requests are what the policy decides it by (the first
    /// rule that may apply has HTTP conditions): it must then be read as HTTP when its client
    /// speaks HTTP, even if its server speaks first, and is refused if it cannot be read.
    pub fn needs_http(
        &self,
        identity: &Identity,
        enrollment: Option<&str>,
        host: Option<&str>,
        dest: SocketAddr,
    ) -> bool {
        let facts = facts(identity, enrollment, host, dest);
        self.policy.get().decide_connection(&facts).verdict == Verdict::Inspect
    }

    /// A stream that is not HTTP (raw TCP, or decrypted but not HTTP): Err(why) to refuse
    /// it; an approve holds it here. `decided`: [`Gate::on_connection`] already enforced the
    /// connection's decision, so only one that was left to HTTP rules is decided here.
    pub async fn on_opaque(
        &self,
        session: u64,
        identity: &Identity,
        enrollment: Option<&str>,
        host: Option<&str>,
        dest: SocketAddr,
        decided: bool,
    ) -> Result<(), String> {
        let policy = self.policy.get();
        let facts = facts(identity, enrollment, host, dest);
        if settled_before_dial(&policy, &facts)
            || decided && policy.decide_connection(&facts).verdict != Verdict::Inspect
        {
            return Ok(());
        }
        let d = policy.decide_opaque(&facts);
        if d.verdict == Verdict::Allow {
            return Ok(());
        }
        let hold = held(&d, session, identity, destination(host, dest))?;
        drop(policy);
        self.hold(hold).await
    }

    /// Waits for a person (or a grant); Err(why) unless approved.
    pub async fn hold(&self, hold: HoldRequest) -> Result<(), String> {
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

/// The policy's view of a connection.
pub fn facts<'a>(
    identity: &'a Identity,
    enrollment: Option<&'a str>,
    host: Option<&'a str>,
    dest: SocketAddr,
) -> ConnectionFacts<'a> {
    ConnectionFacts {
        cgroup: identity.cgroup.as_deref(),
        container_id: identity.container.as_ref().map(|c| c.id.as_str()),
        container_name: identity.container.as_ref().and_then(|c| c.name.as_deref()),
        exe: identity.exe.as_deref(),
        comm: &identity.comm,
        uid: identity.uid,
        user: identity.user.as_deref(),
        enrollment,
        host,
        ip: Some(dest.ip()),
        port: dest.port(),
    }
}

/// Whether `before_dial` already enforced this connection's decision (a deny or an
/// approve that no host name or request can change): later stages must not hold it again.
pub fn settled_before_dial(policy: &Policy, facts: &ConnectionFacts) -> bool {
    let facts = ConnectionFacts {
        host: None,
        ..*facts
    };
    policy
        .decide_before_dial(&facts)
        .is_some_and(|d| matches!(d.verdict, Verdict::Deny | Verdict::Approve))
}

/// `host:port` when the host name is known, else `ip:port`.
pub fn destination(host: Option<&str>, dest: SocketAddr) -> String {
    host.map_or_else(|| dest.to_string(), |h| format!("{h}:{}", dest.port()))
}

/// Why a deny decision refuses: the rule and its reason.
pub fn denial(d: &Decision) -> String {
    let because = d.reason.map(|r| format!(": {r}")).unwrap_or_default();
    format!("denied by policy rule {:?}{because}", d.name)
}

/// The hold for an approve decision; Err(why) for a deny.
pub fn held(
    d: &Decision,
    session: u64,
    identity: &Identity,
    destination: String,
) -> Result<HoldRequest, String> {
    let approval = match (d.verdict, d.approval) {
        (Verdict::Approve, Some(approval)) => approval.clone(),
        _ => return Err(denial(d)),
    };
    Ok(HoldRequest {
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
        destination,
        request_line: None,
        headers: Vec::new(),
        body_preview: None,
        tool: None,
    })
}
