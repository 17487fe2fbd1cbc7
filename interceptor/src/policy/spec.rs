//! The policy file as written (TOML), before compilation. Every table rejects unknown keys,
//! and values that need checking later (globs, CIDRs, ids) keep their position in the file.

use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySpec {
    /// Settings every rule starts from.
    #[serde(default)]
    pub settings: SettingsSpec,
    /// Rules in file order (`[[rule]]`); the first that matches decides.
    #[serde(default, rename = "rule")]
    pub rules: Vec<RuleSpec>,
    /// The decision when no rule matches.
    pub default: DefaultSpec,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Allow,
    Deny,
    /// Hold until a person approves.
    Approve,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// Re-terminate TLS with the local CA so HTTP rules and secret masking can see inside.
    Intercept,
    /// Relay TLS untouched (decisions by SNI only).
    Passthrough,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettingsSpec {
    pub tls: Option<TlsMode>,
    /// Secret rule ids whose findings are masked ("*": every rule).
    pub secrets_mask: Option<Vec<Spanned<String>>>,
    /// Secret rule ids whose findings are only reported, not masked ("*": every rule).
    pub secrets_report: Option<Vec<Spanned<String>>>,
    /// Vault credentials that may be injected into this traffic ("*": all).
    pub vault_credentials: Option<Vec<Spanned<String>>>,
    /// How many bytes of each body are recorded.
    pub record_body_bytes: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DefaultSpec {
    pub action: Spanned<Action>,
    pub reason: Option<String>,
    #[serde(default)]
    pub settings: SettingsSpec,
    pub approval: Option<Spanned<ApprovalSpec>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    pub name: Spanned<String>,
    pub action: Spanned<Action>,
    /// Said in explanations, logs and 403 bodies.
    pub reason: Option<String>,
    #[serde(default, rename = "match")]
    pub when: MatchSpec,
    #[serde(default)]
    pub settings: SettingsSpec,
    /// Who may approve, for how long a request waits, whom to notify (`action = "approve"`).
    pub approval: Option<Spanned<ApprovalSpec>>,
}

/// Conditions of a rule: every key given must match (AND); a key with several values matches
/// when any of them does (OR). A rule without conditions matches everything.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchSpec {
    /// cgroup path (as in /proc/PID/cgroup) globs.
    #[serde(default)]
    pub cgroup: Vec<Spanned<String>>,
    /// Container id or name globs.
    #[serde(default)]
    pub container: Vec<Spanned<String>>,
    #[serde(default)]
    pub exe: Vec<Spanned<String>>,
    #[serde(default)]
    pub comm: Vec<Spanned<String>>,
    #[serde(default)]
    pub uid: Vec<u32>,
    /// User name globs.
    #[serde(default)]
    pub user: Vec<Spanned<String>>,
    /// Enrollment name globs.
    #[serde(default)]
    pub enrollment: Vec<Spanned<String>>,
    /// Host name globs: TLS SNI or HTTP Host, case-insensitive.
    #[serde(default)]
    pub host: Vec<Spanned<String>>,
    /// Destination addresses or networks.
    #[serde(default)]
    pub cidr: Vec<Spanned<String>>,
    #[serde(default)]
    pub port: Vec<u16>,
    /// HTTP methods (case-insensitive).
    #[serde(default)]
    pub method: Vec<Spanned<String>>,
    /// HTTP path globs (the query string is not part of the path).
    #[serde(default)]
    pub path: Vec<Spanned<String>>,
    /// HTTP headers: each must be present with a value matching its glob.
    #[serde(default)]
    pub header: Vec<HeaderSpec>,
    /// Tool name globs (an MCP `tools/call`'s tool).
    #[serde(default)]
    pub tool: Vec<Spanned<String>>,
    /// Conditions on a tool call's arguments: each must hold.
    #[serde(default)]
    pub tool_args: Vec<ToolArgSpec>,
    /// The API a tool call is made through.
    #[serde(default)]
    pub api: Vec<Api>,
}

/// An API agents call tools through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Api {
    /// MCP over streamable HTTP (`tools/call`).
    Mcp,
    /// Not recognised yet: tool calls proposed in model responses (issue 18).
    #[serde(rename = "openai")]
    OpenAi,
    Anthropic,
    Gemini,
    Ollama,
}

impl Api {
    pub fn name(self) -> &'static str {
        match self {
            Api::Mcp => "mcp",
            Api::OpenAi => "openai",
            Api::Anthropic => "anthropic",
            Api::Gemini => "gemini",
            Api::Ollama => "ollama",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolArgSpec {
    /// RFC 6901 JSON pointer into the arguments (`/command`, `/options/force`).
    pub pointer: Spanned<String>,
    /// Glob over the value there: a string as it is, anything else as its JSON text.
    pub value: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderSpec {
    pub name: Spanned<String>,
    /// Glob over the value; "*" for "present".
    pub value: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalSpec {
    /// User names that may approve.
    #[serde(default)]
    pub users: Vec<String>,
    /// Members of these groups may approve.
    #[serde(default)]
    pub groups: Vec<String>,
    /// How long a request waits before it is refused.
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// URL that receives a JSON POST for each pending approval.
    pub webhook: Option<Spanned<String>>,
}
