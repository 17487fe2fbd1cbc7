//! Human-readable output of `status` and `sessions`.

use crate::control::protocol::Status;
use crate::sessions::Session;

pub fn status(s: &Status) {
    println!(
        "daemon pid {}  proxy port {}  live connections {}",
        s.daemon_pid, s.proxy_port, s.live_connections
    );
    println!(
        "session store: {} records written, {} queued, {} lost, {} bytes",
        s.store.recorded, s.store.queued, s.store.lost, s.store.bytes
    );
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

pub fn session(s: &Session) {
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
}

fn join<T: ToString>(items: &[T]) -> String {
    items.iter().map(T::to_string).collect::<Vec<_>>().join(",")
}
