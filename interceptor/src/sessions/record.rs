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
    /// Refused by policy: `connect()` failed with EPERM in the kernel (never reached the
    /// proxy), or the proxy reset it or sent a TLS alert (`error` names the rule and reason).
    Denied,
    /// The workload's TLS handshake failed (malformed ClientHello, stall, our certificate
    /// refused).
    ClientTlsError,
    /// The upstream's TLS handshake failed, its certificate did not verify among them; the
    /// workload was sent an alert and never saw a certificate.
    UpstreamTlsError,
    /// The daemon stopped (crash, kill, shutdown) before the session ended; recorded when it
    /// next starts. Byte counts are unknown (0).
    Interrupted,
}

impl Outcome {
    pub const ALL: [Outcome; 10] = [
        Outcome::Open,
        Outcome::Closed,
        Outcome::UpstreamRefused,
        Outcome::UpstreamTimeout,
        Outcome::UpstreamError,
        Outcome::ClientError,
        Outcome::Denied,
        Outcome::ClientTlsError,
        Outcome::UpstreamTlsError,
        Outcome::Interrupted,
    ];

    /// The name on disk and in the JSON output.
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Open => "open",
            Outcome::Closed => "closed",
            Outcome::UpstreamRefused => "upstream_refused",
            Outcome::UpstreamTimeout => "upstream_timeout",
            Outcome::UpstreamError => "upstream_error",
            Outcome::ClientError => "client_error",
            Outcome::Denied => "denied",
            Outcome::ClientTlsError => "client_tls_error",
            Outcome::UpstreamTlsError => "upstream_tls_error",
            Outcome::Interrupted => "interrupted",
        }
    }
}

/// A stored event. Sessions are built from these, so later kinds of events (HTTP exchanges,
/// findings, approvals) are added as variants without rewriting what is on disk.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    Start(SessionStart),
    End(SessionEnd),
    /// What the TLS layer saw and decided, once per TLS connection.
    Tls(TlsInfo),
    /// One HTTP request and its response.
    Http(HttpExchange),
    /// Retention removed old segments (a store event, in no session).
    Retention(super::retention::Retention),
    /// A policy was put in force (at start or on reload); a store event, in no session.
    PolicyLoaded(PolicyLoaded),
    /// An approval was created, decided, expired or revoked; a store event.
    Approval(interceptor::approvals::ApprovalEvent),
    /// A secret was found (and masked) in the session's traffic.
    Secret(SecretFinding),
    /// The start of a byte stream that is not HTTP (raw TCP, a decrypted non-HTTP stream,
    /// WebSocket payloads), one per direction, masked.
    Stream(StreamData),
    /// Damage found in the store on start, or acknowledged by an operator; a store event.
    Damage(super::damage::DamageEvent),
    /// A change asked for on the control socket, done, refused or failed, and who asked; a
    /// store event.
    Control(ControlChange),
    /// A tool call an agent made (an MCP `tools/call`), arguments masked.
    ToolCall(ToolCallRecord),
    /// An MCP server's answer to `initialize`: who it is.
    McpServer(McpServerRecord),
}

impl Event {
    pub fn session_id(&self) -> u64 {
        match self {
            Event::Start(s) => s.id,
            Event::End(e) => e.id,
            Event::Tls(t) => t.id,
            Event::Http(h) => h.id,
            // Store events belong to no session; session ids start at 1.
            Event::Retention(_) => 0,
            Event::PolicyLoaded(_) => 0,
            Event::Approval(_) => 0,
            Event::Control(_) => 0,
            Event::Secret(s) => s.id,
            Event::Stream(s) => s.id,
            Event::Damage(_) => 0,
            Event::ToolCall(t) => t.id,
            Event::McpServer(m) => m.id,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TlsMode {
    /// Decrypted here: the workload saw a certificate minted by interceptor's CA.
    Terminated,
    /// Relayed without decryption (passthrough list).
    Passthrough,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TlsInfo {
    pub id: u64,
    pub sni: Option<String>,
    /// What the client offered.
    pub alpn_offered: Vec<String>,
    /// What the upstream chose (and the client was offered), when terminated.
    pub alpn: Option<String>,
    pub mode: TlsMode,
    /// The policy's decision once the SNI was known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicyDecision>,
}

/// Which policy rule decided, and what.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PolicyDecision {
    /// The rule's name, or "default".
    pub rule: String,
    pub verdict: interceptor::policy::Verdict,
}

/// One request/response pair. Only headers on an allow-list are kept (never credentials).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HttpExchange {
    /// The session (connection) this exchange belongs to.
    pub id: u64,
    /// Order of the request on its connection, from 0.
    pub seq: u64,
    pub version: String,
    pub method: String,
    pub authority: Option<String>,
    pub path: String,
    /// Absent when no response came (refused, upstream failed).
    pub status: Option<u16>,
    pub request_headers: Vec<(String, String)>,
    pub response_headers: Vec<(String, String)>,
    pub request_body_bytes: u64,
    pub response_body_bytes: u64,
    #[serde(with = "humantime_serde")]
    pub started_at: SystemTime,
    /// From the request head to the response head.
    #[serde(with = "humantime_serde::option")]
    pub response_after: Option<std::time::Duration>,
    /// From the request head to the end of the response body.
    #[serde(with = "humantime_serde")]
    pub duration: std::time::Duration,
    /// Set when the connection switched protocols (WebSocket): bytes relayed after it.
    pub upgraded: Option<UpgradedBytes>,
    pub error: Option<String>,
    /// The policy's decision for this request, when it was decided per request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicyDecision>,
    /// The start of the request body, as it went upstream (secrets masked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_body: Option<RecordedBody>,
    /// The start of the response body, as it went to the workload (secrets masked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_body: Option<RecordedBody>,
}

/// The first bytes of a body (decoded when it was compressed), up to the policy's
/// `record_body_bytes`, with every secret any rule finds masked, even one the policy only
/// reports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedBody {
    /// UTF-8 text, or base64 when the bytes are not UTF-8.
    pub data: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub base64: bool,
    /// The policy's `record_body_bytes` in force.
    pub cap: u64,
    /// The body was longer than the cap.
    pub truncated: bool,
}

impl RecordedBody {
    /// The record of `bytes` (already masked, at most `cap` of them) of a body or stream
    /// `seen` bytes long: text as text; anything else (binary, or control characters JSON
    /// would escape to six bytes each) in base64, so the record stays within twice the cap.
    pub fn new(bytes: &[u8], cap: usize, seen: u64) -> RecordedBody {
        let bytes = &bytes[..bytes.len().min(cap)];
        let text = match std::str::from_utf8(bytes) {
            Ok(text) => Some(text),
            // Cut in the middle of a character by the cap: keep the whole ones.
            Err(e) if e.error_len().is_none() => {
                std::str::from_utf8(&bytes[..e.valid_up_to()]).ok()
            }
            Err(_) => None,
        }
        .filter(|t| {
            t.bytes()
                .all(|b| (b >= 0x20 && b != 0x7f) || matches!(b, b'\n' | b'\r' | b'\t'))
        });
        let (data, base64) = match text {
            Some(text) => (text.to_owned(), false),
            None => {
                use base64::Engine as _;
                (
                    base64::engine::general_purpose::STANDARD.encode(bytes),
                    true,
                )
            }
        };
        RecordedBody {
            data,
            base64,
            cap: cap as u64,
            truncated: seen > cap as u64,
        }
    }
}

/// A tool call seen in a request, and the policy decision that applied to it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ToolCallRecord {
    /// The session.
    pub id: u64,
    /// The HTTP exchange that carried it.
    pub seq: u64,
    /// Where the call was read: "mcp" (a `tools/call` request).
    pub source: String,
    /// The JSON-RPC request's id (a number, or a string masked like the arguments).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpc_id: Option<serde_json::Value>,
    /// The tool's name, masked.
    pub name: String,
    #[serde(flatten)]
    pub arguments: interceptor::agent::MaskedArguments,
    /// The request's decision (or, for a connection decided as a whole, the connection's).
    pub policy: PolicyDecision,
}

/// The MCP server that answered an `initialize` on this session.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct McpServerRecord {
    pub id: u64,
    /// The exchange of the `initialize`.
    pub seq: u64,
    #[serde(flatten)]
    pub server: interceptor::agent::mcp::ServerInfo,
}

/// The first bytes of one direction of a stream that is not HTTP, masked; `bytes` is how much
/// went that way in all.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StreamData {
    pub id: u64,
    pub direction: interceptor::relay_scan::Direction,
    pub bytes: u64,
    #[serde(flatten)]
    pub data: RecordedBody,
}

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct UpgradedBytes {
    pub up: u64,
    pub down: u64,
}

/// A secret in a session's traffic: where it was and a salted hash to correlate repeats,
/// never the secret itself.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SecretFinding {
    pub id: u64,
    /// The HTTP exchange (its `seq`); absent for a command line.
    pub seq: Option<u64>,
    pub direction: interceptor::relay_scan::Direction,
    /// `header:NAME`, `uri`, `body`, or `cmdline` (the workload's, in the session start).
    pub location: String,
    #[serde(flatten)]
    pub finding: interceptor::detection::Finding,
}

/// The policy in force from `at` on, identified by the SHA-256 of its text.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PolicyLoaded {
    pub path: String,
    pub sha256: String,
    pub rules: usize,
    /// "start", "sighup" or "control".
    pub trigger: String,
    #[serde(with = "humantime_serde")]
    pub at: SystemTime,
}

/// A change asked for on the control socket (`enroll`, `unenroll`, `policy reload`,
/// `approvals approve|deny|revoke`) and what became of it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ControlChange {
    /// The change, as the CLI names it.
    pub change: String,
    /// The request as the caller sent it.
    pub request: serde_json::Value,
    /// Who asked: the peer credentials of the control connection.
    pub caller: crate::control::caller::Caller,
    #[serde(flatten)]
    pub outcome: ControlOutcome,
    #[serde(with = "humantime_serde")]
    pub at: SystemTime,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum ControlOutcome {
    /// Made; `changed` says what (the enrollment, the policy, the approval or grant).
    Done { changed: String },
    /// Refused by the control roles; `reason` is what the caller was told.
    Refused { reason: String },
    /// Allowed, but it failed; `error` is what the caller was told.
    Failed { error: String },
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsInfo>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http: Vec<HttpExchange>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<SecretFinding>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub streams: Vec<StreamData>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCallRecord>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mcp_servers: Vec<McpServerRecord>,
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
            tls: None,
            http: Vec::new(),
            secrets: Vec::new(),
            streams: Vec::new(),
            tool_calls: Vec::new(),
            mcp_servers: Vec::new(),
        }
    }

    /// Folds an event other than the start into this session.
    pub fn apply(&mut self, event: Event) {
        match event {
            Event::Start(_) => {}
            Event::End(end) => self.apply_end(end),
            Event::Tls(tls) => self.tls = Some(tls),
            Event::Http(exchange) => {
                // Exchanges are recorded as they finish, and HTTP/2 streams finish in any
                // order: a session lists them in request order.
                let at = self.http.partition_point(|h| h.seq <= exchange.seq);
                self.http.insert(at, exchange);
            }
            Event::Retention(_) => {}
            Event::PolicyLoaded(_) => {}
            Event::Approval(_) => {}
            Event::Damage(_) => {}
            Event::Control(_) => {}
            Event::Secret(s) => self.secrets.push(s),
            Event::Stream(s) => self.streams.push(s),
            Event::ToolCall(t) => self.tool_calls.push(t),
            Event::McpServer(m) => self.mcp_servers.push(m),
        }
    }

    fn apply_end(&mut self, end: SessionEnd) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_bytes_are_text_when_they_can_be_and_base64_otherwise() {
        let text = RecordedBody::new(b"hello\nworld", 5, 11);
        assert_eq!((text.data.as_str(), text.base64), ("hello", false));
        assert!(text.truncated);
        // A cap inside a character keeps the whole ones before it.
        let cut = RecordedBody::new("née".as_bytes(), 2, 4);
        assert_eq!((cut.data.as_str(), cut.base64), ("n", false));
        let binary = RecordedBody::new(&[0, 1, 2], 16, 3);
        assert_eq!((binary.data.as_str(), binary.base64), ("AAEC", true));
        assert!(!binary.truncated);
    }

    #[test]
    fn exchanges_are_listed_in_request_order() {
        let start: SessionStart = serde_json::from_value(serde_json::json!({
            "id": 1, "enrollment": 1, "identity": Identity::default(),
            "destination": "127.0.0.2:443", "started_at": "2026-11-23T09:00:00Z",
        }))
        .unwrap();
        let mut session = Session::from_start(start);
        for seq in [1, 0, 2] {
            let exchange = serde_json::from_value(serde_json::json!({
                "id": 1, "seq": seq, "version": "HTTP/2.0", "method": "GET", "authority": null,
                "path": "/", "status": 200, "request_headers": [], "response_headers": [],
                "request_body_bytes": 0, "response_body_bytes": 0,
                "started_at": "2026-11-23T09:00:00Z", "response_after": null,
                "duration": "1ms", "upgraded": null, "error": null,
            }))
            .unwrap();
            session.apply(Event::Http(exchange));
        }
        let seqs: Vec<u64> = session.http.iter().map(|h| h.seq).collect();
        assert_eq!(seqs, [0, 1, 2]);
    }
}
