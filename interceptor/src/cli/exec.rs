//! `interceptor exec`: run one command intercepted, in a cgroup made for it and enrolled for
//! exactly its lifetime, trusting interceptor's CA.
//!
//! The trust comes from a private mount namespace in which the system CA bundle is replaced
//! (bind mount) by the original plus the CA: the command needs no flag or variable, and
//! nothing outside it sees the change.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, unshare};

use super::args::ExecArgs;
use crate::cgroup::{self, OwnedCgroup};
use crate::control::client;
use crate::control::protocol::{EnrollRequest, EnrollmentStatus, Request, Target};

/// Returns the command's exit code (128 + signal number when it was killed by a signal).
pub fn exec(socket: &Path, args: ExecArgs) -> anyhow::Result<i32> {
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
    let bundle = TrustBundle::write(&super::ca::certificate(socket)?)?;
    let result = run_in(&owned, bundle.as_ref(), &args.command);
    drop(bundle);
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
    bundle: Option<&TrustBundle>,
    argv: &[std::ffi::OsString],
) -> anyhow::Result<i32> {
    let procs = cgroup.procs_file()?;
    let procs_fd = procs.as_raw_fd();
    // Made before fork: between fork and exec nothing may allocate.
    let mounts = bundle.map(TrustBundle::mount_paths).transpose()?;
    let mut command = Command::new(&argv[0]);
    command.args(&argv[1..]);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        command.pre_exec(move || {
            // "0" moves the writing process: the child joins the cgroup before it runs anything.
            if libc::write(procs_fd, b"0".as_ptr().cast(), 1) != 1 {
                return Err(io::Error::last_os_error());
            }
            if let Some((source, target)) = &mounts {
                unshare(CloneFlags::CLONE_NEWNS)?;
                // Our mounts must not propagate back to the host's namespace.
                mount(
                    None::<&CStr>,
                    c"/",
                    None::<&CStr>,
                    MsFlags::MS_REC | MsFlags::MS_SLAVE,
                    None::<&CStr>,
                )?;
                mount(
                    Some(source.as_c_str()),
                    target.as_c_str(),
                    None::<&CStr>,
                    MsFlags::MS_BIND,
                    None::<&CStr>,
                )?;
            }
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

/// System CA bundles, by distribution family; the first that exists is the one replaced.
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

/// A temporary CA bundle (system bundle + interceptor's CA), removed on Drop. While the
/// command runs it is also held by the bind mount, so removing it early would be harmless.
struct TrustBundle {
    path: PathBuf,
    system: PathBuf,
}

impl TrustBundle {
    /// `None` (with a warning) when the host has no system bundle to extend.
    fn write(ca_pem: &str) -> anyhow::Result<Option<TrustBundle>> {
        let Some(system) = SYSTEM_BUNDLES.iter().map(Path::new).find(|p| p.is_file()) else {
            tracing::warn!(
                "no system CA bundle found; the command will not trust interceptor's CA"
            );
            return Ok(None);
        };
        let mut contents = std::fs::read(system).with_context(|| system.display().to_string())?;
        if !contents.ends_with(b"\n") {
            contents.push(b'\n');
        }
        contents.extend_from_slice(ca_pem.as_bytes());
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH)?.subsec_nanos();
        let path = std::env::temp_dir().join(format!(
            "interceptor-exec-{}-{nanos}-ca.pem",
            std::process::id()
        ));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&path)
            .with_context(|| path.display().to_string())?;
        io::Write::write_all(&mut f, &contents).with_context(|| path.display().to_string())?;
        Ok(Some(TrustBundle {
            path,
            system: system.to_owned(),
        }))
    }

    fn mount_paths(&self) -> anyhow::Result<(CString, CString)> {
        let c = |p: &Path| CString::new(p.as_os_str().as_bytes()).context("path with a NUL byte");
        Ok((c(&self.path)?, c(&self.system)?))
    }
}

impl Drop for TrustBundle {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
