//! Who made a connection: the kernel's record from `connect()` joined with `/proc`.
//!
//! The kernel fields (pid, uid, gid, comm, cgroup id, netns) are always there; the `/proc`
//! fields (exe, cmdline, cgroup path) are best effort, since a process may exit right after
//! `connect()`. A pid reused by a newer process is detected by its start time and ignored;
//! cached processes are checked for life through a pidfd, which is cheaper than `/proc`.
//! A container's name comes from its runtime's metadata on disk ([`ContainerNames`]).

use std::collections::HashMap;
use std::fs;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use interceptor_ebpf::ConnectInfo;
use serde::{Deserialize, Serialize};

use crate::cgroup::{self, Cgroup};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// Process id (thread group id).
    pub pid: u32,
    /// Thread that called `connect()`.
    pub tid: u32,
    pub uid: u32,
    pub gid: u32,
    pub user: Option<String>,
    pub comm: String,
    pub exe: Option<String>,
    pub cmdline: Vec<String>,
    /// Path relative to the cgroup2 mount, as in `/proc/PID/cgroup`.
    pub cgroup: Option<String>,
    pub cgroup_id: u64,
    pub container: Option<Container>,
    pub netns_cookie: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Container {
    pub id: String,
    pub runtime: String,
    /// The runtime's name for it (docker `--name`, the Kubernetes container name), when its
    /// metadata says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// Container id and runtime from a cgroup path, for the naming schemes of the common runtimes:
/// systemd driver (`docker-<id>.scope`, `cri-containerd-<id>.scope`, `crio-<id>.scope`,
/// `libpod-<id>.scope`) and cgroupfs driver (`/docker/<id>`, `/kubepods/.../<id>`).
pub fn container_of(cgroup_path: &str) -> Option<Container> {
    const SCOPES: [(&str, &str); 4] = [
        ("docker-", "docker"),
        ("cri-containerd-", "containerd"),
        ("crio-", "crio"),
        ("libpod-", "podman"),
    ];
    let mut parent = "";
    for segment in cgroup_path.split('/').filter(|s| !s.is_empty()) {
        let name = segment.strip_suffix(".scope").unwrap_or(segment);
        for (prefix, runtime) in SCOPES {
            if let Some(id) = name.strip_prefix(prefix).filter(|id| is_container_id(id)) {
                return found(id, runtime);
            }
        }
        if is_container_id(name) {
            let runtime = match parent {
                "docker" => "docker",
                "libpod_parent" | "machine.slice" => "podman",
                _ if cgroup_path.contains("kubepods") => "containerd",
                _ => "unknown",
            };
            return found(name, runtime);
        }
        parent = segment;
    }
    None
}

fn found(id: &str, runtime: &str) -> Option<Container> {
    Some(Container {
        id: id.to_owned(),
        runtime: runtime.to_owned(),
        name: None,
    })
}

/// Where the runtimes keep their containers' metadata.
#[derive(Clone, Debug)]
pub struct RuntimeRoots {
    /// Docker's data root: `<root>/containers/<id>/config.v2.json` has `"Name": "/web"`.
    pub docker: PathBuf,
    /// containerd's task state: `<root>/<namespace>/<id>/config.json` (the OCI spec) has the
    /// CRI annotation `io.kubernetes.cri.container-name`.
    pub containerd: PathBuf,
    /// CRI-O's: `<root>/<id>/userdata/config.json` has `io.kubernetes.container.name`.
    pub crio: PathBuf,
}

impl RuntimeRoots {
    /// The runtimes' default locations, with docker's at `docker`.
    pub fn with_docker(docker: PathBuf) -> Self {
        RuntimeRoots {
            docker,
            containerd: "/run/containerd/io.containerd.runtime.v2.task".into(),
            crio: "/run/containers/storage/overlay-containers".into(),
        }
    }
}

impl Default for RuntimeRoots {
    fn default() -> Self {
        RuntimeRoots::with_docker("/var/lib/docker".into())
    }
}

/// Container names by id, read once per container from its runtime's metadata. Only found
/// names are kept: a container whose metadata is not written yet is looked up again.
#[derive(Clone, Default)]
pub struct ContainerNames {
    roots: RuntimeRoots,
    cache: Arc<Mutex<HashMap<String, String>>>,
}

const MAX_CACHED_CONTAINERS: usize = 1024;

impl ContainerNames {
    pub fn new(roots: RuntimeRoots) -> Self {
        ContainerNames {
            roots,
            cache: Arc::default(),
        }
    }

    pub fn name(&self, c: &Container) -> Option<String> {
        if let Some(hit) = self.cache.lock().unwrap().get(&c.id) {
            return Some(hit.clone());
        }
        let name = self.read(c)?;
        let mut cache = self.cache.lock().unwrap();
        if cache.len() >= MAX_CACHED_CONTAINERS {
            cache.clear();
        }
        cache.insert(c.id.clone(), name.clone());
        Some(name)
    }

    fn read(&self, c: &Container) -> Option<String> {
        let r = &self.roots;
        match c.runtime.as_str() {
            "docker" => {
                #[derive(Deserialize)]
                struct Config {
                    #[serde(rename = "Name")]
                    name: String,
                }
                let file = r
                    .docker
                    .join("containers")
                    .join(&c.id)
                    .join("config.v2.json");
                let config: Config = serde_json::from_slice(&fs::read(file).ok()?).ok()?;
                let name = config.name.trim_start_matches('/');
                (!name.is_empty()).then(|| name.to_owned())
            }
            // The namespace (k8s.io for Kubernetes) is one directory level: any will do.
            "containerd" => fs::read_dir(&r.containerd).ok()?.flatten().find_map(|ns| {
                let file = ns.path().join(&c.id).join("config.json");
                oci_annotation(&file, "io.kubernetes.cri.container-name")
            }),
            "crio" => oci_annotation(
                &r.crio.join(&c.id).join("userdata/config.json"),
                "io.kubernetes.container.name",
            ),
            _ => None,
        }
    }
}

/// Annotation `key` of the OCI runtime spec in `file`.
fn oci_annotation(file: &Path, key: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Spec {
        #[serde(default)]
        annotations: HashMap<String, String>,
    }
    let mut spec: Spec = serde_json::from_slice(&fs::read(file).ok()?).ok()?;
    spec.annotations.remove(key).filter(|n| !n.is_empty())
}

fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// What `/proc` says about a process; cached so a busy process costs one read of `/proc`
/// rather than one per connection.
#[derive(Debug)]
struct ProcInfo {
    exe: Option<String>,
    cmdline: Vec<String>,
    cgroup: Option<String>,
}

/// A process seen before, with a pidfd that tells whether it still lives: while it does, its
/// pid names no other process, so a cache hit costs one `poll` instead of reading `/proc`.
struct CachedProcess {
    pidfd: OwnedFd,
    start_ns: u64,
    info: Arc<ProcInfo>,
}

type ProcessCache = HashMap<u32, CachedProcess>;

/// Resolves kernel records to identities.
#[derive(Clone, Default)]
pub struct IdentityResolver {
    processes: Arc<Mutex<ProcessCache>>,
    users: Arc<Mutex<HashMap<u32, Option<String>>>>,
    containers: ContainerNames,
}

/// Each cached process holds a pidfd, so the bound is also on descriptors.
pub const MAX_CACHED_PROCESSES: usize = 1024;

impl IdentityResolver {
    /// A resolver that finds container names under `roots`.
    pub fn new(roots: RuntimeRoots) -> Self {
        IdentityResolver {
            containers: ContainerNames::new(roots),
            ..IdentityResolver::default()
        }
    }

    /// `enrolled` is the cgroup of the enrollment that matched, searched for the caller's
    /// cgroup id when the process is already gone.
    pub fn resolve(&self, info: &ConnectInfo, enrolled: Option<&Cgroup>) -> Identity {
        let proc_info = self.proc_info(info.tgid, info.ktime_ns);
        let cgroup = proc_info
            .as_ref()
            .and_then(|p| p.cgroup.clone())
            .or_else(|| enrolled.and_then(|c| c.find_descendant(info.cgroup_id)));
        Identity {
            pid: info.tgid,
            tid: info.pid,
            uid: info.uid,
            gid: info.gid,
            user: self.user_name(info.uid),
            comm: nul_terminated(&info.comm),
            exe: proc_info.as_ref().and_then(|p| p.exe.clone()),
            cmdline: proc_info.map(|p| p.cmdline.clone()).unwrap_or_default(),
            container: cgroup.as_deref().and_then(container_of).map(|mut c| {
                c.name = self.containers.name(&c);
                c
            }),
            cgroup,
            cgroup_id: info.cgroup_id,
            netns_cookie: info.netns_cookie,
        }
    }

    fn proc_info(&self, pid: u32, connect_ktime_ns: u64) -> Option<Arc<ProcInfo>> {
        // A process that started after the connect is a newer process reusing the pid.
        let connected_first = |start_ns: u64| start_ns <= connect_ktime_ns;
        if let Some(hit) = self.processes.lock().unwrap().get(&pid)
            && is_alive(&hit.pidfd)
        {
            return connected_first(hit.start_ns).then(|| hit.info.clone());
        }
        // The pidfd first: if the process is still alive after /proc was read, what was read
        // is its own.
        let pidfd = pidfd_open(pid)?;
        let start_ns = start_time_ns(pid)?;
        if !connected_first(start_ns) {
            return None;
        }
        let info = Arc::new(ProcInfo {
            exe: fs::read_link(format!("/proc/{pid}/exe"))
                .ok()
                .map(|p| p.display().to_string()),
            cmdline: fs::read(format!("/proc/{pid}/cmdline"))
                .map(|raw| {
                    raw.split(|&b| b == 0)
                        .filter(|a| !a.is_empty())
                        .map(|a| String::from_utf8_lossy(a).into_owned())
                        .collect()
                })
                .unwrap_or_default(),
            cgroup: cgroup::relative_path_of_pid(pid),
        });
        if !is_alive(&pidfd) {
            return None;
        }
        let mut cache = self.processes.lock().unwrap();
        if cache.len() >= MAX_CACHED_PROCESSES {
            cache.retain(|_, p| is_alive(&p.pidfd));
            if cache.len() >= MAX_CACHED_PROCESSES {
                cache.clear();
            }
        }
        let cached = CachedProcess {
            pidfd,
            start_ns,
            info: info.clone(),
        };
        cache.insert(pid, cached);
        Some(info)
    }

    fn user_name(&self, uid: u32) -> Option<String> {
        let mut users = self.users.lock().unwrap();
        users
            .entry(uid)
            .or_insert_with(|| {
                nix::unistd::User::from_uid(uid.into())
                    .ok()
                    .flatten()
                    .map(|u| u.name)
            })
            .clone()
    }
}

fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    // SAFETY: a non-negative result is a descriptor nothing else owns.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// A pidfd becomes readable when its process exits.
pub(crate) fn is_alive(pidfd: &OwnedFd) -> bool {
    let mut poll = libc::pollfd {
        fd: pidfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no waiting.
    unsafe { libc::poll(&mut poll, 1, 0) == 0 }
}

/// Process start time in CLOCK_MONOTONIC nanoseconds (field 22 of `/proc/PID/stat`, in clock
/// ticks since boot). Monotonic and boot time agree unless the host suspended, in which case the
/// reuse check is merely lenient.
fn start_time_ns(pid: u32) -> Option<u64> {
    // One read into a stack buffer: this runs for every connection.
    let mut buf = [0u8; 1024];
    let n = std::io::Read::read(
        &mut fs::File::open(format!("/proc/{pid}/stat")).ok()?,
        &mut buf,
    )
    .ok()?;
    let stat = std::str::from_utf8(&buf[..n]).ok()?;
    // comm may contain spaces and parentheses: fields resume after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let ticks: u64 = rest.split(' ').nth(19)?.parse().ok()?;
    Some(ticks * (1_000_000_000 / clock_ticks_per_second()))
}

fn clock_ticks_per_second() -> u64 {
    static HZ: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *HZ.get_or_init(|| {
        nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .map_or(100, |hz| hz as u64)
    })
}

pub fn nul_terminated(raw: &[u8]) -> String {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn container_ids_by_runtime_naming() {
        let cases = [
            (format!("/system.slice/docker-{ID}.scope"), "docker"),
            (format!("/docker/{ID}"), "docker"),
            (
                format!("/kubepods.slice/kubepods-pod1.slice/cri-containerd-{ID}.scope"),
                "containerd",
            ),
            (format!("/kubepods/besteffort/pod1/{ID}"), "containerd"),
            (format!("/kubepods.slice/crio-{ID}.scope"), "crio"),
            (format!("/machine.slice/libpod-{ID}.scope"), "podman"),
            (format!("/test/docker-{ID}.scope/child"), "docker"),
        ];
        for (path, runtime) in cases {
            let c = container_of(&path).unwrap_or_else(|| panic!("no container in {path}"));
            assert_eq!((c.id.as_str(), c.runtime.as_str()), (ID, runtime), "{path}");
        }
    }

    #[test]
    fn container_names_from_runtime_metadata() {
        let root = tempfile::tempdir().unwrap();
        let roots = RuntimeRoots {
            docker: root.path().join("docker"),
            containerd: root.path().join("containerd"),
            crio: root.path().join("crio"),
        };
        let write = |path: PathBuf, json: &str| {
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, json).unwrap();
        };
        write(
            roots.docker.join(format!("containers/{ID}/config.v2.json")),
            r#"{"ID": "x", "Name": "/payments-api", "Config": {"Hostname": "h"}}"#,
        );
        // Ids are unique across runtimes (the cache is keyed by id alone).
        let (cri, crio) = ("c".repeat(64), "e".repeat(64));
        write(
            roots.containerd.join(format!("k8s.io/{cri}/config.json")),
            r#"{"ociVersion": "1.0", "annotations": {"io.kubernetes.cri.container-name": "agent"}}"#,
        );
        write(
            roots.crio.join(format!("{crio}/userdata/config.json")),
            r#"{"annotations": {"io.kubernetes.container.name": "sidecar"}}"#,
        );
        let names = ContainerNames::new(roots.clone());
        let container = |id: &str, runtime: &str| Container {
            id: id.into(),
            runtime: runtime.into(),
            name: None,
        };
        let name = |id: &str, runtime: &str| names.name(&container(id, runtime));
        assert_eq!(name(ID, "docker").as_deref(), Some("payments-api"));
        assert_eq!(name(&cri, "containerd").as_deref(), Some("agent"));
        assert_eq!(name(&crio, "crio").as_deref(), Some("sidecar"));
        assert_eq!(name(&"d".repeat(64), "docker"), None);
        assert_eq!(name(&"d".repeat(64), "podman"), None);
        // Found names are cached: the metadata going away does not change them.
        fs::remove_dir_all(&roots.docker).unwrap();
        assert_eq!(name(ID, "docker").as_deref(), Some("payments-api"));
        let uncached = ContainerNames::new(roots);
        assert_eq!(uncached.name(&container(ID, "docker")), None);
    }

    #[test]
    fn non_container_paths() {
        for path in [
            "/",
            "/user.slice/user-0.slice/session-1.scope",
            "/docker-123.scope",
            "/interceptor/exec-1",
        ] {
            assert_eq!(container_of(path), None, "{path}");
        }
    }

    #[test]
    fn resolves_own_process() {
        let me = std::process::id();
        let info = ConnectInfo {
            tgid: me,
            pid: me,
            uid: nix::unistd::getuid().as_raw(),
            ktime_ns: u64::MAX,
            comm: *b"tester\0\0\0\0\0\0\0\0\0\0",
            ..Default::default()
        };
        let id = IdentityResolver::default().resolve(&info, None);
        assert_eq!(id.comm, "tester");
        assert_eq!(
            id.exe.as_deref(),
            Some(std::env::current_exe().unwrap().to_str().unwrap())
        );
        assert!(!id.cmdline.is_empty());
        assert!(id.cgroup.is_some());
    }

    #[test]
    fn exited_process_keeps_kernel_fields_and_cgroup_path() {
        let own = Cgroup::of_pid(std::process::id()).unwrap();
        let info = ConnectInfo {
            tgid: u32::MAX - 1, // no such process: it "exited right after connect"
            pid: u32::MAX - 1,
            uid: 1234,
            gid: 5678,
            cgroup_id: own.id,
            ktime_ns: u64::MAX,
            comm: *b"gone\0\0\0\0\0\0\0\0\0\0\0\0",
            ..Default::default()
        };
        let id = IdentityResolver::default().resolve(&info, Some(&own));
        assert_eq!(
            (id.pid, id.uid, id.gid, id.comm.as_str()),
            (u32::MAX - 1, 1234, 5678, "gone")
        );
        assert_eq!((id.exe, id.cmdline.len()), (None, 0));
        assert_eq!(id.cgroup.as_deref(), Some(own.relative.as_str()));
    }

    #[test]
    fn reused_pid_is_not_trusted() {
        let me = std::process::id();
        let info = ConnectInfo {
            tgid: me,
            ktime_ns: 1,
            ..Default::default()
        };
        let id = IdentityResolver::default().resolve(&info, None);
        assert_eq!(id.exe, None);
        assert!(id.cmdline.is_empty());
    }

    #[test]
    fn cached_processes_are_checked_for_reuse_and_exit() {
        let resolver = IdentityResolver::default();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id();
        let info = |ktime_ns| ConnectInfo {
            tgid: pid,
            ktime_ns,
            ..Default::default()
        };
        let first = resolver.resolve(&info(u64::MAX), None);
        assert!(
            first.exe.as_deref().unwrap().ends_with("sleep"),
            "{first:?}"
        );
        // From the cache: still the same process, and still not trusted for a connect made
        // before it started.
        assert_eq!(resolver.resolve(&info(u64::MAX), None).exe, first.exe);
        assert_eq!(resolver.resolve(&info(1), None).exe, None);
        // Once it has exited, the cache does not answer for its pid any more.
        child.kill().unwrap();
        child.wait().unwrap();
        let gone = resolver.resolve(&info(u64::MAX), None);
        assert_eq!((gone.exe, gone.cmdline.len()), (None, 0));
    }
}
