//! The daemon's JSON objects, as the CLI contract describes them. Parsing is strict about the
//! fields the tests rely on, so a contract mismatch fails with serde's precise message.

use serde::Deserialize;
use serde_json::Value;

#[derive(Clone, Debug, Deserialize)]
pub struct Status {
    pub daemon_pid: u32,
    pub proxy_port: u16,
    #[serde(default)]
    pub metrics_addr: Option<std::net::SocketAddr>,
    pub live_connections: u64,
    pub enrollments: Vec<Enrollment>,
    #[serde(default)]
    pub refused_no_proxy: u64,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Enrollment {
    pub id: u64,
    #[serde(default)]
    pub name: Option<String>,
    /// Absolute path of the cgroup directory.
    pub cgroup: String,
    pub cgroup_id: u64,
    #[serde(default)]
    pub netns: Option<String>,
    #[serde(default)]
    pub ports: Vec<u16>,
    #[serde(default)]
    pub cidrs: Vec<String>,
    #[serde(default)]
    pub deny: Vec<String>,
    pub include_loopback: bool,
    #[serde(default)]
    pub program_ids: Vec<u32>,
    #[serde(default)]
    pub live_connections: u64,
    #[serde(default)]
    pub total_connections: u64,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Session {
    /// A string per the contract; kept as JSON so that a numeric id still parses.
    pub id: Value,
    pub enrollment: Option<u64>,
    pub identity: Identity,
    pub destination: String,
    pub started_at: String,
    pub ended_at: Option<String>,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub outcome: String,
    pub error: Option<String>,
}

impl Session {
    pub fn id_str(&self) -> String {
        match &self.id {
            Value::String(s) => s.clone(),
            v => v.to_string(),
        }
    }

    /// One line for failure messages.
    pub fn brief(&self) -> String {
        format!(
            "id={} pid={} comm={} dest={} up={} down={} outcome={} error={:?} cgroup={}",
            self.id_str(),
            self.identity.pid,
            self.identity.comm,
            self.destination,
            self.bytes_up,
            self.bytes_down,
            self.outcome,
            self.error,
            self.identity.cgroup
        )
    }
}

#[derive(Clone, Debug, Deserialize)]
pub struct Identity {
    /// Process id (tgid).
    pub pid: u32,
    #[serde(default)]
    pub tid: Option<u32>,
    pub uid: u32,
    pub gid: u32,
    pub user: Option<String>,
    pub comm: String,
    pub exe: Option<String>,
    #[serde(default)]
    pub cmdline: Vec<String>,
    /// Relative to the cgroup2 mount, as in /proc/PID/cgroup.
    pub cgroup: String,
    pub cgroup_id: u64,
    pub container: Option<Container>,
    #[serde(default)]
    pub netns_cookie: Option<u64>,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct Container {
    pub id: String,
    pub runtime: String,
}

/// Summary of a session list for failure messages.
pub fn brief_all(sessions: &[Session]) -> String {
    if sessions.is_empty() {
        return "  (no sessions)".into();
    }
    sessions
        .iter()
        .map(|s| format!("  {}", s.brief()))
        .collect::<Vec<_>>()
        .join("\n")
}
