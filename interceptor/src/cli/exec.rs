//! `interceptor exec`: run one command intercepted, in a cgroup made for it and enrolled for
//! exactly its lifetime, trusting interceptor's CA.
//!
//! The trust comes from a private mount namespace in which what each TLS stack reads (the
//! system bundle and certificate directory, certifi, Java's truststore) is replaced by a copy
//! that includes the CA, plus `NODE_EXTRA_CA_CERTS` ([`crate::trust`]): the command needs no
//! flag or variable, and nothing outside it sees the change.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;

use super::args::ExecArgs;
use crate::cgroup::{self, OwnedCgroup};
use crate::control::client;
use crate::control::protocol::{EnrollRequest, EnrollmentStatus, Request, Target};
use crate::trust::{self, CommandSite, TrustOverlay};

/// Returns the command's exit code (128 + signal number when it was killed by a signal).
pub fn exec(socket: &Path, args: ExecArgs) -> anyhow::Result<i32> {
    let cwd = std::env::current_dir().context("the current directory")?;
    let site = CommandSite {
        program: &args.command[0],
        cwd: &cwd,
        var: &|name| std::env::var_os(name),
    };
    let mut trust = TrustOverlay::prepare(&super::ca::certificate(socket)?, &site)?;
    let parent = cgroup::mount_point()?.join("interceptor");
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH)?.subsec_nanos();
    let dir = parent.join(format!("exec-{}-{nanos}", std::process::id()));
    let owned = OwnedCgroup::create(&dir)?;
    let enrolled: EnrollmentStatus = client::call(
        socket,
        &Request::Enroll(EnrollRequest {
            target: Target::Path(dir.clone()),
            options: args.filters.into_options(None),
            allow_root: false,
        }),
    )?;
    let result = run_in(&owned, &mut trust, &args.command);
    drop(trust);
    // Tear down in order: nothing left running, then detach, then remove the cgroup.
    owned.kill_remaining();
    if let Err(e) = client::call::<EnrollmentStatus>(
        socket,
        &Request::Unenroll {
            target: Target::Id(enrolled.id),
        },
    ) {
        tracing::warn!(error = %crate::errors::chain(e.as_ref()), "could not unenroll the command's cgroup");
    }
    drop(owned);
    let _ = std::fs::remove_dir(&parent); // only succeeds when no other exec is running
    result
}

fn run_in(
    cgroup: &OwnedCgroup,
    trust: &mut TrustOverlay,
    argv: &[std::ffi::OsString],
) -> anyhow::Result<i32> {
    let procs = cgroup.procs_file()?;
    let procs_fd = procs.as_raw_fd();
    // Made before fork: between fork and exec nothing may allocate.
    let mounts = std::mem::take(&mut trust.mounts);
    let mut command = Command::new(&argv[0]);
    command.args(&argv[1..]).envs(trust.env.iter().cloned());
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        command.pre_exec(move || {
            // "0" moves the writing process: the child joins the cgroup before it runs anything.
            if libc::write(procs_fd, b"0".as_ptr().cast(), 1) != 1 {
                return Err(io::Error::last_os_error());
            }
            trust::enter_private_namespace(&mounts)?;
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            libc::signal(libc::SIGQUIT, libc::SIG_DFL);
            Ok(())
        });
    }
    // Ctrl-C is for the command; this process stays to clean up after it.
    let _ignore = IgnoreInterrupts::new();
    let status = command
        .status()
        .with_context(|| format!("cannot run {:?}", argv[0]))?;
    Ok(status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}

struct IgnoreInterrupts;

impl IgnoreInterrupts {
    fn new() -> Self {
        // SAFETY: setting dispositions to SIG_IGN has no handler to be unsafe about.
        unsafe {
            libc::signal(libc::SIGINT, libc::SIG_IGN);
            libc::signal(libc::SIGQUIT, libc::SIG_IGN);
        }
        IgnoreInterrupts
    }
}

impl Drop for IgnoreInterrupts {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe {
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            libc::signal(libc::SIGQUIT, libc::SIG_DFL);
        }
    }
}
