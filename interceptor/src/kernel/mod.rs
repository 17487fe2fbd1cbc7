//! Kernel side, seen from userspace: loads the embedded eBPF object, pins it, attaches it to
//! enrolled cgroups, and reads what the programs recorded.
//!
//! PLACEHOLDER API (being implemented): signatures are the contract the daemon codes against.
#![allow(dead_code, unused_variables)]

use std::path::{Path, PathBuf};

use interceptor_ebpf::{ConnKey, ConnectInfo};
use ipnet::IpNet;

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("{0}")]
    Other(String),
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
    /// Inode number of that directory (the cgroup id).
    pub cgroup_id: u64,
    pub proxy_port: u16,
    pub include_loopback: bool,
    /// Destinations to redirect; empty = every destination.
    pub select: Vec<CidrRule>,
    /// Destinations whose connect() fails with EPERM.
    pub deny: Vec<CidrRule>,
}

pub struct Kernel;

impl Kernel {
    pub fn load(pin_dir: &Path, config: interceptor_ebpf::Config) -> Result<Kernel, KernelError> {
        unimplemented!()
    }
    pub fn enroll(&mut self, e: &KernelEnrollment) -> Result<Vec<u32>, KernelError> {
        unimplemented!()
    }
    pub fn unenroll(&mut self, e: &KernelEnrollment) -> Result<(), KernelError> {
        unimplemented!()
    }
    pub fn original_dst(&self) -> OriginalDstTable {
        unimplemented!()
    }
    pub fn take_denied_events(&mut self) -> Result<DeniedEvents, KernelError> {
        unimplemented!()
    }
}

#[derive(Clone)]
pub struct OriginalDstTable;
impl OriginalDstTable {
    pub fn take(&self, key: &ConnKey) -> Option<ConnectInfo> {
        unimplemented!()
    }
}

pub struct DeniedEvents;
impl DeniedEvents {
    pub async fn next(&mut self) -> Option<ConnectInfo> {
        unimplemented!()
    }
}
