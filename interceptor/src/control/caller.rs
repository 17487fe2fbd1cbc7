//! Who is on the other end of a control connection. The kernel takes the peer's uid, gid and
//! pid at connect() (`SO_PEERCRED`); its groups and cgroup are read from `/proc` when a change
//! is asked for, through a pidfd the kernel ties to the connection (`SO_PEERPIDFD`): while that
//! process lives its pid names no other, so what `/proc` said was about the caller.

use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The peer of a control connection, as the session store records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Caller {
    pub uid: u32,
    /// The user name of `uid`, if the user database has one.
    pub user: Option<String>,
    pub gid: u32,
    pub pid: u32,
}

impl Caller {
    pub fn of(stream: &tokio::net::UnixStream) -> io::Result<Caller> {
        let cred = stream.peer_cred()?;
        let uid = cred.uid();
        Ok(Caller {
            uid,
            user: nix::unistd::User::from_uid(uid.into())
                .ok()
                .flatten()
                .map(|u| u.name),
            gid: cred.gid(),
            // A peer in another pid namespace than ours has no pid here: 0, which no
            // process has, so nothing read for it is anyone's.
            pid: cred.pid().and_then(|p| u32::try_from(p).ok()).unwrap_or(0),
        })
    }

    /// The caller's process as it is now. Fails (a refusal: nothing is known about who asks)
    /// when it is gone, or when its credentials are no longer those it connected with.
    pub fn process(&self, socket: BorrowedFd<'_>) -> Result<CallerProcess, String> {
        let unknown = |e: io::Error| format!("cannot read your process (pid {}): {e}", self.pid);
        let pidfd = peer_pidfd(socket).map_err(unknown)?;
        let ids = ProcIds::of(self.pid).map_err(unknown)?;
        let cgroup = crate::cgroup::relative_path_of_pid(self.pid);
        if !crate::identity::is_alive(&pidfd) {
            return Err(format!(
                "your process (pid {}) ended before its request was decided",
                self.pid
            ));
        }
        if ids.euid != self.uid {
            return Err(format!(
                "your process (pid {}) is now uid {}, not uid {} as when it connected",
                self.pid, ids.euid, self.uid
            ));
        }
        let cgroup = match (cgroup, crate::cgroup::mount_point()) {
            (Some(rel), Ok(mount)) => Some(mount.join(rel.trim_start_matches('/'))),
            _ => None,
        };
        let mut groups = ids.groups;
        groups.push(ids.egid);
        Ok(CallerProcess { groups, cgroup })
    }
}

impl fmt::Display for Caller {
    /// `uid 1001 (bob)`, as refusals name the caller.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "uid {}", self.uid)?;
        match &self.user {
            Some(user) => write!(f, " ({user})"),
            None => Ok(()),
        }
    }
}

/// The caller's process at request time.
#[derive(Clone, Debug)]
pub struct CallerProcess {
    /// Its effective gid and supplementary groups.
    pub groups: Vec<u32>,
    /// Its cgroup2 directory (absolute), when it has one.
    pub cgroup: Option<PathBuf>,
}

/// The ids `/proc/PID/status` lists for a process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcIds {
    /// Real and effective uid.
    pub uid: u32,
    pub euid: u32,
    pub egid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
}

impl ProcIds {
    pub fn of(pid: u32) -> io::Result<ProcIds> {
        ProcIds::parse(&std::fs::read_to_string(format!("/proc/{pid}/status"))?)
    }

    fn parse(status: &str) -> io::Result<ProcIds> {
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .map(|v| v.split_whitespace().map(str::parse::<u32>))
        };
        let bad = || io::Error::new(io::ErrorKind::InvalidData, "unexpected /proc status");
        // Uid and Gid list real, effective, saved and filesystem ids.
        let ids = |name: &str| -> io::Result<Vec<u32>> {
            let ids: Vec<u32> = field(name)
                .ok_or_else(bad)?
                .collect::<Result<_, _>>()
                .map_err(|_| bad())?;
            (ids.len() == 4).then_some(ids).ok_or_else(bad)
        };
        let (uids, gids) = (ids("Uid")?, ids("Gid")?);
        let groups = field("Groups")
            .ok_or_else(bad)?
            .collect::<Result<_, _>>()
            .map_err(|_| bad())?;
        Ok(ProcIds {
            uid: uids[0],
            euid: uids[1],
            egid: gids[1],
            groups,
        })
    }
}

/// A pidfd of the process that connected to `socket`.
fn peer_pidfd(socket: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let mut fd: libc::c_int = -1;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: SO_PEERPIDFD writes one int (a new descriptor) into `fd`, `len` is its size.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERPIDFD,
            (&raw mut fd).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor the kernel just made for us and nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_status_ids_are_read() {
        let status = "Name:\tsh\nUid:\t1001\t1002\t1001\t1002\nGid:\t100\t101\t100\t101\n\
                      FDSize:\t64\nGroups:\t27 1500 \nNgid:\t0\n";
        let ids = ProcIds::parse(status).unwrap();
        assert_eq!(
            ids,
            ProcIds {
                uid: 1001,
                euid: 1002,
                egid: 101,
                groups: vec![27, 1500]
            }
        );
        let none = ProcIds::parse("Uid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\nGroups:\t\n").unwrap();
        assert!(none.groups.is_empty());
        assert!(ProcIds::parse("Uid:\t0\t0\nGid:\t0\t0\t0\t0\nGroups:\n").is_err());
        assert!(ProcIds::parse("Uid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\n").is_err());
    }

    #[tokio::test]
    async fn the_peer_is_this_process() {
        let (a, b) = tokio::net::UnixStream::pair().unwrap();
        let caller = Caller::of(&a).unwrap();
        assert_eq!(caller.pid, std::process::id());
        assert_eq!(caller.uid, nix::unistd::geteuid().as_raw());
        use std::os::fd::AsFd;
        let process = caller.process(a.as_fd()).unwrap();
        assert!(process.groups.contains(&nix::unistd::getegid().as_raw()));
        drop(b);
    }
}
