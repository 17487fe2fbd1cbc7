//! Network namespaces and veth links for test hosts.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::process::Command;

use anyhow::Result;

use crate::proc::sh;
use crate::util::next_id;

/// A named network namespace (`ip netns add itest-<pid>-<n>`) with `lo` up.
/// Drop deletes it (`ip netns del`).
pub struct Netns {
    name: String,
}

impl Netns {
    pub fn new() -> Result<Netns> {
        let name = format!("itest-{}-{}", std::process::id(), next_id());
        sh(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`, the path `enroll --netns` takes.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// `ip -n <name> ARGS…`
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        sh(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// A command that runs `program` inside the namespace (`ip netns exec <name> program`;
    /// `ip` execs it, so the pid is the program's).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = sh(Command::new("ip").args(["netns", "del", &self.name])) {
            eprintln!("warning: ip netns del {} failed: {e:#}", self.name);
        }
    }
}

/// A veth pair between side `a` (a namespace, or the host for `None`) and namespace `b`,
/// both ends up, with IPv4 `10.2xx.y.1/24` / `.2/24` and IPv6 ULA `fd00:…::1/64` / `::2/64`
/// (`nodad`, usable at once). Drop deletes the pair.
pub struct VethLink {
    a_ns: Option<String>,
    pub a_if: String,
    pub b_if: String,
    pub a_v4: Ipv4Addr,
    pub b_v4: Ipv4Addr,
    pub a_v6: Ipv6Addr,
    pub b_v6: Ipv6Addr,
}

fn ip_in(ns: Option<&str>, args: &[&str]) -> Result<String> {
    let mut c = Command::new("ip");
    if let Some(ns) = ns {
        c.args(["-n", ns]);
    }
    sh(c.args(args))
}

/// Makes a veth link between `a` (None = the host) and `b`. See [`VethLink`].
pub fn veth(a: Option<&Netns>, b: &Netns) -> Result<VethLink> {
    let pid = std::process::id();
    let k = next_id();
    // Interface names are at most 15 bytes.
    let a_if = format!("iv{}{}a", pid % 100_000, k % 1000);
    let b_if = format!("iv{}{}b", pid % 100_000, k % 1000);
    let o2 = 200 + (pid % 50) as u8;
    let o3 = (k % 256) as u8;
    let a_v4 = Ipv4Addr::new(10, o2, o3, 1);
    let b_v4 = Ipv4Addr::new(10, o2, o3, 2);
    let g = (pid % 0xffff) as u16;
    let s = (k % 0xffff) as u16;
    let a_v6 = Ipv6Addr::new(0xfd00, g, s, 0, 0, 0, 0, 1);
    let b_v6 = Ipv6Addr::new(0xfd00, g, s, 0, 0, 0, 0, 2);
    let a_ns = a.map(|n| n.name().to_string());
    ip_in(
        a_ns.as_deref(),
        &[
            "link",
            "add",
            &a_if,
            "type",
            "veth",
            "peer",
            "name",
            &b_if,
            "netns",
            b.name(),
        ],
    )?;
    let link = VethLink {
        a_ns,
        a_if,
        b_if,
        a_v4,
        b_v4,
        a_v6,
        b_v6,
    };
    let an = link.a_ns.as_deref();
    let bn = Some(b.name());
    ip_in(
        an,
        &["addr", "add", &format!("{a_v4}/24"), "dev", &link.a_if],
    )?;
    ip_in(
        an,
        &[
            "addr",
            "add",
            &format!("{a_v6}/64"),
            "dev",
            &link.a_if,
            "nodad",
        ],
    )?;
    ip_in(an, &["link", "set", &link.a_if, "up"])?;
    ip_in(
        bn,
        &["addr", "add", &format!("{b_v4}/24"), "dev", &link.b_if],
    )?;
    ip_in(
        bn,
        &[
            "addr",
            "add",
            &format!("{b_v6}/64"),
            "dev",
            &link.b_if,
            "nodad",
        ],
    )?;
    ip_in(bn, &["link", "set", &link.b_if, "up"])?;
    Ok(link)
}

impl Drop for VethLink {
    fn drop(&mut self) {
        // Gone already when its namespace was deleted first; that is fine.
        let _ = ip_in(self.a_ns.as_deref(), &["link", "del", &self.a_if]);
    }
}
