//! Which deny rules the kernel can enforce: those that name destinations only by address and
//! port (and optionally the enrollment), and that no earlier rule with another action could
//! pre-empt. They become DENY entries of every (matching) enrollment, so a denied workload's
//! connect() fails with EPERM and never reaches userspace. Every other deny rule is enforced
//! by the proxy.

use ipnet::{IpNet, Ipv6Net};
use serde::Serialize;

use super::model::{Action, GlobField, Policy, Rule};

/// A destination the kernel refuses: a network and its ports (empty: every port). The
/// daemon turns these into the kernel's DENY rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DenyNet {
    pub net: IpNet,
    pub ports: Vec<u16>,
}

/// A deny rule the kernel enforces.
#[derive(Clone, Debug)]
pub struct KernelDeny {
    pub rule: usize,
    pub nets: Vec<DenyNet>,
}

/// Why a deny rule is left to the proxy (shown by `policy check`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "why")]
pub enum ProxyOnly {
    /// It has conditions the kernel cannot see (identity, host, HTTP), or no address.
    NotByAddress,
    /// An earlier rule with another action may match the same destinations first.
    Preempted { by: String },
    /// More ports than a kernel rule holds.
    TooManyPorts,
}

/// Address-only conditions: addresses, ports and the enrollment name.
fn by_address(rule: &Rule) -> bool {
    let w = &rule.when;
    !w.cidr.is_empty()
        && w.uid.is_empty()
        && !w.is_http()
        && GlobField::ALL
            .iter()
            .all(|&f| f == GlobField::Enrollment || w.globs(f).is_empty())
}

/// Both families in one space (IPv4 as v4-mapped IPv6), as the kernel keys them.
fn mapped(net: &IpNet) -> Ipv6Net {
    match net {
        IpNet::V4(n) => Ipv6Net::new(n.addr().to_ipv6_mapped(), 96 + n.prefix_len())
            .expect("a v4 prefix plus 96 fits"),
        IpNet::V6(n) => *n,
    }
}

fn nets_overlap(a: &IpNet, b: &IpNet) -> bool {
    let (a, b) = (mapped(a), mapped(b));
    a.contains(&b.network()) || b.contains(&a.network())
}

/// Whether `earlier` may match some connection that `deny` matches, judging by address and
/// port only (its other conditions may hold for some workload).
fn may_overlap(earlier: &Rule, deny: &Rule) -> bool {
    let (e, d) = (&earlier.when, &deny.when);
    let nets = e.cidr.is_empty()
        || e.cidr
            .iter()
            .any(|a| d.cidr.iter().any(|b| nets_overlap(a, b)));
    let ports = e.port.is_empty() || d.port.is_empty() || e.port.iter().any(|p| d.port.contains(p));
    nets && ports
}

/// Why rule `i` is not enforced in the kernel; None when it is (or is not a deny rule).
pub fn proxy_only(rules: &[Rule], i: usize) -> Option<ProxyOnly> {
    let rule = &rules[i];
    if rule.outcome.action != Action::Deny {
        return None;
    }
    if !by_address(rule) {
        return Some(ProxyOnly::NotByAddress);
    }
    if rule.when.port.len() > interceptor_ebpf::MAX_PORTS {
        return Some(ProxyOnly::TooManyPorts);
    }
    rules[..i]
        .iter()
        .find(|e| e.outcome.action != Action::Deny && may_overlap(e, rule))
        .map(|e| ProxyOnly::Preempted { by: e.name.clone() })
}

pub fn deny_entries(rules: &[Rule]) -> Vec<KernelDeny> {
    (0..rules.len())
        .filter(|&i| rules[i].outcome.action == Action::Deny && proxy_only(rules, i).is_none())
        .map(|i| KernelDeny {
            rule: i,
            nets: rules[i]
                .when
                .cidr
                .iter()
                .map(|&net| DenyNet {
                    net,
                    ports: rules[i].when.port.clone(),
                })
                .collect(),
        })
        .collect()
}

impl Policy {
    /// Kernel DENY entries for an enrollment named `enrollment` (deny rules with an
    /// enrollment condition apply only to enrollments whose name matches).
    pub fn kernel_denies(&self, enrollment: Option<&str>) -> Vec<DenyNet> {
        self.kernel
            .iter()
            .filter(|k| {
                let names = self.rules[k.rule].when.globs(GlobField::Enrollment);
                names.is_empty()
                    || enrollment.is_some_and(|n| names.iter().any(|p| p.matcher.is_match(n)))
            })
            .flat_map(|k| k.nets.iter().cloned())
            .collect()
    }

    /// Whether rule `i` is enforced in the kernel for some enrollment.
    pub fn in_kernel(&self, i: usize) -> bool {
        self.kernel.iter().any(|k| k.rule == i)
    }

    /// Why deny rule `i` is left to the proxy; None when the kernel enforces it or it is not
    /// a deny rule.
    pub fn proxy_only(&self, i: usize) -> Option<ProxyOnly> {
        proxy_only(&self.rules, i)
    }
}
