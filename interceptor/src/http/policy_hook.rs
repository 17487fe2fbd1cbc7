//! The policy per HTTP request: a [`Hook`] that asks `Policy::decide_request` for every
//! request of a connection the policy inspects (and of plain HTTP, where the `Host` header is
//! the host name), refuses a deny with a 403 naming the rule and its reason, and holds an
//! approve until a person decides (`approvals approve|deny`), with the request line, the
//! recorded (credential-free) headers and the start of the body, secrets masked, shown to the
//! approver. MCP tool calls in a request's body are decided call by call with the policy's
//! tool conditions and recorded (`tool_call`), and the answer to an MCP `initialize` names
//! the server (`mcp_server`): see docs/architecture.md, "Tool calls".

use std::sync::Arc;
use std::time::Duration;

use interceptor::agent::{ARGUMENTS_CAP, HeldTool, MaskedArguments, mcp};
use interceptor::approvals::HoldRequest;
use interceptor::policy::{
    self, Api, ConnectionFacts, Policy, RequestFacts, Tool, ToolCall, Verdict as PolicyVerdict,
    hex_sha256,
};
use serde_json::Value;

use super::exchange::recorded_request_headers;
use super::hook::{BodyTransform, Decision, ExchangeInfo, Hook, HookFuture};
use super::masking::Masking;
use super::preview::BodyPreview;
use super::refusal::{ErrorShape, JsonRpcBody};
use super::server_info::ServerInfoTap;
use crate::gate::{self, Gate};
use crate::sessions::{Event, McpServerRecord, PolicyDecision, Store, ToolCallRecord};

/// How much of a held request's body an approver sees.
pub const PREVIEW_BYTES: usize = 4096;
/// How long a held request's body may take to arrive for the preview (it is held anyway).
const PREVIEW_WAIT: Duration = Duration::from_secs(1);
/// How long a body whose tool calls are looked for may take to arrive.
const TOOL_BODY_WAIT: Duration = Duration::from_secs(2);

pub struct PolicyHook {
    pub gate: Gate,
    /// Masks the body preview shown to approvers and the tool calls recorded; without a
    /// secret engine no preview and no arguments are shown.
    pub masking: Option<Arc<Masking>>,
    /// Where tool calls are recorded.
    pub store: Store,
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
        let rpc = self.read_rpc(info, head).await?;
        let decided = self.with_facts(info, head, |policy, facts, alone| {
            self.decide_request(info, head, policy, facts, alone, rpc.as_ref())
        });
        let Some((decision, hold)) = decided else {
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
            request = hold.request_line.as_deref().unwrap_or(""),
            tool = hold.tool.as_ref().map_or("", |t| t.name.as_str()), "request held for approval");
        self.gate.hold(hold).await
    }

    /// The first [`PREVIEW_BYTES`] of the body with its secrets masked; None without a secret
    /// engine, for an empty or compressed body. Read a holdback further, so that a secret
    /// starting in the preview is seen whole; what was read is forwarded after approval.
    async fn body_preview(&self, head: &http::request::Parts) -> Option<String> {
        let masking = self.masking.as_ref()?;
        let body = head.extensions.get::<BodyPreview>()?;
        if compressed(head) {
            return None;
        }
        let holdback = masking.holdback();
        let (data, whole) = body
            .first_bytes(PREVIEW_BYTES + holdback, PREVIEW_WAIT)
            .await;
        // More may have been read already (for tool calls): only the start is masked.
        let start = &data[..data.len().min(PREVIEW_BYTES + holdback)];
        let whole = whole && start.len() == data.len();
        let masked = masking.masked_start(start, whole, PREVIEW_BYTES)?;
        (!masked.is_empty()).then(|| String::from_utf8_lossy(&masked).into_owned())
    }

    /// `f` with the policy in force, the request's connection facts, and whether the request
    /// is decided on its own (no earlier stage enforced the connection's decision). The
    /// policy snapshot is not kept: reloads go on during a hold.
    fn with_facts<T>(
        &self,
        info: &ExchangeInfo,
        head: &http::request::Parts,
        f: impl FnOnce(&Policy, &ConnectionFacts, bool) -> T,
    ) -> T {
        let policy = self.gate.policy.get();
        let host = info.sni.as_deref().or_else(|| host_header(head));
        let facts = gate::facts(
            &info.identity,
            info.enrollment.as_deref(),
            host,
            info.destination,
        );
        // With an SNI, the TLS layer already enforced a decision that needs no request.
        let settled = gate::settled_before_dial(&policy, &facts)
            || info.sni.is_some()
                && policy.decide_connection(&facts).verdict != PolicyVerdict::Inspect;
        f(&policy, &facts, !settled)
    }

    /// The JSON-RPC messages of the request's body, read when a rule with tool conditions
    /// may decide the request (whatever its method: a lenient server may take a call in a
    /// PUT), or when the request looks like MCP (a POST, to record its tool calls). None:
    /// not read, or no JSON-RPC. Err(why): a tool rule must see the calls and the body
    /// cannot be read (fail closed).
    async fn read_rpc(
        &self,
        info: &ExchangeInfo,
        head: &mut http::request::Parts,
    ) -> Result<Option<mcp::Body>, String> {
        let must = self.with_facts(info, head, |policy, facts, alone| {
            alone
                && by_tool_rule(
                    policy,
                    &policy.decide_request(facts, &request(head, Tool::Unread)),
                )
        });
        if !must && ErrorShape::of(head) != ErrorShape::JsonRpc {
            return Ok(None);
        }
        let refuse =
            |why: &dyn std::fmt::Display| Err(format!("tool call could not be read: {why}"));
        let body = head.extensions.get::<BodyPreview>().cloned();
        let read = match body {
            Some(_) if compressed(head) => Err(None),
            None => Err(None),
            Some(body) => {
                let (data, whole) = body.first_bytes(mcp::MAX_BODY, TOOL_BODY_WAIT).await;
                mcp::parse(&data, whole).map_err(Some)
            }
        };
        match read {
            Ok(body @ mcp::Body::Rpc(_)) => {
                head.extensions.insert(JsonRpcBody);
                if body.initializes() {
                    let _ = info.mcp_initialize.set(());
                }
                Ok(Some(body))
            }
            Ok(mcp::Body::Other) => Ok(None),
            Err(_) if !must => Ok(None),
            Err(None) => refuse(&"the body is compressed"),
            Err(Some(e)) => {
                if matches!(e, mcp::McpError::Invalid { .. }) {
                    head.extensions.insert(JsonRpcBody);
                }
                refuse(&e)
            }
        }
    }

    /// None when the request is not decided on its own (`alone`: an earlier stage enforced
    /// the connection's decision; its tool calls are recorded with that one). A body with
    /// tool calls is decided call by call: the first deny refuses it, else the first approve
    /// holds it.
    fn decide_request(
        &self,
        info: &ExchangeInfo,
        head: &http::request::Parts,
        policy: &Policy,
        facts: &ConnectionFacts,
        alone: bool,
        rpc: Option<&mcp::Body>,
    ) -> Option<Decided> {
        let calls: Vec<mcp::Call> = rpc.map(|b| b.tool_calls().collect()).unwrap_or_default();
        if !alone {
            let d = policy.decide_connection(facts);
            for call in &calls {
                self.record(info, call, &d);
            }
            return None;
        }
        let mut chosen = None;
        for call in &calls {
            let tool = Tool::Call(ToolCall {
                api: Api::Mcp,
                name: call.name,
                arguments: call.arguments,
            });
            let d = policy.decide_request(facts, &request(head, tool));
            let held = Some(self.record(info, call, &d));
            if chosen
                .as_ref()
                .is_none_or(|(c, _): &(policy::Decision, _)| rank(d.verdict) > rank(c.verdict))
            {
                chosen = Some((d, held));
            }
        }
        let (d, tool) = chosen.unwrap_or_else(|| {
            (
                policy.decide_request(facts, &request(head, Tool::NoCall)),
                None,
            )
        });
        let decision = PolicyDecision {
            rule: d.name.to_owned(),
            verdict: d.verdict,
        };
        if d.verdict == PolicyVerdict::Allow {
            return Some((decision, Ok(None)));
        }
        let host = info.sni.as_deref().or_else(|| host_header(head));
        let destination = gate::destination(host, info.destination);
        let hold = match (
            gate::held(&d, info.session, &info.identity, destination),
            tool,
        ) {
            (Ok(hold), tool) => Ok(Some(HoldRequest { tool, ..hold })),
            (Err(why), Some(tool)) => Err(format!("tool call {:?} {why}", tool.name)),
            (Err(why), None) => Err(why),
        };
        Some((decision, hold))
    }

    /// Records a tool call with the decision that applied; returns it as approvers see it.
    fn record(&self, info: &ExchangeInfo, call: &mcp::Call, d: &policy::Decision) -> HeldTool {
        // Unmasked only when there is nothing to mask with.
        let name = match &self.masking {
            None => call.name.to_owned(),
            Some(_) => self.masked(call.name).unwrap_or_else(|| "?".into()),
        };
        let text = call.arguments.to_string();
        let masked = self.masked(&text);
        let arguments_sha256 = hex_sha256(masked.as_deref().unwrap_or(&text).as_bytes());
        let arguments = masked
            .map(|mut shown| {
                let cut = shown.len() > ARGUMENTS_CAP;
                shown.truncate(shown.floor_char_boundary(ARGUMENTS_CAP));
                MaskedArguments {
                    arguments: Some(shown),
                    arguments_truncated: cut,
                }
            })
            .unwrap_or_default();
        let rpc_id = call.id.and_then(|id| match id {
            Value::String(s) => self.masked(s).map(Value::String),
            other => Some(other.clone()),
        });
        let held = HeldTool {
            source: "mcp".into(),
            name,
            arguments,
            arguments_sha256,
        };
        tracing::info!(session = info.session, seq = info.seq, tool = %held.name,
            rule = d.name, verdict = ?d.verdict, "tool call");
        self.store.append(Event::ToolCall(ToolCallRecord {
            id: info.session,
            seq: info.seq,
            source: held.source.clone(),
            rpc_id,
            name: held.name.clone(),
            arguments: held.arguments.clone(),
            policy: PolicyDecision {
                rule: d.name.to_owned(),
                verdict: d.verdict,
            },
        }));
        held
    }

    /// `text` with every secret any rule finds masked; None without a secret engine, or
    /// when it could not be scanned.
    fn masked(&self, text: &str) -> Option<String> {
        let masked = self.masking.as_ref()?.masked_copy(text.as_bytes())?;
        Some(String::from_utf8_lossy(&masked).into_owned())
    }
}

/// The request as the policy sees it, with what it is to tool rules.
fn request<'a>(head: &'a http::request::Parts, tool: Tool<'a>) -> RequestFacts<'a> {
    RequestFacts {
        method: head.method.as_str(),
        path: head.uri.path(),
        headers: &head.headers,
        tool,
    }
}

/// Whether a rule with tool conditions made decision `d`.
fn by_tool_rule(policy: &Policy, d: &policy::Decision) -> bool {
    d.rule.is_some_and(|i| policy.rules()[i].when.is_tool())
}

/// Of two decisions for the calls of one body, the stricter wins.
fn rank(v: PolicyVerdict) -> u8 {
    match v {
        PolicyVerdict::Allow | PolicyVerdict::Inspect => 0,
        PolicyVerdict::Approve => 1,
        PolicyVerdict::Deny => 2,
    }
}

/// Whether the body is sent in a content coding (it cannot be read as it is).
fn compressed(head: &http::request::Parts) -> bool {
    head.headers
        .get(http::header::CONTENT_ENCODING)
        .is_some_and(|v| v != "identity")
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

    /// The answer to an MCP `initialize` is read for the server's name as it goes by.
    fn on_response<'a>(
        &'a self,
        info: &'a ExchangeInfo,
        head: &'a mut http::response::Parts,
    ) -> HookFuture<'a> {
        Box::pin(async move {
            if info.mcp_initialize.get().is_none() {
                return Decision::default();
            }
            let content_type = (head.headers.get(http::header::CONTENT_TYPE))
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let (store, id, seq) = (self.store.clone(), info.session, info.seq);
            let tap = ServerInfoTap::new(content_type, move |server| {
                tracing::info!(session = id, seq, server = %server.name, "MCP server");
                store.append(Event::McpServer(McpServerRecord { id, seq, server }));
            });
            Decision {
                body: tap.map(|t| Box::new(t) as Box<dyn BodyTransform>),
                ..Decision::default()
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
