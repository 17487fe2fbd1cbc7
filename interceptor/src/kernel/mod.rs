//! Kernel side, seen from userspace: loads the embedded eBPF object, pins it, attaches it to
//! enrolled cgroups, and reads what the programs recorded.
//!
//! Layout under the pin directory (on bpffs):
//! - `<MAP NAME>`: every map of the object, reused by the next load (enrollments and in-flight
//!   records survive a daemon restart);
//! - `links/<enrollment id>/{connect4,connect6,sock_ops}`: the cgroup attachments, which stay
//!   in place after the daemon exits and until [`Kernel::unenroll`].

mod rules;
mod sys;
#[cfg(test)]
mod tests;

use std::{
    fs::{self, File},
    io,
    os::{fd::AsFd as _, unix::fs::MetadataExt as _},
    path::{Path, PathBuf},
    sync::Arc,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, LpmTrie, MapData, MapError, PerCpuArray, RingBuf},
    programs::{
        CgroupAttachMode, CgroupSockAddr, ProgramError, SockOps,
        links::{FdLink, LinkError, PinnedLink},
    },
};
use aya_log::EbpfLogger;
use interceptor_ebpf::{
    CidrKey, Config, ConnKey, ConnectInfo, Enrollment, FLAG_INCLUDE_LOOPBACK, PortSet, names,
};
use ipnet::IpNet;
use tokio::{io::unix::AsyncFd, task::AbortHandle};

/// The eBPF object built by `build.rs`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/interceptor-ebpf"));

/// Attach flags for our cgroup links. bpf_link cgroup attachments always behave as
/// ALLOW_MULTI (they coexist with other programs of the cgroup and its ancestors), and the
/// kernel rejects `BPF_F_ALLOW_MULTI` in `link_create` with EINVAL, so the mode must be 0.
const LINK_MODE: CgroupAttachMode = CgroupAttachMode::Single;

/// The programs attached to every enrolled cgroup, in the order of [`Kernel::enroll`]'s ids.
const PROGRAMS: [&str; 3] = [
    names::PROG_CONNECT4,
    names::PROG_CONNECT6,
    names::PROG_SOCK_OPS,
];

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("mounting bpffs at {}: {source}", sys::BPFFS)]
    MountBpffs { source: nix::Error },
    #[error("pin directory {0}: not on a bpf file system")]
    NotBpffs(PathBuf),
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("loading the eBPF object (maps pinned in {}): {source}", pin_dir.display())]
    Load {
        pin_dir: PathBuf,
        source: Box<aya::EbpfError>,
    },
    #[error("the eBPF object has no {kind} {name}")]
    Missing {
        kind: &'static str,
        name: &'static str,
    },
    #[error("eBPF program {name}: {source}")]
    Program {
        name: &'static str,
        source: Box<ProgramError>,
    },
    #[error("eBPF map {name}: {source}")]
    Map {
        name: &'static str,
        source: Box<MapError>,
    },
    #[error("eBPF link {}: {source}", path.display())]
    Link {
        path: PathBuf,
        source: Box<LinkError>,
    },
    #[error("pinning eBPF link at {}: {source}", path.display())]
    PinLink {
        path: PathBuf,
        source: Box<aya::pin::PinError>,
    },
    #[error("starting the eBPF log reader: {0}")]
    Logger(#[source] Box<aya_log::Error>),
    #[error("{count} ports given, at most {max} fit a rule")]
    TooManyPorts { count: usize, max: usize },
    #[error("rule {net}: {count} ports given, at most {max} fit a rule")]
    RuleTooManyPorts {
        net: String,
        count: usize,
        max: usize,
    },
    #[error("cgroup {}: its id is {found}, not {expected}", path.display())]
    CgroupIdMismatch {
        path: PathBuf,
        expected: u64,
        found: u64,
    },
    #[error("the denied-events stream was already taken")]
    DeniedEventsTaken,
    #[error("{0} needs a tokio runtime")]
    NoRuntime(&'static str),
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> KernelError {
    let path = path.to_path_buf();
    move |source| KernelError::Io { what, path, source }
}

fn map_err(name: &'static str) -> impl FnOnce(MapError) -> KernelError {
    move |e| KernelError::Map {
        name,
        source: Box::new(e),
    }
}

fn prog_err(name: &'static str) -> impl FnOnce(ProgramError) -> KernelError {
    move |e| KernelError::Program {
        name,
        source: Box::new(e),
    }
}

fn missing(kind: &'static str, name: &'static str) -> KernelError {
    KernelError::Missing { kind, name }
}

/// A missing key is not an error when deleting.
fn ignore_missing(r: Result<(), MapError>) -> Result<(), MapError> {
    match r {
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        r => r,
    }
}

/// A destination rule: a network and the ports it applies to (empty = every port).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CidrRule {
    pub net: IpNet,
    pub ports: Vec<u16>,
}

/// What the kernel needs to know about one enrollment.
#[derive(Clone, Debug)]
pub struct KernelEnrollment {
    pub id: u32,
    /// Absolute path of the cgroup2 directory.
    pub cgroup_path: PathBuf,
    /// Inode number of that directory (the cgroup id); 0 when unknown (for `unenroll` of a
    /// cgroup that is gone).
    pub cgroup_id: u64,
    pub proxy_port: u16,
    pub include_loopback: bool,
    /// Destinations to redirect; empty = every destination.
    pub select: Vec<CidrRule>,
    /// Destinations whose connect() fails with EPERM.
    pub deny: Vec<CidrRule>,
}

type Trie = LpmTrie<MapData, CidrKey, PortSet>;

/// The loaded programs and their maps.
pub struct Kernel {
    ebpf: Ebpf,
    pin_dir: PathBuf,
    enrollments: HashMap<MapData, u64, Enrollment>,
    select: Trie,
    deny: Trie,
    original_dst: OriginalDstTable,
    no_proxy: NoProxyCount,
    denied: Option<RingBuf<MapData>>,
    /// Forwards aya-log records; aborted on drop.
    log_task: Option<AbortHandle>,
    /// The aya-log reader, kept unread when there was no tokio runtime to poll it (its ring
    /// buffer must stay open). Type-erased so that we need not name the `log` crate.
    _idle_logger: Option<Box<dyn std::any::Any + Send>>,
}

impl Kernel {
    /// Mounts bpffs if needed, loads the programs with their maps pinned in `pin_dir` (reusing
    /// maps pinned there before), and writes `config`. eBPF log lines are forwarded to the
    /// `log` facade by a task on the current tokio runtime, when there is one.
    pub fn load(pin_dir: &Path, config: Config) -> Result<Kernel, KernelError> {
        sys::ensure_bpffs().map_err(|source| KernelError::MountBpffs { source })?;
        fs::create_dir_all(pin_dir).map_err(io_err("creating", pin_dir))?;
        if !sys::is_bpffs(pin_dir).map_err(|e| io_err("statfs", pin_dir)(e.into()))? {
            return Err(KernelError::NotBpffs(pin_dir.to_path_buf()));
        }
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(pin_dir)
            .load(OBJECT)
            .map_err(|e| KernelError::Load {
                pin_dir: pin_dir.to_path_buf(),
                source: Box::new(e),
            })?;

        // The log map must stay open until the programs using it are loaded.
        let logger = EbpfLogger::init(&mut ebpf).map_err(|e| KernelError::Logger(Box::new(e)))?;
        for name in PROGRAMS {
            let prog = ebpf.program_mut(name).ok_or(missing("program", name))?;
            let loaded = match name {
                names::PROG_SOCK_OPS => <&mut SockOps>::try_from(prog).and_then(|p| p.load()),
                _ => <&mut CgroupSockAddr>::try_from(prog).and_then(|p| p.load()),
            };
            loaded.map_err(prog_err(name))?;
        }

        let mut config_map: Array<MapData, Config> = take_map(&mut ebpf, names::CONFIG)?;
        config_map
            .set(0, config, 0)
            .map_err(map_err(names::CONFIG))?;
        // Forward eBPF log records to the `log` facade from a task on the current runtime.
        let (log_task, idle_logger) = match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let _enter = runtime.enter();
                let mut fd =
                    async_readable(logger).map_err(io_err("polling", &pin_dir.join("AYA_LOGS")))?;
                let task = runtime.spawn(async move {
                    while let Ok(mut guard) = fd.readable_mut().await {
                        guard.get_inner_mut().flush();
                        guard.clear_ready();
                    }
                });
                (Some(task.abort_handle()), None)
            }
            Err(_) => {
                tracing::debug!("no tokio runtime: eBPF log lines are not forwarded");
                (
                    None,
                    Some(Box::new(logger) as Box<dyn std::any::Any + Send>),
                )
            }
        };
        Ok(Kernel {
            enrollments: take_map(&mut ebpf, names::ENROLLMENTS)?,
            select: take_map(&mut ebpf, names::SELECT)?,
            deny: take_map(&mut ebpf, names::DENY)?,
            original_dst: OriginalDstTable::take_from(&mut ebpf)?,
            no_proxy: NoProxyCount(Arc::new(take_map(&mut ebpf, names::NO_PROXY)?)),
            denied: Some(take_map(&mut ebpf, names::DENIED_EVENTS)?),
            ebpf,
            pin_dir: pin_dir.to_path_buf(),
            log_task,
            _idle_logger: idle_logger,
        })
    }

    /// Attaches the programs to the enrollment's cgroup (pinned links, so they outlive the
    /// daemon) and writes its map entries. Idempotent: links already pinned for this id and
    /// attached to this cgroup are kept (also those of a previous daemon), only the map
    /// entries are refreshed. Returns the attached program ids (connect4, connect6, sock_ops).
    pub fn enroll(&mut self, e: &KernelEnrollment) -> Result<Vec<u32>, KernelError> {
        // The programs know cgroups by id: make sure it is this directory's before writing.
        let cgroup =
            File::open(&e.cgroup_path).map_err(io_err("opening cgroup", &e.cgroup_path))?;
        let ino = cgroup
            .metadata()
            .map_err(io_err("stat", &e.cgroup_path))?
            .ino();
        if ino != e.cgroup_id {
            return Err(KernelError::CgroupIdMismatch {
                path: e.cgroup_path.clone(),
                expected: e.cgroup_id,
                found: ino,
            });
        }
        // Rules first, so that the programs act correctly from their first run. New entries
        // are written before stale ones are removed, so a refresh never opens a gap in DENY.
        let select = rules::trie_entries(e.id, &e.select, true)?;
        let deny = rules::trie_entries(e.id, &e.deny, false)?;
        replace_entries(&mut self.select, names::SELECT, e.id, &select)?;
        replace_entries(&mut self.deny, names::DENY, e.id, &deny)?;
        let value = Enrollment {
            id: e.id,
            flags: if e.include_loopback {
                FLAG_INCLUDE_LOOPBACK
            } else {
                0
            },
            proxy_port: e.proxy_port,
            _pad: [0; 6],
        };
        self.enrollments
            .insert(e.cgroup_id, value, 0)
            .map_err(map_err(names::ENROLLMENTS))?;
        // The same enrollment under another cgroup id (its cgroup was recreated) is stale.
        self.remove_enrollment_entries(e.id, Some(e.cgroup_id))?;

        let dir = self.links_dir(e.id);
        fs::create_dir_all(&dir).map_err(io_err("creating", &dir))?;
        PROGRAMS
            .iter()
            .map(|name| self.attach_pinned(name, &cgroup, e.cgroup_id, &dir.join(name)))
            .collect()
    }

    /// Detaches the enrollment's programs (also links pinned by a previous daemon) and removes
    /// its map entries. Works with `cgroup_id == 0` (cgroup gone); missing pieces are fine.
    pub fn unenroll(&mut self, e: &KernelEnrollment) -> Result<(), KernelError> {
        let dir = self.links_dir(e.id);
        for name in PROGRAMS {
            unpin_link(&dir.join(name))?;
        }
        match fs::remove_dir(&dir) {
            Err(err) if err.kind() != io::ErrorKind::NotFound => {
                return Err(io_err("removing", &dir)(err));
            }
            _ => {}
        }
        self.remove_enrollment_entries(e.id, None)?;
        replace_entries(&mut self.select, names::SELECT, e.id, &[])?;
        replace_entries(&mut self.deny, names::DENY, e.id, &[])
    }

    /// Handle on the redirected connections' original destinations.
    pub fn original_dst(&self) -> OriginalDstTable {
        self.original_dst.clone()
    }

    /// Handle on the count of connects refused because the daemon's listener was not there.
    pub fn no_proxy(&self) -> NoProxyCount {
        self.no_proxy.clone()
    }

    /// The stream of connects denied in the kernel. Can be taken once; needs a tokio runtime.
    pub fn take_denied_events(&mut self) -> Result<DeniedEvents, KernelError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(KernelError::NoRuntime("reading denied events"));
        }
        let ring = self.denied.take().ok_or(KernelError::DeniedEventsTaken)?;
        let fd = async_readable(ring)
            .map_err(io_err("polling", &self.pin_dir.join(names::DENIED_EVENTS)))?;
        Ok(DeniedEvents(fd))
    }

    /// Kernel ids of this instance's programs (connect4, connect6, sock_ops). Cgroups enrolled
    /// by a previous daemon keep running that daemon's programs; [`Kernel::enroll`] reports
    /// the ids actually attached.
    #[cfg(test)]
    pub fn program_ids(&self) -> Result<Vec<u32>, KernelError> {
        PROGRAMS
            .iter()
            .map(|&name| {
                let prog = self.ebpf.program(name).ok_or(missing("program", name))?;
                Ok(prog.info().map_err(prog_err(name))?.id())
            })
            .collect()
    }

    /// Removes `pin_dir` and everything pinned in it: all pinned links are detached and the
    /// maps are freed once no program uses them. For a clean shutdown that should not survive
    /// (tests); a missing directory is fine.
    #[cfg(test)]
    pub fn remove_pins(pin_dir: &Path) -> Result<(), KernelError> {
        match fs::remove_dir_all(pin_dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("removing", pin_dir)(e)),
            _ => Ok(()),
        }
    }

    fn links_dir(&self, id: u32) -> PathBuf {
        self.pin_dir.join("links").join(id.to_string())
    }

    /// Attaches program `name` to `cgroup` and pins the link at `path`. A link pinned there
    /// that is attached to this cgroup is kept, and switched to this instance's program if it
    /// runs another (a previous daemon's, maybe an older version without today's checks).
    /// Returns the attached program id.
    fn attach_pinned(
        &mut self,
        name: &'static str,
        cgroup: &File,
        cgroup_id: u64,
        path: &Path,
    ) -> Result<u32, KernelError> {
        let prog = self
            .ebpf
            .program_mut(name)
            .ok_or(missing("program", name))?;
        let prog_id = prog.info().map_err(prog_err(name))?.id();
        if path.exists() {
            match sys::pinned_cgroup_link_info(path) {
                Ok(info) if info.cgroup_id == cgroup_id => {
                    if info.prog_id != prog_id {
                        let fd = prog.fd().map_err(prog_err(name))?.as_fd();
                        sys::update_pinned_link(path, fd).map_err(io_err("updating link", path))?;
                    }
                    return Ok(prog_id);
                }
                // Attached to a cgroup that is gone (or unreadable): replace it.
                _ => unpin_link(path)?,
            }
        }
        let link: FdLink = match name {
            names::PROG_SOCK_OPS => {
                let p = <&mut SockOps>::try_from(prog).map_err(prog_err(name))?;
                let id = p.attach(cgroup, LINK_MODE).map_err(prog_err(name))?;
                p.take_link(id).map_err(prog_err(name))?.try_into()
            }
            _ => {
                let p = <&mut CgroupSockAddr>::try_from(prog).map_err(prog_err(name))?;
                let id = p.attach(cgroup, LINK_MODE).map_err(prog_err(name))?;
                p.take_link(id).map_err(prog_err(name))?.try_into()
            }
        }
        .map_err(|e| KernelError::Link {
            path: path.to_path_buf(),
            source: Box::new(e),
        })?;
        // Dropping the returned PinnedLink only closes our fd; the pin keeps it attached.
        link.pin(path).map_err(|e| KernelError::PinLink {
            path: path.to_path_buf(),
            source: Box::new(e),
        })?;
        Ok(prog_id)
    }

    /// Removes ENROLLMENTS entries of enrollment `id`, except the one under `keep`.
    fn remove_enrollment_entries(&mut self, id: u32, keep: Option<u64>) -> Result<(), KernelError> {
        let stale: Vec<u64> = self
            .enrollments
            .iter()
            .filter_map(Result::ok)
            .filter(|(cgroup_id, v)| v.id == id && Some(*cgroup_id) != keep)
            .map(|(cgroup_id, _)| cgroup_id)
            .collect();
        for cgroup_id in stale {
            ignore_missing(self.enrollments.remove(&cgroup_id))
                .map_err(map_err(names::ENROLLMENTS))?;
        }
        Ok(())
    }
}

impl Drop for Kernel {
    fn drop(&mut self) {
        if let Some(task) = &self.log_task {
            task.abort();
        }
    }
}

/// Registers `inner` with the tokio reactor for readability.
fn async_readable<T: std::os::fd::AsRawFd>(inner: T) -> io::Result<AsyncFd<T>> {
    // SAFETY: used for aya's RingBuf and EbpfLogger, which own their map fd until dropped
    // and always return that same fd.
    unsafe { AsyncFd::register_with_interest(inner, tokio::io::Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
}

fn take_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, KernelError>
where
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    let map = ebpf.take_map(name).ok_or(missing("map", name))?;
    T::try_from(map).map_err(map_err(name))
}

/// Removes the link pinned at `path`; dropping the last fd detaches it. Missing is fine.
fn unpin_link(path: &Path) -> Result<(), KernelError> {
    if !path.exists() {
        return Ok(());
    }
    let link = PinnedLink::from_pin(path).map_err(|e| KernelError::Link {
        path: path.to_path_buf(),
        source: Box::new(e),
    })?;
    link.unpin().map_err(io_err("unpinning link", path))?;
    Ok(())
}

/// Makes `entries` the only entries of enrollment `id` in `trie`.
fn replace_entries(
    trie: &mut Trie,
    name: &'static str,
    id: u32,
    entries: &[(aya::maps::lpm_trie::Key<CidrKey>, PortSet)],
) -> Result<(), KernelError> {
    for (key, ports) in entries {
        trie.insert(key, ports, 0).map_err(map_err(name))?;
    }
    let wanted = |k: &aya::maps::lpm_trie::Key<CidrKey>| {
        entries
            .iter()
            .any(|(e, _)| e.prefix_len() == k.prefix_len() && e.data() == k.data())
    };
    let stale: Vec<_> = trie
        .keys()
        .filter_map(Result::ok)
        .filter(|k| k.data().enrollment == id.to_be_bytes() && !wanted(k))
        .collect();
    for key in stale {
        ignore_missing(trie.remove(&key)).map_err(map_err(name))?;
    }
    Ok(())
}

/// Original destinations of redirected connections, keyed by the client's address as the
/// proxy sees it. Cheap to clone; shareable between threads without a lock.
#[derive(Clone)]
pub struct OriginalDstTable(Arc<MapData>);

impl OriginalDstTable {
    fn take_from(ebpf: &mut Ebpf) -> Result<OriginalDstTable, KernelError> {
        let name = names::ORIGINAL_DST;
        let map = ebpf.take_map(name).ok_or(missing("map", name))?;
        // Typed once to check the kind and the key and value sizes; used raw afterwards, since
        // aya's HashMap has no lookup-and-delete.
        HashMap::<&MapData, ConnKey, ConnectInfo>::try_from(&map).map_err(map_err(name))?;
        match map {
            aya::maps::Map::HashMap(data) | aya::maps::Map::LruHashMap(data) => {
                Ok(OriginalDstTable(Arc::new(data)))
            }
            _ => unreachable!("try_from accepted only hash maps"),
        }
    }

    /// Takes the record of a connection (one syscall, on the accept path of every
    /// connection); None when the kernel has none.
    pub fn take(&self, key: &ConnKey) -> Option<ConnectInfo> {
        sys::map_lookup(self.0.fd().as_fd(), key, true)
    }

    #[cfg(test)]
    fn peek(&self, key: &ConnKey) -> Option<ConnectInfo> {
        sys::map_lookup(self.0.fd().as_fd(), key, false)
    }
}

/// How many connects of enrolled workloads the kernel refused because the socket listening at
/// the proxy address was not the daemon's (the daemon was down or restarting): counted since
/// the maps were pinned, so across restarts. Cheap to clone.
#[derive(Clone)]
pub struct NoProxyCount(Arc<PerCpuArray<MapData, u64>>);

impl NoProxyCount {
    pub fn get(&self) -> Result<u64, KernelError> {
        let per_cpu = self.0.get(&0, 0).map_err(map_err(names::NO_PROXY))?;
        Ok(per_cpu.iter().sum())
    }
}

/// Connects denied in the kernel (DENY rules), oldest first.
pub struct DeniedEvents(AsyncFd<RingBuf<MapData>>);

impl DeniedEvents {
    /// The next denied connect; None if the ring buffer can no longer be polled.
    pub async fn next(&mut self) -> Option<ConnectInfo> {
        loop {
            let mut guard = self.0.readable_mut().await.ok()?;
            while let Some(item) = guard.get_inner_mut().next() {
                if item.len() >= size_of::<ConnectInfo>() {
                    // SAFETY: ConnectInfo is plain old data; the item holds enough bytes and
                    // read_unaligned makes no alignment assumption.
                    return Some(unsafe { item.as_ptr().cast::<ConnectInfo>().read_unaligned() });
                }
            }
            guard.clear_ready();
        }
    }
}
