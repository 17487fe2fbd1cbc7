//! Tool calls as first-class (issue 18), end to end with the official `mcp` SDK: a client
//! under `interceptor exec` calls the tools of an MCP server (streamable HTTP over TLS on
//! 127.0.0.21). Every `tools/call` is recorded in the session with its arguments' secrets
//! masked; a tool a rule denies gets a JSON-RPC error the SDK raises with the rule and
//! reason, and the server never sees the call; a call an approve rule holds reaches the
//! server only once approved (a grant covers the same tool with the same arguments only),
//! and fails when denied.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use interceptor_tests::https::{PLANTED_SECRET, TestPki, policy_daemon, sessions_json};
use interceptor_tests::mcp::{self, McpServer};
use interceptor_tests::*;
use serde_json::{Value, json};

const IP: &str = "127.0.0.21";
const RUN: Duration = Duration::from_secs(120);
const WAIT: Duration = Duration::from_secs(30);

/// A daemon masking with the shipped rules under a policy with tool rules, an MCP server,
/// and a user of the admin group who may approve. Fields drop in order: the daemon first,
/// the user before its group.
struct Setup {
    d: Daemon,
    server: McpServer,
    approver: TestUser,
    _admins: TestGroup,
    _policy: PolicyFile,
    _pki: TestPki,
}

fn setup() -> Result<Setup> {
    require_root();
    let pki = TestPki::new("MCP tools test CA")?;
    let admins = TestGroup::new("tools")?;
    let approver = TestUser::new("appr", &[&admins])?;
    let policy = PolicyFile::new(&format!(
        r#"
[settings]
tls = "intercept"

[[rule]]
name = "no-deletes"
action = "deny"
reason = "deleting needs a ticket"
[rule.match]
tool = ["delete_*"]

[[rule]]
name = "shell-rm"
action = "approve"
reason = "rm needs a person"
[rule.match]
api = ["mcp"]
tool = ["run_shell"]
tool_args = [{{ pointer = "/command", value = "rm *" }}]
[rule.approval]
users = ["{}"]
timeout = "60s"

[default]
action = "allow"
"#,
        approver.name()
    ))?;
    let rules = workspace_root().join("policies/rules");
    let d = policy_daemon(
        &pki,
        policy.path(),
        &[
            "--rules",
            rules.to_str().context("utf-8")?,
            "--admin-group",
            admins.name(),
        ],
    )?;
    let server = McpServer::start(IP, &pki, &[], "config")?;
    Ok(Setup {
        d,
        server,
        approver,
        _admins: admins,
        _policy: policy,
        _pki: pki,
    })
}

impl Setup {
    /// Calls `tool` (as root, under `interceptor exec`); the client's report.
    fn call(&self, tool: &str, arguments: Value) -> Result<Value> {
        let mut client = self.client(&[(tool, arguments)])?;
        let mut reports = mcp::client_report(&run_with_timeout(&mut client, RUN)?)?;
        Ok(reports[0].take())
    }

    /// Makes `calls` in turn in one session, in the background; the reports once done.
    fn calls_later(
        &self,
        calls: &[(&str, Value)],
    ) -> Result<std::thread::JoinHandle<Result<Value>>> {
        let mut client = self.client(calls)?;
        Ok(std::thread::spawn(move || {
            mcp::client_report(&run_with_timeout(&mut client, RUN)?)
        }))
    }

    fn client(&self, calls: &[(&str, Value)]) -> Result<std::process::Command> {
        let url = format!("https://{IP}:{}/mcp", self.server.port);
        mcp::client_command(&self.d, &url, calls)
    }

    /// Each of `bodies` POSTed as JSON to the MCP endpoint by httpx (under `interceptor
    /// exec`): `{"status", "body"}` each.
    fn post(&self, bodies: &[&str]) -> Result<Vec<Value>> {
        const SCRIPT: &str = r#"
import json, sys, httpx
headers = {"content-type": "application/json", "accept": "application/json, text/event-stream"}
answers = []
for body in sys.argv[2:]:
    r = httpx.post(sys.argv[1], content=body, headers=headers, timeout=30)
    answers.append({"status": r.status_code, "body": r.text})
print(json.dumps(answers))
"#;
        let url = format!("https://{IP}:{}/mcp", self.server.port);
        let mut argv = vec![python().to_str().context("utf-8")?, "-c", SCRIPT, &url];
        argv.extend_from_slice(bodies);
        let mut cmd = self.d.exec_command(&["--include-loopback"], &argv);
        mcp::client_report(&run_with_timeout(&mut cmd, RUN)?)?
            .as_array()
            .cloned()
            .context("answers")
    }

    /// The recorded tool calls of `tool`, once there are `n` of them.
    fn tool_calls(&self, tool: &str, n: usize) -> Result<Vec<Value>> {
        self.recorded("tool_calls", |c| c["name"] == tool, n)
    }

    /// The entries of the sessions' `field` that `pred` accepts, once there are `n`.
    fn recorded(&self, field: &str, pred: impl Fn(&Value) -> bool, n: usize) -> Result<Vec<Value>> {
        poll(
            &format!("{n} {field} recorded"),
            WAIT,
            Duration::from_millis(50),
            || {
                let found: Vec<Value> = sessions_json(&self.d)?
                    .iter()
                    .filter_map(|s| s[field].as_array())
                    .flatten()
                    .filter(|c| pred(c))
                    .cloned()
                    .collect();
                Ok((found.len() >= n).then_some(found))
            },
        )
    }

    /// The calls of `tool` the server received.
    fn received(&self, tool: &str) -> Result<Vec<Value>> {
        let calls = self.server.calls()?;
        Ok(calls.into_iter().filter(|c| c["tool"] == tool).collect())
    }

    /// The one pending approval, once it is there, and its id.
    fn pending(&self) -> Result<(Value, String)> {
        let p = poll(
            "a pending approval",
            WAIT,
            Duration::from_millis(50),
            || {
                let list: Vec<Value> = self.d.cli_json(["approvals", "list", "--json"])?;
                ensure!(list.len() <= 1, "more than one pending: {list:?}");
                Ok(list.into_iter().next())
            },
        )?;
        let id = p["id"].as_u64().context("id")?.to_string();
        Ok((p, id))
    }

    /// `approvals VERB ID [ARGS]` as the approver.
    fn decide(&self, verb: &str, id: &str, args: &[&str]) -> Result<()> {
        let mut argv = vec!["approvals", verb, id];
        argv.extend_from_slice(args);
        let (_, out) = self.d.cli_as(&self.approver, &argv)?;
        ensure!(
            out.status.success(),
            "approvals {verb} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }
}

#[test]
fn tool_calls_are_recorded_masked_and_a_denied_tool_never_reaches_the_server() -> Result<()> {
    let s = setup()?;

    // Allowed: recorded with the arguments' secret masked.
    let r = s.call(
        "run_shell",
        json!({"command": "echo hi", "token": PLANTED_SECRET}),
    )?;
    ensure!(r["result"] == "ran echo hi" && r["error"] == false, "{r}");
    let calls = s.tool_calls("run_shell", 1)?;
    let c = &calls[0];
    ensure!(
        c["source"] == "mcp"
            && c["policy"]["rule"] == "default"
            && c["policy"]["verdict"] == "allow",
        "{c:#}"
    );
    ensure!(c["rpc_id"].is_number(), "{c:#}");
    let args = c["arguments"].as_str().context("arguments")?;
    let recorded: Value = serde_json::from_str(args).context("arguments are JSON")?;
    ensure!(recorded["command"] == "echo hi", "{c:#}");
    let token = recorded["token"].as_str().context("token")?;
    ensure!(
        token.len() == PLANTED_SECRET.len() && token != PLANTED_SECRET && token.contains('*'),
        "token not masked: {c:#}"
    );
    // The server got it masked too (the request body is masked on its way up).
    let got = s.received("run_shell")?;
    ensure!(
        got.len() == 1 && got[0]["arguments"]["token"] == token,
        "{got:?}"
    );

    // Denied: the SDK raises the JSON-RPC error with the rule and reason; nothing upstream.
    let r = s.call("delete_repo", json!({"repo": "prod"}))?;
    let raised = r["raised"].as_str().context("no error raised")?;
    ensure!(
        raised.contains(
            r#"tool call "delete_repo" denied by policy rule "no-deletes": deleting needs a ticket"#
        ),
        "{r}"
    );
    ensure!(s.received("delete_repo")?.is_empty(), "the server saw it");
    let calls = s.tool_calls("delete_repo", 1)?;
    ensure!(
        calls[0]["policy"]["rule"] == "no-deletes" && calls[0]["policy"]["verdict"] == "deny",
        "{calls:?}"
    );
    ensure!(calls[0]["arguments"] == r#"{"repo":"prod"}"#, "{calls:?}");

    // A body a tool rule must see but cannot read is refused; other JSON is no tool call.
    let answers = s.post(&[
        r#"{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"delete_repo","arguments":{"#,
        r#"{"jsonrpc":"2.0","id":6,"method":"tools/call","params":{"arguments":{}}}"#,
        r#"{"hello":"world"}"#,
        // A batch is refused whole when one of its calls is denied.
        r#"[{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"read_config","arguments":{"name":"a"}}},
            {"jsonrpc":"2.0","id":8,"method":"tools/call","params":{"name":"delete_repo","arguments":{"repo":"b"}}}]"#,
    ])?;
    let error = |i: usize| -> Result<Value> {
        ensure!(answers[i]["status"] == 403, "{answers:?}");
        let body: Value = serde_json::from_str(answers[i]["body"].as_str().context("body")?)?;
        Ok(body)
    };
    let cut = error(0)?;
    ensure!(
        cut["id"].is_null()
            && (cut["error"]["message"].as_str()).is_some_and(
                |m| m.starts_with("tool call could not be read: the body is not valid JSON")
            ),
        "{cut:#}"
    );
    let nameless = error(1)?;
    ensure!(
        nameless["id"] == 6
            && nameless["error"]["message"]
                == "tool call could not be read: a JSON-RPC message tools/call has no tool name",
        "{nameless:#}"
    );
    ensure!(answers[2]["status"] != 403, "{answers:?}");
    let batch = error(3)?;
    ensure!(
        batch["id"] == 7
            && (batch["error"]["message"].as_str()).is_some_and(
                |m| m.contains(r#"tool call "delete_repo" denied by policy rule "no-deletes""#)
            ),
        "{batch:#}"
    );
    ensure!(s.received("delete_repo")?.is_empty(), "the server saw it");
    ensure!(
        s.received("read_config")?.is_empty(),
        "the server saw part of a batch"
    );

    // The answers to `initialize` (one per client session) named the server.
    let servers = s.recorded("mcp_servers", |m| m["name"] == "config-server", 2)?;
    ensure!(servers[0]["protocol_version"].is_string(), "{servers:?}");
    // `sessions show` lists the session's tool calls.
    let sessions = sessions_json(&s.d)?;
    let with_calls = (sessions.iter())
        .find(|x| x["tool_calls"][0]["name"] == "run_shell")
        .context("no session with the run_shell call")?;
    let id = with_calls["id"].as_str().context("id")?;
    let shown = s.d.cli_ok(["sessions", "show", id])?;
    ensure!(
        shown.contains("tool call   #")
            && shown.contains("mcp run_shell {\"command\":\"echo hi\",\"token\":\"xoxb")
            && shown.contains("-> allow (default)"),
        "{shown}"
    );
    s.d.ensure_not_stored(&[PLANTED_SECRET])
}

#[test]
fn a_held_tool_call_goes_on_when_approved_and_fails_when_denied() -> Result<()> {
    let s = setup()?;
    let rm = |path: &str| ("run_shell", json!({"command": format!("rm -rf {path}")}));
    // One client session: the same call twice, then another.
    let client = s.calls_later(&[rm("/tmp/one"), rm("/tmp/one"), rm("/tmp/two")])?;

    // Held with the tool and its arguments shown; nothing reaches the server meanwhile.
    let (p, id) = s.pending()?;
    ensure!(
        p["rule"] == "shell-rm" && p["tool"]["name"] == "run_shell" && p["tool"]["source"] == "mcp",
        "{p:#}"
    );
    let shown = p["tool"]["arguments"].as_str().context("arguments")?;
    ensure!(shown.contains("rm -rf /tmp/one"), "{p:#}");
    ensure!(
        s.received("run_shell")?.is_empty(),
        "reached the server while held"
    );
    // Approved with a grant: it goes on, and the grant lets the same call go without waiting.
    s.decide("approve", &id, &["--for", "10m"])?;

    // The grant does not cover other arguments: held again. Denied: never at the server.
    let (p, id) = s.pending()?;
    let shown = p["tool"]["arguments"].as_str().context("arguments")?;
    ensure!(
        shown.contains("rm -rf /tmp/two"),
        "the same call was held again: {p:#}"
    );
    ensure!(
        s.received("run_shell")?.len() == 2,
        "{:?}",
        s.server.calls()?
    );
    s.decide("deny", &id, &["--reason", "not now"])?;

    let r = client.join().expect("client thread")?;
    ensure!(
        r[0]["result"] == "ran rm -rf /tmp/one" && r[1]["result"] == "ran rm -rf /tmp/one",
        "{r}"
    );
    let raised = r[2]["raised"].as_str().context("no error raised")?;
    let expected = format!("approval denied by {}: not now", s.approver.name());
    ensure!(raised.contains(&expected), "{r}");
    ensure!(
        s.received("run_shell")?.len() == 2,
        "a denied call reached the server"
    );
    let calls = s.tool_calls("run_shell", 3)?;
    ensure!(
        calls.iter().all(|c| c["policy"]["verdict"] == "approve"),
        "{calls:?}"
    );
    Ok(())
}
