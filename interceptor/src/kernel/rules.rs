//! Pure conversions from destination rules to the kernel's LPM-trie entries.

use std::collections::BTreeMap;

use aya::maps::lpm_trie::Key;
use interceptor_ebpf::{CidrKey, MAX_PORTS, PortSet};
use ipnet::IpNet;

use super::{CidrRule, KernelError};

/// Bits of the key taken by the enrollment id; a key with this prefix matches every address.
pub const ENROLLMENT_BITS: u32 = 32;

/// LPM key for `net` under enrollment `id`: IPv4 in v4-mapped form (prefix `32 + 96 + n`),
/// IPv6 as is (`32 + n`). Host bits are cleared so equal networks give equal keys.
pub fn cidr_key(id: u32, net: &IpNet) -> Key<CidrKey> {
    let (addr, prefix) = match net.trunc() {
        IpNet::V4(n) => (n.addr().to_ipv6_mapped().octets(), 96 + n.prefix_len()),
        IpNet::V6(n) => (n.addr().octets(), n.prefix_len()),
    };
    let data = CidrKey {
        enrollment: id.to_be_bytes(),
        addr,
    };
    Key::new(ENROLLMENT_BITS + u32::from(prefix), data)
}

/// The key matching every destination of enrollment `id`.
pub fn everything_key(id: u32) -> Key<CidrKey> {
    let data = CidrKey {
        enrollment: id.to_be_bytes(),
        addr: [0; 16],
    };
    Key::new(ENROLLMENT_BITS, data)
}

/// A [`PortSet`] from a port list; empty means every port.
pub fn port_set(ports: &[u16]) -> Result<PortSet, KernelError> {
    let mut sorted = ports.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    if sorted.len() > MAX_PORTS {
        return Err(KernelError::TooManyPorts {
            count: sorted.len(),
            max: MAX_PORTS,
        });
    }
    let mut set = PortSet {
        count: sorted.len() as u32,
        ..PortSet::default()
    };
    set.ports[..sorted.len()].copy_from_slice(&sorted);
    Ok(set)
}

/// Trie entries for `rules` under enrollment `id`. Rules for the same network are merged (an
/// empty port list wins, since it means every port); `empty_means_all` turns an empty rule
/// list into one entry matching everything (SELECT), otherwise it gives no entries (DENY).
pub fn trie_entries(
    id: u32,
    rules: &[CidrRule],
    empty_means_all: bool,
) -> Result<Vec<(Key<CidrKey>, PortSet)>, KernelError> {
    if rules.is_empty() {
        return Ok(if empty_means_all {
            vec![(everything_key(id), PortSet::default())]
        } else {
            Vec::new()
        });
    }
    let mut merged: BTreeMap<(u32, [u8; 16]), Merged> = BTreeMap::new();
    for rule in rules {
        let key = cidr_key(id, &rule.net);
        let m = merged
            .entry((key.prefix_len(), key.data().addr))
            .or_insert_with(|| Merged {
                net: rule.net,
                ports: Some(Vec::new()),
            });
        match &mut m.ports {
            Some(_) if rule.ports.is_empty() => m.ports = None,
            Some(ports) => ports.extend(&rule.ports),
            None => {}
        }
    }
    merged
        .into_iter()
        .map(|((prefix, addr), Merged { net, ports })| {
            let set = port_set(ports.as_deref().unwrap_or_default()).map_err(|e| match e {
                KernelError::TooManyPorts { count, max } => KernelError::RuleTooManyPorts {
                    net: net.to_string(),
                    count,
                    max,
                },
                e => e,
            })?;
            let data = CidrKey {
                enrollment: id.to_be_bytes(),
                addr,
            };
            Ok((Key::new(prefix, data), set))
        })
        .collect()
}

/// The rules for one network: the first rule's network (for errors) and the union of their
/// ports, None meaning every port.
struct Merged {
    net: IpNet,
    ports: Option<Vec<u16>>,
}
