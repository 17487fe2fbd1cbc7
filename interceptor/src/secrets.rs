//! Secret masking and credential injection in the daemon: the rules (built in, `run --rules`) and the
//! vault's echo rules compiled into one engine, the HTTP hooks that use it, and the vault
//! (`run --vault`) reloaded when its files change.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use interceptor::detection::{DatabaseCache, Engine, Rule, RuleSources, SecretHasher};
use interceptor::vault::SharedVault;

use crate::http::hook::{Hook, Hooks};
use crate::http::masking::Masking;
use crate::http::tokenize::Tokenizer;
use crate::sessions::{Event, Store};

/// How often the vault's files are checked for changes.
const VAULT_POLL: Duration = Duration::from_secs(2);

/// What the daemon installs: HTTP hooks, and the masking for recorded command lines.
pub struct Secrets {
    pub hooks: Hooks,
    pub masking: Option<Arc<Masking>>,
    /// Ids of the rules loaded, which a policy may name (none: a policy may not mask).
    pub rule_ids: Vec<String>,
}

/// The HTTP hooks for these rules and vault: injection first (so the credential it puts in
/// is not masked on its way up), then masking. None without rules or vault. The rules'
/// compiled databases are kept in `cache`, if given.
pub fn hooks(
    rules: &RuleSources,
    cache: Option<&Path>,
    vault: Option<&Path>,
    store: &Store,
) -> anyhow::Result<Secrets> {
    let vault = vault
        .map(|p| SharedVault::open(p).with_context(|| format!("loading the vault {}", p.display())))
        .transpose()?;
    let rules = rules
        .load()
        .with_context(|| format!("loading secret rules: {}", rules.describe()))?;
    let rule_ids = rules.iter().map(|r| r.id.clone()).collect();
    let cache = cache.and_then(DatabaseCache::open);
    let started = Instant::now();
    let Some(engine) = compile(&rules, vault.as_ref(), cache.as_ref())? else {
        return Ok(Secrets {
            hooks: Hooks::default(),
            masking: None,
            rule_ids,
        });
    };
    tracing::info!(
        rules = engine.rules().len(),
        vault = vault.is_some(),
        compile_ms = started.elapsed().as_millis() as u64,
        "secret masking on"
    );
    let store = store.clone();
    let masking = Arc::new(Masking::new(
        engine,
        SecretHasher::random().map_err(|e| anyhow::anyhow!("salting secret hashes: {e}"))?,
        Arc::new(move |finding| store.append(Event::Secret(finding))),
    ));
    let mut hooks: Vec<Arc<dyn Hook>> = Vec::new();
    if let Some(vault) = vault {
        tokio::spawn(reload_vault(vault.clone(), rules, masking.clone()));
        hooks.push(Arc::new(Tokenizer {
            vault,
            masking: masking.clone(),
        }));
    }
    hooks.push(masking.clone());
    Ok(Secrets {
        hooks: Hooks::new(hooks),
        masking: Some(masking),
        rule_ids,
    })
}

/// The rules plus one echo rule per vault credential; None when that is no rule at all. Their
/// databases come from `cache` (or go there) only without echo rules: those hold the
/// credentials, which are not to be copied to disk.
fn compile(
    rules: &[Rule],
    vault: Option<&SharedVault>,
    cache: Option<&DatabaseCache>,
) -> anyhow::Result<Option<Arc<Engine>>> {
    let echo_rules = vault.map(|v| v.current().echo_rules()).unwrap_or_default();
    let cache = cache.filter(|_| echo_rules.is_empty());
    let mut all = rules.to_vec();
    all.extend(echo_rules);
    if all.is_empty() {
        return Ok(None);
    }
    let placeholders = vault
        .map(|v| v.current().placeholders())
        .unwrap_or_default();
    // Placeholders are swapped after masking: they must reach the swap unmasked.
    let engine = match cache {
        Some(cache) => Engine::compile_cached(&all, cache),
        None => Engine::compile(&all),
    };
    let engine = engine
        .context("compiling the secret rules")?
        .exempting(placeholders);
    Ok(Some(Arc::new(engine)))
}

/// Reloads the vault when a file of it changes, with the engine its echo rules need; a vault
/// that does not load leaves the running one in force.
async fn reload_vault(vault: SharedVault, rules: Vec<Rule>, masking: Arc<Masking>) {
    let mut tick = tokio::time::interval(VAULT_POLL);
    loop {
        tick.tick().await;
        let (v, r) = (vault.clone(), rules.clone());
        let reloaded = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            if !v.reload_if_changed()? {
                return Ok(None);
            }
            compile(&r, Some(&v), None)
        })
        .await;
        match reloaded {
            Ok(Ok(Some(engine))) => {
                masking.set_engine(engine);
                tracing::info!("vault reloaded");
            }
            Ok(Ok(None)) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %format!("{e:#}"), "vault not reloaded; the running one stays")
            }
            Err(e) => tracing::warn!(error = %e, "vault reload task"),
        }
    }
}
