//! Decisions: the first rule whose conditions all hold decides; the default when none does.

use serde::{Deserialize, Serialize};

use super::facts::{ConnectionFacts, RequestFacts, Tool, glob_values};
use super::model::{Action, Approval, GlobField, Policy, Rule, Settings};

/// What the proxy does with a connection or request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Allow,
    Deny,
    /// Hold until approved ([`Decision::approval`] says by whom and how long).
    Approve,
    /// Connection stage only: an HTTP rule may decide this connection's requests, so
    /// intercept it and call [`Policy::decide_request`] for every request (or
    /// [`Policy::decide_opaque`] if it turns out not to be HTTP).
    Inspect,
}

impl From<Action> for Verdict {
    fn from(a: Action) -> Self {
        match a {
            Action::Allow => Verdict::Allow,
            Action::Deny => Verdict::Deny,
            Action::Approve => Verdict::Approve,
        }
    }
}

/// One decision, borrowed from the policy that made it (no allocation).
#[derive(Clone, Copy, Debug)]
pub struct Decision<'p> {
    pub verdict: Verdict,
    /// Index of the deciding rule in file order; None for the default.
    pub rule: Option<usize>,
    /// The deciding rule's name, or "default".
    pub name: &'p str,
    pub reason: Option<&'p str>,
    pub settings: &'p Settings,
    pub approval: Option<&'p Approval>,
}

/// How much is known when deciding.
#[derive(Clone, Copy, Debug)]
pub enum Stage<'r, 'a> {
    /// Before dialing upstream: neither the host name (SNI, Host) nor HTTP is known yet, so
    /// their conditions count as met (see [`Policy::decide_before_dial`]).
    Dial,
    /// A new connection (with its SNI when it has one): HTTP conditions are not known yet.
    Connection,
    /// A connection that is not HTTP: rules with HTTP conditions cannot match.
    Opaque,
    Request(&'r RequestFacts<'a>),
}

impl<'a> Stage<'_, 'a> {
    pub fn request(&self) -> Option<&RequestFacts<'a>> {
        match self {
            Stage::Request(r) => Some(r),
            _ => None,
        }
    }

    /// Whether conditions on `field` are left undecided at this stage.
    pub fn skips(&self, field: GlobField) -> bool {
        match field {
            GlobField::Path => self.request().is_none(),
            // Without a call there is no name: the tool check below says why.
            GlobField::Tool => self.request().is_none_or(|r| r.tool.call().is_none()),
            GlobField::Host => matches!(self, Stage::Dial),
            _ => false,
        }
    }
}

/// One condition of a rule (as reported when it is not met).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Condition {
    Glob(GlobField),
    Uid,
    Cidr,
    Port,
    Method,
    /// The header condition at this index.
    Header(usize),
    /// The rule has HTTP conditions and the connection is not HTTP.
    NotHttp,
    Api,
    /// The tool argument condition at this index.
    ToolArg(usize),
    /// The rule has tool conditions and the request carries no tool call.
    NoToolCall,
}

/// Whether glob conditions are checked here or were already checked by the index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Globs {
    Check,
    Skip,
}

impl Rule {
    /// The first condition (in a fixed order) that `c` at `stage` does not meet; None when
    /// the rule matches. At the connection stage HTTP conditions count as met (the verdict is
    /// then [`Verdict::Inspect`]). With [`Globs::Check`] it allocates (explanations only).
    pub fn first_unmet(
        &self,
        c: &ConnectionFacts,
        stage: Stage,
        globs: Globs,
    ) -> Option<Condition> {
        let w = &self.when;
        if !w.port.is_empty() && !w.port.contains(&c.port) {
            return Some(Condition::Port);
        }
        if !w.uid.is_empty() && !w.uid.contains(&c.uid) {
            return Some(Condition::Uid);
        }
        if !w.cidr_matches(c.dest_ip()) {
            return Some(Condition::Cidr);
        }
        if globs == Globs::Check {
            let request = stage.request();
            for field in GlobField::ALL {
                let patterns = w.globs(field);
                if patterns.is_empty() || stage.skips(field) {
                    continue;
                }
                let hit = glob_values(field, c, request)
                    .into_iter()
                    .flatten()
                    .map(|v| match field {
                        GlobField::Host => v.to_ascii_lowercase(),
                        _ => v.to_string(),
                    })
                    .any(|v| patterns.iter().any(|p| p.matcher.is_match(&v)));
                if !hit {
                    return Some(Condition::Glob(field));
                }
            }
        }
        if !w.is_http() {
            return None;
        }
        let r = match stage {
            Stage::Dial | Stage::Connection => return None,
            Stage::Opaque => return Some(Condition::NotHttp),
            Stage::Request(r) => r,
        };
        if !w.method.is_empty() && !w.method.iter().any(|m| m.eq_ignore_ascii_case(r.method)) {
            return Some(Condition::Method);
        }
        for (i, h) in w.header.iter().enumerate() {
            let found = r.headers.any_value(&h.name, &mut |v| {
                std::str::from_utf8(v).is_ok_and(|v| h.value.matcher.is_match(v))
            });
            if !found {
                return Some(Condition::Header(i));
            }
        }
        if !w.is_tool() {
            return None;
        }
        let call = match r.tool {
            Tool::Unread => return None,
            Tool::NoCall => return Some(Condition::NoToolCall),
            Tool::Call(call) => call,
        };
        if !w.api.is_empty() && !w.api.contains(&call.api) {
            return Some(Condition::Api);
        }
        w.tool_args
            .iter()
            .position(|a| !a.holds(call.arguments))
            .map(Condition::ToolArg)
    }
}

impl Policy {
    /// Decides a new connection (before anything is sent upstream). Pass the SNI as
    /// `facts.host` when it is known (after peeking at the ClientHello).
    pub fn decide_connection(&self, facts: &ConnectionFacts) -> Decision<'_> {
        self.decide(facts, Stage::Connection)
    }

    /// Decides a connection before it is dialed, when that decision cannot change once its
    /// host name is known: None when the deciding rule has a host condition (decide again with
    /// the SNI). A verdict of deny or approve is then final for the connection.
    pub fn decide_before_dial(&self, facts: &ConnectionFacts) -> Option<Decision<'_>> {
        let d = self.decide(facts, Stage::Dial);
        let by_host = d
            .rule
            .is_some_and(|i| !self.rules[i].when.globs(GlobField::Host).is_empty());
        (!by_host || facts.host.is_some()).then_some(d)
    }

    /// Decides one HTTP request of a connection.
    pub fn decide_request(&self, facts: &ConnectionFacts, request: &RequestFacts) -> Decision<'_> {
        self.decide(facts, Stage::Request(request))
    }

    /// Decides a connection that [`Verdict::Inspect`] sent to the HTTP layer but that is not
    /// HTTP: rules with HTTP conditions are skipped.
    pub fn decide_opaque(&self, facts: &ConnectionFacts) -> Decision<'_> {
        self.decide(facts, Stage::Opaque)
    }

    pub fn decide(&self, facts: &ConnectionFacts, stage: Stage) -> Decision<'_> {
        let first = self.index.first_match(facts, stage, |i| {
            self.rules[i]
                .first_unmet(facts, stage, Globs::Skip)
                .is_none()
        });
        self.decision(first, stage)
    }

    /// The decision of rule `index` (None: the default) at `stage`.
    pub fn decision(&self, index: Option<usize>, stage: Stage) -> Decision<'_> {
        let Some(i) = index else {
            let d = &self.default;
            return Decision {
                verdict: d.action.into(),
                rule: None,
                name: "default",
                reason: d.reason.as_deref(),
                settings: &d.settings,
                approval: d.approval.as_ref(),
            };
        };
        let rule = &self.rules[i];
        let o = &rule.outcome;
        if matches!(stage, Stage::Dial | Stage::Connection) && rule.when.is_http() {
            return Decision {
                verdict: Verdict::Inspect,
                rule: Some(i),
                name: &rule.name,
                reason: None,
                settings: &self.inspect,
                approval: None,
            };
        }
        Decision {
            verdict: o.action.into(),
            rule: Some(i),
            name: &rule.name,
            reason: o.reason.as_deref(),
            settings: &o.settings,
            approval: o.approval.as_ref(),
        }
    }
}
