//! Explanations: which rule decides, which of its conditions held with which values, why
//! every earlier rule did not match, and where the decision is enforced. Built by checking
//! rules one by one without the index, so it is also an independent check of the index.

use std::fmt::Write as _;

use super::decide::{Condition, Globs, Stage, Verdict};
use super::facts::{ConnectionFacts, glob_values};
use super::model::{Policy, Rule, Settings};

/// An explained decision.
#[derive(Clone, Debug)]
pub struct Explanation {
    pub verdict: Verdict,
    /// Index of the deciding rule; None for the default.
    pub rule: Option<usize>,
    pub text: String,
}

impl Policy {
    /// Explains the decision for `facts` at `stage`, rule by rule.
    pub fn explain(&self, facts: &ConnectionFacts, stage: Stage) -> Explanation {
        let mut skipped = String::new();
        let mut decided = None;
        for (i, rule) in self.rules.iter().enumerate() {
            match rule.first_unmet(facts, stage, Globs::Check) {
                None => {
                    decided = Some(i);
                    break;
                }
                Some(cond) => {
                    let _ = writeln!(
                        skipped,
                        "  #{i} {:?} (line {}): {}",
                        rule.name,
                        rule.line,
                        describe(rule, cond, facts, stage, false)
                    );
                }
            }
        }
        let d = self.decision(decided, stage);
        let mut text = String::new();
        let verdict = format!("{:?}", d.verdict).to_lowercase();
        let _ = match decided {
            Some(i) => writeln!(
                text,
                "decision: {verdict} by rule #{i} {:?} ({} line {})",
                d.name,
                self.source.display(),
                self.rules[i].line
            ),
            None => writeln!(text, "decision: {verdict} by the default (no rule matched)"),
        };
        if let Some(reason) = d.reason {
            let _ = writeln!(text, "reason: {reason}");
        }
        if let Some(i) = decided {
            let rule = &self.rules[i];
            let met: Vec<String> = conditions(rule)
                .filter(|c| is_known(*c, stage))
                .map(|c| describe(rule, c, facts, stage, true))
                .collect();
            let _ = if met.is_empty() {
                writeln!(
                    text,
                    "because: the rule has no conditions (it matches everything)"
                )
            } else {
                writeln!(text, "because: {}", met.join("; "))
            };
        }
        let _ = match d.verdict {
            Verdict::Deny if decided.is_some_and(|i| self.in_kernel(i)) => writeln!(
                text,
                "enforced: in the kernel (connect fails with EPERM for enrolled workloads)"
            ),
            Verdict::Deny => writeln!(
                text,
                "enforced: by the proxy (HTTP: 403; other TCP: connection reset)"
            ),
            Verdict::Inspect => writeln!(
                text,
                "enforced: per request: the rule has HTTP conditions (give --method and --path, or --tool, to decide a request)"
            ),
            Verdict::Approve => {
                let a = d.approval.expect("approve rules have an approval");
                writeln!(
                    text,
                    "enforced: held until approved by users {:?} or groups {:?}, refused after {}",
                    a.users,
                    a.groups,
                    humantime::format_duration(a.timeout)
                )
            }
            Verdict::Allow => Ok(()),
        };
        let _ = writeln!(text, "settings: {}", settings_line(d.settings));
        if !skipped.is_empty() {
            let _ = write!(text, "earlier rules that did not match:\n{skipped}");
        }
        Explanation {
            verdict: d.verdict,
            rule: decided,
            text,
        }
    }
}

fn settings_line(s: &Settings) -> String {
    format!(
        "tls={:?} secrets_mask={:?} secrets_report={:?} vault_credentials={:?} record_body_bytes={}",
        s.tls, s.secrets_mask, s.secrets_report, s.vault_credentials, s.record_body_bytes
    )
    .to_lowercase()
}

/// The conditions a rule has, in the order they are checked.
fn conditions(rule: &Rule) -> impl Iterator<Item = Condition> + '_ {
    let w = &rule.when;
    let simple = [
        (!w.port.is_empty()).then_some(Condition::Port),
        (!w.uid.is_empty()).then_some(Condition::Uid),
        (!w.cidr.is_empty()).then_some(Condition::Cidr),
    ];
    let globs = super::model::GlobField::ALL
        .into_iter()
        .filter(|&f| !w.globs(f).is_empty())
        .map(Condition::Glob);
    let method = (!w.method.is_empty()).then_some(Condition::Method);
    let headers = (0..w.header.len()).map(Condition::Header);
    let api = (!w.api.is_empty()).then_some(Condition::Api);
    let tool_args = (0..w.tool_args.len()).map(Condition::ToolArg);
    simple
        .into_iter()
        .flatten()
        .chain(globs)
        .chain(method)
        .chain(headers)
        .chain(api)
        .chain(tool_args)
}

/// Whether a condition's value is known at `stage` (HTTP ones only with a request).
fn is_known(c: Condition, stage: Stage) -> bool {
    match c {
        Condition::Method | Condition::Header(_) => stage.request().is_some(),
        Condition::Api | Condition::ToolArg(_) => {
            stage.request().is_some_and(|r| r.tool.call().is_some())
        }
        Condition::Glob(field) => !stage.skips(field),
        _ => true,
    }
}

/// "exe \"/usr/bin/curl\" matches [...]" or "... does not match [...]".
fn describe(rule: &Rule, c: Condition, facts: &ConnectionFacts, stage: Stage, met: bool) -> String {
    let w = &rule.when;
    let verb = if met { "matches" } else { "does not match" };
    let list = |items: Vec<String>| format!("[{}]", items.join(", "));
    match c {
        Condition::Port => format!(
            "port {} {verb} {}",
            facts.port,
            list(w.port.iter().map(u16::to_string).collect())
        ),
        Condition::Uid => format!(
            "uid {} {verb} {}",
            facts.uid,
            list(w.uid.iter().map(u32::to_string).collect())
        ),
        Condition::Cidr => {
            let ip = facts
                .dest_ip()
                .map_or("(unknown: no address given)".into(), |ip| ip.to_string());
            format!(
                "address {ip} {verb} {}",
                list(w.cidr.iter().map(|n| n.to_string()).collect())
            )
        }
        Condition::Glob(field) => {
            let values: Vec<String> = glob_values(field, facts, stage.request())
                .into_iter()
                .flatten()
                .map(|v| format!("{v:?}"))
                .collect();
            let shown = if values.is_empty() {
                "(unknown)".to_string()
            } else {
                values.join(" / ")
            };
            let patterns = list(
                w.globs(field)
                    .iter()
                    .map(|p| format!("{:?}", p.text))
                    .collect(),
            );
            format!("{} {shown} {verb} {patterns}", field.name())
        }
        Condition::Method => {
            let m = stage.request().map_or("", |r| r.method);
            format!("method {m:?} {verb} {}", list(w.method.clone()))
        }
        Condition::Header(i) => {
            let h = &w.header[i];
            format!("header {:?} {} {:?}", h.name, has_value(met), h.value.text)
        }
        Condition::NotHttp => "the rule has HTTP conditions and the connection is not HTTP".into(),
        Condition::NoToolCall => {
            "the rule has tool conditions and the request is no tool call".into()
        }
        Condition::Api => {
            let api = stage
                .request()
                .and_then(|r| r.tool.call())
                .map(|t| t.api.name());
            let apis = w.api.iter().map(|a| format!("{:?}", a.name())).collect();
            format!("api {:?} {verb} {}", api.unwrap_or(""), list(apis))
        }
        Condition::ToolArg(i) => {
            let a = &w.tool_args[i];
            let has = has_value(met);
            format!("tool argument {:?} {has} {:?}", a.pointer, a.value.text)
        }
    }
}

fn has_value(met: bool) -> &'static str {
    if met {
        "has a value matching"
    } else {
        "has no value matching"
    }
}
