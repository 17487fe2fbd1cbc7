//! Control roles: reading (status, sessions, approvals list, the CA) is for whoever may open
//! the socket (root and `--socket-group`); a change (enroll, unenroll, policy reload, an
//! approval decision) needs root or membership of `--admin-group`, and never touches the
//! enrollment that covers the caller ([`super::coverage`]).

use anyhow::Context;

use super::caller::{Caller, CallerProcess};

/// Who may change: root, and the members of the admin group if one is configured.
#[derive(Clone, Debug, Default)]
pub struct Roles {
    admin_group: Option<AdminGroup>,
}

#[derive(Clone, Debug)]
struct AdminGroup {
    name: String,
    gid: u32,
}

impl Roles {
    /// Fails when `admin_group` names no group: a typo must not leave changes to root alone
    /// without anyone noticing, nor let a later-created group of that name in.
    pub fn new(admin_group: Option<&str>) -> anyhow::Result<Roles> {
        let admin_group = match admin_group {
            None => None,
            Some(name) => {
                let group = nix::unistd::Group::from_name(name)?
                    .with_context(|| format!("no such group {name:?} for --admin-group"))?;
                Some(AdminGroup {
                    name: name.to_string(),
                    gid: group.gid.as_raw(),
                })
            }
        };
        Ok(Roles { admin_group })
    }

    /// Whether `caller` may make `change` (the CLI's name for it); the refusal says why.
    /// Membership is that of the caller's process now (its effective and supplementary
    /// groups), as the kernel checks it for files.
    pub fn authorise(
        &self,
        change: &str,
        caller: &Caller,
        process: &CallerProcess,
    ) -> Result<(), String> {
        if caller.uid == 0 {
            return Ok(());
        }
        match &self.admin_group {
            Some(admin) if process.groups.contains(&admin.gid) => Ok(()),
            Some(admin) => Err(format!(
                "{change} needs root or group {}; you are {caller}",
                admin.name
            )),
            None => Err(format!(
                "{change} needs root (no admin group is configured: `interceptor run --admin-group GROUP`); you are {caller}"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(uid: u32) -> Caller {
        Caller {
            uid,
            user: Some("bob".into()),
            gid: 100,
            pid: 42,
        }
    }

    fn member_of(groups: &[u32]) -> CallerProcess {
        CallerProcess {
            groups: groups.to_vec(),
            cgroup: None,
        }
    }

    #[test]
    fn root_and_admin_group_members_may_change() {
        let roles = Roles {
            admin_group: Some(AdminGroup {
                name: "ops".into(),
                gid: 1500,
            }),
        };
        assert_eq!(
            roles.authorise("enroll", &caller(0), &member_of(&[])),
            Ok(())
        );
        let member = member_of(&[100, 1500]);
        assert_eq!(roles.authorise("enroll", &caller(1001), &member), Ok(()));
        assert_eq!(
            roles.authorise("unenroll", &caller(1001), &member_of(&[100])),
            Err("unenroll needs root or group ops; you are uid 1001 (bob)".into())
        );
    }

    #[test]
    fn without_an_admin_group_only_root_may_change() {
        let roles = Roles::new(None).unwrap();
        let refused = roles
            .authorise("policy reload", &caller(1001), &member_of(&[0]))
            .unwrap_err();
        assert!(refused.starts_with("policy reload needs root (no admin group"));
        assert!(refused.ends_with("you are uid 1001 (bob)"));
        assert!(Roles::new(Some("no-such-group-for-interceptor")).is_err());
    }
}
