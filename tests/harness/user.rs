//! A throwaway local user (`useradd`), for processes that must not be root.

use std::process::Command;

use anyhow::{Context, Result};

use crate::proc::sh;
use crate::util::next_id;

/// A system user and group of the same unique name (`ict-<pid>-<n>`), no home, no login
/// shell. Drop removes both (`userdel`), also when the test fails.
pub struct TestUser {
    name: String,
    uid: u32,
    gid: u32,
}

impl TestUser {
    pub fn new() -> Result<TestUser> {
        let name = format!("ict-{}-{}", std::process::id(), next_id());
        sh(Command::new("useradd").args([
            "--system",
            "--user-group",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            &name,
        ]))?;
        // From here on Drop removes the user, whatever fails next.
        let mut user = TestUser {
            name,
            uid: 0,
            gid: 0,
        };
        let id = |flag: &str| -> Result<u32> {
            let out = sh(Command::new("id").arg(flag).arg(&user.name))?;
            out.trim()
                .parse()
                .with_context(|| format!("id {flag} {}: {out:?}", user.name))
        };
        (user.uid, user.gid) = (id("-u")?, id("-g")?);
        anyhow::ensure!(user.uid != 0, "test user {} has uid 0", user.name);
        Ok(user)
    }

    pub fn uid(&self) -> u32 {
        self.uid
    }

    /// Appends the arguments that switch to this user, without root's capabilities or groups,
    /// to `cmd`, which runs `setpriv` (maybe through `ip netns exec`); the program follows.
    pub fn wrap<'a>(&self, cmd: &'a mut Command) -> &'a mut Command {
        cmd.args([
            format!("--reuid={}", self.uid),
            format!("--regid={}", self.gid),
            "--clear-groups".into(),
        ])
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        if let Err(e) = sh(Command::new("userdel").arg(&self.name)) {
            eprintln!("warning: userdel {} failed: {e:#}", self.name);
        }
    }
}
