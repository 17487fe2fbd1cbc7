//! `interceptor approvals list | grants | approve | deny | revoke`. The daemon decides in the
//! name of the caller's uid (the control socket's peer credentials).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use clap::Subcommand;
use interceptor::approvals::{Grant, Outcome, Pending, Resolution};

use crate::control::client;
use crate::control::protocol::{ApprovalsRequest, Request};

#[derive(Subcommand, Debug)]
pub enum ApprovalsCommand {
    /// Connections and requests held for approval, oldest first.
    List {
        /// Keep watching until interrupted: print each approval when it is held and how it
        /// ended (approved or denied by whom, expired, or given up by the workload).
        #[arg(long)]
        watch: bool,
        #[arg(long)]
        json: bool,
    },
    /// Time-boxed grants in force.
    Grants {
        #[arg(long)]
        json: bool,
    },
    /// Let held connections or requests through.
    Approve {
        #[arg(required = true)]
        ids: Vec<u64>,
        /// Also let later matching traffic of the same workload and rule through for this
        /// long (e.g. 30m).
        #[arg(long = "for", value_parser = humantime::parse_duration)]
        grant_for: Option<Duration>,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Refuse held connections or requests (HTTP: 403 with the reason; TCP: reset).
    Deny {
        #[arg(required = true)]
        ids: Vec<u64>,
        #[arg(long)]
        reason: Option<String>,
    },
    /// End a grant early.
    Revoke { id: u64 },
}

/// How much of a body preview a human listing shows.
const PREVIEW_CHARS: usize = 160;
/// How often `list --watch` asks the daemon.
const WATCH_INTERVAL: Duration = Duration::from_millis(250);

pub fn run(socket: &Path, cmd: ApprovalsCommand) -> anyhow::Result<i32> {
    let call = |r: ApprovalsRequest| -> anyhow::Result<serde_json::Value> {
        client::call(socket, &Request::Approvals(r))
    };
    match cmd {
        ApprovalsCommand::List { watch: false, json } => {
            let pending: Vec<Pending> = serde_json::from_value(call(ApprovalsRequest::List)?)?;
            if json {
                println!("{}", serde_json::to_string(&pending)?);
            } else if pending.is_empty() {
                println!("no pending approvals");
            } else {
                pending.iter().for_each(print_pending);
            }
            Ok(0)
        }
        ApprovalsCommand::List { watch: true, json } => {
            let mut shown: BTreeMap<u64, Pending> = BTreeMap::new();
            loop {
                let list: Vec<Pending> = serde_json::from_value(call(ApprovalsRequest::List)?)?;
                let now: BTreeSet<u64> = list.iter().map(|p| p.id).collect();
                if shown.keys().any(|id| !now.contains(id)) {
                    let resolved: Vec<Resolution> =
                        serde_json::from_value(call(ApprovalsRequest::Resolved)?)?;
                    for p in shown.values().filter(|p| !now.contains(&p.id)) {
                        match resolved.iter().rev().find(|r| r.id == p.id) {
                            Some(r) if json => println!("{}", serde_json::json!({ "resolved": r })),
                            Some(r) => print_resolution(r),
                            // Fell out of the daemon's memory of recent resolutions.
                            None if json => println!("{}", serde_json::json!({"gone": p.id})),
                            None => println!("{}\tgone\trule {}\t{}", p.id, p.rule, p.destination),
                        }
                    }
                }
                shown.retain(|id, _| now.contains(id));
                for p in list {
                    if shown.contains_key(&p.id) {
                        continue;
                    }
                    match json {
                        true => println!("{}", serde_json::json!({ "pending": p })),
                        false => print_pending(&p),
                    }
                    shown.insert(p.id, p);
                }
                std::thread::sleep(WATCH_INTERVAL);
            }
        }
        ApprovalsCommand::Grants { json } => {
            let grants: Vec<Grant> = serde_json::from_value(call(ApprovalsRequest::Grants)?)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&grants)?);
            } else {
                for g in &grants {
                    println!(
                        "{}\trule {}\tuid {} {}\tuntil {}\tby {}",
                        g.id,
                        g.rule,
                        g.workload.uid,
                        g.workload.exe.as_deref().unwrap_or("?"),
                        humantime::format_rfc3339_seconds(g.until),
                        g.by.user.as_deref().unwrap_or("?")
                    );
                }
            }
            Ok(0)
        }
        ApprovalsCommand::Approve {
            ids,
            grant_for,
            reason,
        } => {
            for id in ids {
                call(ApprovalsRequest::Decide {
                    id,
                    approve: true,
                    grant_for,
                    reason: reason.clone(),
                })?;
                match grant_for {
                    Some(d) => println!(
                        "approved {id}, and granted for {}",
                        humantime::format_duration(d)
                    ),
                    None => println!("approved {id}"),
                }
            }
            Ok(0)
        }
        ApprovalsCommand::Deny { ids, reason } => {
            for id in ids {
                call(ApprovalsRequest::Decide {
                    id,
                    approve: false,
                    grant_for: None,
                    reason: reason.clone(),
                })?;
                println!("denied {id}");
            }
            Ok(0)
        }
        ApprovalsCommand::Revoke { id } => {
            call(ApprovalsRequest::Revoke { id })?;
            println!("revoked grant {id}");
            Ok(0)
        }
    }
}

fn print_resolution(r: &Resolution) {
    let by = |by: &interceptor::approvals::Approver, reason: &Option<String>| {
        let who = by.user.clone().unwrap_or_else(|| format!("uid {}", by.uid));
        let why = reason
            .as_deref()
            .map(|r| format!(": {r}"))
            .unwrap_or_default();
        format!("{who}{why}")
    };
    let how = match &r.outcome {
        Outcome::Approved { by: who, reason } => format!("approved by {}", by(who, reason)),
        Outcome::Denied { by: who, reason } => format!("denied by {}", by(who, reason)),
        Outcome::Expired => "expired".into(),
        Outcome::Granted { grant } => format!("passed under grant {grant}"),
    };
    println!("{}\t{how}\trule {}\t{}", r.id, r.rule, r.destination);
}

fn print_pending(p: &Pending) {
    println!(
        "{}\tpending\trule {}\tuid {} {}\t{} {}\texpires {}",
        p.id,
        p.rule,
        p.workload.uid,
        p.workload.exe.as_deref().unwrap_or("?"),
        p.destination,
        p.request_line.as_deref().unwrap_or("(TCP connection)"),
        humantime::format_rfc3339_seconds(p.expires_at)
    );
    if let Some(preview) = &p.body_preview {
        // The start of the preview; --json has all of it.
        let start: String = preview.chars().take(PREVIEW_CHARS).collect();
        println!("\tbody (secrets masked): {}", start.escape_debug());
    }
    if let Some(t) = &p.tool {
        let args = t.arguments.arguments.as_deref().unwrap_or("(not shown)");
        let start: String = args.chars().take(PREVIEW_CHARS).collect();
        let cut = t.arguments.arguments_truncated || args.chars().nth(PREVIEW_CHARS).is_some();
        println!(
            "\ttool call ({}): {} {}{} (secrets masked)",
            t.source,
            t.name,
            start.escape_debug(),
            if cut { "…" } else { "" }
        );
    }
}
