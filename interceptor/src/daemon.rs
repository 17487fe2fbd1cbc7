//! `interceptor run`: wires the kernel side, the proxy, the session store and the control API
//! together, and serves until SIGTERM or SIGINT.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::sync::Mutex;

use crate::control::protocol::{PolicyStatus, Reply, Request, Status};
use crate::control::server::{self, SocketFile};
use crate::enrollment::Enrollments;
use crate::identity::{IdentityResolver, RuntimeRoots};
use crate::kernel::{Kernel, NoProxyCount};
use crate::proxy::{Proxy, Registry};
use crate::redirect::Listeners;
use crate::sessions::record::PolicyLoaded;
use crate::sessions::{Event, Store, StoreWriter};
use interceptor::approvals::{self, ApprovalEvent, Approvals};
use interceptor::policy::{self, Policy};

/// `SO_MARK` on the daemon's upstream sockets ("intc"); the kernel programs let marked
/// sockets through, so the daemon never intercepts itself.
pub const BYPASS_MARK: u32 = 0x696e_7463;

#[derive(Clone, Debug)]
pub struct DaemonConfig {
    /// The policy file (None: see [`policy::load`]), re-read on SIGHUP and `policy reload`.
    pub policy: Option<PathBuf>,
    pub data_dir: PathBuf,
    pub socket: PathBuf,
    pub socket_group: Option<String>,
    /// Group whose members may change (enroll, unenroll, reload, decide approvals) besides
    /// root; the socket group's members may only read.
    pub admin_group: Option<String>,
    pub bpffs_dir: PathBuf,
    pub proxy_port: u16,
    pub connect_timeout: Duration,
    pub store: crate::sessions::store::StoreOptions,
    pub tls: crate::tls::TlsOptions,
    /// Longest time a workload may take to send an HTTP/1 request head.
    pub header_timeout: Duration,
    /// Secret rules (built in and `--rules`) and vault (None: no injection).
    pub rules: interceptor::detection::RuleSources,
    /// Where compiled rule databases are cached (None: compiled at every start).
    pub rules_cache: Option<PathBuf>,
    pub vault: Option<PathBuf>,
    /// Docker's data root, for container names.
    pub docker_root: PathBuf,
    /// Where to serve Prometheus metrics, and whether it may be a non-loopback address.
    pub metrics_addr: Option<std::net::SocketAddr>,
    pub metrics_allow_remote: bool,
}

pub struct Daemon {
    enrollments: Mutex<Enrollments>,
    roles: crate::control::roles::Roles,
    policy: policy::Current,
    policy_path: Option<PathBuf>,
    /// Secret rule ids a policy may name; a policy that masks needs at least one.
    secret_rules: Arc<[String]>,
    approvals: Arc<Approvals>,
    proxy: Arc<Proxy>,
    proxy_port: u16,
    /// Where metrics are served (the bound address: `--metrics-addr` may give port 0).
    metrics_addr: Option<std::net::SocketAddr>,
    no_proxy: NoProxyCount,
}

/// Runs the daemon until a termination signal; returns the store writer so the caller can
/// drain it once every task (and so every store handle) is gone.
pub async fn run(config: DaemonConfig) -> anyhow::Result<StoreWriter> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "interceptor run must be started as root (it loads eBPF programs and enters network namespaces)"
        );
    }
    // Before anything is loaded: a refused address stops the start with nothing to undo.
    let metrics = match config.metrics_addr {
        Some(addr) => {
            Some(crate::metrics::endpoint::bind(addr, config.metrics_allow_remote).await?)
        }
        None => None,
    };
    let roles = crate::control::roles::Roles::new(config.admin_group.as_deref())?;
    // Everything the daemon creates is its own alone (the control socket is opened up
    // explicitly); the data directory holds recorded bodies and keys.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    crate::private_fs::private_dir(&config.data_dir)
        .with_context(|| format!("data directory {}", config.data_dir.display()))?;
    let (store, writer) = Store::open(&config.data_dir.join("sessions"), config.store)?;
    let mut kernel = Kernel::load(
        &config.bpffs_dir,
        interceptor_ebpf::Config {
            daemon_tgid: std::process::id(),
            bypass_mark: BYPASS_MARK,
        },
    )
    .context("loading the eBPF programs")?;
    let secrets = crate::secrets::hooks(
        &config.rules,
        config.rules_cache.as_deref(),
        config.vault.as_deref(),
        &store,
    )?;
    let secret_rules: Arc<[String]> = secrets.rule_ids.clone().into();
    let policy = Arc::new(
        load_policy(config.policy.as_deref(), &secret_rules).with_context(|| {
            format!(
                "loading the policy (secret rules: {})",
                config.rules.describe()
            )
        })?,
    );
    record_policy(&store, &policy, "start");
    let current_policy = policy::Current::new(policy.clone());
    // Secret masking, injection and body recording follow the policy's decisions.
    if let Some(masking) = &secrets.masking {
        masking.follow_policy(current_policy.clone());
    }
    let tls = crate::tls::TlsLayer::new(&config.data_dir, &config.tls)
        .context("setting up TLS interception")?;
    // https webhooks are verified like upstreams: the system's roots plus --upstream-ca.
    let webhooks = approvals::Webhooks::new(tls.upstream_connector());
    let approvals = open_approvals(&config.data_dir, &store, webhooks)?;
    let mut denied = kernel.take_denied_events()?;
    let no_proxy = kernel.no_proxy();
    report_refused_no_proxy(&no_proxy);
    let registry = Registry::default();
    let gate = crate::gate::Gate {
        policy: current_policy.clone(),
        approvals: approvals.clone(),
    };
    let hooks = secrets
        .hooks
        .then(Arc::new(crate::http::policy_hook::PolicyHook {
            gate: gate.clone(),
            masking: secrets.masking.clone(),
            store: store.clone(),
        }));
    let proxy = Arc::new(Proxy {
        original: kernel.original_dst(),
        identities: IdentityResolver::new(RuntimeRoots::with_docker(config.docker_root.clone())),
        store,
        registry: registry.clone(),
        connect_timeout: config.connect_timeout,
        mark: BYPASS_MARK,
        live: AtomicU64::new(0),
        tls,
        http: crate::http::HttpLayer::new(hooks, config.header_timeout),
        gate,
        masking: secrets.masking,
        capacity: Default::default(),
    });
    let listeners = Listeners::start(config.proxy_port, proxy.clone())
        .await
        .context("starting the proxy listeners")?;
    let proxy_port = listeners.port();
    let mut enrollments = Enrollments::new(
        kernel,
        listeners,
        registry,
        &config.data_dir,
        policy.clone(),
    );
    enrollments.restore().await?;

    // Admins must be able to open the socket: with no socket group it is theirs.
    let socket_group = config.socket_group.as_ref().or(config.admin_group.as_ref());
    let control = server::bind(&config.socket, socket_group.map(String::as_str))?;
    let metrics_addr = metrics.as_ref().map(|l| l.local_addr()).transpose()?;
    if let Some(listener) = metrics {
        let (proxy, approvals, no_proxy) = (proxy.clone(), approvals.clone(), no_proxy.clone());
        let registry = crate::metrics::exposition::registry(
            proxy.store.metrics().clone(),
            Box::new(move || gauges(&proxy, &approvals, &no_proxy)),
        );
        tracing::info!(addr = %listener.local_addr()?, "serving metrics at /metrics");
        let serve = crate::metrics::endpoint::serve(listener, Arc::new(registry));
        tokio::spawn(serve);
    }
    let _socket_file = SocketFile(config.socket.clone());
    let daemon = Arc::new(Daemon {
        enrollments: Mutex::new(enrollments),
        roles,
        policy: current_policy,
        policy_path: config.policy.clone(),
        secret_rules,
        approvals,
        proxy: proxy.clone(),
        proxy_port,
        metrics_addr,
        no_proxy,
    });
    tokio::spawn(server::serve(control, daemon.clone()));
    tokio::spawn(reload_on_sighup(daemon));
    tokio::spawn(async move {
        while let Some(info) = denied.next().await {
            proxy.record_denied(&info);
        }
    });
    tracing::info!(
        port = proxy_port,
        socket = %config.socket.display(),
        data_dir = %config.data_dir.display(),
        "interceptor ready"
    );
    shutdown_signal().await?;
    tracing::info!("shutting down; enrollments stay pinned in the kernel");
    Ok(writer)
}

async fn reload_on_sighup(daemon: Arc<Daemon>) -> anyhow::Result<()> {
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    while hup.recv().await.is_some() {
        // A rejected policy is logged by `reload`; the running one stays.
        let _ = daemon.reload_policy("sighup").await;
    }
    Ok(())
}

/// Pending approvals and grants, kept in the data directory; every event goes to the store.
fn open_approvals(
    data_dir: &std::path::Path,
    store: &Store,
    webhooks: approvals::Webhooks,
) -> anyhow::Result<Arc<Approvals>> {
    let store = store.clone();
    let file = data_dir.join("approvals.json");
    Approvals::open(&file, webhooks, move |e: ApprovalEvent| {
        store.append(Event::Approval(e))
    })
    .with_context(|| format!("reading {}", file.display()))
}

/// Loads the policy ([`policy::load`]) and checks it against the secret rules loaded
/// ([`Policy::check_secret_rules`]): fails closed when it masks with no rules.
fn load_policy(
    path: Option<&std::path::Path>,
    secret_rules: &[String],
) -> Result<Policy, policy::PolicyError> {
    let policy = policy::load(path)?;
    policy.check_secret_rules(secret_rules)?;
    Ok(policy)
}

/// What the metrics read at the moment they are asked for.
fn gauges(
    proxy: &Proxy,
    approvals: &Approvals,
    no_proxy: &NoProxyCount,
) -> crate::metrics::exposition::Gauges {
    crate::metrics::exposition::Gauges {
        live_sessions: proxy.live.load(Ordering::Relaxed),
        enrollments: proxy.registry.read().unwrap().len() as u64,
        held_approvals: approvals.pending().len() as u64,
        store: proxy.store.status(),
        refused_no_proxy: read_no_proxy(no_proxy),
    }
}

fn read_no_proxy(count: &NoProxyCount) -> u64 {
    count.get().unwrap_or_else(|e| {
        tracing::warn!(error = %e, "cannot read the no-proxy refusal count");
        0
    })
}

/// Says at start how many connects failed closed while no daemon listened (while this daemon
/// was down, or earlier: the count lives in the pinned maps).
fn report_refused_no_proxy(count: &NoProxyCount) {
    let n = read_no_proxy(count);
    if n > 0 {
        tracing::warn!(
            refused = n,
            "connects of enrolled workloads were refused in the kernel while no daemon listener was up (count since the eBPF maps were pinned)"
        );
    }
}

fn record_policy(store: &Store, policy: &Policy, trigger: &str) {
    tracing::info!(path = %policy.source().display(), sha256 = policy.sha256(), rules = policy.rules().len(), trigger, "policy in force");
    store.append(Event::PolicyLoaded(PolicyLoaded {
        path: policy.source().display().to_string(),
        sha256: policy.sha256().to_string(),
        rules: policy.rules().len(),
        trigger: trigger.to_string(),
        at: std::time::SystemTime::now(),
    }));
}

async fn shutdown_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

impl Daemon {
    pub async fn handle(&self, request: Request) -> Reply {
        self.dispatch(request)
            .await
            .map_err(|e| crate::errors::chain(e.as_ref()))
    }

    /// Serves a request that only reads; changes are served by [`crate::control::change`].
    async fn dispatch(&self, request: Request) -> anyhow::Result<serde_json::Value> {
        use crate::control::protocol::ApprovalsRequest as A;
        Ok(match request {
            Request::Enroll(_)
            | Request::Unenroll { .. }
            | Request::PolicyReload
            | Request::Approvals(A::Decide { .. } | A::Revoke { .. })
            | Request::AcknowledgeDamage { .. } => {
                bail!("a change is served with the caller's credentials, by the control server")
            }
            Request::Approvals(A::List) => serde_json::to_value(self.approvals.pending())?,
            Request::Approvals(A::Grants) => serde_json::to_value(self.approvals.grants())?,
            Request::Approvals(A::Resolved) => serde_json::to_value(self.approvals.resolved())?,
            Request::Status => {
                let g = gauges(&self.proxy, &self.approvals, &self.no_proxy);
                serde_json::to_value(Status {
                    daemon_pid: std::process::id(),
                    proxy_port: self.proxy_port,
                    metrics_addr: self.metrics_addr,
                    live_connections: g.live_sessions,
                    enrollments: self.enrollments.lock().await.status(),
                    store: g.store,
                    counts: (self.proxy.store.metrics()).counts(g.held_approvals, g.store.lost),
                    refused_no_proxy: g.refused_no_proxy,
                })?
            }
            Request::Sessions { last } => {
                let store = self.proxy.store.clone();
                let sessions = tokio::task::spawn_blocking(move || match last {
                    None => store.sessions(),
                    Some(n) => store.newest_sessions(n),
                });
                serde_json::to_value(sessions.await??)?
            }
            Request::Session { id } => {
                let store = self.proxy.store.clone();
                let session = match id.parse::<u64>() {
                    Ok(n) => tokio::task::spawn_blocking(move || store.session(n)).await??,
                    Err(_) => None,
                };
                serde_json::to_value(session.with_context(|| format!("no session with id {id}"))?)?
            }
            Request::CaCertificate => serde_json::to_value(self.proxy.tls.ca().cert_pem())?,
            Request::Tail(_) => bail!("a tail request is a stream, served by the control server"),
            Request::Verify => {
                let store = self.proxy.store.clone();
                serde_json::to_value(
                    tokio::task::spawn_blocking(move || {
                        crate::sessions::verify::verify_running(&store)
                    })
                    .await??,
                )?
            }
        })
    }

    /// Re-reads the policy file. A policy with an error is refused (the error names file,
    /// line and column) and the running one stays; a good one replaces the one in force
    /// ([`policy::Current`]) and every enrollment's kernel deny list, and is recorded.
    pub async fn reload_policy(&self, trigger: &str) -> anyhow::Result<PolicyStatus> {
        let path = self.policy_path.clone();
        let rules = self.secret_rules.clone();
        let loaded =
            tokio::task::spawn_blocking(move || load_policy(path.as_deref(), &rules)).await?;
        let policy = match loaded {
            Ok(p) => Arc::new(p),
            Err(e) => {
                tracing::warn!(error = %e, trigger, "policy rejected; the running policy stays");
                return Err(e.into());
            }
        };
        let mut enrollments = self.enrollments.lock().await;
        self.policy.set(policy.clone());
        record_policy(&self.proxy.store, &policy, trigger);
        enrollments.set_policy(policy.clone())?;
        Ok(PolicyStatus {
            path: policy.source().to_path_buf(),
            sha256: policy.sha256().to_string(),
            rules: policy.rules().len(),
            kernel_denies: crate::enrollment::policy_denies(&policy, None),
        })
    }

    pub fn store(&self) -> &crate::sessions::Store {
        &self.proxy.store
    }

    pub fn enrollments(&self) -> &Mutex<Enrollments> {
        &self.enrollments
    }

    pub fn approvals(&self) -> &Approvals {
        &self.approvals
    }

    pub fn roles(&self) -> &crate::control::roles::Roles {
        &self.roles
    }
}
