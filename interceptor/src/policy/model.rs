//! The compiled policy: rules in file order with their conditions ready to match, the
//! settings each decision carries, and the default.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use globset::GlobMatcher;
use ipnet::IpNet;
use serde::Serialize;

use super::index::Index;
use super::kernel::KernelDeny;
pub use super::spec::{Action, Api, TlsMode};

/// Identity and destination attributes a rule can match on, through globs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GlobField {
    Cgroup,
    Container,
    Exe,
    Comm,
    User,
    Enrollment,
    Host,
    /// HTTP only.
    Path,
    /// Tool calls only: the tool's name.
    Tool,
}

impl GlobField {
    pub const ALL: [GlobField; 9] = [
        GlobField::Cgroup,
        GlobField::Container,
        GlobField::Exe,
        GlobField::Comm,
        GlobField::User,
        GlobField::Enrollment,
        GlobField::Host,
        GlobField::Path,
        GlobField::Tool,
    ];

    pub fn name(self) -> &'static str {
        match self {
            GlobField::Cgroup => "cgroup",
            GlobField::Container => "container",
            GlobField::Exe => "exe",
            GlobField::Comm => "comm",
            GlobField::User => "user",
            GlobField::Enrollment => "enrollment",
            GlobField::Host => "host",
            GlobField::Path => "path",
            GlobField::Tool => "tool",
        }
    }

    pub fn slot(self) -> usize {
        self as usize
    }
}

/// What a decision carries besides its verdict.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Settings {
    pub tls: TlsMode,
    pub secrets_mask: Vec<String>,
    pub secrets_report: Vec<String>,
    pub vault_credentials: Vec<String>,
    pub record_body_bytes: u64,
}

impl Default for Settings {
    /// Intercept TLS, mask every secret rule, inject no credential, record 64 KiB of bodies.
    fn default() -> Self {
        Settings {
            tls: TlsMode::Intercept,
            secrets_mask: vec!["*".into()],
            secrets_report: Vec::new(),
            vault_credentials: Vec::new(),
            record_body_bytes: 64 * 1024,
        }
    }
}

/// What to do with a finding of one secret rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecretHandling {
    Mask,
    Report,
    Ignore,
}

impl Settings {
    /// An id named explicitly wins over "*"; between two explicit (or two "*") entries,
    /// report wins, since it is the one the author wrote to make an exception.
    pub fn secret_handling(&self, rule_id: &str) -> SecretHandling {
        let named = |list: &[String]| list.iter().any(|x| x == rule_id);
        let any = |list: &[String]| list.iter().any(|x| x == "*");
        if named(&self.secrets_report) {
            SecretHandling::Report
        } else if named(&self.secrets_mask) {
            SecretHandling::Mask
        } else if any(&self.secrets_report) {
            SecretHandling::Report
        } else if any(&self.secrets_mask) {
            SecretHandling::Mask
        } else {
            SecretHandling::Ignore
        }
    }

    pub fn may_inject(&self, credential: &str) -> bool {
        self.vault_credentials
            .iter()
            .any(|c| c == "*" || c == credential)
    }
}

/// Who may approve a held request, and how long it waits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Approval {
    pub users: Vec<String>,
    pub groups: Vec<String>,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    pub webhook: Option<String>,
}

impl Approval {
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);
}

/// What a rule (or the default) decides.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub action: Action,
    pub reason: Option<String>,
    pub settings: Settings,
    pub approval: Option<Approval>,
}

/// A glob as written, and its matcher.
#[derive(Clone, Debug)]
pub struct Pattern {
    pub text: String,
    pub matcher: GlobMatcher,
}

#[derive(Clone, Debug)]
pub struct HeaderCondition {
    /// Lower case.
    pub name: String,
    pub value: Pattern,
}

#[derive(Clone, Debug)]
pub struct ToolArgCondition {
    /// RFC 6901 JSON pointer into the arguments.
    pub pointer: String,
    pub value: Pattern,
}

impl ToolArgCondition {
    /// Whether the arguments have a value at the pointer that the glob matches: a string as
    /// it is, anything else as its JSON text.
    pub fn holds(&self, arguments: &serde_json::Value) -> bool {
        match arguments.pointer(&self.pointer) {
            None => false,
            Some(serde_json::Value::String(s)) => self.value.matcher.is_match(s),
            Some(other) => self.value.matcher.is_match(other.to_string()),
        }
    }
}

/// A rule's conditions. Empty lists do not constrain.
#[derive(Clone, Debug, Default)]
pub struct Conditions {
    /// Indexed by [`GlobField::slot`].
    pub globs: [Vec<Pattern>; 9],
    pub uid: Vec<u32>,
    pub cidr: Vec<IpNet>,
    pub port: Vec<u16>,
    /// Upper case.
    pub method: Vec<String>,
    pub header: Vec<HeaderCondition>,
    pub tool_args: Vec<ToolArgCondition>,
    pub api: Vec<Api>,
}

impl Conditions {
    pub fn globs(&self, field: GlobField) -> &[Pattern] {
        &self.globs[field.slot()]
    }

    /// Whether the rule looks at HTTP requests (and so cannot decide a connection alone);
    /// tool calls are read from HTTP requests.
    pub fn is_http(&self) -> bool {
        !self.method.is_empty()
            || !self.header.is_empty()
            || !self.globs(GlobField::Path).is_empty()
            || self.is_tool()
    }

    /// Whether the rule looks at tool calls (and so matches only a request carrying one).
    pub fn is_tool(&self) -> bool {
        !self.tool_args.is_empty()
            || !self.api.is_empty()
            || !self.globs(GlobField::Tool).is_empty()
    }

    pub fn cidr_matches(&self, ip: Option<IpAddr>) -> bool {
        self.cidr.is_empty() || ip.is_some_and(|ip| self.cidr.iter().any(|n| n.contains(&ip)))
    }
}

#[derive(Clone, Debug)]
pub struct Rule {
    pub name: String,
    /// Line of the rule's `name` in the file.
    pub line: usize,
    pub when: Conditions,
    pub outcome: Outcome,
}

/// A compiled policy. Immutable; a reload builds a new one and swaps it in.
#[derive(Debug)]
pub struct Policy {
    pub(super) source: PathBuf,
    pub(super) sha256: String,
    pub(super) rules: Vec<Rule>,
    pub(super) default: Outcome,
    /// Settings of a connection that HTTP rules will decide request by request.
    pub(super) inspect: Settings,
    pub(super) index: Index,
    pub(super) kernel: Vec<KernelDeny>,
    pub(super) references: Vec<Reference>,
    /// Line and column of the first non-empty `secrets_mask` or `secrets_report`.
    pub(super) masking_named_at: Option<(usize, usize)>,
}

/// An id the policy names that another component defines (checked by
/// [`Policy::check_references`]).
#[derive(Clone, Debug)]
pub struct Reference {
    pub kind: ReferenceKind,
    pub id: String,
    pub line: usize,
    pub column: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReferenceKind {
    SecretRule,
    VaultCredential,
}

impl Policy {
    pub fn source(&self) -> &std::path::Path {
        &self.source
    }

    /// Hex SHA-256 of the policy text, as recorded at every load.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    pub fn default_outcome(&self) -> &Outcome {
        &self.default
    }

    /// Whether any decision masks or reports secrets (the built-in default's
    /// `secrets_mask = ["*"]` included).
    pub fn uses_secret_rules(&self) -> bool {
        let uses = |s: &Settings| !s.secrets_mask.is_empty() || !s.secrets_report.is_empty();
        uses(&self.inspect)
            || uses(&self.default.settings)
            || self.rules.iter().any(|r| uses(&r.outcome.settings))
    }
}
