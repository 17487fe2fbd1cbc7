//! Command-line syntax (clap).

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use ipnet::IpNet;

use crate::kernel::CidrRule;

#[derive(Parser, Debug)]
#[command(
    name = "interceptor",
    version,
    about = "Transparent egress interception for enrolled cgroups and containers"
)]
pub struct Cli {
    /// The daemon's control socket.
    #[arg(
        long,
        global = true,
        env = "INTERCEPTOR_SOCKET",
        default_value = "/run/interceptor/control.sock"
    )]
    pub socket: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the daemon in the foreground.
    Run(Box<RunArgs>),
    /// Intercept the outbound TCP connections of a cgroup, a process's cgroup, or a container.
    Enroll(EnrollArgs),
    /// Stop intercepting a cgroup.
    Unenroll(UnenrollArgs),
    /// Show the daemon, its enrollments and live connections.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Run a command with its outbound connections intercepted, in a cgroup of its own.
    Exec(ExecArgs),
    /// Recorded connections.
    #[command(subcommand)]
    Sessions(SessionsCommand),
    /// Check, explain and reload the policy.
    #[command(subcommand)]
    Policy(super::policy::PolicyCommand),
    /// Connections and requests held for approval, and grants.
    #[command(subcommand)]
    Approvals(super::approvals::ApprovalsCommand),
    /// The CA that signs the certificates workloads see (TLS interception).
    #[command(subcommand)]
    Ca(CaCommand),
    /// Secret detection rules.
    #[command(subcommand)]
    Rules(super::secrets::RulesCommand),
}

#[derive(Subcommand, Debug)]
pub enum CaCommand {
    /// Print the CA certificate (PEM).
    Export,
    /// Add the CA to the host's trust store (Debian layout: update-ca-certificates).
    Install {
        /// Directory of local CA certificates that update-ca-certificates reads.
        #[arg(long, default_value = "/usr/local/share/ca-certificates")]
        dir: PathBuf,
    },
    /// Remove the CA from the host's trust store again.
    Uninstall {
        #[arg(long, default_value = "/usr/local/share/ca-certificates")]
        dir: PathBuf,
    },
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Where sessions and enrollment state are kept.
    #[arg(long, default_value = "/var/lib/interceptor")]
    pub data_dir: PathBuf,
    /// Group that may use the control socket (mode 0660, owner root) to read: status,
    /// sessions, approvals list, the CA.
    #[arg(long)]
    pub socket_group: Option<String>,
    /// Group whose members may also change (enroll, unenroll, policy reload, approvals
    /// approve/deny/revoke); otherwise only root may. Its members need the socket too: put
    /// them in --socket-group, or give no --socket-group and the socket is this group's.
    #[arg(long)]
    pub admin_group: Option<String>,
    /// bpffs directory for pinned maps and links (enrollments survive restarts through it).
    #[arg(long, default_value = "/sys/fs/bpf/interceptor")]
    pub bpffs_dir: PathBuf,
    /// Port of the proxy listener on 127.0.0.1 and ::1 (in every enrolled network namespace);
    /// 0 picks a free one (`interceptor status` shows it).
    #[arg(long, default_value_t = 15001)]
    pub proxy_port: u16,
    /// How long to wait for an upstream to accept a connection.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,
    /// Longest time a session record waits in memory before it is fsynced.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub sync_interval: Duration,
    /// Remove session segments whose newest record is older than this (default: keep all).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub retain_age: Option<Duration>,
    /// Remove the oldest session segments while the store is larger than this (bytes).
    #[arg(long)]
    pub retain_bytes: Option<u64>,
    /// Size (bytes) at which a session segment is closed and the next one started.
    #[arg(long, default_value_t = 64 << 20)]
    pub segment_bytes: u64,
    /// How often the session chain's head is anchored in a signed checkpoint (also on a
    /// clean shutdown); `sessions verify` names records cut after it.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub checkpoint_interval: Duration,
    #[command(flatten)]
    pub tls: TlsArgs,
    /// Policy file (default: policies/default.toml under the working directory if there is
    /// one, else /etc/interceptor/policy.toml, else the built-in default). Reloaded on SIGHUP
    /// and `policy reload`.
    #[arg(long)]
    pub policy: Option<PathBuf>,
    #[command(flatten)]
    pub rules: RuleArgs,
    /// Vault file or directory (mode 0600) of placeholders and the credentials they stand
    /// for, injected into requests from allowed identities to allowed destinations.
    #[arg(long)]
    pub vault: Option<PathBuf>,
    /// Docker's data root, where container names are read from
    /// (`<root>/containers/<id>/config.v2.json`).
    #[arg(long, default_value = "/var/lib/docker")]
    pub docker_root: PathBuf,
    /// Serve Prometheus metrics at http://ADDR/metrics (a loopback address, e.g.
    /// 127.0.0.1:9464; port 0 picks a free one, which `interceptor status` shows).
    #[arg(long)]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Let --metrics-addr be a non-loopback address. The endpoint has no authentication and
    /// its numbers describe the workloads' traffic: expose it only to a protected network.
    #[arg(long, requires = "metrics_addr")]
    pub metrics_allow_remote: bool,
}

/// Which secret rules are loaded (`run`, `policy check`).
#[derive(Args, Debug, Clone)]
pub struct RuleArgs {
    /// Directory of secret rules (*.yaml) loaded after the built-in ones (repeatable); a rule
    /// with the id of one loaded before it replaces that one.
    #[arg(long = "rules", value_name = "DIR")]
    pub dirs: Vec<PathBuf>,
    /// Leave out the rules built into the binary (the shipped policies/rules): only --rules
    /// directories are loaded. A policy that masks secrets then needs at least one rule.
    #[arg(long)]
    pub no_builtin_rules: bool,
    /// Directory where the secret rules' compiled Hyperscan databases are kept between starts
    /// (created 0700; not used, with a warning, unless only root can change it and the
    /// directories above it).
    #[arg(long, value_name = "DIR", default_value = "/var/cache/interceptor")]
    pub rules_cache: PathBuf,
    /// Compile the secret rules at every start, reading and writing no cache.
    #[arg(long, conflicts_with = "rules_cache")]
    pub no_rules_cache: bool,
}

impl RuleArgs {
    pub fn sources(&self) -> interceptor::detection::RuleSources {
        interceptor::detection::RuleSources {
            builtin: !self.no_builtin_rules,
            dirs: self.dirs.clone(),
        }
    }

    /// The rule cache's directory, unless there is to be none.
    pub fn cache(&self) -> Option<PathBuf> {
        (!self.no_rules_cache).then(|| self.rules_cache.clone())
    }
}

/// TLS re-termination and the HTTP layer (`run`).
#[derive(Args, Debug)]
pub struct TlsArgs {
    /// CA certificate (PEM) to sign workload-facing certificates with, instead of the one
    /// interceptor creates in its data directory.
    #[arg(long, requires = "ca_key")]
    pub ca_cert: Option<PathBuf>,
    /// The private key (PEM) of --ca-cert.
    #[arg(long, requires = "ca_cert")]
    pub ca_key: Option<PathBuf>,
    /// Extra CA certificates (PEM) trusted for upstream servers, besides the system's
    /// (repeatable).
    #[arg(long)]
    pub upstream_ca: Vec<PathBuf>,
    /// Relay TLS to this server name (SNI) without decrypting it (repeatable).
    #[arg(long)]
    pub passthrough: Vec<String>,
    /// Longest time a TLS handshake (either side) may take.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub handshake_timeout: Duration,
    /// Longest time a workload may take to send an HTTP/1 request head, or leave an HTTP/2
    /// connection without a request in progress (then it gets a GOAWAY).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub header_timeout: Duration,
}

impl TlsArgs {
    pub fn into_options(self) -> crate::tls::TlsOptions {
        crate::tls::TlsOptions {
            ca_cert: self.ca_cert,
            ca_key: self.ca_key,
            upstream_ca: self.upstream_ca,
            passthrough: self.passthrough,
            handshake_timeout: self.handshake_timeout,
        }
    }
}

/// Which cgroup: exactly one of a path, a process, a container.
#[derive(Args, Debug)]
#[group(required = true, multiple = false)]
pub struct TargetArgs {
    /// cgroup2 directory, absolute or relative to the cgroup2 mount.
    pub path: Option<PathBuf>,
    /// The cgroup of this process.
    #[arg(long)]
    pub pid: Option<u32>,
    /// The cgroup of this container (full id or unique prefix).
    #[arg(long)]
    pub container: Option<String>,
}

/// What to intercept and deny; shared by `enroll` and `exec`.
#[derive(Args, Debug, Clone)]
pub struct FilterArgs {
    /// Intercept only these destination ports (comma-separated; default all).
    #[arg(long, value_delimiter = ',')]
    pub ports: Vec<u16>,
    /// Intercept only destinations in this network (repeatable; default all).
    #[arg(long)]
    pub cidr: Vec<IpNet>,
    /// Fail connect() in the kernel for CIDR, IPv4CIDR:PORTS or [IPv6CIDR]:PORTS (repeatable).
    #[arg(long, value_parser = super::rules::parse_deny)]
    pub deny: Vec<CidrRule>,
    /// Also intercept loopback destinations (other than the proxy itself).
    #[arg(long)]
    pub include_loopback: bool,
    /// A name for the enrollment, shown in status and sessions.
    #[arg(long)]
    pub name: Option<String>,
}

#[derive(Args, Debug)]
pub struct EnrollArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    #[command(flatten)]
    pub filters: FilterArgs,
    /// Network namespace of the workload (default: that of its processes, else the host's).
    #[arg(long)]
    pub netns: Option<PathBuf>,
    /// Allow enrolling the root cgroup (intercepts every process on the host).
    #[arg(long)]
    pub allow_root: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
#[group(required = true, multiple = false)]
pub struct UnenrollArgs {
    pub path: Option<PathBuf>,
    #[arg(long)]
    pub pid: Option<u32>,
    #[arg(long)]
    pub container: Option<String>,
    /// Enrollment id, as `status` shows it.
    #[arg(long)]
    pub id: Option<u32>,
}

#[derive(Args, Debug)]
pub struct ExecArgs {
    #[command(flatten)]
    pub filters: FilterArgs,
    /// The command and its arguments.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<OsString>,
}

#[derive(Subcommand, Debug)]
pub enum SessionsCommand {
    /// Every recorded connection, oldest first.
    List {
        /// Only the newest N (read from the segment where they begin, not the whole store).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        last: Option<u64>,
        #[arg(long)]
        json: bool,
    },
    /// One connection in full.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Print recorded events, one line each; with -f, keep printing them as they happen.
    Tail(TailArgs),
    /// Play a session's events back with their original timing.
    Replay {
        id: String,
        /// Faster (2) or slower (0.5) than it happened.
        #[arg(long, default_value_t = 1.0)]
        speed: f64,
        #[arg(long)]
        json: bool,
    },
    /// Write the records of a time range as NDJSON (for a SIEM or a log shipper).
    Export {
        /// RFC 3339 time, or a duration meaning that long ago (`10m`).
        #[arg(long, value_parser = super::sessions::parse_time)]
        since: Option<std::time::SystemTime>,
        #[arg(long, value_parser = super::sessions::parse_time)]
        until: Option<std::time::SystemTime>,
    },
    /// The store's own benchmark on one core: recording rate and event-to-tailer delay.
    #[command(hide = true)]
    Bench(BenchArgs),
    /// Check every record's checksum and hash chain, and the chain against the newest signed
    /// checkpoint; names the first record that does not verify, and lists damage.
    Verify {
        /// Read this data directory (as `run --data-dir`) instead of asking the daemon.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Record (as root, in the chain, with your uid and pid) that you have looked into the
    /// damage `verify` reports in SEGMENT; verify then passes over it, naming it and you.
    /// The damaged bytes stay where they are.
    AcknowledgeDamage {
        /// The segment file `verify` names, e.g. segment-00000003.log.
        segment: String,
        /// Why, for the record.
        #[arg(long)]
        reason: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Events appended for the recording rate.
    #[arg(long, default_value_t = 1_000_000)]
    pub events: u64,
    /// Steady append rate (events/s) while the tail delay is measured.
    #[arg(long, default_value_t = 100_000)]
    pub rate: u64,
    /// How long the tail delay is measured.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Where the benchmark's stores are made (and removed); default the temp directory.
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct TailArgs {
    /// Keep printing new events as they are recorded.
    #[arg(short, long)]
    pub follow: bool,
    /// Start with the events from this time (RFC 3339, or a duration meaning that long ago);
    /// default: new events only with -f, everything without.
    #[arg(long, value_parser = super::sessions::parse_time)]
    pub since: Option<std::time::SystemTime>,
    /// Only this session.
    #[arg(long)]
    pub session: Option<u64>,
    /// Only sessions of this container (id or prefix).
    #[arg(long)]
    pub container: Option<String>,
    /// Only sessions of this executable (path, file name or process name).
    #[arg(long)]
    pub exe: Option<String>,
    /// Only sessions to this host (address, SNI or HTTP authority).
    #[arg(long)]
    pub host: Option<String>,
    /// One JSON record per line (NDJSON).
    #[arg(long)]
    pub json: bool,
}
