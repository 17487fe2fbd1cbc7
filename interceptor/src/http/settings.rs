//! The policy's settings for secrets, per connection or request: which secret rules mask
//! (`secrets_mask`), which only report (`secrets_report`), which vault credentials may be
//! injected (`vault_credentials`), and how much of each body is recorded
//! (`record_body_bytes`). They come with the decision that governs the traffic, made the
//! way the policy layers make it (`gate`, `policy_hook`).
//!
//! A [`Plan`] per rule of the policy (its settings turned into a rule bitmask of the engine
//! in force) is built once per policy load and engine, so a request costs one decision and
//! an index, no allocation.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock, RwLock};

use interceptor::detection::{Engine, Handling, Selection};
use interceptor::policy::{
    self, Decision, Policy, RequestFacts, SecretHandling, Settings, Tool, Verdict,
};

use super::hook::ExchangeInfo;
use crate::gate;
use crate::identity::Identity;

/// Prefix of the rule ids the vault adds (one per credential): a real credential echoed
/// back is always masked, whatever the policy says of other rules.
const VAULT_RULE_PREFIX: &str = "vault.";

/// Most of one body an exchange record keeps, whatever the policy asks: a record (two
/// bodies, each at most twice its size once encoded) must stay well under the session
/// store's frame limit.
pub const MAX_RECORDED_BODY: usize = 2 << 20;

/// What the secret layers do with one connection or request.
pub struct Plan {
    /// The deciding policy rule's name ("default").
    pub rule: Arc<str>,
    /// The engine the selection was built for (use it to scan).
    pub engine: Arc<Engine>,
    /// Rules that mask or report; None when no rule does (nothing to scan for).
    pub selection: Option<Arc<Selection>>,
    pub settings: Arc<Settings>,
}

impl std::fmt::Debug for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plan")
            .field("rule", &self.rule)
            .field("selection", &self.selection)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Plan {
    fn new(
        rule: &str,
        engine: &Arc<Engine>,
        settings: Arc<Settings>,
        selection: Option<Arc<Selection>>,
    ) -> Plan {
        Plan {
            rule: rule.into(),
            engine: engine.clone(),
            selection,
            settings,
        }
    }

    /// Without a policy: every rule masks, no credential restriction beyond the vault's
    /// own, bodies recorded as [`Settings::default`] says.
    pub fn unruled(engine: &Arc<Engine>) -> Plan {
        let settings = Settings {
            vault_credentials: vec!["*".into()],
            ..Settings::default()
        };
        Plan::new(
            "default",
            engine,
            Arc::new(settings),
            Some(Arc::new(Selection::mask_all(engine))),
        )
    }

    /// How many bytes of each body to record: the policy's `record_body_bytes`, at most
    /// [`MAX_RECORDED_BODY`].
    pub fn record_cap(&self) -> usize {
        usize::try_from(self.settings.record_body_bytes)
            .unwrap_or(usize::MAX)
            .min(MAX_RECORDED_BODY)
    }
}

fn selection(engine: &Engine, settings: &Settings) -> Option<Arc<Selection>> {
    let s = Selection::new(engine, |id| {
        if id.starts_with(VAULT_RULE_PREFIX) {
            return Handling::Mask;
        }
        match settings.secret_handling(id) {
            SecretHandling::Mask => Handling::Mask,
            SecretHandling::Report => Handling::Report,
            SecretHandling::Ignore => Handling::Ignore,
        }
    });
    s.any().then(|| Arc::new(s))
}

/// The plans of one policy for one engine.
struct Plans {
    policy: Arc<Policy>,
    engine: Arc<Engine>,
    /// Indexed like the policy's rules.
    rules: Vec<Arc<Plan>>,
    default: Arc<Plan>,
}

impl Plans {
    fn build(policy: Arc<Policy>, engine: Arc<Engine>) -> Plans {
        // Rules mostly share their settings: one selection per distinct settings.
        let mut distinct: Vec<(Arc<Settings>, Option<Arc<Selection>>)> = Vec::new();
        let mut plan = |name: &str, settings: &Settings| {
            let (settings, selection) = match distinct.iter().find(|(s, _)| **s == *settings) {
                Some(found) => found.clone(),
                None => {
                    let built = (Arc::new(settings.clone()), selection(&engine, settings));
                    distinct.push(built.clone());
                    built
                }
            };
            Arc::new(Plan::new(name, &engine, settings, selection))
        };
        let rules = policy
            .rules()
            .iter()
            .map(|r| plan(&r.name, &r.outcome.settings))
            .collect();
        let default = plan("default", &policy.default_outcome().settings);
        Plans {
            rules,
            default,
            policy,
            engine,
        }
    }

    fn get(&self, d: &Decision) -> Arc<Plan> {
        match (d.verdict, d.rule) {
            // Only a connection HTTP rules will decide carries these settings; the layers
            // ask for final decisions, so this is a fallback.
            (Verdict::Inspect, _) => Arc::new(Plan::new(
                d.name,
                &self.engine,
                Arc::new(d.settings.clone()),
                selection(&self.engine, d.settings),
            )),
            (_, Some(i)) => self.rules[i].clone(),
            (_, None) => self.default.clone(),
        }
    }
}

/// Plans for the policy in force, rebuilt when the policy or the engine changes.
#[derive(Default)]
pub struct PlanSource {
    policy: OnceLock<policy::Current>,
    cache: RwLock<Option<Arc<Plans>>>,
}

impl PlanSource {
    /// Follow this policy from now on (without one, every plan is [`Plan::unruled`]).
    pub fn follow(&self, policy: policy::Current) {
        let _ = self.policy.set(policy);
    }

    fn plans(&self, engine: &Arc<Engine>) -> Option<Arc<Plans>> {
        let policy = self.policy.get()?.get();
        let fresh = |p: &Plans| Arc::ptr_eq(&p.policy, &policy) && Arc::ptr_eq(&p.engine, engine);
        if let Some(p) = self
            .cache
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            && fresh(p)
        {
            return Some(p.clone());
        }
        let built = Arc::new(Plans::build(policy, engine.clone()));
        tracing::debug!(
            rules = built.rules.len(),
            "secret settings rebuilt for the policy in force"
        );
        *self.cache.write().unwrap_or_else(|e| e.into_inner()) = Some(built.clone());
        Some(built)
    }

    /// The plan of one HTTP request: the decision `policy_hook` enforces for it (the TLS
    /// layer's, when that one did not leave the request to HTTP rules).
    pub fn for_request(
        &self,
        engine: &Arc<Engine>,
        info: &ExchangeInfo,
        head: &http::request::Parts,
    ) -> Arc<Plan> {
        let Some(plans) = self.plans(engine) else {
            return Arc::new(Plan::unruled(engine));
        };
        let policy = &plans.policy;
        let host = info
            .sni
            .as_deref()
            .or_else(|| super::policy_hook::host_header(head));
        let facts = gate::facts(
            &info.identity,
            info.enrollment.as_deref(),
            host,
            info.destination,
        );
        if let Some(d) = settled(policy, &facts) {
            return plans.get(&d);
        }
        if info.sni.is_some() {
            let d = policy.decide_connection(&facts);
            if d.verdict != Verdict::Inspect {
                return plans.get(&d);
            }
        }
        // Masking is set up before the body is read: a rule with tool conditions gives
        // no settings (`docs/policy.md`).
        let request = RequestFacts {
            method: head.method.as_str(),
            path: head.uri.path(),
            headers: &head.headers,
            tool: Tool::NoCall,
        };
        plans.get(&policy.decide_request(&facts, &request))
    }

    /// The plan of a stream that is not HTTP (raw TCP): the decision `gate::on_opaque`
    /// enforces for it.
    pub fn for_stream(
        &self,
        engine: &Arc<Engine>,
        identity: &Identity,
        enrollment: Option<&str>,
        host: Option<&str>,
        dest: SocketAddr,
    ) -> Arc<Plan> {
        let Some(plans) = self.plans(engine) else {
            return Arc::new(Plan::unruled(engine));
        };
        let facts = gate::facts(identity, enrollment, host, dest);
        match settled(&plans.policy, &facts) {
            Some(d) => plans.get(&d),
            None => plans.get(&plans.policy.decide_opaque(&facts)),
        }
    }
}

/// The decision `gate::before_dial` enforced, when it settled the connection.
fn settled<'p>(policy: &'p Policy, facts: &policy::ConnectionFacts) -> Option<Decision<'p>> {
    if !gate::settled_before_dial(policy, facts) {
        return None;
    }
    let facts = policy::ConnectionFacts {
        host: None,
        ..*facts
    };
    policy.decide_before_dial(&facts)
}
