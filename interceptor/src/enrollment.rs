//! Enrollments: which cgroups are intercepted, with which filters, in which network namespace.
//! The daemon keeps them in `enrollments.json` in its data directory; the kernel keeps the
//! attachments pinned, so both survive a restart.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, bail};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::cgroup::Cgroup;
use crate::control::protocol::{EnrollOptions, EnrollRequest, EnrollmentStatus, Target};
use crate::kernel::{CidrRule, Kernel, KernelEnrollment};
use crate::proxy::{EnrollmentLive, Registry};
use crate::redirect::Listeners;
use crate::redirect::netns::netns_inode;
use interceptor::policy::Policy;

/// What is persisted per enrollment.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Saved {
    id: u32,
    cgroup: PathBuf,
    options: EnrollOptions,
}

struct Active {
    saved: Saved,
    cgroup: Cgroup,
    program_ids: Vec<u32>,
    netns_key: u64,
    live: Arc<EnrollmentLive>,
}

pub struct Enrollments {
    kernel: Kernel,
    listeners: Listeners,
    registry: Registry,
    state_path: PathBuf,
    proxy_port: u16,
    active: BTreeMap<u32, Active>,
    /// Its address-only deny rules are in every enrollment's kernel deny list.
    policy: Arc<Policy>,
}

impl Enrollments {
    pub fn new(
        kernel: Kernel,
        listeners: Listeners,
        registry: Registry,
        data_dir: &Path,
        policy: Arc<Policy>,
    ) -> Enrollments {
        Enrollments {
            kernel,
            proxy_port: listeners.port(),
            listeners,
            registry,
            state_path: data_dir.join("enrollments.json"),
            active: BTreeMap::new(),
            policy,
        }
    }

    /// Re-establishes the enrollments of a previous run. One that can no longer be restored
    /// (its cgroup is gone) is detached and dropped, with a warning.
    pub async fn restore(&mut self) -> anyhow::Result<()> {
        let saved: Vec<Saved> = match std::fs::read(&self.state_path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("reading {}", self.state_path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e).context(format!("reading {}", self.state_path.display())),
        };
        for s in saved {
            let restored = match Cgroup::resolve(&s.cgroup, true) {
                Ok(cgroup) => self.activate(s.clone(), cgroup).await,
                Err(e) => Err(e.into()),
            };
            match restored {
                Ok(()) => {
                    tracing::info!(id = s.id, cgroup = %s.cgroup.display(), "enrollment restored")
                }
                Err(e) => {
                    tracing::warn!(id = s.id, cgroup = %s.cgroup.display(), error = %crate::errors::chain(e.as_ref()), "dropping enrollment that cannot be restored");
                    let _ = self.kernel.unenroll(&kernel_enrollment(
                        &s,
                        0,
                        self.proxy_port,
                        &self.policy,
                    ));
                }
            }
        }
        self.save()
    }

    pub async fn enroll(&mut self, req: EnrollRequest) -> anyhow::Result<EnrollmentStatus> {
        let cgroup = match &req.target {
            Target::Path(p) => Cgroup::resolve(p, req.allow_root)?,
            Target::Pid(pid) => Cgroup::of_pid(*pid)?,
            Target::Container(id) => Cgroup::of_container(id)?,
            Target::Id(_) => bail!("enroll takes a cgroup path, --pid or --container"),
        };
        if cgroup.relative == "/" && !req.allow_root {
            bail!(crate::cgroup::CgroupError::Root(cgroup.path));
        }
        let mut options = req.options;
        options.netns = match options.netns.take() {
            Some(path) => Some(
                path.canonicalize()
                    .with_context(|| format!("network namespace {}", path.display()))?,
            ),
            None => derive_netns(&req.target, &cgroup),
        };
        let id = match self.active.values().find(|a| a.cgroup.id == cgroup.id) {
            // Enrolling again is idempotent: same id, options refreshed.
            Some(existing) => {
                let id = existing.saved.id;
                self.deactivate(id, false)?;
                id
            }
            None => self.active.keys().next_back().map_or(1, |last| last + 1),
        };
        let saved = Saved {
            id,
            cgroup: cgroup.path.clone(),
            options,
        };
        self.activate(saved, cgroup).await?;
        self.save()?;
        let status = self.status_of(&self.active[&id]);
        tracing::info!(id, cgroup = %status.cgroup.display(), netns = ?status.netns, "enrolled");
        Ok(status)
    }

    pub fn unenroll(&mut self, target: &Target) -> anyhow::Result<EnrollmentStatus> {
        let id = match target {
            Target::Id(id) => Some(*id),
            Target::Path(p) => {
                let c = Cgroup::resolve(p, true)?;
                self.id_of(c.id)
            }
            Target::Pid(pid) => self.id_of(Cgroup::of_pid(*pid)?.id),
            Target::Container(cid) => self.id_of(Cgroup::of_container(cid)?.id),
        };
        let Some(id) = id.filter(|id| self.active.contains_key(id)) else {
            bail!("not enrolled: {target:?}");
        };
        let status = self.status_of(&self.active[&id]);
        self.deactivate(id, true)?;
        self.save()?;
        tracing::info!(id, cgroup = %status.cgroup.display(), "unenrolled");
        Ok(status)
    }

    pub fn status(&self) -> Vec<EnrollmentStatus> {
        self.active.values().map(|a| self.status_of(a)).collect()
    }

    fn id_of(&self, cgroup_id: u64) -> Option<u32> {
        self.active
            .values()
            .find(|a| a.cgroup.id == cgroup_id)
            .map(|a| a.saved.id)
    }

    async fn activate(&mut self, saved: Saved, cgroup: Cgroup) -> anyhow::Result<()> {
        // A namespace named by a process that has since exited is found again through the
        // cgroup's current members.
        let netns = match saved.options.netns.clone() {
            Some(p) if p.exists() => Some(p),
            _ => derive_netns(&Target::Path(cgroup.path.clone()), &cgroup),
        }
        .filter(|p| !is_own_netns(p));
        let netns_key = self
            .listeners
            .acquire(netns.as_deref())
            .await
            .context("starting the proxy listener in the workload's network namespace")?;
        let program_ids = match self.kernel.enroll(&kernel_enrollment(
            &saved,
            cgroup.id,
            self.proxy_port,
            &self.policy,
        )) {
            Ok(ids) => ids,
            Err(e) => {
                self.listeners.release(netns_key);
                return Err(e).context(format!("attaching to {}", cgroup.path.display()));
            }
        };
        let live = Arc::new(EnrollmentLive {
            cgroup: cgroup.clone(),
            name: saved.options.name.clone(),
            live: AtomicU64::new(0),
            total: AtomicU64::new(0),
        });
        self.registry
            .write()
            .unwrap()
            .insert(saved.id, live.clone());
        self.active.insert(
            saved.id,
            Active {
                saved,
                cgroup,
                program_ids,
                netns_key,
                live,
            },
        );
        Ok(())
    }

    /// Takes an enrollment out of service; `detach` also removes it from the kernel (not done
    /// when it is about to be re-attached with new options).
    fn deactivate(&mut self, id: u32, detach: bool) -> anyhow::Result<()> {
        let Some(active) = self.active.remove(&id) else {
            return Ok(());
        };
        if detach {
            self.kernel.unenroll(&kernel_enrollment(
                &active.saved,
                active.cgroup.id,
                self.proxy_port,
                &self.policy,
            ))?;
        }
        self.registry.write().unwrap().remove(&id);
        self.listeners.release(active.netns_key);
        Ok(())
    }

    /// Puts a new policy in force: every enrollment's kernel deny list is rewritten with its
    /// deny rules (new entries before stale ones go, so no gap opens).
    pub fn set_policy(&mut self, policy: Arc<Policy>) -> anyhow::Result<()> {
        self.policy = policy;
        let mut failed = Vec::new();
        for a in self.active.values() {
            let k = kernel_enrollment(&a.saved, a.cgroup.id, self.proxy_port, &self.policy);
            if let Err(e) = self.kernel.enroll(&k) {
                tracing::warn!(id = a.saved.id, error = %e, "updating the kernel deny list failed");
                failed.push(format!("enrollment {}: {e}", a.saved.id));
            }
        }
        if !failed.is_empty() {
            bail!("the policy is in force, but {}", failed.join("; "));
        }
        Ok(())
    }

    fn status_of(&self, a: &Active) -> EnrollmentStatus {
        let o = &a.saved.options;
        EnrollmentStatus {
            id: a.saved.id,
            name: o.name.clone(),
            cgroup: a.cgroup.path.clone(),
            cgroup_id: a.cgroup.id,
            netns: o.netns.clone(),
            ports: o.ports.clone(),
            cidrs: o.cidrs.clone(),
            deny: o.deny.clone(),
            include_loopback: o.include_loopback,
            program_ids: a.program_ids.clone(),
            live_connections: a.live.live.load(Ordering::Relaxed),
            total_connections: a.live.total.load(Ordering::Relaxed),
        }
    }

    fn save(&self) -> anyhow::Result<()> {
        let saved: Vec<&Saved> = self.active.values().map(|a| &a.saved).collect();
        let tmp = self.state_path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&saved)?)
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &self.state_path)
            .with_context(|| format!("writing {}", self.state_path.display()))
    }
}

/// The policy's kernel-enforced deny rules for an enrollment named `name`.
pub fn policy_denies(policy: &Policy, name: Option<&str>) -> Vec<CidrRule> {
    policy
        .kernel_denies(name)
        .into_iter()
        .map(|d| CidrRule {
            net: d.net,
            ports: d.ports,
        })
        .collect()
}

fn kernel_enrollment(
    saved: &Saved,
    cgroup_id: u64,
    proxy_port: u16,
    policy: &Policy,
) -> KernelEnrollment {
    let o = &saved.options;
    let everything: IpNet = "::/0".parse().expect("valid");
    let nets = if o.cidrs.is_empty() {
        vec![everything]
    } else {
        o.cidrs.clone()
    };
    KernelEnrollment {
        id: saved.id,
        cgroup_path: saved.cgroup.clone(),
        cgroup_id,
        proxy_port,
        include_loopback: o.include_loopback,
        select: nets
            .into_iter()
            .map(|net| CidrRule {
                net,
                ports: o.ports.clone(),
            })
            .collect(),
        // The enrollment's own --deny list and the policy's address-only deny rules.
        deny: o
            .deny
            .iter()
            .cloned()
            .chain(policy_denies(policy, o.name.as_deref()))
            .collect(),
    }
}

/// The workload's network namespace, from one of its processes; None when it has none yet
/// (the daemon's own namespace is assumed).
fn derive_netns(target: &Target, cgroup: &Cgroup) -> Option<PathBuf> {
    let pid = match target {
        Target::Pid(pid) => Some(*pid),
        _ => cgroup.pids().first().copied(),
    }?;
    let path = PathBuf::from(format!("/proc/{pid}/ns/net"));
    (!is_own_netns(&path)).then_some(path)
}

fn is_own_netns(path: &Path) -> bool {
    match (
        netns_inode(path),
        netns_inode(Path::new("/proc/self/ns/net")),
    ) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}
