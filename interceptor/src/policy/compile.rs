//! From policy text to a [`Policy`]: parse, check every value, resolve settings, build the
//! match index and the kernel deny entries. Every error names file, line and column.

use std::collections::HashMap;
use std::net::IpAddr;
use std::ops::Range;
use std::path::Path;

use globset::GlobBuilder;
use ipnet::IpNet;
use sha2::{Digest, Sha256};
use toml::Spanned;

use super::error::PolicyError;
use super::index::Index;
use super::kernel;
use super::model::{
    Action, Approval, Conditions, GlobField, HeaderCondition, Outcome, Pattern, Policy, Reference,
    ReferenceKind, Rule, Settings, TlsMode, ToolArgCondition,
};
use super::spec::{ApprovalSpec, MatchSpec, PolicySpec, SettingsSpec};

/// Compiles the policy `text` read from `file` (named in errors).
pub fn compile(file: &Path, text: &str) -> Result<Policy, PolicyError> {
    let spec: PolicySpec = toml::from_str(text)
        .map_err(|e| PolicyError::at(file, text, e.span().unwrap_or(0..0), e.message().trim()))?;
    let mut c = Compiler {
        file,
        text,
        references: Vec::new(),
        masking_named_at: None,
    };
    let base = c.settings(&spec.settings, &Settings::default())?;
    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut rules = Vec::with_capacity(spec.rules.len());
    for r in &spec.rules {
        let name = r.name.get_ref();
        if name.is_empty() {
            return Err(c.err(r.name.span(), "a rule's name must not be empty"));
        }
        let (line, _) = c.position(r.name.span());
        if let Some(first) = names.insert(name, line) {
            return Err(c.err(
                r.name.span(),
                format!("duplicate rule name {name:?} (first used on line {first})"),
            ));
        }
        rules.push(Rule {
            name: name.clone(),
            line,
            when: c.conditions(&r.when)?,
            outcome: Outcome {
                action: *r.action.get_ref(),
                reason: r.reason.clone(),
                settings: c.settings(&r.settings, &base)?,
                approval: c.approval(&r.action, r.approval.as_ref())?,
            },
        });
    }
    let d = &spec.default;
    let default = Outcome {
        action: *d.action.get_ref(),
        reason: d.reason.clone(),
        settings: c.settings(&d.settings, &base)?,
        approval: c.approval(&d.action, d.approval.as_ref())?,
    };
    let kernel = kernel::deny_entries(&rules);
    Ok(Policy {
        source: file.to_path_buf(),
        sha256: hex_sha256(text.as_bytes()),
        index: Index::build(&rules)
            .map_err(|e| PolicyError::file(file, format!("compiling the rules' patterns: {e}")))?,
        inspect: Settings {
            tls: TlsMode::Intercept,
            ..base
        },
        rules,
        default,
        kernel,
        references: c.references,
        masking_named_at: c.masking_named_at,
    })
}

pub fn hex_sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

struct Compiler<'a> {
    file: &'a Path,
    text: &'a str,
    references: Vec<Reference>,
    /// Where the first non-empty `secrets_mask` or `secrets_report` is.
    masking_named_at: Option<(usize, usize)>,
}

impl Compiler<'_> {
    fn err(&self, span: Range<usize>, message: impl Into<String>) -> PolicyError {
        PolicyError::at(self.file, self.text, span, message)
    }

    fn position(&self, span: Range<usize>) -> (usize, usize) {
        let e = self.err(span, "");
        (e.line, e.column)
    }

    fn settings(&mut self, s: &SettingsSpec, base: &Settings) -> Result<Settings, PolicyError> {
        Ok(Settings {
            tls: s.tls.unwrap_or(base.tls),
            secrets_mask: self.ids(
                &s.secrets_mask,
                ReferenceKind::SecretRule,
                &base.secrets_mask,
            )?,
            secrets_report: self.ids(
                &s.secrets_report,
                ReferenceKind::SecretRule,
                &base.secrets_report,
            )?,
            vault_credentials: self.ids(
                &s.vault_credentials,
                ReferenceKind::VaultCredential,
                &base.vault_credentials,
            )?,
            record_body_bytes: s.record_body_bytes.unwrap_or(base.record_body_bytes),
        })
    }

    /// A list of ids ("*" for all) that another component defines; remembered so that
    /// [`Policy::check_references`] can check them against it.
    fn ids(
        &mut self,
        given: &Option<Vec<Spanned<String>>>,
        kind: ReferenceKind,
        base: &[String],
    ) -> Result<Vec<String>, PolicyError> {
        let Some(given) = given else {
            return Ok(base.to_vec());
        };
        if kind == ReferenceKind::SecretRule
            && self.masking_named_at.is_none()
            && let Some(first) = given.first()
        {
            self.masking_named_at = Some(self.position(first.span()));
        }
        let mut out = Vec::with_capacity(given.len());
        for id in given {
            let text = id.get_ref();
            if text.is_empty() {
                return Err(self.err(id.span(), "an empty id"));
            }
            if text != "*" {
                let (line, column) = self.position(id.span());
                self.references.push(Reference {
                    kind,
                    id: text.clone(),
                    line,
                    column,
                });
            }
            out.push(text.clone());
        }
        Ok(out)
    }

    fn approval(
        &self,
        action: &Spanned<Action>,
        spec: Option<&Spanned<ApprovalSpec>>,
    ) -> Result<Option<Approval>, PolicyError> {
        match (action.get_ref(), spec) {
            (Action::Approve, None) => Err(self.err(
                action.span(),
                "action \"approve\" needs an [approval] table with users or groups who may approve",
            )),
            (Action::Approve, Some(a)) => {
                let s = a.get_ref();
                if s.users.is_empty() && s.groups.is_empty() {
                    return Err(self.err(a.span(), "an approval needs at least one user or group"));
                }
                if let Some(url) = &s.webhook
                    && !(url.get_ref().starts_with("http://")
                        || url.get_ref().starts_with("https://"))
                {
                    return Err(
                        self.err(url.span(), "a webhook must be an http:// or https:// URL")
                    );
                }
                Ok(Some(Approval {
                    users: s.users.clone(),
                    groups: s.groups.clone(),
                    timeout: s.timeout.unwrap_or(Approval::DEFAULT_TIMEOUT),
                    webhook: s.webhook.as_ref().map(|w| w.get_ref().clone()),
                }))
            }
            (_, Some(a)) => Err(self.err(
                a.span(),
                "an [approval] table only applies to action = \"approve\"",
            )),
            (_, None) => Ok(None),
        }
    }

    fn conditions(&self, m: &MatchSpec) -> Result<Conditions, PolicyError> {
        let mut when = Conditions {
            uid: m.uid.clone(),
            port: m.port.clone(),
            ..Conditions::default()
        };
        for (field, globs) in [
            (GlobField::Cgroup, &m.cgroup),
            (GlobField::Container, &m.container),
            (GlobField::Exe, &m.exe),
            (GlobField::Comm, &m.comm),
            (GlobField::User, &m.user),
            (GlobField::Enrollment, &m.enrollment),
            (GlobField::Host, &m.host),
            (GlobField::Path, &m.path),
            (GlobField::Tool, &m.tool),
        ] {
            when.globs[field.slot()] = globs
                .iter()
                .map(|g| self.pattern(field, g))
                .collect::<Result<_, _>>()?;
        }
        for net in &m.cidr {
            when.cidr.push(self.net(net)?);
        }
        for method in &m.method {
            let text = method.get_ref();
            if text.is_empty() || !text.bytes().all(|b| b.is_ascii_alphabetic()) {
                return Err(self.err(method.span(), format!("{text:?} is not an HTTP method")));
            }
            when.method.push(text.to_ascii_uppercase());
        }
        for h in &m.header {
            let name = h.name.get_ref();
            if http_token(name).is_none() {
                return Err(self.err(h.name.span(), format!("{name:?} is not a header name")));
            }
            when.header.push(HeaderCondition {
                name: name.to_ascii_lowercase(),
                value: self.glob(&h.value, false)?,
            });
        }
        for a in &m.tool_args {
            let pointer = a.pointer.get_ref();
            if !(pointer.is_empty() || pointer.starts_with('/')) {
                return Err(self.err(
                    a.pointer.span(),
                    format!("{pointer:?} is not a JSON pointer (it starts with \"/\", e.g. \"/command\")"),
                ));
            }
            when.tool_args.push(ToolArgCondition {
                pointer: pointer.clone(),
                value: self.glob(&a.value, false)?,
            });
        }
        when.api.clone_from(&m.api);
        Ok(when)
    }

    fn pattern(&self, field: GlobField, g: &Spanned<String>) -> Result<Pattern, PolicyError> {
        // In paths `*` stays within one segment and `**` crosses them. Host names compare
        // in lower case (values are lowered when matched): case-sensitive globs let globset
        // use its literal and suffix strategies rather than one big regex.
        let path_like = matches!(field, GlobField::Cgroup | GlobField::Exe | GlobField::Path);
        if field == GlobField::Host {
            let lower = Spanned::new(g.span(), g.get_ref().to_ascii_lowercase());
            let mut p = self.glob(&lower, false)?;
            p.text.clone_from(g.get_ref());
            return Ok(p);
        }
        self.glob(g, path_like)
    }

    fn glob(&self, g: &Spanned<String>, literal_separator: bool) -> Result<Pattern, PolicyError> {
        let text = g.get_ref();
        if text.is_empty() {
            return Err(self.err(g.span(), "an empty pattern matches nothing"));
        }
        let glob = GlobBuilder::new(text)
            .literal_separator(literal_separator)
            .backslash_escape(true)
            .build()
            .map_err(|e| self.err(g.span(), format!("bad glob {text:?}: {}", e.kind())))?;
        Ok(Pattern {
            text: text.clone(),
            matcher: glob.compile_matcher(),
        })
    }

    fn net(&self, net: &Spanned<String>) -> Result<IpNet, PolicyError> {
        let text = net.get_ref();
        text.parse::<IpNet>()
            .map(|n| n.trunc())
            .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
            .map_err(|_| {
                self.err(
                    net.span(),
                    format!("{text:?} is neither an IP address nor a CIDR network"),
                )
            })
    }
}

/// `name` if it is a valid HTTP header name (an RFC 9110 token).
fn http_token(name: &str) -> Option<&str> {
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    ok.then_some(name)
}
