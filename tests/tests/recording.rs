//! What the session store records, kind by kind, with real clients under `interceptor exec`:
//! identity and original destination, TLS details, the policy's decisions and rules, HTTP
//! exchanges (request line without the query, allow-listed and masked headers, bodies up to
//! the policy's cap, sizes, timings), raw TCP data (masked, capped), secret findings (rule,
//! direction, location, salted hash, never the secret), approvals and their decisions, kernel
//! denials, and how each session ended. Run as root.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use interceptor_tests::https::{
    HttpsServer, PLANTED_SECRET, TestPki, ended_session, intercepting_daemon, policy_daemon,
    tls_client,
};
use interceptor_tests::*;
use serde_json::Value;

const RUN: Duration = Duration::from_secs(60);
const WAIT: Duration = Duration::from_secs(30);
/// Match the shipped rules `aws.access-key-id` and `github.ghp`.
const BODY_SECRET: &str = "AKIAQYLPMN5HHHFPZAM2";
const HEADER_SECRET: &str = "ghp_aB3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1xY3zA5";

/// Requests to api.test are decided one by one: /approve/** waits for root, /admin/** is
/// refused, the rest allowed by the `api` rule.
const POLICY: &str = r#"
[settings]
tls = "intercept"
record_body_bytes = 24

[[rule]]
name = "needs-a-person"
action = "approve"
[rule.match]
host = ["api.test"]
path = ["/approve/**"]
[rule.approval]
users = ["root"]
timeout = "30s"

[[rule]]
name = "no-admin"
action = "deny"
reason = "admin is off limits"
[rule.match]
host = ["api.test"]
path = ["/admin/**"]

[[rule]]
name = "api"
action = "allow"
[rule.match]
host = ["api.test"]

[default]
action = "allow"
"#;

struct Setup {
    d: Daemon,
    server: HttpsServer,
    /// Holds the policy; tests put their other files next to it.
    policy: PolicyFile,
}

fn setup() -> Result<Setup> {
    let pki = TestPki::new("recording test CA")?;
    let server = HttpsServer::start("127.0.0.2", pki.server_config(&["api.test"])?)?;
    let policy = PolicyFile::new(POLICY)?;
    let rules = workspace_root().join("policies/rules");
    let d = policy_daemon(
        &pki,
        policy.path(),
        &["--rules", rules.to_str().context("utf-8")?],
    )?;
    Ok(Setup { d, server, policy })
}

impl Setup {
    fn resolve(&self) -> String {
        format!("api.test:{}:127.0.0.2", self.server.addr.port())
    }

    fn url(&self, path: &str) -> String {
        format!("https://api.test:{}{path}", self.server.addr.port())
    }

    /// The one session to the server whose requests include `path`, once it has ended.
    fn session_with(&self, path: &str) -> Result<Value> {
        let port = format!(":{}", self.server.addr.port());
        poll(
            "the session to end",
            WAIT,
            Duration::from_millis(100),
            || {
                let all: Vec<Value> = self.d.cli_json(["sessions", "list", "--json"])?;
                Ok(all.into_iter().find(|s| {
                    s["destination"]
                        .as_str()
                        .is_some_and(|d| d.ends_with(&port))
                        && s["outcome"] != "open"
                        && exchanges(s).iter().any(|h| h["path"] == path)
                }))
            },
        )
    }

    /// Every record in the store, as `sessions export` prints them.
    fn records(&self) -> Result<Vec<Value>> {
        self.d
            .cli_ok(["sessions", "export"])?
            .lines()
            .map(|l| serde_json::from_str(l).with_context(|| format!("not JSON: {l}")))
            .collect()
    }
}

fn exchanges(s: &Value) -> Vec<Value> {
    s["http"].as_array().cloned().unwrap_or_default()
}

fn header<'a>(headers: &'a Value, name: &str) -> Option<&'a str> {
    headers
        .as_array()?
        .iter()
        .find(|h| h[0] == name)
        .and_then(|h| h[1].as_str())
}

/// The finding of `rule` at `location` in `direction`, with a 32-digit salted hash.
fn finding<'a>(s: &'a Value, rule: &str, direction: &str, location: &str) -> Result<&'a Value> {
    let all = s["secrets"].as_array().context("no findings")?;
    let f = all
        .iter()
        .find(|f| f["rule"] == rule && f["direction"] == direction && f["location"] == location)
        .with_context(|| format!("no {rule} {direction} {location} finding in {all:#?}"))?;
    let hash = f["hash"].as_str().unwrap_or("");
    ensure!(
        hash.len() == 32 && hash.bytes().all(|b| b.is_ascii_hexdigit()),
        "hash {hash:?}"
    );
    Ok(f)
}

#[test]
fn an_https_session_records_identity_tls_decisions_exchanges_findings_and_its_end() -> Result<()> {
    require_root();
    let s = setup()?;
    let body = s.policy.dir().join("body.json");
    let body_text = format!("{{\"key\": \"{BODY_SECRET}\"}}");
    std::fs::write(&body, &body_text)?;
    let data = format!("@{}", body.display());
    let agent = format!("recorder {HEADER_SECRET}");
    let resolve = s.resolve();
    // One connection, three requests: allowed (a secret up in a header and the body),
    // allowed (a secret down), refused by the policy.
    let echo = s.url("/echo?q=not-recorded");
    let planted = s.url("/planted-secret");
    let admin = s.url("/admin/users");
    let argv = [
        "curl",
        "-sS",
        "--http2",
        "--resolve",
        &resolve,
        "-A",
        &agent,
        "-H",
        "Content-Type: application/json",
        "--data-binary",
        &data,
        &echo,
        "--next",
        "--resolve",
        &resolve,
        &planted,
        "--next",
        "--resolve",
        &resolve,
        &admin,
    ];
    let out = run_with_timeout(&mut s.d.exec_command(&["--include-loopback"], &argv), RUN)?;
    ensure!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let session = s.session_with("/admin/users")?;
    let brief = serde_json::to_string_pretty(&session)?;

    // Identity and original destination.
    let who = &session["identity"];
    ensure!(who["comm"] == "curl", "{brief}");
    ensure!(
        who["exe"].as_str().is_some_and(|e| e.ends_with("/curl")),
        "{brief}"
    );
    ensure!(who["uid"] == 0 && who["pid"].as_u64() > Some(1), "{brief}");
    ensure!(
        who["cgroup"].as_str().is_some_and(|c| !c.is_empty()),
        "{brief}"
    );
    let cmdline = who["cmdline"].to_string();
    ensure!(
        cmdline.contains("--http2") && !cmdline.contains(HEADER_SECRET),
        "command line: {cmdline}"
    );
    ensure!(
        session["destination"] == s.server.addr.to_string(),
        "{brief}"
    );

    // TLS: what the client offered, what was chosen, and the connection-stage decision.
    let tls = &session["tls"];
    ensure!(tls["sni"] == "api.test" && tls["alpn"] == "h2", "{brief}");
    ensure!(tls["mode"] == "terminated", "{brief}");
    let offered = tls["alpn_offered"].to_string();
    ensure!(
        offered.contains("h2") && offered.contains("http/1.1"),
        "{brief}"
    );
    // The first rule for api.test has HTTP conditions: its requests are decided one by one.
    ensure!(tls["policy"]["verdict"] == "inspect", "{brief}");

    // HTTP exchanges, in order, each with the rule that decided it.
    let h = exchanges(&session);
    ensure!(h.len() == 3, "{brief}");
    let seqs: Vec<u64> = h.iter().filter_map(|x| x["seq"].as_u64()).collect();
    ensure!(seqs == [0, 1, 2], "{brief}");
    let (e, p, a) = (&h[0], &h[1], &h[2]);
    ensure!(e["method"] == "POST" && e["path"] == "/echo", "{brief}");
    ensure!(
        e["authority"]
            .as_str()
            .is_some_and(|x| x.starts_with("api.test")),
        "{brief}"
    );
    ensure!(
        e["version"].as_str().is_some_and(|v| v.contains('2')),
        "{brief}"
    );
    ensure!(e["status"] == 200, "{brief}");
    let len = body_text.len() as u64;
    ensure!(
        e["request_body_bytes"] == len && e["response_body_bytes"] == len,
        "{brief}"
    );
    ensure!(
        e["policy"]["rule"] == "api" && e["policy"]["verdict"] == "allow",
        "{brief}"
    );
    // Bodies: the first record_body_bytes, masked, with the cap noted.
    let masked = body_text.replace(BODY_SECRET, "AKIA****************");
    for side in ["request_body", "response_body"] {
        let b = &e[side];
        ensure!(
            b["data"] == masked[..24] && b["cap"] == 24 && b["truncated"] == true,
            "{side}: {b}"
        );
    }
    let ua = header(&e["request_headers"], "user-agent").context("no user-agent")?;
    ensure!(
        ua.starts_with("recorder ghp_") && !ua.contains(HEADER_SECRET),
        "user-agent recorded as {ua:?}"
    );
    ensure!(
        header(&e["request_headers"], "content-type") == Some("application/json"),
        "{brief}"
    );
    ensure!(
        e["duration"].as_str().is_some() && e["started_at"].as_str().is_some(),
        "{brief}"
    );
    ensure!(
        p["path"] == "/planted-secret" && p["status"] == 200,
        "{brief}"
    );
    ensure!(
        a["method"] == "GET" && a["path"] == "/admin/users",
        "{brief}"
    );
    ensure!(a["status"] == 403, "the refusal the workload got: {brief}");
    ensure!(
        a["error"]
            .as_str()
            .is_some_and(|x| x.starts_with("refused")),
        "{brief}"
    );
    ensure!(
        a["policy"]["rule"] == "no-admin" && a["policy"]["verdict"] == "deny",
        "{brief}"
    );

    // Findings: where, which way, in which exchange; hashes, never the secrets.
    ensure!(finding(&session, "github.ghp", "up", "header:user-agent")?["seq"] == 0);
    ensure!(finding(&session, "aws.access-key-id", "up", "body")?["seq"] == 0);
    ensure!(finding(&session, "slack.bot-token", "down", "body")?["seq"] == 1);
    ensure!(finding(&session, "github.ghp", "up", "cmdline")?["seq"].is_null());

    // The end: outcome, bytes on the wire both ways, a time after the start.
    ensure!(session["outcome"] == "closed", "{brief}");
    ensure!(
        session["bytes_up"].as_u64() > Some(len) && session["bytes_down"].as_u64() > Some(len),
        "{brief}"
    );
    ensure!(
        session["ended_at"].as_str() >= session["started_at"].as_str(),
        "{brief}"
    );

    // Every record is timed to the microsecond or better, for replay.
    let id = session["id"].as_str().context("id")?.parse::<u64>()?;
    let records = s.records()?;
    let mine: Vec<&Value> = records
        .iter()
        .filter(|r| r["event"]["id"] == id && r["event"]["event"] != "approval")
        .collect();
    let kinds: Vec<&str> = mine
        .iter()
        .filter_map(|r| r["event"]["event"].as_str())
        .collect();
    for kind in ["start", "tls", "http", "secret", "end"] {
        ensure!(kinds.contains(&kind), "no {kind} record in {kinds:?}");
    }
    ensure!(
        kinds.first() == Some(&"start") && kinds.last() == Some(&"end"),
        "{kinds:?}"
    );
    for r in &mine {
        let at = r["at"].as_str().context("at")?;
        let fraction = at
            .rsplit_once('.')
            .map_or("", |(_, f)| f.trim_end_matches('Z'));
        ensure!(fraction.len() >= 6, "coarse timestamp {at}");
    }

    // `sessions show` prints the same in compact lines (no colour: not a terminal).
    let shown = s.d.cli_ok(["sessions", "show", &id.to_string()])?;
    let port = s.server.addr.port();
    for line in [
        "tls         sni api.test  alpn h2 (offered h2,http/1.1)  terminated".to_owned(),
        format!("#0   POST api.test:{port}/echo -> 200  up {len} B  down {len} B"),
        "policy deny (rule no-admin)".to_owned(),
        "error: refused".to_owned(),
        "slack.bot-token Down body (exchange #1) hash".to_owned(),
    ] {
        ensure!(shown.contains(&line), "{line:?} not in:\n{shown}");
    }
    ensure!(
        !shown.contains('\x1b'),
        "colour outside a terminal:\n{shown}"
    );

    s.d.ensure_not_stored(&[BODY_SECRET, HEADER_SECRET, PLANTED_SECRET])
}

#[test]
fn approvals_and_their_decisions_are_recorded() -> Result<()> {
    require_root();
    let s = setup()?;
    let resolve = s.resolve();
    let url = s.url("/approve/deploy");
    // As nobody: the workload's own user may not approve its traffic.
    let argv = [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "curl",
        "-sS",
        "--resolve",
        &resolve,
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &url,
    ];
    let client =
        s.d.exec_command(&["--include-loopback"], &argv)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
    let client = KillOnDrop(Some(client));
    let pending: Value = poll("a held request", WAIT, Duration::from_millis(50), || {
        let list: Vec<Value> = s.d.cli_json(["approvals", "list", "--json"])?;
        Ok(list.into_iter().next())
    })?;
    let approval = pending["id"].to_string();
    let held: Value = s.d.cli_json(["status", "--json"])?;
    ensure!(
        held["counts"]["approvals"]["held"] == 1 && held["counts"]["approvals"]["requested"] == 1,
        "status while held: {:#}",
        held["counts"]
    );
    s.d.cli_ok(["approvals", "approve", &approval, "--reason", "release day"])?;
    let out = client.wait()?;
    ensure!(
        String::from_utf8_lossy(&out.stdout) == "404",
        "curl after approval: {out:?}"
    );

    let session = s.session_with("/approve/deploy")?;
    let brief = serde_json::to_string_pretty(&session)?;
    let h = &exchanges(&session)[0];
    ensure!(
        h["policy"]["rule"] == "needs-a-person" && h["policy"]["verdict"] == "approve",
        "{brief}"
    );
    ensure!(
        h["status"] == 404 && session["identity"]["uid"] == 65534,
        "{brief}"
    );
    // The request and its decision are store records naming the session.
    let id = session["id"].as_str().context("id")?.parse::<u64>()?;
    let approvals: Vec<Value> = s
        .records()?
        .into_iter()
        .filter(|r| r["event"]["event"] == "approval")
        .map(|r| r["event"].clone())
        .collect();
    ensure!(approvals.len() == 2, "{approvals:#?}");
    let (created, approved) = (&approvals[0], &approvals[1]);
    ensure!(
        created["approval"] == "created"
            && created["session"] == id
            && created["rule"] == "needs-a-person"
            && created["request_line"]
                .as_str()
                .is_some_and(|l| l.starts_with("GET /approve/deploy")),
        "{created:#}"
    );
    ensure!(
        created["destination"]
            .as_str()
            .is_some_and(|d| d.starts_with("api.test")),
        "{created:#}"
    );
    ensure!(
        approved["approval"] == "approved"
            && approved["id"] == pending["id"]
            && approved["by"]["user"] == "root"
            && approved["reason"] == "release day",
        "{approved:#}"
    );
    // `sessions tail` prints both as lines of their own.
    let lines = s.d.cli_ok(["sessions", "tail"])?;
    for line in [
        format!("approval #{approval} HELD for session {id} by rule needs-a-person: api.test:"),
        format!("approval #{approval} approved by root: release day"),
    ] {
        ensure!(lines.contains(&line), "{line:?} not in:\n{lines}");
    }
    let after: Value = s.d.cli_json(["status", "--json"])?;
    let a = &after["counts"]["approvals"];
    ensure!(a["held"] == 0 && a["approved"] == 1, "status after: {a:#}");
    Ok(())
}

#[test]
fn a_kernel_denial_is_recorded_with_the_identity_and_why() -> Result<()> {
    require_root();
    let s = setup()?;
    let out = run_with_timeout(
        &mut s.d.exec_command(
            &["--include-loopback", "--deny", "127.0.0.5/32"],
            &["curl", "-sS", "http://127.0.0.5:9/"],
        ),
        RUN,
    )?;
    ensure!(!out.status.success(), "the denied connect succeeded");
    let sessions =
        s.d.wait_for_matching(|x| x.destination == "127.0.0.5:9", 1, WAIT)?;
    let denied = &sessions[0];
    ensure!(
        denied.outcome == "denied" && denied.identity.comm == "curl",
        "{}",
        denied.brief()
    );
    ensure!(
        denied
            .error
            .as_deref()
            .is_some_and(|e| e.contains("deny list")),
        "{}",
        denied.brief()
    );
    ensure!(
        (denied.bytes_up, denied.bytes_down) == (0, 0),
        "{}",
        denied.brief()
    );
    Ok(())
}

#[test]
fn raw_tcp_data_is_recorded_masked_and_capped_each_way() -> Result<()> {
    require_root();
    let s = setup()?;
    let echo = Server::echo("127.0.0.2")?;
    let payload = format!("hello\nkey={BODY_SECRET}\nbye\n");
    let script = "import socket, sys\n\
        s = socket.create_connection((sys.argv[1], int(sys.argv[2])))\n\
        s.sendall(sys.argv[3].encode())\n\
        s.shutdown(socket.SHUT_WR)\n\
        sys.stdout.write(s.makefile().read())\n";
    let (ip, port) = (echo.ip().to_string(), echo.port().to_string());
    let py = python().to_str().context("python path")?;
    let out = run_with_timeout(
        &mut s.d.exec_command(
            &["--include-loopback"],
            &[py, "-c", script, &ip, &port, &payload],
        ),
        RUN,
    )?;
    let masked = payload.replace(BODY_SECRET, "AKIA****************");
    ensure!(
        String::from_utf8_lossy(&out.stdout) == masked,
        "client: {out:?}"
    );
    let sessions = s.d.wait_for_matching(
        |x| x.destination == echo.addr() && x.outcome == "closed",
        1,
        WAIT,
    )?;
    let session: Value =
        s.d.cli_json(["sessions", "show", &sessions[0].id_str(), "--json"])?;
    let streams = session["streams"].as_array().context("no stream records")?;
    ensure!(streams.len() == 2, "{streams:#?}");
    for (record, direction) in streams.iter().zip(["up", "down"]) {
        ensure!(
            record["direction"] == direction
                && record["bytes"] == payload.len()
                && record["data"] == masked[..24]
                && record["cap"] == 24
                && record["truncated"] == true,
            "{record:#}"
        );
    }
    finding(&session, "aws.access-key-id", "up", "stream")?;
    let shown = s.d.cli_ok(["sessions", "show", &sessions[0].id_str()])?;
    let line = format!(
        "stream      Up {} B, first bytes recorded (cap 24): \"hello\\nkey=AKIA**********\"",
        payload.len()
    );
    ensure!(shown.contains(&line), "{line:?} not in:\n{shown}");
    s.d.ensure_not_stored(&[BODY_SECRET])
}

#[test]
fn websocket_payloads_are_recorded_masked_and_capped() -> Result<()> {
    require_root();
    let pki = TestPki::new("recording test CA")?;
    let rules = workspace_root().join("policies/rules");
    let d = intercepting_daemon(&pki, &["--rules", rules.to_str().context("path")?])?;
    let reply = format!("key {BODY_SECRET}");
    let server = Server::start(
        "ws",
        "127.0.0.3",
        ServerOpts {
            seed: &reply,
            ..Default::default()
        },
    )?;
    let port = server.port().to_string();
    // Two frames up (a short one with a secret, then 70,000 bytes), two replies down.
    let r = tls_client(&d, &["wssecret", "127.0.0.3", &port, HEADER_SECRET])?;
    ensure!(r["received"].as_array().map(Vec::len) == Some(2), "{r:#}");
    let session = ended_session(&d, server.port())?;
    let streams = session["streams"].as_array().context("no stream records")?;
    // What the scanner saw: the payloads only, unmasked with the secrets masked, a newline
    // after each message (base64 when one is binary: the close frame's status code).
    let side = |direction: &str| -> Result<(&Value, String)> {
        let record = streams
            .iter()
            .find(|x| x["direction"] == direction)
            .with_context(|| format!("no {direction} record: {streams:#?}"))?;
        let data = record["data"].as_str().context("data")?;
        let text = if record["base64"] == true {
            String::from_utf8_lossy(&BASE64.decode(data)?).into_owned()
        } else {
            data.to_owned()
        };
        Ok((record, text))
    };
    // The default policy records 64 KiB: the second frame goes past it.
    let (up, text) = side("up")?;
    ensure!(
        text.starts_with(&format!(
            "token ghp_{}\n",
            "*".repeat(HEADER_SECRET.len() - 4)
        )) && !text.contains(HEADER_SECRET),
        "up: {}",
        &text[..text.len().min(100)]
    );
    ensure!(
        up["cap"] == 65536 && up["truncated"] == true && up["bytes"].as_u64() > Some(70_000),
        "up: {up:#}"
    );
    let (down, text) = side("down")?;
    ensure!(
        text.starts_with("key AKIA****")
            && text.matches("key AKIA****").count() == 2
            && !text.contains(BODY_SECRET)
            && down["truncated"] == false,
        "down: {down:#}"
    );
    d.ensure_not_stored(&[HEADER_SECRET, BODY_SECRET])
}

/// A child process killed (by pid) if the test ends before waiting for it.
struct KillOnDrop(Option<std::process::Child>);

impl KillOnDrop {
    fn wait(mut self) -> Result<std::process::Output> {
        let child = self.0.take().context("already waited")?;
        Ok(child.wait_with_output()?)
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
