//! The enrollment that covers a workload, which the workload itself may never change.
//!
//! An enrollment covers the processes of its cgroup and of every cgroup beneath it (the
//! kernel applies the deepest enrolled ancestor of a process's cgroup). A change to cgroup T
//! (unenrolling it, enrolling it again with other options, or enrolling it anew beneath an
//! enrolled cgroup, which would override that enrollment there) alters the enrollment E that
//! covers T: T's own or its deepest enrolled ancestor's. It is refused when the caller belongs
//! to E's workload:
//! - the caller's process is in E's cgroup or beneath it (whoever the caller is), or
//! - the caller is not root and its uid is the real or effective uid of a process in E's
//!   cgroup or beneath it.
//!
//! E's whole subtree counts, not only T's: a workload that may create cgroups of its own
//! (a delegated subtree) could otherwise enroll an empty one with narrower filters and move
//! itself there.
//!
//! Root is held to the first rule only: containers commonly run as uid 0, so the second would
//! leave no operator able to unenroll them, and root outside the workload can detach the
//! kernel hooks from bpffs anyway. For the same reason root may change an enrollment of the
//! root cgroup, which covers every process, the operator's own included. Enrolling a cgroup
//! nothing covers yet only adds interception and is not refused.

use std::path::{Path, PathBuf};

use super::caller::{Caller, CallerProcess, ProcIds};
use super::protocol::{EnrollmentStatus, Target};
use crate::cgroup::Cgroup;

/// The cgroup directory a change names; None when it names no enrollment (an unenroll of an
/// unknown id then fails on its own).
pub fn target_dir(
    target: &Target,
    allow_root: bool,
    enrolled: &[EnrollmentStatus],
) -> anyhow::Result<Option<PathBuf>> {
    let cgroup = match target {
        Target::Path(p) => Cgroup::resolve(p, allow_root)?,
        Target::Pid(pid) => Cgroup::of_pid(*pid)?,
        Target::Container(id) => Cgroup::of_container(id)?,
        // The directory as enrolled: it may be gone, and then nothing is in it.
        Target::Id(id) => {
            return Ok(enrolled
                .iter()
                .find(|e| e.id == *id)
                .map(|e| e.cgroup.clone()));
        }
    };
    Ok(Some(cgroup.path))
}

/// Refuses `change` of cgroup `target` when it is covered and the caller belongs to the
/// workload of the enrollment that covers it.
pub fn check(
    change: &str,
    target: &Path,
    enrolled: &[EnrollmentStatus],
    caller: &Caller,
    process: &CallerProcess,
) -> Result<(), String> {
    let Some(covering) = enrolled
        .iter()
        .filter(|e| target.starts_with(&e.cgroup))
        .max_by_key(|e| e.cgroup.components().count())
    else {
        return Ok(());
    };
    let workload = covering.cgroup.as_path();
    let covered = format!(
        "{}, which enrollment {} covers",
        workload.display(),
        covering.id
    );
    let rule = "a workload may not change the enrollment that covers it";
    let root_cgroup = crate::cgroup::mount_point().is_ok_and(|m| m == workload);
    if !(caller.uid == 0 && root_cgroup) {
        match &process.cgroup {
            Some(own) if own.starts_with(workload) => {
                return Err(format!(
                    "{change} refused: your process (pid {}) is in {covered}; {rule}",
                    caller.pid
                ));
            }
            Some(_) => {}
            None => {
                return Err(format!(
                    "{change} refused: the cgroup of your process (pid {}) is unknown, so it may be in {covered}",
                    caller.pid
                ));
            }
        }
    }
    if caller.uid != 0
        && let Some(pid) = crate::cgroup::pids_beneath(workload)
            .into_iter()
            .find(|&pid| {
                ProcIds::of(pid).is_ok_and(|ids| ids.uid == caller.uid || ids.euid == caller.uid)
            })
    {
        return Err(format!(
            "{change} refused: {caller} runs process {pid} in {covered}; {rule}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enrolled(id: u32, cgroup: &str) -> EnrollmentStatus {
        EnrollmentStatus {
            id,
            name: None,
            cgroup: cgroup.into(),
            cgroup_id: 0,
            netns: None,
            ports: vec![],
            cidrs: vec![],
            deny: vec![],
            include_loopback: false,
            program_ids: vec![],
            live_connections: 0,
            total_connections: 0,
        }
    }

    fn root_in(cgroup: &str) -> (Caller, CallerProcess) {
        let caller = Caller {
            uid: 0,
            user: Some("root".into()),
            gid: 0,
            pid: 7,
        };
        let process = CallerProcess {
            groups: vec![0],
            cgroup: Some(cgroup.into()),
        };
        (caller, process)
    }

    #[test]
    fn a_process_in_the_covered_subtree_is_refused() {
        // Directories that do not exist hold no processes: only the pid rule is in play.
        let list = [enrolled(1, "/cg/a"), enrolled(2, "/cg/a/b")];
        let (caller, inside) = root_in("/cg/a/b/c");
        let refused = check("unenroll", Path::new("/cg/a"), &list, &caller, &inside).unwrap_err();
        assert_eq!(
            refused,
            "unenroll refused: your process (pid 7) is in /cg/a, which enrollment 1 covers; \
             a workload may not change the enrollment that covers it"
        );
        // A deeper enrollment of its own, even of a cgroup it is not in, would override the
        // one that covers it.
        let refused = check("enroll", Path::new("/cg/a/b/d"), &list, &caller, &inside);
        assert!(
            refused
                .unwrap_err()
                .contains("/cg/a/b, which enrollment 2 covers")
        );
        // Outside the subtree, or nothing covers the target: allowed.
        let (_, outside) = root_in("/cg/other");
        assert_eq!(
            check("unenroll", Path::new("/cg/a"), &list, &caller, &outside),
            Ok(())
        );
        assert_eq!(
            check("enroll", Path::new("/cg/x"), &list, &caller, &inside),
            Ok(())
        );
        let unknown = CallerProcess {
            cgroup: None,
            ..inside
        };
        assert!(check("unenroll", Path::new("/cg/a"), &list, &caller, &unknown).is_err());
    }
}
