//! A refusal an agent can read: the SDKs of LLM and tool APIs show a status code and their
//! own API's error JSON, not a plain-text body, so a refusal for such a request is written in
//! that API's shape (recognised by the request's path and headers, not its host, so
//! self-hosted and proxied endpoints count). Other clients keep the plain-text reason.

use bytes::Bytes;
use http::StatusCode;
use serde_json::{Value, json};

/// Which API's error shape a refusal for a request takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorShape {
    Plain,
    /// OpenAI and the many servers compatible with it (chat completions, Responses, ...).
    OpenAi,
    /// Anthropic's messages API.
    Anthropic,
    /// Gemini (`models/...:generateContent`): Google's API error.
    Google,
    /// JSON-RPC 2.0 over HTTP (MCP's streamable HTTP): the request's id is in its body.
    JsonRpc,
}

/// In a request head's extensions: a hook read the body and it is JSON-RPC, so a refusal
/// answers it as such, whatever its headers say.
#[derive(Clone, Copy, Debug)]
pub struct JsonRpcBody;

const OPENAI_ENDPOINTS: [&str; 7] = [
    "/chat/completions",
    "/completions",
    "/responses",
    "/embeddings",
    "/moderations",
    "/images/generations",
    "/audio/transcriptions",
];

impl ErrorShape {
    pub fn of(head: &http::request::Parts) -> ErrorShape {
        let path = head.uri.path().trim_end_matches('/');
        let header = |name: &str| head.headers.contains_key(name);
        let accepts = |what: &str| {
            (head.headers.get_all(http::header::ACCEPT).iter())
                .any(|v| v.to_str().is_ok_and(|v| v.contains(what)))
        };
        if header("anthropic-version") || path.ends_with("/v1/messages") {
            ErrorShape::Anthropic
        } else if path.contains(":generateContent") || path.contains(":streamGenerateContent") {
            ErrorShape::Google
        } else if OPENAI_ENDPOINTS.iter().any(|e| path.ends_with(e)) || path.contains("/responses/")
        {
            ErrorShape::OpenAi
        } else if head.method == http::Method::POST
            && (header("mcp-protocol-version")
                || header("mcp-session-id")
                || accepts("text/event-stream") && accepts("application/json"))
        {
            ErrorShape::JsonRpc
        } else {
            ErrorShape::Plain
        }
    }

    /// The body and content type of a refusal with `status` and `reason`; `rpc_id` is the
    /// JSON-RPC request's id (null when it could not be read).
    pub fn body(
        self,
        status: StatusCode,
        reason: &str,
        rpc_id: Option<Value>,
    ) -> (Bytes, &'static str) {
        let kind = if status == StatusCode::FORBIDDEN {
            "policy_denied"
        } else {
            "interceptor_error"
        };
        let value = match self {
            ErrorShape::Plain => {
                return (Bytes::from(reason.to_owned()), "text/plain; charset=utf-8");
            }
            ErrorShape::OpenAi => json!({
                "error": {"message": reason, "type": kind, "param": null, "code": kind}
            }),
            ErrorShape::Anthropic => json!({
                "type": "error",
                "error": {"type": anthropic_type(status), "message": reason}
            }),
            ErrorShape::Google => json!({
                "error": {"code": status.as_u16(), "message": reason, "status": google_status(status)}
            }),
            // -32001: a server-defined error (the range JSON-RPC leaves to implementations).
            ErrorShape::JsonRpc => json!({
                "jsonrpc": "2.0",
                "id": rpc_id.unwrap_or(Value::Null),
                "error": {"code": -32001, "message": reason, "data": {"type": kind}}
            }),
        };
        (Bytes::from(value.to_string()), "application/json")
    }
}

fn anthropic_type(status: StatusCode) -> &'static str {
    match status {
        StatusCode::FORBIDDEN => "permission_error",
        StatusCode::PAYLOAD_TOO_LARGE => "request_too_large",
        StatusCode::BAD_REQUEST => "invalid_request_error",
        _ => "api_error",
    }
}

fn google_status(status: StatusCode) -> &'static str {
    match status {
        StatusCode::FORBIDDEN => "PERMISSION_DENIED",
        StatusCode::BAD_REQUEST | StatusCode::PAYLOAD_TOO_LARGE => "INVALID_ARGUMENT",
        _ => "UNAVAILABLE",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(method: &str, path: &str, headers: &[(&str, &str)]) -> http::request::Parts {
        let mut b = http::Request::builder().method(method).uri(path);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn each_api_is_recognised_by_path_and_headers_not_host() {
        let cases = [
            (
                head("POST", "/v1/chat/completions", &[]),
                ErrorShape::OpenAi,
            ),
            (
                head("POST", "/openai/v1/responses", &[]),
                ErrorShape::OpenAi,
            ),
            (head("POST", "/v1/messages", &[]), ErrorShape::Anthropic),
            (
                head("POST", "/x", &[("anthropic-version", "2023-06-01")]),
                ErrorShape::Anthropic,
            ),
            (
                head(
                    "POST",
                    "/v1beta/models/gemini-pro:streamGenerateContent",
                    &[],
                ),
                ErrorShape::Google,
            ),
            (
                head(
                    "POST",
                    "/mcp",
                    &[("accept", "application/json, text/event-stream")],
                ),
                ErrorShape::JsonRpc,
            ),
            (
                head("POST", "/mcp", &[("mcp-session-id", "abc")]),
                ErrorShape::JsonRpc,
            ),
            (
                head("GET", "/index.html", &[("accept", "text/html")]),
                ErrorShape::Plain,
            ),
            (
                head("POST", "/upload", &[("content-type", "application/json")]),
                ErrorShape::Plain,
            ),
        ];
        for (h, shape) in cases {
            assert_eq!(ErrorShape::of(&h), shape, "{} {}", h.method, h.uri);
        }
    }

    #[test]
    fn bodies_are_each_apis_error_json_with_the_reason() {
        let reason = "denied by policy rule \"no-tools\": \"quoted\"";
        let parse = |shape: ErrorShape, id| {
            let (body, ty) = shape.body(StatusCode::FORBIDDEN, reason, id);
            assert_eq!(ty, "application/json");
            serde_json::from_slice::<Value>(&body).unwrap()
        };
        let v = parse(ErrorShape::OpenAi, None);
        assert_eq!(
            (v["error"]["message"].as_str(), v["error"]["type"].as_str()),
            (Some(reason), Some("policy_denied"))
        );
        let v = parse(ErrorShape::Anthropic, None);
        assert_eq!(
            (v["type"].as_str(), v["error"]["type"].as_str()),
            (Some("error"), Some("permission_error"))
        );
        assert_eq!(v["error"]["message"], reason);
        let v = parse(ErrorShape::Google, None);
        assert_eq!(
            (v["error"]["code"].as_u64(), v["error"]["status"].as_str()),
            (Some(403), Some("PERMISSION_DENIED"))
        );
        let v = parse(
            ErrorShape::JsonRpc,
            interceptor::agent::mcp::answer_id(
                br#"{"jsonrpc":"2.0","id":7,"method":"tools/call"}"#,
            ),
        );
        assert_eq!(
            (v["id"].as_u64(), v["error"]["message"].as_str()),
            (Some(7), Some(reason))
        );
        let v = parse(
            ErrorShape::JsonRpc,
            interceptor::agent::mcp::answer_id(b"{not json"),
        );
        assert!(v["id"].is_null());
        let (plain, ty) = ErrorShape::Plain.body(StatusCode::FORBIDDEN, reason, None);
        assert_eq!(
            (&plain[..], ty),
            (reason.as_bytes(), "text/plain; charset=utf-8")
        );
    }
}
