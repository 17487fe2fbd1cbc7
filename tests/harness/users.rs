//! Local users and groups a test makes (useradd, groupadd) under unique names; Drop removes
//! them again, also when the test fails.

use std::ffi::OsStr;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::proc::run_ok;
use crate::util::next_id;

const TOOL_TIMEOUT: Duration = Duration::from_secs(30);

/// A name no other test (process) uses: `ict-TAG-PID-N`, within useradd's 32 characters.
fn unique_name(tag: &str) -> String {
    format!("ict-{tag}-{}-{}", std::process::id(), next_id())
}

/// A group; removed on drop.
pub struct TestGroup {
    name: String,
    gid: u32,
}

impl TestGroup {
    pub fn new(tag: &str) -> Result<TestGroup> {
        let name = unique_name(tag);
        run_ok(Command::new("groupadd").arg(&name), TOOL_TIMEOUT)?;
        // Made first, so a failure below still removes the group.
        let mut group = TestGroup { name, gid: 0 };
        group.gid = nix::unistd::Group::from_name(&group.name)?
            .with_context(|| format!("group {} was added but cannot be found", group.name))?
            .gid
            .as_raw();
        Ok(group)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn gid(&self) -> u32 {
        self.gid
    }
}

impl Drop for TestGroup {
    fn drop(&mut self) {
        if let Err(e) = run_ok(Command::new("groupdel").arg(&self.name), TOOL_TIMEOUT) {
            eprintln!("warning: removing group {} failed: {e:#}", self.name);
        }
    }
}

/// A user without a home directory or login shell, in a group of its own and in `groups`;
/// removed (with its own group) on drop. Drop it before the groups it is in.
pub struct TestUser {
    name: String,
    uid: u32,
}

impl TestUser {
    pub fn new(tag: &str, groups: &[&TestGroup]) -> Result<TestUser> {
        let name = unique_name(tag);
        let mut add = Command::new("useradd");
        add.args([
            "--no-create-home",
            "--user-group",
            "--shell",
            "/usr/sbin/nologin",
        ]);
        if !groups.is_empty() {
            let names: Vec<&str> = groups.iter().map(|g| g.name()).collect();
            add.arg("--groups").arg(names.join(","));
        }
        run_ok(add.arg(&name), TOOL_TIMEOUT)?;
        let mut user = TestUser { name, uid: 0 };
        user.uid = nix::unistd::User::from_name(&user.name)?
            .with_context(|| format!("user {} was added but cannot be found", user.name))?
            .uid
            .as_raw();
        Ok(user)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn uid(&self) -> u32 {
        self.uid
    }

    /// `program` run as this user, with its own group and the groups it is in (as a login
    /// would give them).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new("setpriv");
        self.wrap(&mut c).arg(program);
        c
    }

    /// Appends the arguments that switch to this user (its groups as [`command`](Self::command)
    /// gives them, none of root's) to `cmd`, which runs `setpriv`, maybe through
    /// `ip netns exec`; the program follows.
    pub fn wrap<'a>(&self, cmd: &'a mut Command) -> &'a mut Command {
        cmd.arg(format!("--reuid={}", self.name))
            .arg(format!("--regid={}", self.name))
            .arg("--init-groups")
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        if let Err(e) = run_ok(Command::new("userdel").arg(&self.name), TOOL_TIMEOUT) {
            eprintln!("warning: removing user {} failed: {e:#}", self.name);
        }
        // userdel removes the user's own group where USERGROUPS_ENAB says so (Debian's
        // default); elsewhere it is left behind.
        if nix::unistd::Group::from_name(&self.name).is_ok_and(|g| g.is_some())
            && let Err(e) = run_ok(Command::new("groupdel").arg(&self.name), TOOL_TIMEOUT)
        {
            eprintln!("warning: removing group {} failed: {e:#}", self.name);
        }
    }
}
