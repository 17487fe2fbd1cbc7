//! The policy per HTTP request: a [`Hook`] that asks `Policy::decide_request` for every
//! request of a connection the policy inspects (and of plain HTTP, where the `Host` header is
//! the host name), refuses a deny with a 403 naming the rule and its reason, and holds an
//! approve until a person decides (`approvals approve|deny`), with the request line, the
//! recorded (credential-free) headers and the start of the body, secrets masked, shown to the
//! approver.

use std::sync::Arc;
use std::time::Duration;

use interceptor::approvals::HoldRequest;
use interceptor::policy::{RequestFacts, Verdict as PolicyVerdict};

use super::exchange::recorded_request_headers;
use super::hook::{Decision, ExchangeInfo, Hook, HookFuture};
use super::masking::Masking;
use super::preview::BodyPreview;
use crate::gate::{self, Gate};
use crate::sessions::PolicyDecision;

/// How much of a held request's body an approver sees.
pub const PREVIEW_BYTES: usize = 4096;
/// How long a held request's body may take to arrive for the preview (it is held anyway).
const PREVIEW_WAIT: Duration = Duration::from_secs(1);

pub struct PolicyHook {
    pub gate: Gate,
    /// Masks the body preview shown to approvers; without a secret engine none is shown.
    pub masking: Option<Arc<Masking>>,
}

/// A decision made for one request: what it is (for the record), and the hold for an
/// approve (`Ok(None)`: allowed) or why a deny refuses.
type Decided = (PolicyDecision, Result<Option<HoldRequest>, String>);

impl PolicyHook {
    /// Ok to forward; Err(why) to refuse with a 403. A decision made for this request is
    /// left in the head's extensions for the exchange's record.
    async fn decide(
        &self,
        info: &ExchangeInfo,
        head: &mut http::request::Parts,
    ) -> Result<(), String> {
        let Some((decision, hold)) = self.decide_request(info, head) else {
            return Ok(());
        };
        head.extensions.insert(decision);
        let Some(mut hold) = hold? else {
            return Ok(());
        };
        hold.request_line = Some(format!("{} {}", head.method, head.uri.path()));
        hold.headers = recorded_request_headers(&head.headers);
        hold.body_preview = self.body_preview(head).await;
        tracing::info!(session = info.session, seq = info.seq, rule = %hold.rule,
            request = hold.request_line.as_deref().unwrap_or(""), "request held for approval");
        self.gate.hold(hold).await
    }

    /// The first [`PREVIEW_BYTES`] of the body with its secrets masked; None without a secret
    /// engine, for an empty or compressed body. Read a holdback further, so that a secret
    /// starting in the preview is seen whole; what was read is forwarded after approval.
    async fn body_preview(&self, head: &http::request::Parts) -> Option<String> {
        let masking = self.masking.as_ref()?;
        let body = head.extensions.get::<BodyPreview>()?;
        if head
            .headers
            .get(http::header::CONTENT_ENCODING)
            .is_some_and(|v| v != "identity")
        {
            return None;
        }
        let holdback = masking.holdback();
        let (data, whole) = body
            .first_bytes(PREVIEW_BYTES + holdback, PREVIEW_WAIT)
            .await;
        let mut masked = masking.masked_copy(&data)?;
        // A body that stalled may end in a secret's unconfirmed start: not shown.
        let shown = match whole {
            true => PREVIEW_BYTES,
            false => PREVIEW_BYTES.min(masked.len().saturating_sub(holdback)),
        };
        masked.truncate(shown);
        (!masked.is_empty()).then(|| String::from_utf8_lossy(&masked).into_owned())
    }

    /// None when the request is not decided on its own (an earlier stage enforced the
    /// connection's decision). The policy snapshot is not kept: reloads go on during a hold.
    fn decide_request(&self, info: &ExchangeInfo, head: &http::request::Parts) -> Option<Decided> {
        let policy = self.gate.policy.get();
        let host = info.sni.as_deref().or_else(|| host_header(head));
        let facts = gate::facts(
            &info.identity,
            info.enrollment.as_deref(),
            host,
            info.destination,
        );
        // With an SNI, the TLS layer already enforced a decision that needs no request.
        if gate::settled_before_dial(&policy, &facts)
            || info.sni.is_some()
                && policy.decide_connection(&facts).verdict != PolicyVerdict::Inspect
        {
            return None;
        }
        let request = RequestFacts {
            method: head.method.as_str(),
            path: head.uri.path(),
            headers: &head.headers,
            tool: interceptor::policy::Tool::NoCall,
        };
        let d = policy.decide_request(&facts, &request);
        let decision = PolicyDecision {
            rule: d.name.to_owned(),
            verdict: d.verdict,
        };
        if d.verdict == PolicyVerdict::Allow {
            return Some((decision, Ok(None)));
        }
        let destination = gate::destination(host, info.destination);
        let hold = gate::held(&d, info.session, &info.identity, destination).map(Some);
        Some((decision, hold))
    }
}

/// The request's host name (absolute URI or `Host` header), without a port.
pub(super) fn host_header(head: &http::request::Parts) -> Option<&str> {
    let host = head.uri.host().or_else(|| {
        head.headers
            .get(http::header::HOST)
            .and_then(|v| v.to_str().ok())
    })?;
    let name = match host.rsplit_once(':') {
        Some((name, port))
            if port.bytes().all(|b| b.is_ascii_digit())
                && (!name.contains(':') || name.ends_with(']')) =>
        {
            name
        }
        _ => host,
    };
    Some(name.trim_start_matches('[').trim_end_matches(']'))
}

impl Hook for PolicyHook {
    fn on_request<'a>(
        &'a self,
        info: &'a ExchangeInfo,
        head: &'a mut http::request::Parts,
    ) -> HookFuture<'a> {
        Box::pin(async move {
            match self.decide(info, head).await {
                Ok(()) => Decision::default(),
                Err(reason) => {
                    tracing::info!(session = info.session, seq = info.seq, %reason, "request refused by policy");
                    Decision::forbidden(reason)
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::host_header;

    fn host_of(uri: &str, host: Option<&str>) -> Option<String> {
        let mut req = http::Request::builder().uri(uri);
        if let Some(h) = host {
            req = req.header(http::header::HOST, h);
        }
        let (head, ()) = req.body(()).unwrap().into_parts();
        host_header(&head).map(str::to_owned)
    }

    #[test]
    fn host_names_lose_their_port_and_brackets() {
        assert_eq!(
            host_of("/x", Some("api.test:8443")).as_deref(),
            Some("api.test")
        );
        assert_eq!(host_of("/x", Some("api.test")).as_deref(), Some("api.test"));
        assert_eq!(host_of("/x", Some("[::1]:80")).as_deref(), Some("::1"));
        assert_eq!(host_of("/x", Some("::1")).as_deref(), Some("::1"));
        assert_eq!(
            host_of("http://abs.test:81/x", Some("other.test")).as_deref(),
            Some("abs.test")
        );
        assert_eq!(host_of("/x", None), None);
    }
}
