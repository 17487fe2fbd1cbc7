//! cgroup2 directories owned by a test.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::util::{next_id, poll};

/// The cgroup2 mount point, read from /proc/mounts (e.g. /sys/fs/cgroup/unified).
pub fn cgroup2_mount() -> &'static Path {
    static M: OnceLock<PathBuf> = OnceLock::new();
    M.get_or_init(|| {
        let mounts = std::fs::read_to_string("/proc/mounts").expect("read /proc/mounts");
        mounts
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() > 2 && f[2] == "cgroup2").then(|| PathBuf::from(f[1]))
            })
            .next()
            .expect("no cgroup2 mount in /proc/mounts")
    })
}

/// A cgroup the test created: `<cg2>/interceptor-test-<pid>-<n>[/<name>]`.
///
/// Drop kills every process left in it (`cgroup.kill`, which only ever holds processes the
/// test started), removes sub-cgroups and then itself.
pub struct TestCgroup {
    root: PathBuf,
    path: PathBuf,
}

impl TestCgroup {
    /// Creates the test's top cgroup and, with `name`, a child of that name; [`path`](Self::path)
    /// is the innermost one.
    pub fn new(name: Option<&str>) -> Result<TestCgroup> {
        let root = cgroup2_mount().join(format!(
            "interceptor-test-{}-{}",
            std::process::id(),
            next_id()
        ));
        std::fs::create_dir(&root).with_context(|| format!("mkdir {}", root.display()))?;
        let mut cg = TestCgroup {
            path: root.clone(),
            root,
        };
        if let Some(name) = name {
            let p = cg.root.join(name);
            std::fs::create_dir(&p).with_context(|| format!("mkdir {}", p.display()))?;
            cg.path = p;
        }
        Ok(cg)
    }

    /// Absolute path of the (innermost) cgroup directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Path relative to the cgroup2 mount, with a leading `/`, as in /proc/PID/cgroup.
    pub fn rel_path(&self) -> String {
        let rel = self
            .path
            .strip_prefix(cgroup2_mount())
            .expect("under the mount");
        format!("/{}", rel.display())
    }

    /// The cgroup id: the inode number of its directory.
    pub fn id(&self) -> Result<u64> {
        use std::os::unix::fs::MetadataExt;
        Ok(std::fs::metadata(&self.path)?.ino())
    }

    /// Pids in cgroup.procs of the innermost cgroup.
    pub fn procs(&self) -> Result<Vec<i32>> {
        read_procs(&self.path)
    }

    /// Creates a sub-cgroup of the innermost one (removed by Drop).
    pub fn child(&self, name: &str) -> Result<PathBuf> {
        let p = self.path.join(name);
        std::fs::create_dir(&p).with_context(|| format!("mkdir {}", p.display()))?;
        Ok(p)
    }

    fn cleanup(&self) -> Result<()> {
        if !self.root.exists() {
            return Ok(());
        }
        let kill = self.root.join("cgroup.kill");
        if populated(&self.root)? {
            std::fs::write(&kill, "1").with_context(|| format!("write {}", kill.display()))?;
            poll(
                "killed test processes to exit",
                Duration::from_secs(10),
                Duration::from_millis(20),
                || Ok((!populated(&self.root)?).then_some(())),
            )?;
        }
        remove_tree(&self.root)
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        if let Err(e) = self.cleanup() {
            eprintln!(
                "warning: cleaning up cgroup {} failed: {e:#}",
                self.root.display()
            );
        }
    }
}

fn read_procs(dir: &Path) -> Result<Vec<i32>> {
    let s = std::fs::read_to_string(dir.join("cgroup.procs"))
        .with_context(|| format!("read {}/cgroup.procs", dir.display()))?;
    Ok(s.lines().filter_map(|l| l.trim().parse().ok()).collect())
}

fn populated(dir: &Path) -> Result<bool> {
    let ev = std::fs::read_to_string(dir.join("cgroup.events"))
        .with_context(|| format!("read {}/cgroup.events", dir.display()))?;
    Ok(ev.lines().any(|l| l.trim() == "populated 1"))
}

/// rmdir a cgroup tree, children first, retrying briefly while the kernel finishes exits.
fn remove_tree(dir: &Path) -> Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            remove_tree(&e.path())?;
        }
    }
    poll(
        &format!("rmdir {}", dir.display()),
        Duration::from_secs(10),
        Duration::from_millis(20),
        || match std::fs::remove_dir(dir) {
            Ok(()) => Ok(Some(())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Some(())),
            Err(e) => Err(e.into()),
        },
    )
}

/// Makes `cmd` start inside the cgroup `dir` (the child writes itself into cgroup.procs
/// before exec, so the program runs there from its first instruction).
pub fn in_cgroup<'a>(cmd: &'a mut Command, dir: &Path) -> Result<&'a mut Command> {
    let procs = CString::new(dir.join("cgroup.procs").as_os_str().as_bytes())?;
    if !dir.join("cgroup.procs").exists() {
        bail!("{} is not a cgroup2 directory", dir.display());
    }
    // SAFETY: only async-signal-safe calls (open, write, close) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let r = libc::write(fd, b"0".as_ptr().cast(), 1);
            let err = std::io::Error::last_os_error();
            libc::close(fd);
            if r != 1 {
                return Err(err);
            }
            Ok(())
        });
    }
    Ok(cmd)
}
