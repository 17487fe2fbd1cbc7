//! The tokenization hook: a vault placeholder in a request header (`Authorization: Bearer
//! itk_...`) or body is replaced with the real credential on the way out, only when the
//! vault allows the connection's identity and destination and the policy's decision for the
//! request lists the credential in `vault_credentials`; otherwise the request is refused with
//! 403 and the reason, and the credential goes nowhere.
//!
//! The destination is the name the upstream's certificate was verified for (the SNI), or the
//! address dialled when there is none, never the workload's `Host` header: the credential
//! goes where the bytes really go. The real value never reaches the workload, the logs or
//! the records: a response that echoes it is masked by the masking hook, whose engine holds
//! the vault's echo rules, and the swapped header is marked ([`Tokenized`]) so that hook
//! leaves it alone on its way upstream.
//!
//! Bodies stream through a [`StreamSwap`] that holds back only what could be the start of a
//! placeholder cut by a chunk's end. The swap changes the body's length, so its
//! `Content-Length` goes (chunked framing on HTTP/1.1, DATA frames on HTTP/2). The masking
//! hook runs it after its own masking ([`BodySwap`]), so the real credential is neither
//! masked nor recorded. A placeholder refused in a body ends the request body: nothing more
//! goes upstream, and the workload gets the 403 ([`Refused`]).

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};
use interceptor::vault::{
    Caller, Check, Credential, Destination, Refusal, SharedVault, StreamSwap,
};

use super::hook::{BodyTransform, BoxError, Decision, ExchangeInfo, Hook, HookFuture, Refused};
use super::masking::Masking;
use super::settings::Plan;

/// Request headers that now carry a real credential (in the request's extensions).
#[derive(Clone, Debug)]
pub struct Tokenized(pub Vec<HeaderName>);

/// The request body's swap, left in the request's extensions for the masking hook to run
/// after its masking.
#[derive(Clone)]
pub struct BodySwap(Arc<Mutex<Option<SwapBody>>>);

impl BodySwap {
    pub fn take(&self) -> Option<Box<dyn BodyTransform>> {
        let swap = self.0.lock().unwrap_or_else(|e| e.into_inner()).take()?;
        Some(Box::new(swap))
    }
}

pub struct Tokenizer {
    pub vault: SharedVault,
    /// Where the policy's settings for the request come from.
    pub masking: Arc<Masking>,
}

/// Whether a credential may go into this request: the policy's `vault_credentials`, then
/// the vault's own identity and destination rules.
fn check(info: &ExchangeInfo, plan: Arc<Plan>, path: &str) -> Box<Check<'static>> {
    let identity = info.identity.clone();
    let host = info
        .sni
        .clone()
        .unwrap_or_else(|| info.destination.ip().to_string());
    let path = path.to_owned();
    Box::new(move |c: &Credential| {
        if !plan.settings.may_inject(&c.name) {
            return Err(Refusal::Policy {
                name: c.name.clone(),
                rule: plan.rule.to_string(),
            });
        }
        let caller = Caller {
            exe: identity.exe.as_deref(),
            uid: identity.uid,
            cgroup: identity.cgroup.as_deref(),
            container: identity.container.as_ref().map(|c| c.id.as_str()),
        };
        c.authorize(
            &caller,
            &Destination {
                host: &host,
                path: &path,
            },
        )
    })
}

impl Tokenizer {
    fn swap(&self, info: &ExchangeInfo, head: &mut http::request::Parts) -> Result<(), String> {
        let vault = self.vault.current();
        let plan = self.masking.plan(info, head);
        let mut check = check(info, plan, head.uri.path());
        let mut swapped = Vec::new();
        for (name, value) in head.headers.iter_mut() {
            let Some(s) = vault
                .swap(value.as_bytes(), &mut *check)
                .map_err(|refusal| refusal.to_string())?
            else {
                continue;
            };
            let mut real = HeaderValue::from_bytes(&s.bytes).map_err(|_| {
                format!(
                    "credential {:?} is not a valid value for header {name}",
                    s.used.join(", ")
                )
            })?;
            real.set_sensitive(true);
            *value = real;
            tracing::info!(session = info.session, seq = info.seq, header = %name,
                credentials = ?s.used, "vault credential injected");
            swapped.push(name.clone());
        }
        if !swapped.is_empty() {
            head.extensions.insert(Tokenized(swapped));
        }
        if !vault.credentials().is_empty() {
            let body = SwapBody {
                swap: StreamSwap::new(vault, check),
                session: info.session,
                seq: info.seq,
                logged: 0,
            };
            head.extensions
                .insert(BodySwap(Arc::new(Mutex::new(Some(body)))));
        }
        Ok(())
    }
}

/// A request body with its placeholders swapped as it streams.
struct SwapBody {
    swap: StreamSwap,
    session: u64,
    seq: u64,
    /// Credentials already logged as injected.
    logged: usize,
}

impl SwapBody {
    fn run(&mut self, data: &[u8], last: bool) -> Result<Bytes, BoxError> {
        let mut out = Vec::with_capacity(data.len());
        let swapped = match last {
            false => self.swap.push(data, &mut out),
            true => self.swap.finish(&mut out),
        };
        if let Err(refusal) = swapped {
            tracing::warn!(session = self.session, seq = self.seq, reason = %refusal,
                "vault placeholder in a request body refused");
            return Err(Box::new(Refused {
                status: StatusCode::FORBIDDEN,
                reason: refusal.to_string(),
            }));
        }
        let used = self.swap.used();
        if used.len() > self.logged {
            tracing::info!(session = self.session, seq = self.seq, location = "body",
                credentials = ?&used[self.logged..], "vault credential injected");
            self.logged = used.len();
        }
        Ok(out.into())
    }
}

impl BodyTransform for SwapBody {
    fn chunk(&mut self, data: Bytes) -> Result<Bytes, BoxError> {
        self.run(&data, false)
    }

    fn finish(&mut self) -> Result<Bytes, BoxError> {
        self.run(&[], true)
    }
}

impl Hook for Tokenizer {
    fn on_request<'a>(
        &'a self,
        info: &'a ExchangeInfo,
        head: &'a mut http::request::Parts,
    ) -> HookFuture<'a> {
        Box::pin(async move {
            match self.swap(info, head) {
                Ok(()) => Decision::default(),
                Err(reason) => {
                    tracing::warn!(session = info.session, seq = info.seq, %reason,
                        "vault placeholder refused");
                    Decision::forbidden(reason)
                }
            }
        })
    }
}
