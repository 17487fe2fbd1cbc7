//! cgroup2 plumbing: find the mount, validate and resolve enrollment targets, make and remove
//! the cgroups `interceptor exec` runs commands in.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::identity::container_of;

const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no cgroup2 file system is mounted (looked in /proc/mounts)")]
    NoMount,
    #[error("{0}: no such cgroup (directory does not exist)")]
    NotFound(PathBuf),
    #[error("{0}: not a cgroup2 directory")]
    NotCgroup2(PathBuf),
    #[error(
        "{0}: refusing to enroll the root cgroup, which would intercept every process on the host (pass --allow-root to insist)"
    )]
    Root(PathBuf),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("no cgroup belongs to a container whose id starts with {0:?}")]
    NoContainer(String),
    #[error("container id prefix {0:?} is ambiguous: {1} cgroups match")]
    AmbiguousContainer(String, usize),
    #[error("process {0} not found or has no cgroup2 membership")]
    NoSuchPid(u32),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The cgroup2 mount point, read from `/proc/mounts` (hybrid hosts mount it at
/// `/sys/fs/cgroup/unified`, unified ones at `/sys/fs/cgroup`).
pub fn mount_point() -> Result<PathBuf, CgroupError> {
    let mounts = fs::read_to_string("/proc/mounts").map_err(io_err(Path::new("/proc/mounts")))?;
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (_, dir, fstype) = (fields.next()?, fields.next()?, fields.next()?);
            (fstype == "cgroup2").then(|| PathBuf::from(dir))
        })
        .next()
        .ok_or(CgroupError::NoMount)
}

/// A validated cgroup2 directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cgroup {
    /// Absolute path under the mount.
    pub path: PathBuf,
    /// Path relative to the mount, as `/proc/PID/cgroup` spells it (`/a/b`, `/` for the root).
    pub relative: String,
    /// The cgroup id: the directory's inode number.
    pub id: u64,
}

impl Cgroup {
    /// Resolves a path that is absolute under the mount or relative to it.
    pub fn resolve(path: &Path, allow_root: bool) -> Result<Cgroup, CgroupError> {
        let mount = mount_point()?;
        // Relative to the mount first; an absolute path elsewhere is taken as it is, so that
        // the error names what it is rather than "not found".
        let abs = if path.starts_with(&mount) {
            path.to_owned()
        } else {
            let under_mount = mount.join(path.strip_prefix("/").unwrap_or(path));
            if !under_mount.exists() && path.exists() {
                path.to_owned()
            } else {
                under_mount
            }
        };
        let meta = match fs::metadata(&abs) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(CgroupError::NotFound(path.to_owned()));
            }
            Err(e) => return Err(io_err(&abs)(e)),
        };
        let stat = nix::sys::statfs::statfs(&abs).map_err(|e| io_err(&abs)(e.into()))?;
        if !meta.is_dir() || stat.filesystem_type().0 as i64 != CGROUP2_SUPER_MAGIC {
            return Err(CgroupError::NotCgroup2(path.to_owned()));
        }
        let abs = abs.canonicalize().map_err(io_err(&abs))?;
        let relative = relative_to(&mount, &abs);
        if relative == "/" {
            if !allow_root {
                return Err(CgroupError::Root(abs));
            }
            tracing::warn!(path = %abs.display(), "enrolling the root cgroup: every process on the host is intercepted");
        }
        Ok(Cgroup {
            path: abs,
            relative,
            id: meta.ino(),
        })
    }

    /// The cgroup a process belongs to.
    pub fn of_pid(pid: u32) -> Result<Cgroup, CgroupError> {
        let relative = relative_path_of_pid(pid).ok_or(CgroupError::NoSuchPid(pid))?;
        Cgroup::resolve(Path::new(&relative), true)
    }

    /// The cgroup of a container, by (a prefix of) its id, found by walking the hierarchy.
    pub fn of_container(id_prefix: &str) -> Result<Cgroup, CgroupError> {
        let mount = mount_point()?;
        let mut found = Vec::new();
        walk(&mount, &mut |dir| {
            let rel = relative_to(&mount, dir);
            if container_of(&rel).is_some_and(|c| c.id.starts_with(id_prefix)) {
                found.push(dir.to_owned());
            }
        });
        match found.len() {
            0 => Err(CgroupError::NoContainer(id_prefix.to_owned())),
            1 => Cgroup::resolve(&found[0], false),
            n => Err(CgroupError::AmbiguousContainer(id_prefix.to_owned(), n)),
        }
    }

    /// Process ids currently in this cgroup (not its descendants).
    pub fn pids(&self) -> Vec<u32> {
        pids_in(&self.path)
    }

    /// Finds the relative path of a descendant cgroup (or this one) by id, for connections
    /// whose process exited before the daemon could read `/proc`.
    pub fn find_descendant(&self, id: u64) -> Option<String> {
        let mount = mount_point().ok()?;
        let mut hit = None;
        walk(&self.path, &mut |dir| {
            if hit.is_none() && fs::metadata(dir).is_ok_and(|m| m.ino() == id) {
                hit = Some(relative_to(&mount, dir));
            }
        });
        hit
    }
}

/// Process ids currently in the cgroup directory `dir` and every cgroup beneath it (none when
/// it is gone).
pub fn pids_beneath(dir: &Path) -> Vec<u32> {
    let mut pids = Vec::new();
    walk(dir, &mut |d| pids.extend(pids_in(d)));
    pids
}

fn pids_in(dir: &Path) -> Vec<u32> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// `0::/path` from `/proc/PID/cgroup`.
pub fn relative_path_of_pid(pid: u32) -> Option<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_owned)
}

fn relative_to(mount: &Path, abs: &Path) -> String {
    match abs.strip_prefix(mount) {
        Ok(rest) if rest.as_os_str().is_empty() => "/".to_owned(),
        Ok(rest) => format!("/{}", rest.display()),
        Err(_) => abs.display().to_string(),
    }
}

fn walk(dir: &Path, visit: &mut dyn FnMut(&Path)) {
    visit(dir);
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            walk(&entry.path(), visit);
        }
    }
}

/// A cgroup this process created for itself (`interceptor exec`), removed on drop: its
/// remaining processes are killed first, since a cgroup with members cannot be removed.
pub struct OwnedCgroup {
    pub cgroup: Cgroup,
}

impl OwnedCgroup {
    pub fn create(path: &Path) -> Result<OwnedCgroup, CgroupError> {
        fs::create_dir_all(path).map_err(io_err(path))?;
        Ok(OwnedCgroup {
            cgroup: Cgroup::resolve(path, false)?,
        })
    }

    /// An open `cgroup.procs`: writing "0" to it moves the writing process in.
    pub fn procs_file(&self) -> Result<fs::File, CgroupError> {
        let path = self.cgroup.path.join("cgroup.procs");
        fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(io_err(&path))
    }

    /// Kills whatever is left in the cgroup (a command's background children) and waits,
    /// briefly, until it is empty.
    pub fn kill_remaining(&self) {
        if self.cgroup.pids().is_empty() {
            return;
        }
        let _ = fs::write(self.cgroup.path.join("cgroup.kill"), "1");
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.cgroup.pids().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for OwnedCgroup {
    fn drop(&mut self) {
        self.kill_remaining();
        if let Err(e) = fs::remove_dir(&self.cgroup.path) {
            tracing::warn!(path = %self.cgroup.path.display(), error = %e, "could not remove cgroup");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths() {
        let m = Path::new("/sys/fs/cgroup");
        assert_eq!(relative_to(m, Path::new("/sys/fs/cgroup")), "/");
        assert_eq!(relative_to(m, Path::new("/sys/fs/cgroup/a/b")), "/a/b");
    }

    #[test]
    fn resolve_rejects_non_cgroup_and_missing() {
        let tmp = tempfile::tempdir().unwrap();
        let err = Cgroup::resolve(tmp.path(), false).unwrap_err();
        assert!(matches!(err, CgroupError::NotCgroup2(_)), "{err}");
        assert!(err.to_string().contains(&tmp.path().display().to_string()));
        let err = Cgroup::resolve(Path::new("/no-such-cgroup-here"), false).unwrap_err();
        assert!(err.to_string().contains("/no-such-cgroup-here"), "{err}");
    }

    #[test]
    fn resolve_refuses_root_unless_allowed() {
        let mount = mount_point().unwrap();
        assert!(matches!(
            Cgroup::resolve(&mount, false),
            Err(CgroupError::Root(_))
        ));
        let root = Cgroup::resolve(Path::new("/"), true).unwrap();
        assert_eq!(root.relative, "/");
    }
}
