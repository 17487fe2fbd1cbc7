//! Streamed LLM answers through interceptor, with the clients agents use (the official
//! `openai` and `anthropic` SDKs, httpx and requests, the `mcp` SDK) under `interceptor exec`
//! against local servers speaking each API's real wire format, events paced as the APIs pace
//! them. Secrets from the shipped rules' examples are split across deltas at various points:
//! the text each client assembles has every one masked (same length, kept prefix then `*`),
//! the client raises no error, each finding is recorded at its event and field
//! (`event:N/json/pointer`), and no part of a secret past its kept prefix is anywhere in the
//! daemon's data directory or log.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use interceptor_tests::https::{TestPki, intercepting_daemon};
use interceptor_tests::llm_wire::{Api, Built};
use interceptor_tests::mcp::{self, McpServer};
use interceptor_tests::planted::{Split, example, examples, kept_prefix};
use interceptor_tests::streaming::{Reply, StreamServer};
use interceptor_tests::*;
use serde_json::Value;

const RUN: Duration = Duration::from_secs(120);
const SESSIONS: Duration = Duration::from_secs(30);
/// What an assistant writes around a planted example.
const BEFORE: &str = "Here is the config you asked for:\n";
const AFTER: &str = "\nKeep it out of version control.";

/// A streaming server on `ip` and a daemon masking with the shipped rules that trusts it.
struct Fixture {
    server: StreamServer,
    d: Daemon,
    _pki: TestPki,
}

fn fixture(ip: &str) -> Result<Fixture> {
    let pki = TestPki::new("LLM API test CA")?;
    let server = StreamServer::start(ip, &pki)?;
    let rules = workspace_root().join("policies/rules");
    let d = intercepting_daemon(&pki, &["--rules", rules.to_str().context("utf-8")?])?;
    Ok(Fixture {
        server,
        d,
        _pki: pki,
    })
}

/// One call of a client: the answer's text and tool arguments, each carrying a planted
/// example split into deltas, streamed in `api`'s format (or whole, as one JSON body).
struct Call {
    api: Api,
    stream: bool,
    text: Split,
    args: Option<Split>,
    gzip: bool,
    /// Between events.
    pause: Duration,
}

impl Call {
    fn stream(api: Api, text: Split, args: Option<Split>) -> Call {
        Call {
            api,
            stream: true,
            text,
            args,
            gzip: false,
            pause: Duration::from_millis(5),
        }
    }

    /// The reply and, for a stream, where each delta went.
    fn build(&self) -> (Reply, Option<Built>) {
        let args = self
            .args
            .as_ref()
            .map(|a| a.deltas.clone())
            .unwrap_or_default();
        if !self.stream {
            return (
                self.api.whole(&self.text.deltas.concat(), &args.concat()),
                None,
            );
        }
        let mut built = self.api.stream(&self.text.deltas, &args);
        built.reply.gzip = self.gzip;
        built.reply.pause = self.pause;
        (built.reply.clone(), Some(built))
    }

    fn client_api(&self) -> &'static str {
        match self.api {
            Api::OpenAiChat => "openai-chat",
            Api::OpenAiResponses => "openai-responses",
            Api::Anthropic => "anthropic",
            Api::Gemini => "gemini",
            Api::OllamaChat => "ollama-chat",
            Api::OllamaGenerate => "ollama-generate",
        }
    }

    /// Every finding this call must leave: (rule, location); a whole body's location is
    /// only known to start with `body`.
    fn expected_findings(&self, built: &Option<Built>) -> Vec<(String, String)> {
        let place = |split: &Split, at: Option<&Vec<usize>>, pointer: &str| {
            let location = match at {
                Some(at) => format!("event:{}/{pointer}", at[split.secret_delta]),
                None => "body".to_owned(),
            };
            (split.planted.rule.clone(), location)
        };
        let mut out = vec![place(
            &self.text,
            built.as_ref().map(|b| &b.text_at),
            self.api.text_pointer(),
        )];
        if let Some(args) = &self.args {
            out.push(place(
                args,
                built.as_ref().map(|b| &b.args_at),
                self.api.args_pointer(),
            ));
        }
        out
    }
}

/// Serves `calls`, runs each through its client under exec, and checks what the clients
/// assembled, the findings and the data directory. Returns the clients' reports.
fn run_calls(f: &Fixture, calls: &[Call]) -> Result<Vec<Value>> {
    let script = scripts_dir().join("llm_client.py");
    let mut argv = vec![
        python().to_str().context("utf-8")?.to_owned(),
        script.to_str().context("utf-8")?.to_owned(),
    ];
    let mut expected = Vec::new();
    for call in calls {
        let (reply, built) = call.build();
        let url = f.server.add(reply);
        let mode = if call.stream { "stream" } else { "whole" };
        argv.push(format!("{},{mode},{url}", call.client_api()));
        expected.extend(call.expected_findings(&built));
    }
    let out = run_with_timeout(&mut f.d.exec_command(&["--include-loopback"], &argv), RUN)?;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    ensure!(
        out.status.success(),
        "the client failed ({}): {stderr}\nstdout: {stdout}",
        out.status
    );
    let reports: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).with_context(|| format!("client printed {l}")))
        .collect::<Result<_>>()?;
    ensure!(reports.len() == calls.len(), "reports: {stdout}\n{stderr}");
    let mut wrong = Vec::new();
    for (call, report) in calls.iter().zip(&reports) {
        let what = format!(
            "{:?} {} stream={}",
            call.api, call.text.planted.rule, call.stream
        );
        if report["text"] != call.text.expected {
            wrong.push(format!(
                "{what}: the client assembled\n{}\nnot\n{:?}",
                report["text"], call.text.expected
            ));
        }
        if let Some(args) = &call.args {
            let got = report["args"].as_str().context("no args")?;
            let same = if call.stream {
                got == args.expected
            } else {
                // Anthropic's SDK hands over the parsed input.
                serde_json::from_str::<Value>(got)?
                    == serde_json::from_str::<Value>(&args.expected)?
            };
            if !same {
                wrong.push(format!(
                    "{what}: tool arguments\n{got}\nnot\n{}",
                    args.expected
                ));
            }
        }
    }
    ensure!(
        wrong.is_empty(),
        "{} of {} calls:\n{}",
        wrong.len(),
        calls.len(),
        wrong.join("\n")
    );
    ensure_findings(&f.d, f.server.server.addr.port(), expected)?;
    let mut fragments: Vec<&str> = Vec::new();
    for call in calls {
        for split in std::iter::once(&call.text).chain(&call.args) {
            fragments.extend(split.fragments.iter().map(String::as_str));
        }
    }
    ensure_nowhere(&f.d, &fragments)?;
    Ok(reports)
}

/// [`ensure_findings_in`] downstream.
fn ensure_findings(d: &Daemon, port: u16, expected: Vec<(String, String)>) -> Result<()> {
    ensure_findings_in(d, port, "down", expected)
}

/// Waits until every session to `port` has ended; then each expected (rule, location) must
/// be a finding of its own in `direction`, with a hash.
fn ensure_findings_in(
    d: &Daemon,
    port: u16,
    direction: &str,
    expected: Vec<(String, String)>,
) -> Result<()> {
    let suffix = format!(":{port}");
    let to_server = |s: &Session| s.destination.ends_with(&suffix);
    d.wait_for_sessions(
        |l| {
            l.iter().any(to_server)
                && l.iter()
                    .filter(|s| to_server(s))
                    .all(|s| s.outcome != "open")
        },
        SESSIONS,
    )?;
    let sessions: Vec<Value> = d.cli_json(["sessions", "list", "--json"])?;
    let mut found: Vec<Value> = sessions
        .iter()
        .filter(|s| {
            s["destination"]
                .as_str()
                .is_some_and(|x| x.ends_with(&suffix))
        })
        .flat_map(|s| s["secrets"].as_array().cloned().unwrap_or_default())
        .collect();
    let brief = |f: &Value| format!("{} {} {}", f["rule"], f["direction"], f["location"]);
    let all: Vec<String> = found.iter().map(brief).collect();
    let mut missing = Vec::new();
    for (rule, location) in expected {
        let i = found.iter().position(|f| {
            f["rule"] == rule.as_str()
                && f["direction"] == direction
                && f["location"].as_str().is_some_and(|l| {
                    if location == "body" {
                        l.starts_with("body")
                    } else {
                        l == location
                    }
                })
        });
        let Some(i) = i else {
            missing.push(format!("{rule} at {location}"));
            continue;
        };
        let f = found.swap_remove(i);
        ensure!(
            f["hash"].as_str().is_some_and(|h| h.len() == 32),
            "finding without a hash: {f}"
        );
    }
    ensure!(
        missing.is_empty(),
        "no finding {direction}: {missing:#?}\nfindings: {all:#?}"
    );
    Ok(())
}

/// No file under the daemon's data directory, and not its log, holds any of `fragments`.
fn ensure_nowhere(d: &Daemon, fragments: &[&str]) -> Result<()> {
    d.ensure_not_stored(fragments)?;
    let log = d.log();
    for fragment in fragments {
        ensure!(!log.contains(fragment), "the daemon log holds {fragment:?}");
    }
    Ok(())
}

/// The example of `rule` in an assistant's sentence, cut at `cuts` inside the secret.
fn said(rule: &str, cuts: &[usize]) -> Result<Split> {
    Ok(example(rule)?.split(BEFORE, AFTER, cuts))
}

/// The example of `rule` as a tool call's JSON arguments `{"config": TEXT}` (the examples
/// chosen need no JSON escape), cut at `cuts` inside the secret.
fn in_args(rule: &str, cuts: &[usize]) -> Result<Split> {
    Ok(example(rule)?.split("{\"config\": \"", "\", \"overwrite\": true}", cuts))
}

/// The secret of `rule` alone, right after `\n` and followed by one (JSON escapes next to
/// it), cut at `cuts`.
fn bare(rule: &str, cuts: &[usize]) -> Result<Split> {
    let mut planted = example(rule)?;
    planted.text = planted.secret.clone();
    Ok(planted.split(BEFORE, AFTER, cuts))
}

/// Cuts every `step` bytes through a secret of `len` bytes.
fn every(step: usize, len: usize) -> Vec<usize> {
    (step..len).step_by(step).collect()
}

#[test]
fn openai_chat_stream_masks_secrets_split_across_deltas() -> Result<()> {
    require_root();
    let f = fixture("127.0.0.11")?;
    let slack = example("slack.bot-token")?.secret.len();
    let calls = [
        // Cut right after the kept prefix, and the arguments' key at its first byte, the
        // middle and its last byte.
        Call::stream(
            Api::OpenAiChat,
            said("aws.access-key-id", &[4])?,
            Some(in_args("openai.api-key", &[1, 60, 131])?),
        ),
        // `\n` before and after the token (JSON escapes next to it), cut in four.
        Call::stream(Api::OpenAiChat, said("github.ghp", &[2, 10, 20, 30])?, None),
        Call::stream(Api::OpenAiChat, bare("github.ghp", &[8, 20])?, None),
        // Tokens 30 ms apart, as a slow model writes: longer than any idle pause a relay
        // might take for the end of a stream.
        Call {
            pause: Duration::from_millis(30),
            ..Call::stream(Api::OpenAiChat, said("aws.access-key-id", &[6, 13])?, None)
        },
        // One delta per 3 bytes, and JSON arguments whose value is the secret.
        Call::stream(
            Api::OpenAiChat,
            said("slack.bot-token", &every(3, slack))?,
            Some(example("generic.api-key")?.split("", "", &[5, 31])),
        ),
    ];
    run_calls(&f, &calls)?;
    Ok(())
}

#[test]
fn openai_and_anthropic_whole_answers_are_masked() -> Result<()> {
    require_root();
    let f = fixture("127.0.0.12")?;
    let whole = |api, text, args| Call {
        stream: false,
        ..Call::stream(api, text, Some(args))
    };
    let calls = [
        whole(
            Api::OpenAiChat,
            said("aws.access-key-id", &[])?,
            in_args("gitlab.glpat", &[])?,
        ),
        whole(
            Api::OpenAiChat,
            bare("slack.bot-token", &[])?,
            in_args("npm.access-token", &[])?,
        ),
        whole(
            Api::Anthropic,
            said("github.ghp", &[])?,
            example("generic.api-key")?.split("", "", &[]),
        ),
    ];
    run_calls(&f, &calls)?;
    Ok(())
}

#[test]
fn openai_responses_stream_masks_every_copy_of_a_split_secret() -> Result<()> {
    require_root();
    let f = fixture("127.0.0.13")?;
    let stripe = example("stripe.secret-key")?.secret.len();
    let calls = [
        Call::stream(
            Api::OpenAiResponses,
            said("stripe.secret-key", &every(7, stripe))?,
            Some(in_args("groq.api-key", &[3, 4, 5, 50, 55])?),
        ),
        Call::stream(Api::OpenAiResponses, said("gitlab.glpat", &[12])?, None),
    ];
    let reports = run_calls(&f, &calls)?;
    // The `.done` events and the completed response repeat the whole text: masked too.
    for (call, report) in calls.iter().zip(&reports) {
        let extra = &report["extra"];
        ensure!(extra["done_text"] == call.text.expected, "{extra:#}");
        ensure!(extra["completed_text"] == call.text.expected, "{extra:#}");
        if let Some(args) = &call.args {
            ensure!(extra["done_args"] == args.expected, "{extra:#}");
        }
    }
    Ok(())
}

#[test]
fn anthropic_stream_masks_text_and_tool_input_split_across_deltas() -> Result<()> {
    require_root();
    let f = fixture("127.0.0.14")?;
    let calls = [
        // `x-api-key: …\r\n`: the secret ends at a JSON escape.
        Call::stream(
            Api::Anthropic,
            said("anthropic.api-key", &[1, 2, 3, 4, 5, 6, 7, 8, 60, 106])?,
            Some(example("generic.api-key")?.split("", "", &[20])),
        ),
        Call::stream(
            Api::Anthropic,
            said("huggingface.token", &[9])?,
            Some(in_args("npm.access-token", &[4, 5, 39])?),
        ),
    ];
    let reports = run_calls(&f, &calls)?;
    // What the SDK's stream helper accumulates: the final message, tool input parsed.
    for (call, report) in calls.iter().zip(&reports) {
        let extra = &report["extra"];
        ensure!(extra["final_text"] == call.text.expected, "{extra:#}");
        let args = call.args.as_ref().context("args")?;
        let want: Value = serde_json::from_str(&args.expected)?;
        ensure!(extra["final_input"] == want, "{extra:#}");
    }
    Ok(())
}

#[test]
fn gemini_sse_masks_secrets_split_across_events() -> Result<()> {
    require_root();
    let f = fixture("127.0.0.15")?;
    let calls = [
        Call::stream(Api::Gemini, said("http.bearer-token", &[10, 20, 30])?, None),
        Call::stream(Api::Gemini, said("gcp.api-key", &[4, 5])?, None),
    ];
    run_calls(&f, &calls)?;
    Ok(())
}

#[test]
fn ollama_ndjson_masks_secrets_split_across_lines() -> Result<()> {
    require_root();
    let f = fixture("127.0.0.16")?;
    let calls = [
        Call::stream(
            Api::OllamaChat,
            said("postgres.url-password", &[3, 9])?,
            None,
        ),
        Call::stream(
            Api::OllamaGenerate,
            said("sendgrid.api-key", &[17, 40])?,
            None,
        ),
        Call::stream(Api::OllamaChat, said("gitlab.glpat", &every(2, 26))?, None),
        // No literal opens this key: its digits come whole before `:AA`.
        Call::stream(Api::OllamaChat, said("telegram.bot-token", &[10])?, None),
    ];
    run_calls(&f, &calls)?;
    Ok(())
}

#[test]
fn gzip_compressed_streams_are_masked_too() -> Result<()> {
    require_root();
    let f = fixture("127.0.0.17")?;
    let gzip = |api, text, args| Call {
        gzip: true,
        ..Call::stream(api, text, args)
    };
    let calls = [
        gzip(
            Api::OpenAiChat,
            said("aws.access-key-id", &[6, 13])?,
            Some(in_args("openai.api-key", &[80])?),
        ),
        gzip(Api::Anthropic, said("slack.bot-token", &[5, 30])?, None),
    ];
    run_calls(&f, &calls)?;
    Ok(())
}

#[test]
fn mcp_tool_output_split_across_sse_messages_is_masked() -> Result<()> {
    require_root();
    let ip = "127.0.0.18";
    let pki = TestPki::new("MCP test CA")?;
    let rules = workspace_root().join("policies/rules");
    let d = intercepting_daemon(&pki, &["--rules", rules.to_str().context("utf-8")?])?;
    // Progress messages carry a sentence with a key cut in three; the result holds another.
    let progress = said("slack.bot-token", &[9, 30])?;
    let result = said("npm.access-token", &[])?;
    let server = McpServer::start(ip, &pki, &progress.deltas, &result.deltas.concat())?;
    let url = format!("https://{ip}:{}/mcp", server.port);
    let mut client = mcp::client_command(&d, &url, &[])?;
    let report = mcp::client_report(&run_with_timeout(&mut client, RUN)?)?;
    ensure!(report["error"] == false, "{report:#}");
    ensure!(
        report["progress"] == progress.expected,
        "progress: {report:#}"
    );
    ensure!(report["result"] == result.expected, "result: {report:#}");
    ensure!(
        report["structured"]["result"] == result.expected,
        "structured: {report:#}"
    );
    // The call's SSE stream: one event per progress notification, then the result.
    let expected = vec![
        (
            progress.planted.rule.clone(),
            format!("event:{}/params/message", progress.secret_delta),
        ),
        (
            result.planted.rule.clone(),
            format!("event:{}/result/content/0/text", progress.deltas.len()),
        ),
    ];
    ensure_findings(&d, server.port, expected)?;
    let fragments: Vec<&str> = progress
        .fragments
        .iter()
        .chain(&result.fragments)
        .map(String::as_str)
        .collect();
    ensure_nowhere(&d, &fragments)
}

#[test]
fn an_ndjson_upload_is_masked_before_the_server() -> Result<()> {
    require_root();
    let f = fixture("127.0.0.19")?;
    // A log shipper's lines; the secret's pieces in consecutive lines' `msg`.
    let split = said("github.ghp", &[3, 14, 27])?;
    let lines: Vec<String> = split
        .deltas
        .iter()
        .map(|d| format!("{}\n", serde_json::json!({"level": "info", "msg": d})))
        .collect();
    let base = f.server.add(Reply::new(
        interceptor_tests::llm_wire::JSON,
        vec!["{\"errors\": false}".into()],
    ));
    // The lines come from a file: a command line is recorded with the session's identity.
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("lines.ndjson");
    std::fs::write(&file, lines.concat())?;
    let script = r#"
import sys, time, httpx
def lines():
    for line in open(sys.argv[2], "rb"):
        yield line
        time.sleep(0.005)
r = httpx.post(sys.argv[1], content=lines(), headers={"content-type": "application/x-ndjson"}, timeout=30)
r.raise_for_status()
"#;
    let url = format!("{base}/_bulk");
    let argv = [
        python().to_str().context("utf-8")?,
        "-c",
        script,
        &url,
        file.to_str().context("utf-8")?,
    ];
    let out = run_with_timeout(&mut f.d.exec_command(&["--include-loopback"], &argv), RUN)?;
    ensure!(
        out.status.success(),
        "the upload failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let received = f.server.received(&base);
    let body = received.first().context("nothing reached the server")?;
    let msg: String = String::from_utf8_lossy(body)
        .lines()
        .map(|l| {
            Ok(serde_json::from_str::<Value>(l)?["msg"]
                .as_str()
                .unwrap_or("")
                .to_owned())
        })
        .collect::<Result<_>>()?;
    ensure!(
        msg == split.expected,
        "the server got\n{msg:?}\nnot\n{:?}",
        split.expected
    );
    let port = f.server.server.addr.port();
    let location = format!("event:{}/msg", split.secret_delta);
    ensure_findings_in(
        &f.d,
        port,
        "up",
        vec![(split.planted.rule.clone(), location)],
    )?;
    ensure_nowhere(
        &f.d,
        &split
            .fragments
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    )
}

#[test]
fn every_shipped_rules_example_split_across_deltas_is_masked_in_a_stream() -> Result<()> {
    require_root();
    let f = fixture("127.0.0.20")?;
    // Each rule's example through the OpenAI SDK, events 1 ms apart, in two answers: its
    // secret cut every 3 bytes, and cut in turn in thirds, at the kept prefix's end, or after
    // the first byte, in the middle and before the last.
    let mut calls = Vec::new();
    for (i, p) in examples()?.iter().enumerate() {
        let n = p.secret.len();
        let turn = match i % 3 {
            0 => vec![n / 3, 2 * n / 3],
            1 => vec![kept_prefix(n)],
            _ => vec![1, n / 2, n - 1],
        };
        for cuts in [every(3, n), turn] {
            calls.push(Call {
                pause: Duration::from_millis(1),
                ..Call::stream(Api::OpenAiChat, p.split(BEFORE, AFTER, &cuts), None)
            });
        }
    }
    run_calls(&f, &calls)?;
    Ok(())
}
