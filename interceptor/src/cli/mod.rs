//! The command line: `run` starts the daemon; every other command talks to it over the
//! control socket.

mod approvals;
pub mod args;
mod ca;
mod exec;
mod policy;
mod print;
mod rules;
mod secrets;
mod sessions;
mod sessions_bench;

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::control::client;
use crate::control::protocol::{
    EnrollOptions, EnrollRequest, EnrollmentStatus, Request, Status, Target,
};
use crate::sessions::Session;
use args::{Cli, Command, FilterArgs, SessionsCommand};

impl FilterArgs {
    pub fn into_options(self, netns: Option<PathBuf>) -> EnrollOptions {
        EnrollOptions {
            ports: self.ports,
            cidrs: self.cidr,
            deny: self.deny,
            include_loopback: self.include_loopback,
            netns,
            name: self.name,
        }
    }
}

/// Runs a client command; returns the process exit code.
pub fn run_client(cli: Cli) -> anyhow::Result<i32> {
    let socket = cli.socket.as_path();
    match cli.command {
        Command::Run(_) => unreachable!("`run` is handled by main"),
        Command::Enroll(a) => {
            let target = match (a.target.path, a.target.pid, a.target.container) {
                (Some(p), _, _) => Target::Path(p),
                (_, Some(pid), _) => Target::Pid(pid),
                (_, _, Some(c)) => Target::Container(c),
                _ => unreachable!("clap requires one target"),
            };
            // The daemon resolves paths from its own working directory: send absolute ones.
            let netns = a.netns.map(absolute).transpose()?;
            let request = Request::Enroll(EnrollRequest {
                target,
                options: a.filters.into_options(netns),
                allow_root: a.allow_root,
            });
            let e: EnrollmentStatus = client::call(socket, &request)?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&e)?);
            } else {
                println!("enrolled {} {}", e.id, e.cgroup.display());
            }
            Ok(0)
        }
        Command::Unenroll(a) => {
            let target = match (a.path, a.pid, a.container, a.id) {
                (Some(p), ..) => Target::Path(p),
                (_, Some(pid), ..) => Target::Pid(pid),
                (_, _, Some(c), _) => Target::Container(c),
                (.., Some(id)) => Target::Id(id),
                _ => unreachable!("clap requires one target"),
            };
            let e: EnrollmentStatus = client::call(socket, &Request::Unenroll { target })?;
            println!("unenrolled {} {}", e.id, e.cgroup.display());
            Ok(0)
        }
        Command::Status { json } => {
            let status: Status = client::call(socket, &Request::Status)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print::status(&status);
            }
            Ok(0)
        }
        Command::Exec(a) => exec::exec(socket, a),
        Command::Policy(cmd) => policy::run(socket, cmd),
        Command::Approvals(cmd) => approvals::run(socket, cmd),
        Command::Ca(command) => ca::run(socket, command).map(|()| 0),
        Command::Rules(command) => secrets::run(command),
        Command::Sessions(SessionsCommand::List { last, json }) => {
            let sessions: Vec<Session> = client::call(socket, &Request::Sessions { last })?;
            if json {
                println!("{}", serde_json::to_string_pretty(&sessions)?);
            } else {
                print::sessions(&sessions);
            }
            Ok(0)
        }
        Command::Sessions(SessionsCommand::Tail(a)) => sessions::tail(socket, a),
        Command::Sessions(SessionsCommand::Bench(a)) => sessions_bench::run(a),
        Command::Sessions(SessionsCommand::Replay { id, speed, json }) => {
            sessions::replay(socket, &id, speed, json)
        }
        Command::Sessions(SessionsCommand::Export { since, until }) => {
            sessions::export(socket, since, until)
        }
        Command::Sessions(SessionsCommand::Verify { data_dir, json }) => {
            sessions::verify(socket, data_dir, json)
        }
        Command::Sessions(SessionsCommand::AcknowledgeDamage {
            segment,
            reason,
            json,
        }) => sessions::acknowledge_damage(socket, segment, reason, json),
        Command::Sessions(SessionsCommand::Show { id, json }) => {
            let session: Session = client::call(socket, &Request::Session { id })?;
            if json {
                println!("{}", serde_json::to_string_pretty(&session)?);
            } else {
                print::session(&session, print::Paint::stdout(json));
            }
            Ok(0)
        }
    }
}

fn absolute(path: PathBuf) -> anyhow::Result<PathBuf> {
    std::path::absolute(&path).with_context(|| format!("{}", Path::new(&path).display()))
}
