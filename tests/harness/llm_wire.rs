//! The streaming wire formats of the LLM APIs agents call, as their servers write them: a
//! reply's events built from the deltas of an answer's text and of one tool call's arguments.
//! [`Built`] says in which event each delta went, so tests know where a finding belongs.

use serde_json::{Value, json};

use crate::streaming::Reply;

pub const SSE: &str = "text/event-stream";
pub const NDJSON: &str = "application/x-ndjson";
pub const JSON: &str = "application/json";
/// The tool every answer calls.
pub const TOOL: &str = "save_config";

/// Which API's format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    /// OpenAI chat completions (`stream: true`).
    OpenAiChat,
    /// OpenAI Responses (`stream: true`).
    OpenAiResponses,
    /// Anthropic messages (`stream: true`).
    Anthropic,
    /// Gemini `streamGenerateContent?alt=sse` (text only: its tool calls come whole).
    Gemini,
    /// Ollama `/api/chat` (NDJSON; text only).
    OllamaChat,
    /// Ollama `/api/generate` (NDJSON; text only).
    OllamaGenerate,
}

/// A reply and where each delta went.
pub struct Built {
    pub reply: Reply,
    /// Event number (from 0) of each text delta.
    pub text_at: Vec<usize>,
    /// Event number of each tool-argument delta.
    pub args_at: Vec<usize>,
}

/// Events in the making.
#[derive(Default)]
struct Events {
    events: Vec<String>,
    text_at: Vec<usize>,
    args_at: Vec<usize>,
}

impl Events {
    /// `data: JSON` (with `event: NAME` first when named), ended by `end` twice.
    fn sse(&mut self, name: Option<&str>, data: &Value, end: &str) -> usize {
        let name = name.map(|n| format!("event: {n}{end}")).unwrap_or_default();
        self.events.push(format!("{name}data: {data}{end}{end}"));
        self.events.len() - 1
    }

    fn line(&mut self, data: &Value) -> usize {
        self.events.push(format!("{data}\n"));
        self.events.len() - 1
    }

    fn built(self, content_type: &'static str) -> Built {
        Built {
            reply: Reply::new(content_type, self.events),
            text_at: self.text_at,
            args_at: self.args_at,
        }
    }
}

impl Api {
    /// The JSON pointer (RFC 6901, without the leading `/`) of the text deltas' field.
    pub fn text_pointer(self) -> &'static str {
        match self {
            Api::OpenAiChat => "choices/0/delta/content",
            Api::OpenAiResponses => "delta",
            Api::Anthropic => "delta/text",
            Api::Gemini => "candidates/0/content/parts/0/text",
            Api::OllamaChat => "message/content",
            Api::OllamaGenerate => "response",
        }
    }

    /// The JSON pointer of the tool-argument deltas' field.
    pub fn args_pointer(self) -> &'static str {
        match self {
            Api::OpenAiChat => "choices/0/delta/tool_calls/0/function/arguments",
            Api::OpenAiResponses => "delta",
            Api::Anthropic => "delta/partial_json",
            _ => panic!("{self:?} streams no tool arguments"),
        }
    }

    /// The streamed reply: `text` delta by delta, then (when not empty) a call of [`TOOL`]
    /// whose arguments come as the `args` deltas.
    pub fn stream(self, text: &[String], args: &[String]) -> Built {
        let mut e = Events::default();
        match self {
            Api::OpenAiChat => openai_chat(&mut e, text, args),
            Api::OpenAiResponses => openai_responses(&mut e, text, args),
            Api::Anthropic => anthropic(&mut e, text, args),
            Api::Gemini => gemini(&mut e, text),
            Api::OllamaChat | Api::OllamaGenerate => ollama(&mut e, self, text),
        }
        e.built(match self {
            Api::OllamaChat | Api::OllamaGenerate => NDJSON,
            _ => SSE,
        })
    }

    /// The same answer not streamed: one JSON body (OpenAI chat and Anthropic).
    pub fn whole(self, text: &str, args: &str) -> Reply {
        let body = match self {
            Api::OpenAiChat => json!({
                "id": "chatcmpl-AB12", "object": "chat.completion", "created": 1_733_300_000,
                "model": "gpt-4o-2024-08-06", "system_fingerprint": "fp_5f20662549",
                "choices": [{"index": 0, "message": {
                    "role": "assistant", "content": text, "refusal": null,
                    "tool_calls": [{"id": "call_Qx1", "type": "function",
                        "function": {"name": TOOL, "arguments": args}}]},
                    "logprobs": null, "finish_reason": "tool_calls"}],
                "usage": {"prompt_tokens": 12, "completion_tokens": 40, "total_tokens": 52},
            }),
            Api::Anthropic => json!({
                "id": "msg_01XFD", "type": "message", "role": "assistant",
                "model": "claude-sonnet-4-5-20250929",
                "content": [{"type": "text", "text": text},
                    {"type": "tool_use", "id": "toolu_01A", "name": TOOL,
                     "input": serde_json::from_str::<Value>(args).expect("arguments are JSON")}],
                "stop_reason": "tool_use", "stop_sequence": null,
                "usage": {"input_tokens": 12, "output_tokens": 40},
            }),
            _ => panic!("{self:?}: no whole-body form here"),
        };
        Reply::new(JSON, vec![body.to_string()])
    }
}

fn openai_chat(e: &mut Events, text: &[String], args: &[String]) {
    let chunk = |delta: Value, finish: Value| {
        json!({"id": "chatcmpl-AB12", "object": "chat.completion.chunk",
            "created": 1_733_300_000, "model": "gpt-4o-2024-08-06",
            "system_fingerprint": "fp_5f20662549",
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]})
    };
    e.sse(
        None,
        &chunk(
            json!({"role": "assistant", "content": "", "refusal": null}),
            Value::Null,
        ),
        "\n",
    );
    for d in text {
        let at = e.sse(None, &chunk(json!({"content": d}), Value::Null), "\n");
        e.text_at.push(at);
    }
    let finish = if args.is_empty() {
        "stop"
    } else {
        let call = json!({"tool_calls": [{"index": 0, "id": "call_Qx1", "type": "function",
            "function": {"name": TOOL, "arguments": ""}}]});
        e.sse(None, &chunk(call, Value::Null), "\n");
        for d in args {
            let delta = json!({"tool_calls": [{"index": 0, "function": {"arguments": d}}]});
            let at = e.sse(None, &chunk(delta, Value::Null), "\n");
            e.args_at.push(at);
        }
        "tool_calls"
    };
    e.sse(None, &chunk(json!({}), json!(finish)), "\n");
    e.events.push("data: [DONE]\n\n".into());
}

fn openai_responses(e: &mut Events, text: &[String], args: &[String]) {
    let mut seq = 0u64;
    let mut event = |e: &mut Events, mut data: Value| {
        data["sequence_number"] = json!(seq);
        seq += 1;
        let name = data["type"].as_str().expect("typed").to_owned();
        e.sse(Some(&name), &data, "\n")
    };
    let (full_text, full_args) = (text.concat(), args.concat());
    let message = |status: &str, text: &str| {
        json!({"id": "msg_67c9", "type": "message", "status": status, "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": []}]})
    };
    let call = |status: &str, args: &str| {
        json!({"id": "fc_67c9", "type": "function_call", "status": status,
            "call_id": "call_Qx1", "name": TOOL, "arguments": args})
    };
    let response = |status: &str, output: Value| {
        json!({"id": "resp_67c9", "object": "response", "created_at": 1_733_300_000,
            "status": status, "model": "gpt-4.1-2025-04-14", "output": output,
            "parallel_tool_calls": true, "tool_choice": "auto", "tools": []})
    };
    event(
        e,
        json!({"type": "response.created", "response": response("in_progress", json!([]))}),
    );
    event(
        e,
        json!({"type": "response.output_item.added", "output_index": 0,
            "item": {"id": "msg_67c9", "type": "message", "status": "in_progress",
                "role": "assistant", "content": []}}),
    );
    event(
        e,
        json!({"type": "response.content_part.added", "item_id": "msg_67c9",
            "output_index": 0, "content_index": 0,
            "part": {"type": "output_text", "text": "", "annotations": []}}),
    );
    for d in text {
        let at = event(
            e,
            json!({"type": "response.output_text.delta", "item_id": "msg_67c9",
                "output_index": 0, "content_index": 0, "delta": d, "logprobs": []}),
        );
        e.text_at.push(at);
    }
    event(
        e,
        json!({"type": "response.output_text.done", "item_id": "msg_67c9",
            "output_index": 0, "content_index": 0, "text": full_text, "logprobs": []}),
    );
    event(
        e,
        json!({"type": "response.output_item.done", "output_index": 0,
            "item": message("completed", &full_text)}),
    );
    let mut output = vec![message("completed", &full_text)];
    if !args.is_empty() {
        event(
            e,
            json!({"type": "response.output_item.added", "output_index": 1,
                "item": call("in_progress", "")}),
        );
        for d in args {
            let at = event(
                e,
                json!({"type": "response.function_call_arguments.delta",
                    "item_id": "fc_67c9", "output_index": 1, "delta": d}),
            );
            e.args_at.push(at);
        }
        event(
            e,
            json!({"type": "response.function_call_arguments.done", "item_id": "fc_67c9",
                "output_index": 1, "arguments": full_args}),
        );
        event(
            e,
            json!({"type": "response.output_item.done", "output_index": 1,
                "item": call("completed", &full_args)}),
        );
        output.push(call("completed", &full_args));
    }
    event(
        e,
        json!({"type": "response.completed", "response": response("completed", json!(output))}),
    );
}

fn anthropic(e: &mut Events, text: &[String], args: &[String]) {
    let event = |e: &mut Events, data: Value| {
        let name = data["type"].as_str().expect("typed").to_owned();
        e.sse(Some(&name), &data, "\n")
    };
    event(
        e,
        json!({"type": "message_start", "message": {"id": "msg_01XFD", "type": "message",
            "role": "assistant", "content": [], "model": "claude-sonnet-4-5-20250929",
            "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": 12, "output_tokens": 1}}}),
    );
    event(
        e,
        json!({"type": "content_block_start", "index": 0,
            "content_block": {"type": "text", "text": ""}}),
    );
    event(e, json!({"type": "ping"}));
    for d in text {
        let at = event(
            e,
            json!({"type": "content_block_delta", "index": 0,
                "delta": {"type": "text_delta", "text": d}}),
        );
        e.text_at.push(at);
    }
    event(e, json!({"type": "content_block_stop", "index": 0}));
    let stop = if args.is_empty() {
        "end_turn"
    } else {
        event(
            e,
            json!({"type": "content_block_start", "index": 1,
                "content_block": {"type": "tool_use", "id": "toolu_01A", "name": TOOL,
                    "input": {}}}),
        );
        for d in args {
            let at = event(
                e,
                json!({"type": "content_block_delta", "index": 1,
                    "delta": {"type": "input_json_delta", "partial_json": d}}),
            );
            e.args_at.push(at);
        }
        event(e, json!({"type": "content_block_stop", "index": 1}));
        "tool_use"
    };
    event(
        e,
        json!({"type": "message_delta",
            "delta": {"stop_reason": stop, "stop_sequence": null},
            "usage": {"output_tokens": 40}}),
    );
    event(e, json!({"type": "message_stop"}));
}

fn gemini(e: &mut Events, text: &[String]) {
    for (i, d) in text.iter().enumerate() {
        let mut candidate = json!({"content": {"parts": [{"text": d}], "role": "model"},
            "index": 0});
        if i + 1 == text.len() {
            candidate["finishReason"] = json!("STOP");
        }
        let data = json!({"candidates": [candidate],
            "usageMetadata": {"promptTokenCount": 12, "candidatesTokenCount": i + 1,
                "totalTokenCount": 13 + i},
            "modelVersion": "gemini-2.0-flash"});
        // Gemini ends its events with CRLF.
        let at = e.sse(None, &data, "\r\n");
        e.text_at.push(at);
    }
}

fn ollama(e: &mut Events, api: Api, text: &[String]) {
    let line = |d: &str, done: bool| {
        let mut l = json!({"model": "llama3.2", "created_at": "2025-12-04T10:00:00.000000Z"});
        if api == Api::OllamaChat {
            l["message"] = json!({"role": "assistant", "content": d});
        } else {
            l["response"] = json!(d);
        }
        l["done"] = json!(done);
        if done {
            l["done_reason"] = json!("stop");
            l["total_duration"] = json!(512_000_000u64);
            l["eval_count"] = json!(40);
        }
        l
    };
    for d in text {
        let at = e.line(&line(d, false));
        e.text_at.push(at);
    }
    e.line(&line("", true));
}
