//! Types shared by the eBPF programs and the daemon.
//!
//! Every type here is `#[repr(C)]`, has no implicit padding (padding is spelled out so that
//! hash-map keys compare byte for byte), and is plain old data on both sides.
//! Addresses are always 16 bytes: IPv4 is stored as the v4-mapped IPv6 form `::ffff:a.b.c.d`,
//! so one map and one LPM trie serve both families.
#![no_std]

/// Names of the maps and programs in the object file; the daemon looks them up by these names
/// and pins them under its bpffs directory with the same names.
pub mod names {
    pub const CONFIG: &str = "CONFIG";
    pub const ENROLLMENTS: &str = "ENROLLMENTS";
    pub const SELECT: &str = "SELECT";
    pub const DENY: &str = "DENY";
    pub const PENDING: &str = "PENDING";
    pub const ORIGINAL_DST: &str = "ORIGINAL_DST";
    pub const DENIED_EVENTS: &str = "DENIED_EVENTS";
    pub const NO_PROXY: &str = "NO_PROXY";
    pub const PROG_CONNECT4: &str = "connect4";
    pub const PROG_CONNECT6: &str = "connect6";
    pub const PROG_SOCK_OPS: &str = "sock_ops";
}

/// How many ports one [`PortSet`] holds.
pub const MAX_PORTS: usize = 16;
/// Deepest cgroup level the programs walk when looking for the enrolled ancestor.
pub const MAX_CGROUP_DEPTH: u32 = 24;
/// Capacity of the connect-time record maps (LRU: the oldest unclaimed records go first).
pub const MAX_TRACKED_CONNECTIONS: u32 = 65_536;
/// Capacity of the SELECT and DENY tries.
pub const MAX_CIDR_RULES: u32 = 4_096;
/// Capacity of the ENROLLMENTS map.
pub const MAX_ENROLLMENTS: u32 = 1_024;

/// `Enrollment::flags`: also intercept loopback destinations (other than the proxy itself).
pub const FLAG_INCLUDE_LOOPBACK: u32 = 1;

/// Global settings, index 0 of the `CONFIG` array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// The daemon's process id: its own sockets are never redirected.
    pub daemon_tgid: u32,
    /// `SO_MARK` the daemon puts on its own sockets. A connecting socket with it is never
    /// redirected, and connections are redirected only to a listener that carries it.
    pub bypass_mark: u32,
}

/// Settings of one enrolled cgroup; `ENROLLMENTS` maps a cgroup id (its inode number on the
/// cgroup2 mount) to this.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Enrollment {
    /// The daemon's id for the enrollment; also the first 4 bytes of every CIDR key.
    pub id: u32,
    /// `FLAG_*` bits.
    pub flags: u32,
    /// Port of the proxy listener (host byte order) on 127.0.0.1 and ::1 in the workload's
    /// network namespace.
    pub proxy_port: u16,
    pub _pad: [u8; 6],
}

/// Data part of an LPM-trie key in `SELECT` and `DENY`. The prefix length counts the 32 bits
/// of `enrollment` first: an IPv4 /n is `32 + 96 + n`, an IPv6 /n is `32 + n`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CidrKey {
    /// Enrollment id, big-endian, so that it is the leading bits of the key.
    pub enrollment: [u8; 4],
    /// Address, IPv4 in v4-mapped form.
    pub addr: [u8; 16],
}

/// Ports a CIDR rule applies to; `count == 0` means every port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortSet {
    pub count: u32,
    /// Host byte order; only the first `count` are meaningful.
    pub ports: [u16; MAX_PORTS],
}

impl PortSet {
    pub fn contains(&self, port: u16) -> bool {
        if self.count == 0 {
            return true;
        }
        let mut i = 0;
        while i < MAX_PORTS {
            if (i as u32) < self.count && self.ports[i] == port {
                return true;
            }
            i += 1;
        }
        false
    }
}

/// Key of `ORIGINAL_DST`: the redirected client's source address as the proxy sees it when it
/// accepts, in the network namespace the connection was made in.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ConnKey {
    pub netns_cookie: u64,
    /// Client source address, IPv4 in v4-mapped form.
    pub addr: [u8; 16],
    /// Client source port, host byte order.
    pub port: u16,
    pub _pad: [u8; 6],
}

/// What the kernel knew at `connect()`: the caller and the original destination.
/// Stored per redirected socket, and sent on `DENIED_EVENTS` for a kernel denial.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnectInfo {
    /// Original destination address, IPv4 in v4-mapped form.
    pub dst_addr: [u8; 16],
    /// Original destination port, host byte order.
    pub dst_port: u16,
    /// Address family of the socket that connected (`AF_INET` = 2, `AF_INET6` = 10).
    pub family: u16,
    /// Process id (thread group id) of the caller.
    pub tgid: u32,
    /// Thread id of the caller.
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
    /// Enrollment id that matched.
    pub enrollment: u32,
    /// Cgroup id of the caller's own cgroup.
    pub cgroup_id: u64,
    pub netns_cookie: u64,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) at connect.
    pub ktime_ns: u64,
    /// Thread name, NUL-padded.
    pub comm: [u8; 16],
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are repr(C), Copy, with explicit padding and no pointers.
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::Enrollment {}
    unsafe impl aya::Pod for super::CidrKey {}
    unsafe impl aya::Pod for super::PortSet {}
    unsafe impl aya::Pod for super::ConnKey {}
    unsafe impl aya::Pod for super::ConnectInfo {}
}
