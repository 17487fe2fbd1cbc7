//! The tokenization hook: a vault placeholder in a request header (`Authorization: Bearer
//! itk_...`) is replaced with the real credential on the way out, only when the vault allows
//! the connection's identity and destination; otherwise the request is refused with 403 and
//! the reason, and nothing goes upstream.
//!
//! The destination is the name the upstream's certificate was verified for (the SNI), or the
//! address dialled when there is none, never the workload's `Host` header: the credential
//! goes where the bytes really go. The real value never reaches the workload, the logs or
//! the records: a response that echoes it is masked by the masking hook, whose engine holds
//! the vault's echo rules, and the swapped header is marked ([`Tokenized`]) so that hook
//! leaves it alone on its way upstream.

use http::{HeaderName, HeaderValue, StatusCode};
use interceptor::vault::{Caller, Destination, SharedVault};

use super::hook::{Decision, ExchangeInfo, Hook, HookFuture, Verdict};

/// Request headers that now carry a real credential (in the request's extensions).
#[derive(Clone, Debug)]
pub struct Tokenized(pub Vec<HeaderName>);

pub struct Tokenizer {
    pub vault: SharedVault,
}

impl Tokenizer {
    fn swap(&self, info: &ExchangeInfo, head: &mut http::request::Parts) -> Result<(), String> {
        let vault = self.vault.current();
        let identity = &info.identity;
        let caller = Caller {
            exe: identity.exe.as_deref(),
            uid: identity.uid,
            cgroup: identity.cgroup.as_deref(),
            container: identity.container.as_ref().map(|c| c.id.as_str()),
        };
        let host = info
            .sni
            .clone()
            .unwrap_or_else(|| info.destination.ip().to_string());
        let path = head.uri.path().to_owned();
        let destination = Destination {
            host: &host,
            path: &path,
        };
        let mut swapped = Vec::new();
        for (name, value) in head.headers.iter_mut() {
            let Some(s) = vault
                .swap(value.as_bytes(), &caller, &destination)
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
                credentials = ?s.used, %host, "vault credential injected");
            swapped.push(name.clone());
        }
        if !swapped.is_empty() {
            head.extensions.insert(Tokenized(swapped));
        }
        Ok(())
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
                    Decision {
                        verdict: Verdict::Refuse {
                            status: StatusCode::FORBIDDEN,
                            reason,
                        },
                        body: None,
                    }
                }
            }
        })
    }

    fn on_response<'a>(
        &'a self,
        _info: &'a ExchangeInfo,
        _head: &'a mut http::response::Parts,
    ) -> HookFuture<'a> {
        Box::pin(async { Decision::default() })
    }
}
