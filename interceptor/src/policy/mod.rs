//! The policy engine: one TOML file says, rule by rule, who may reach what, with which
//! settings (TLS interception, secret masking, vault credentials, body recording), and what
//! waits for a person. The first rule whose conditions all hold decides; the default decides
//! when none does.
//!
//! - [`Policy::load`] parses and checks a file; errors carry file, line and column.
//! - [`Policy::decide_connection`], [`Policy::decide_request`], [`Policy::decide_opaque`]
//!   decide on the hot path without allocating.
//! - [`Policy::explain`] says why, rule by rule.
//! - [`Policy::kernel_denies`] gives the deny rules that the kernel enforces.
//! - [`Current`] holds the policy in force, swapped atomically on reload.

mod compile;
mod decide;
mod error;
mod explain;
mod facts;
mod index;
mod kernel;
mod model;
mod spec;
#[cfg(test)]
mod tests;

use std::path::Path;
use std::sync::{Arc, RwLock};

pub use compile::hex_sha256;
pub use decide::{Decision, Stage, Verdict};
pub use error::PolicyError;
pub use explain::Explanation;
pub use facts::{ConnectionFacts, Headers, RequestFacts, Tool, ToolCall};
pub use kernel::{DenyNet, ProxyOnly};
pub use model::{
    Action, Api, Approval, Outcome, Policy, ReferenceKind, Rule, SecretHandling, Settings, TlsMode,
};

impl Policy {
    /// Reads and compiles the policy at `path`.
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| PolicyError::file(path, format!("cannot read the policy: {e}")))?;
        Policy::parse(path, &text)
    }

    /// Compiles policy `text`; `path` names it in errors.
    pub fn parse(path: &Path, text: &str) -> Result<Policy, PolicyError> {
        compile::compile(path, text)
    }

    /// Checks that every id of `kind` the policy names is one of `known` (the secret engine's
    /// rule ids, the vault's credential names).
    pub fn check_references<S: AsRef<str>>(
        &self,
        kind: ReferenceKind,
        known: &[S],
    ) -> Result<(), PolicyError> {
        match self
            .references
            .iter()
            .find(|r| r.kind == kind && !known.iter().any(|k| k.as_ref() == r.id))
        {
            None => Ok(()),
            Some(r) => Err(PolicyError {
                file: self.source.clone(),
                line: r.line,
                column: r.column,
                message: format!(
                    "unknown {} {:?}",
                    match kind {
                        ReferenceKind::SecretRule => "secret rule id",
                        ReferenceKind::VaultCredential => "vault credential",
                    },
                    r.id
                ),
            }),
        }
    }
}

impl Policy {
    /// Checks the policy against the secret rules that are loaded (`known`, their ids): every
    /// id it names must be one of them, and a policy that masks or reports secrets at all
    /// needs at least one rule; with none, every secret would pass unmasked while the policy
    /// says they are masked.
    pub fn check_secret_rules<S: AsRef<str>>(&self, known: &[S]) -> Result<(), PolicyError> {
        if known.is_empty() && self.uses_secret_rules() {
            const NONE: &str = "no secret rules are loaded, so no secret would be masked; load \
                                rules or set secrets_mask = [] and secrets_report = []";
            return Err(match self.masking_named_at {
                Some((line, column)) => PolicyError {
                    file: self.source.clone(),
                    line,
                    column,
                    message: format!("the policy masks secrets here, but {NONE}"),
                },
                None => PolicyError::file(
                    &self.source,
                    format!(
                        "the policy masks secrets (secrets_mask = [\"*\"] is the default), but {NONE}"
                    ),
                ),
            });
        }
        self.check_references(ReferenceKind::SecretRule, known)
    }
}

/// Where the policy comes from when none is given: `policies/default.toml` under the working
/// directory (a checkout), else `/etc/interceptor/policy.toml`, else the built-in copy of the
/// shipped default. Looked up again at every reload.
pub const DEFAULT_PATHS: [&str; 2] = ["policies/default.toml", "/etc/interceptor/policy.toml"];

/// The shipped default policy, compiled in for hosts without a policy file.
const BUILTIN: &str = include_str!("../../../policies/default.toml");

/// Loads `explicit`, or the first of [`DEFAULT_PATHS`] that exists, or the built-in default.
pub fn load(explicit: Option<&Path>) -> Result<Policy, PolicyError> {
    let found = explicit.map(Path::to_path_buf).or_else(|| {
        DEFAULT_PATHS
            .iter()
            .map(Path::new)
            .find(|p| p.is_file())
            .map(|p| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf()))
    });
    match found {
        Some(path) => Policy::load(&path),
        None => Policy::parse(Path::new("(built-in policies/default.toml)"), BUILTIN),
    }
}

/// The policy in force. Readers take a cheap `Arc` snapshot per connection; a reload swaps
/// in a new policy only once it has compiled.
#[derive(Clone)]
pub struct Current(Arc<RwLock<Arc<Policy>>>);

impl Current {
    pub fn new(policy: Arc<Policy>) -> Current {
        Current(Arc::new(RwLock::new(policy)))
    }

    pub fn get(&self) -> Arc<Policy> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set(&self, policy: Arc<Policy>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = policy;
    }
}
