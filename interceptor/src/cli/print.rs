//! Human-readable output of `status` and `sessions`.

use std::fmt::Display;
use std::io::IsTerminal;
use std::time::Duration;

use crate::control::protocol::Status;
use crate::sessions::record::{SecretFinding, StreamData};
use crate::sessions::{HttpExchange, McpServerRecord, Session, TlsInfo, TlsMode, ToolCallRecord};
use interceptor::policy::Verdict;

/// ANSI colour, on only when printing to a terminal (and `NO_COLOR` is not set).
#[derive(Clone, Copy)]
pub struct Paint(bool);

impl Paint {
    pub const CYAN: &str = "36";
    pub const GREEN: &str = "32";
    pub const RED: &str = "1;31";
    pub const BOLD: &str = "1";
    pub const YELLOW: &str = "33";

    /// Colour for human output on stdout; never for JSON.
    pub fn stdout(json: bool) -> Paint {
        Paint(!json && std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none())
    }

    pub fn paint(self, code: &str, text: impl Display) -> String {
        if self.0 {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }
}

pub fn status(s: &Status) {
    println!(
        "daemon pid {}  proxy port {}  live connections {}",
        s.daemon_pid, s.proxy_port, s.live_connections
    );
    if let Some(addr) = s.metrics_addr {
        println!("metrics at http://{addr}/metrics");
    }
    println!(
        "session store: {} records written, {} queued, {} lost, {} bytes",
        s.store.recorded, s.store.queued, s.store.lost, s.store.bytes
    );
    let c = &s.counts;
    let ended: Vec<String> = c.ended.iter().map(|(o, n)| format!("{o} {n}")).collect();
    println!(
        "sessions: {} total, {} live; ended: {}",
        c.sessions_total,
        s.live_connections,
        if ended.is_empty() {
            "none".to_owned()
        } else {
            ended.join(", ")
        }
    );
    println!("http exchanges: {}", c.http_exchanges);
    println!(
        "secret findings: {} (up {}, down {})",
        c.findings.total, c.findings.up, c.findings.down
    );
    let a = &c.approvals;
    println!(
        "approvals: {} held; {} requested, {} approved, {} denied, {} expired",
        a.held, a.requested, a.approved, a.denied, a.expired
    );
    let d = &c.drops;
    println!(
        "drops: {} kernel denials, {} proxy denials, {} upstream failures, {} client errors, {} refused (no room), {} records lost",
        d.kernel_denials,
        d.proxy_denials,
        d.upstream_failures,
        d.client_errors,
        d.connections_refused,
        d.store_lost
    );
    println!(
        "refused with no daemon listener (since the pins were made): {}",
        s.refused_no_proxy
    );
    println!("tailers: {}", c.tailers);
    if s.enrollments.is_empty() {
        println!("no enrollments");
    }
    for e in &s.enrollments {
        let ports = if e.ports.is_empty() {
            "all".to_owned()
        } else {
            join(&e.ports)
        };
        println!(
            "{:>4}  {}{}  ports {}  live {}  total {}  programs {}",
            e.id,
            e.cgroup.display(),
            e.name
                .as_deref()
                .map(|n| format!(" ({n})"))
                .unwrap_or_default(),
            ports,
            e.live_connections,
            e.total_connections,
            join(&e.program_ids),
        );
        if let Some(ns) = &e.netns {
            println!("      netns {}", ns.display());
        }
        for d in &e.deny {
            println!(
                "      deny {} {}",
                d.net,
                if d.ports.is_empty() {
                    "all ports".into()
                } else {
                    join(&d.ports)
                }
            );
        }
    }
}

pub fn sessions(sessions: &[Session]) {
    for s in sessions {
        println!(
            "{:>6}  {}  {:>7} {:<15} -> {:<24} up {:>10} down {:>10}  {:?}",
            s.id,
            humantime::format_rfc3339_seconds(s.started_at),
            s.identity.pid,
            s.identity.comm,
            s.destination,
            s.bytes_up,
            s.bytes_down,
            s.outcome,
        );
    }
}

pub fn session(s: &Session, paint: Paint) {
    let id = &s.identity;
    println!("session     {}", s.id);
    println!("destination {}", s.destination);
    println!(
        "outcome     {:?}{}",
        s.outcome,
        s.error
            .as_deref()
            .map(|e| format!(" ({e})"))
            .unwrap_or_default()
    );
    println!(
        "started     {}",
        humantime::format_rfc3339_micros(s.started_at)
    );
    if let Some(end) = s.ended_at {
        let took = end.duration_since(s.started_at).unwrap_or_default();
        println!(
            "ended       {} (after {})",
            humantime::format_rfc3339_micros(end),
            humantime::format_duration(took)
        );
    }
    println!("bytes       up {}  down {}", s.bytes_up, s.bytes_down);
    println!(
        "process     pid {} (thread {})  comm {}",
        id.pid, id.tid, id.comm
    );
    println!("exe         {}", id.exe.as_deref().unwrap_or("?"));
    println!("cmdline     {}", id.cmdline.join(" "));
    println!(
        "user        {} (uid {}, gid {})",
        id.user.as_deref().unwrap_or("?"),
        id.uid,
        id.gid
    );
    println!(
        "cgroup      {} (id {})",
        id.cgroup.as_deref().unwrap_or("?"),
        id.cgroup_id
    );
    if let Some(c) = &id.container {
        let name = c.name.as_deref().unwrap_or("?");
        println!("container   {} ({}, {name})", c.id, c.runtime);
    }
    println!("enrollment  {}", s.enrollment);
    if let Some(tls) = &s.tls {
        println!("tls         {}", tls_line(tls, paint));
    }
    if !s.http.is_empty() {
        println!("http        {} exchange(s)", s.http.len());
    }
    for h in &s.http {
        let found = s.secrets.iter().filter(|f| f.seq == Some(h.seq)).count();
        println!("  {}", exchange_line(h, found, paint));
    }
    for d in &s.streams {
        println!("stream      {}", stream_line(d));
    }
    for m in &s.mcp_servers {
        println!("mcp server  {}", mcp_server_line(m));
    }
    for t in &s.tool_calls {
        println!("tool call   {}", tool_line(t));
    }
    if !s.secrets.is_empty() {
        println!("secrets     {} finding(s)", s.secrets.len());
    }
    for f in &s.secrets {
        println!("  {}", finding_line(f, paint));
    }
}

/// SNI, ALPN, mode and the policy's decision.
pub fn tls_line(t: &TlsInfo, paint: Paint) -> String {
    let mode = match t.mode {
        TlsMode::Terminated => "terminated",
        TlsMode::Passthrough => "passthrough",
    };
    let policy = t
        .policy
        .as_ref()
        .map(|p| format!("  {}", decision(&p.rule, p.verdict, paint)))
        .unwrap_or_default();
    format!(
        "sni {}  alpn {} (offered {})  {mode}{policy}",
        t.sni.as_deref().unwrap_or("-"),
        t.alpn.as_deref().unwrap_or("-"),
        if t.alpn_offered.is_empty() {
            "none".to_owned()
        } else {
            t.alpn_offered.join(",")
        },
    )
}

/// `policy VERDICT (rule NAME)`, highlighted unless it allowed.
fn decision(rule: &str, verdict: Verdict, paint: Paint) -> String {
    let text = format!(
        "policy {} (rule {rule})",
        serde_json::to_value(verdict).map_or_else(
            |_| format!("{verdict:?}"),
            |v| v.as_str().unwrap_or("?").to_owned()
        )
    );
    match verdict {
        Verdict::Allow | Verdict::Inspect => text,
        Verdict::Deny => paint.paint(Paint::RED, text),
        Verdict::Approve => paint.paint(Paint::YELLOW, text),
    }
}

/// `#SEQ METHOD AUTHORITYPATH -> STATUS  up N B  down N B  DURATION`, then what stands out:
/// the policy's decision, findings, an upgrade, an error.
pub fn exchange_line(h: &HttpExchange, findings: usize, paint: Paint) -> String {
    let status = match h.status {
        Some(s) if s < 400 => paint.paint(Paint::GREEN, s),
        Some(s) => paint.paint(Paint::RED, s),
        None => paint.paint(Paint::RED, "no response"),
    };
    let mut line = format!(
        "#{:<3} {} {}{} -> {status}  up {} B  down {} B  {}",
        h.seq,
        paint.paint(Paint::BOLD, &h.method),
        h.authority.as_deref().unwrap_or(""),
        h.path,
        h.request_body_bytes,
        h.response_body_bytes,
        short(h.duration),
    );
    if let Some(p) = &h.policy {
        line += &format!("  {}", decision(&p.rule, p.verdict, paint));
    }
    if findings > 0 {
        line += &format!(
            "  {}",
            paint.paint(Paint::RED, format!("{findings} secret(s)"))
        );
    }
    if let Some(u) = h.upgraded {
        line += &format!("  upgraded: up {} B down {} B", u.up, u.down);
    }
    if let Some(e) = &h.error {
        line += &format!("  {}", paint.paint(Paint::RED, format!("error: {e}")));
    }
    line
}

/// Direction, size, and the start of what was recorded (escaped, shortened for a line).
pub fn stream_line(d: &StreamData) -> String {
    const SHOWN: usize = 100;
    let r = &d.data;
    let preview: String = r.data.chars().take(SHOWN).collect();
    format!(
        "{:?} {} B, {} recorded (cap {}){}: {preview:?}{}",
        d.direction,
        d.bytes,
        if r.truncated { "first bytes" } else { "all" },
        r.cap,
        if r.base64 { ", base64" } else { "" },
        if r.data.chars().nth(SHOWN).is_some() {
            "…"
        } else {
            ""
        }
    )
}

/// `#SEQ config-server 1.2 (protocol 2025-06-18)`.
pub fn mcp_server_line(m: &McpServerRecord) -> String {
    let s = &m.server;
    format!(
        "#{} {} {} (protocol {})",
        m.seq,
        s.name,
        s.version.as_deref().unwrap_or("?"),
        s.protocol_version.as_deref().unwrap_or("?")
    )
}

/// `#SEQ mcp run_shell {"command":"ls"} -> allow (rule)`.
pub fn tool_line(t: &ToolCallRecord) -> String {
    let args = &t.arguments;
    format!(
        "#{} {} {} {}{} -> {} ({})",
        t.seq,
        t.source,
        t.name,
        args.arguments
            .as_deref()
            .unwrap_or("(arguments not recorded)"),
        if args.arguments_truncated { "…" } else { "" },
        format!("{:?}", t.policy.verdict).to_lowercase(),
        t.policy.rule
    )
}

/// A duration to about three digits: `840µs`, `12.3ms`, `1.25s`.
fn short(d: Duration) -> String {
    let micros = d.as_micros();
    match micros {
        0..1_000 => format!("{micros}µs"),
        1_000..1_000_000 => format!("{:.1}ms", d.as_secs_f64() * 1e3),
        _ => format!("{:.2}s", d.as_secs_f64()),
    }
}

/// Rule, direction, where, the salted hash, and whether the secret was masked.
pub fn finding_line(f: &SecretFinding, paint: Paint) -> String {
    let fate = if f.finding.report_only {
        "reported (policy: not masked)"
    } else if f.finding.forwarded_unmasked > 0 {
        "PARTLY FORWARDED"
    } else {
        "masked"
    };
    let exchange = f
        .seq
        .map(|s| format!(" (exchange #{s})"))
        .unwrap_or_default();
    paint.paint(
        Paint::RED,
        format!(
            "{} {:?} {}{exchange} hash {}  {fate}",
            f.finding.rule, f.direction, f.location, f.finding.hash
        ),
    )
}

fn join<T: ToString>(items: &[T]) -> String {
    items.iter().map(T::to_string).collect::<Vec<_>>().join(",")
}
