//! The control protocol: one JSON request per line, one JSON reply per line, over the daemon's
//! Unix socket. Replies are `{"Ok": …}` or `{"Err": "message"}`.

use std::path::PathBuf;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::kernel::CidrRule;

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case")]
pub enum Request {
    Enroll(EnrollRequest),
    Unenroll {
        target: Target,
    },
    Status,
    Sessions {
        /// Only the newest this many.
        #[serde(default)]
        last: Option<u64>,
    },
    Session {
        id: String,
    },
    /// Re-read the policy file; a policy with an error is refused and the old one stays.
    PolicyReload,
    /// Pending approvals and grants; the approver is the caller's peer credential.
    Approvals(ApprovalsRequest),
    /// The PEM certificate of the CA that signs workload-facing certificates.
    CaCertificate,
    /// Stream session records as JSON lines (`sessions tail`, `replay`, `export`): the reply
    /// line `{"Ok":null}` comes first, then one record per line until the end (or, when
    /// following, until the client goes away).
    Tail(crate::sessions::tail::TailRequest),
    /// Check the store's checksums and hash chain.
    Verify,
    /// Record that the damage `verify` reports in `segment` has been looked into (a change:
    /// root or the admin group; recorded with the caller). Replies with the verify report after it.
    AcknowledgeDamage {
        segment: String,
        reason: Option<String>,
    },
}

pub type Reply = Result<serde_json::Value, String>;

impl Request {
    /// The change this request makes, by the name the CLI gives it; None for a request that
    /// only reads. Every request is named here, so a new one must be classified (the control
    /// roles: reading is for the socket's group, changing for root and the admin group).
    pub fn change(&self) -> Option<&'static str> {
        use ApprovalsRequest as A;
        match self {
            Request::Enroll(_) => Some("enroll"),
            Request::Unenroll { .. } => Some("unenroll"),
            Request::PolicyReload => Some("policy reload"),
            Request::Approvals(A::Decide { approve: true, .. }) => Some("approvals approve"),
            Request::Approvals(A::Decide { approve: false, .. }) => Some("approvals deny"),
            Request::Approvals(A::Revoke { .. }) => Some("approvals revoke"),
            Request::AcknowledgeDamage { .. } => Some("sessions acknowledge-damage"),
            Request::Approvals(A::List | A::Grants | A::Resolved)
            | Request::Status
            | Request::Sessions { .. }
            | Request::Session { .. }
            | Request::CaCertificate
            | Request::Tail(_)
            | Request::Verify => None,
        }
    }
}

/// What to enroll: the daemon resolves it (it is the one with the authority to).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// A cgroup2 directory, absolute or relative to the mount.
    Path(PathBuf),
    /// The cgroup of this process.
    Pid(u32),
    /// The cgroup of this container (id or unique id prefix).
    Container(String),
    /// An existing enrollment (unenroll only).
    Id(u32),
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct EnrollOptions {
    /// Only these destination ports are intercepted (empty: all).
    pub ports: Vec<u16>,
    /// Only these destination networks are intercepted (empty: all).
    pub cidrs: Vec<IpNet>,
    /// Destinations whose connect() fails in the kernel.
    pub deny: Vec<CidrRule>,
    pub include_loopback: bool,
    /// Network namespace of the workload (default: derived from its processes, else the host's).
    pub netns: Option<PathBuf>,
    pub name: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EnrollRequest {
    pub target: Target,
    pub options: EnrollOptions,
    pub allow_root: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EnrollmentStatus {
    pub id: u32,
    pub name: Option<String>,
    pub cgroup: PathBuf,
    pub cgroup_id: u64,
    pub netns: Option<PathBuf>,
    pub ports: Vec<u16>,
    pub cidrs: Vec<IpNet>,
    pub deny: Vec<CidrRule>,
    pub include_loopback: bool,
    pub program_ids: Vec<u32>,
    pub live_connections: u64,
    pub total_connections: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Status {
    pub daemon_pid: u32,
    pub proxy_port: u16,
    /// Where Prometheus metrics are served, if anywhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_addr: Option<std::net::SocketAddr>,
    pub live_connections: u64,
    pub enrollments: Vec<EnrollmentStatus>,
    /// The session store's counters.
    #[serde(default)]
    pub store: crate::sessions::store::StoreStatus,
    /// Counters since the daemon started: sessions, findings, approvals, drops.
    #[serde(default)]
    pub counts: crate::metrics::Counts,
    /// Connects of enrolled workloads refused in the kernel because the daemon's listener was
    /// not at the proxy address (the daemon was down or restarting); counted since the eBPF
    /// maps were pinned, so across restarts.
    #[serde(default)]
    pub refused_no_proxy: u64,
}

/// The policy in force (reply to `PolicyReload`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PolicyStatus {
    pub path: PathBuf,
    pub sha256: String,
    pub rules: usize,
    /// Destinations denied in the kernel for every enrollment (CIDR and ports).
    pub kernel_denies: Vec<CidrRule>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ApprovalsRequest {
    /// Reply: the pending approvals.
    List,
    /// Reply: the grants in force.
    Grants,
    /// Reply: how the latest pending approvals ended.
    Resolved,
    /// Reply: the approval decided.
    Decide {
        id: u64,
        approve: bool,
        /// With `approve`: also grant later matching traffic for this long.
        #[serde(default, with = "humantime_serde")]
        grant_for: Option<std::time::Duration>,
        reason: Option<String>,
    },
    /// Reply: the grant revoked.
    Revoke { id: u64 },
}
