//! MCP over streamable HTTP: JSON-RPC 2.0 messages in POST bodies, one object or a batch
//! (an array). [`parse`] reads a request body: which messages it carries, and for
//! `tools/call` the tool's name and arguments. It never panics on what a workload sends;
//! a body that starts like JSON but cannot be read (malformed, cut at the preview's limit)
//! is an error, so that a tool rule that must see it can refuse it (fail closed).

use serde_json::{Map, Value};

/// How much of a request body is read to find its tool calls: a body that a tool rule must
/// inspect and that is longer is refused.
pub const MAX_BODY: usize = 1024 * 1024;

/// What a request body is to MCP.
#[derive(Debug, PartialEq)]
pub enum Body {
    /// Not JSON-RPC (another API's JSON, a form, nothing).
    Other,
    /// JSON-RPC messages, in order (one unless the body is a batch).
    Rpc(Vec<Message>),
}

/// One JSON-RPC message of a request body.
#[derive(Debug, PartialEq)]
pub struct Message {
    /// Absent for a notification.
    pub id: Option<Value>,
    pub kind: Kind,
}

#[derive(Debug, PartialEq)]
pub enum Kind {
    /// `tools/call`: the tool's name and its arguments (an object; empty when absent).
    ToolCall {
        name: String,
        arguments: Value,
    },
    Initialize,
    ToolsList,
    /// Another method (notifications included).
    Method(String),
    /// A response the client sends back (to a server's request), not a call.
    Response,
}

/// A `tools/call` of a body.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Call<'a> {
    pub id: Option<&'a Value>,
    pub name: &'a str,
    pub arguments: &'a Value,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum McpError {
    #[error(
        "the body was not all read (longer than {} KiB, or slow to arrive)",
        MAX_BODY / 1024
    )]
    Truncated,
    #[error("the body is not valid JSON: {0}")]
    Malformed(String),
    /// `id`: the message's, to answer it by.
    #[error("a JSON-RPC message {why}")]
    Invalid {
        id: Option<Value>,
        why: &'static str,
    },
}

impl Body {
    /// The id of the first request (what a refusal of the whole body answers).
    fn first_id(&self) -> Option<&Value> {
        match self {
            Body::Other => None,
            Body::Rpc(messages) => messages.iter().find_map(|m| m.id.as_ref()),
        }
    }

    /// Whether it asks the server to `initialize`.
    pub fn initializes(&self) -> bool {
        matches!(self, Body::Rpc(m) if m.iter().any(|m| m.kind == Kind::Initialize))
    }

    /// The `tools/call` messages, in order.
    pub fn tool_calls(&self) -> impl Iterator<Item = Call<'_>> {
        let messages = match self {
            Body::Rpc(m) => &m[..],
            Body::Other => &[],
        };
        messages.iter().filter_map(|m| match &m.kind {
            Kind::ToolCall { name, arguments } => Some(Call {
                id: m.id.as_ref(),
                name,
                arguments,
            }),
            _ => None,
        })
    }
}

/// The id that answers a JSON-RPC body (its first request's), as far as it can be read.
pub fn answer_id(body: &[u8]) -> Option<Value> {
    match parse(body, true) {
        Ok(body) => body.first_id().cloned(),
        Err(McpError::Invalid { id, .. }) => id,
        Err(_) => None,
    }
}

/// Who answered an `initialize`: the server's name and version, and the protocol version
/// it chose.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ServerInfo {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol_version: Option<String>,
}

/// The server's answer to `initialize` in one JSON-RPC response (the data of a JSON body or
/// of one SSE event); None when it is no such answer.
pub fn server_info(data: &[u8]) -> Option<ServerInfo> {
    let value: Value = serde_json::from_slice(data).ok()?;
    let result = value.get("result")?;
    let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_owned);
    let info = result.get("serverInfo")?;
    Some(ServerInfo {
        name: text(info.get("name"))?,
        version: text(info.get("version")),
        protocol_version: text(result.get("protocolVersion")),
    })
}

/// Reads the start of a request body; `whole`: `body` is all of it. A body that does not
/// start (after white space) with `{` or `[` is [`Body::Other`]; one that does must be read
/// whole: JSON whose messages carry no `method` and are no responses is `Other` too (another
/// API's JSON).
pub fn parse(body: &[u8], whole: bool) -> Result<Body, McpError> {
    let start = body.iter().position(|b| !b.is_ascii_whitespace());
    if !start.is_some_and(|i| matches!(body[i], b'{' | b'[')) {
        return Ok(Body::Other);
    }
    if !whole {
        return Err(McpError::Truncated);
    }
    let value: Value =
        serde_json::from_slice(body).map_err(|e| McpError::Malformed(e.to_string()))?;
    let items = match value {
        Value::Array(batch) => batch,
        one => vec![one],
    };
    let mut messages = Vec::with_capacity(items.len());
    for item in items {
        let Value::Object(mut object) = item else {
            continue;
        };
        if let Some(m) = message(&mut object).map_err(|why| McpError::Invalid {
            id: object.remove("id"),
            why,
        })? {
            messages.push(m);
        }
    }
    Ok(match messages.is_empty() {
        true => Body::Other,
        false => Body::Rpc(messages),
    })
}

/// The message an object is; None when it is none (no method, no result or error).
/// On error the object keeps its id.
fn message(object: &mut Map<String, Value>) -> Result<Option<Message>, &'static str> {
    let method = match object.remove("method") {
        Some(Value::String(m)) => m,
        Some(_) => return Err("has a method that is not a string"),
        None if object.contains_key("result") || object.contains_key("error") => {
            return Ok(Some(Message {
                id: object.remove("id"),
                kind: Kind::Response,
            }));
        }
        None => return Ok(None),
    };
    let kind = match method.as_str() {
        "tools/call" => tool_call(object.remove("params"))?,
        "initialize" => Kind::Initialize,
        "tools/list" => Kind::ToolsList,
        _ => Kind::Method(method),
    };
    Ok(Some(Message {
        id: object.remove("id"),
        kind,
    }))
}

fn tool_call(params: Option<Value>) -> Result<Kind, &'static str> {
    let Some(Value::Object(mut params)) = params else {
        return Err("tools/call has no params object");
    };
    let name = match params.remove("name") {
        Some(Value::String(name)) => name,
        _ => return Err("tools/call has no tool name"),
    };
    let arguments = match params.remove("arguments") {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(a @ Value::Object(_)) => a,
        Some(_) => return Err("tools/call has arguments that are no object"),
    };
    Ok(Kind::ToolCall { name, arguments })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn call(name: &str, arguments: Value) -> Kind {
        Kind::ToolCall {
            name: name.into(),
            arguments,
        }
    }

    #[test]
    fn a_tool_call_gives_its_id_name_and_arguments() {
        let body = br#" {"jsonrpc":"2.0","id":7,"method":"tools/call",
            "params":{"name":"run_shell","arguments":{"command":"rm -rf /tmp/x","env":{"A":"1"}},"_meta":{"progressToken":1}}}"#;
        let parsed = parse(body, true).unwrap();
        assert_eq!(answer_id(body), Some(json!(7)));
        let calls: Vec<_> = parsed.tool_calls().collect();
        assert_eq!(
            calls,
            [Call {
                id: Some(&json!(7)),
                name: "run_shell",
                arguments: &json!({"command": "rm -rf /tmp/x", "env": {"A": "1"}})
            }]
        );
    }

    #[test]
    fn other_methods_and_responses_are_told_apart() {
        let parsed = parse(
            br#"[{"jsonrpc":"2.0","id":"a","method":"initialize","params":{}},
                {"jsonrpc":"2.0","method":"notifications/initialized"},
                {"jsonrpc":"2.0","id":"b","method":"tools/list"},
                {"jsonrpc":"2.0","id":3,"result":{}},
                {"jsonrpc":"2.0","id":"c","method":"tools/call","params":{"name":"t"}}]"#,
            true,
        )
        .unwrap();
        let Body::Rpc(messages) = parsed else {
            panic!("not read as JSON-RPC")
        };
        let kinds: Vec<&Kind> = messages.iter().map(|m| &m.kind).collect();
        assert_eq!(
            kinds,
            [
                &Kind::Initialize,
                &Kind::Method("notifications/initialized".into()),
                &Kind::ToolsList,
                &Kind::Response,
                &call("t", json!({})),
            ]
        );
        // A batch is answered by its first request's id; a notification has none.
        assert_eq!(messages[1].id, None);
        assert_eq!(messages[0].id, Some(json!("a")));
        assert_eq!(Body::Rpc(messages).tool_calls().count(), 1);
    }

    #[test]
    fn bodies_of_other_apis_are_not_json_rpc() {
        for body in [
            &br#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#[..],
            b"name=value&x=1",
            b"",
            b"   ",
            b"[]",
            b"[1, \"two\"]",
        ] {
            assert_eq!(parse(body, true), Ok(Body::Other), "{:?}", body);
        }
        // Not JSON at all: not looked at further, even when cut.
        assert_eq!(parse(b"GIF89a...", false), Ok(Body::Other));
    }

    #[test]
    fn malformed_truncated_and_invalid_calls_are_errors() {
        let call = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":{"a":"b"}}}"#;
        for cut in 1..call.len() {
            let e = parse(&call[..cut], true).expect_err("a cut body is no call");
            assert!(matches!(e, McpError::Malformed(_)), "{cut}: {e}");
            assert_eq!(parse(&call[..cut], false), Err(McpError::Truncated));
        }
        for bad in [
            &br#"{"jsonrpc":"2.0","id":1,"method":"tools/call"}"#[..],
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":[]}"#,
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":7}}"#,
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":"rm"}}"#,
            br#"{"jsonrpc":"2.0","id":1,"method":5}"#,
            br#"[{"jsonrpc":"2.0","id":1,"method":"tools/list"},{"id":2,"method":"tools/call","params":{}}]"#,
        ] {
            assert!(
                matches!(parse(bad, true), Err(McpError::Invalid { .. })),
                "{}",
                String::from_utf8_lossy(bad)
            );
            // Still answered by its id.
            assert!(answer_id(bad).is_some(), "{}", String::from_utf8_lossy(bad));
        }
        assert!(matches!(
            parse(b"{\"a\": \xff}", true),
            Err(McpError::Malformed(_))
        ));
    }

    #[test]
    fn an_initialize_answer_names_the_server() {
        let answer = br#"{"jsonrpc":"2.0","id":0,"result":{"protocolVersion":"2025-06-18",
            "capabilities":{"tools":{}},"serverInfo":{"name":"config-server","version":"1.2"}}}"#;
        assert_eq!(
            server_info(answer),
            Some(ServerInfo {
                name: "config-server".into(),
                version: Some("1.2".into()),
                protocol_version: Some("2025-06-18".into()),
            })
        );
        for other in [
            &br#"{"jsonrpc":"2.0","id":1,"result":{"tools":[]}}"#[..],
            br#"{"jsonrpc":"2.0","id":0,"error":{"code":-1,"message":"no"}}"#,
            br#"{"jsonrpc":"2.0","id":0,"result":{"serverInfo":{"name":7}}}"#,
            b"{\"jsonrpc\"",
            b"",
        ] {
            assert_eq!(
                server_info(other),
                None,
                "{}",
                String::from_utf8_lossy(other)
            );
        }
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(matches!(
            parse(deep.as_bytes(), true),
            Err(McpError::Malformed(_))
        ));
    }
}
