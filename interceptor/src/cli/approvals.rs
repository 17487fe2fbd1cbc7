//! `interceptor approvals list | grants | approve | deny | revoke`. The daemon decides in the
//! name of the caller's uid (the control socket's peer credentials).

use std::path::Path;
use std::time::Duration;

use clap::Subcommand;
use interceptor::approvals::{Grant, Pending};

use crate::control::client;
use crate::control::protocol::{ApprovalsRequest, Request};

#[derive(Subcommand, Debug)]
pub enum ApprovalsCommand {
    /// Connections and requests held for approval, oldest first.
    List {
        /// Print the list again whenever it changes, until interrupted.
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

pub fn run(socket: &Path, cmd: ApprovalsCommand) -> anyhow::Result<i32> {
    let call = |r: ApprovalsRequest| -> anyhow::Result<serde_json::Value> {
        client::call(socket, &Request::Approvals(r))
    };
    match cmd {
        ApprovalsCommand::List { watch, json } => {
            let mut shown = None;
            loop {
                let list = call(ApprovalsRequest::List)?;
                if shown.as_ref() != Some(&list) {
                    let pending: Vec<Pending> = serde_json::from_value(list.clone())?;
                    if json {
                        println!("{}", serde_json::to_string(&pending)?);
                    } else {
                        print_pending(&pending);
                    }
                    shown = Some(list);
                }
                if !watch {
                    return Ok(0);
                }
                std::thread::sleep(Duration::from_millis(500));
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

fn print_pending(list: &[Pending]) {
    if list.is_empty() {
        println!("no pending approvals");
    }
    for p in list {
        println!(
            "{}\trule {}\tuid {} {}\t{} {}\texpires {}",
            p.id,
            p.rule,
            p.workload.uid,
            p.workload.exe.as_deref().unwrap_or("?"),
            p.destination,
            p.request_line.as_deref().unwrap_or("(TCP connection)"),
            humantime::format_rfc3339_seconds(p.expires_at)
        );
    }
}
