//! What AI agents see through interceptor, with the official SDKs unchanged: a refused call
//! reaches the SDK as its own API's error (status and error JSON), so the agent, and the
//! person reading its log, learn why.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use interceptor_tests::https::HttpsServer;
use interceptor_tests::*;

const RUN: Duration = Duration::from_secs(60);
const REASON: &str = "LLM calls from this host need review";

/// The SDKs' calls are refused by path; the server (never reached) answers anything.
fn policy() -> String {
    format!(
        r#"
[[rule]]
name = "no-llm"
action = "deny"
reason = "{REASON}"
[rule.match]
path = ["/v1/chat/completions", "/v1/messages"]

[default]
action = "allow"
"#
    )
}

#[test]
fn a_refused_call_is_the_sdks_own_permission_error_with_the_reason() -> Result<()> {
    require_root();
    // Never reached: the calls are refused at their request line.
    let server = HttpsServer::start_plain("127.0.0.7")?;
    let port = server.addr.port();
    let policy = PolicyFile::new(&policy())?;
    let path = policy.path().to_str().context("utf-8")?;
    let d = Daemon::start_with(&["--policy", path])?;
    let script = format!(
        r#"
import json, anthropic, openai
o = openai.OpenAI(base_url="http://127.0.0.7:{port}/v1", api_key="sk-placeholder", max_retries=0)
try:
    o.chat.completions.create(model="gpt-4o", messages=[{{"role": "user", "content": "hi"}}])
    print("openai: no error")
except openai.PermissionDeniedError as e:
    print("openai:", json.dumps(e.body))
a = anthropic.Anthropic(base_url="http://127.0.0.7:{port}", api_key="placeholder", max_retries=0)
try:
    a.messages.create(model="claude-x", max_tokens=8, messages=[{{"role": "user", "content": "hi"}}])
    print("anthropic: no error")
except anthropic.PermissionDeniedError as e:
    print("anthropic:", json.dumps(e.body))
"#
    );
    let python = python().to_str().context("utf-8")?;
    let out = run_with_timeout(
        &mut d.exec_command(&["--include-loopback"], &[python, "-c", &script]),
        RUN,
    )?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = |prefix: &str| -> Result<serde_json::Value> {
        let l = stdout.lines().find_map(|l| l.strip_prefix(prefix));
        let l = l.with_context(|| {
            format!(
                "no {prefix} line: {stdout} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
        serde_json::from_str(l).with_context(|| format!("{prefix} {l}"))
    };
    let openai = line("openai: ")?;
    ensure!(
        openai["type"] == "policy_denied"
            && openai["message"]
                .as_str()
                .is_some_and(|m| m.contains(REASON)),
        "openai error body: {openai}"
    );
    let anthropic = line("anthropic: ")?;
    let error = &anthropic["error"];
    ensure!(
        error["type"] == "permission_error"
            && error["message"]
                .as_str()
                .is_some_and(|m| m.contains(REASON)),
        "anthropic error body: {anthropic}"
    );
    Ok(())
}
