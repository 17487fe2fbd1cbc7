//! Secret masking and credential injection, end to end: the real daemon with `--rules` (and
//! `--vault`), curl under `interceptor exec`, and an HTTPS server on 127.0.0.2 that records
//! exactly what reached it. Afterwards the daemon's data directory and log are searched for
//! every planted secret.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, Response};
use interceptor_tests::https::{Body, HttpsServer, TestPki, full, intercept_all_policy};
use interceptor_tests::*;
use serde_json::Value;
use tempfile::TempDir;

const RUN: Duration = Duration::from_secs(60);
const SESSIONS: Duration = Duration::from_secs(30);

/// Secrets that match shipped rules (aws, github, slack).
const BODY_SECRET: &str = "AKIAQYLPMN5HHHFPZAM2";
const HEADER_SECRET: &str = "ghp_aB3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1xY3zA5";
const RESPONSE_SECRET: &str = "xoxb-983227406196-9740026249223-5hMAac3c0tfFVXPcWdPxLbH0";
/// The vault's credential and its placeholder.
const REAL: &str = "real-credential-Zq81vX2mK7pL0wN4";
const PLACEHOLDER: &str = "itk_live_test_7f3a9c51";

/// What the server received.
#[derive(Clone, Debug)]
struct Received {
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// An HTTPS server on 127.0.0.2 that records every request. `/leak` answers with
/// [`RESPONSE_SECRET`] in the body, `/v1/echo-auth` with the Authorization header it got,
/// anything else with `ok`. Drop stops it.
struct RecordingServer {
    port: u16,
    received: Arc<Mutex<Vec<Received>>>,
    _server: HttpsServer,
}

/// Path → (`Content-Encoding`, body as sent).
type Encoded = Vec<(String, &'static str, Vec<u8>)>;

impl RecordingServer {
    fn start(pki: &TestPki) -> Result<RecordingServer> {
        Self::start_with(pki, Vec::new())
    }

    /// Also serves `encoded` bodies as they are, with their `Content-Encoding`.
    fn start_with(pki: &TestPki, encoded: Encoded) -> Result<RecordingServer> {
        let config = pki.server_config(&["127.0.0.2", "api.test", "other.test"])?;
        let received = Arc::new(Mutex::new(Vec::new()));
        let (sink, routes) = (received.clone(), Arc::new(encoded));
        let server = HttpsServer::start_with_handler(
            "127.0.0.2",
            config,
            Arc::new(move |req| Box::pin(record(req, sink.clone(), routes.clone()))),
        )?;
        Ok(RecordingServer {
            port: server.addr.port(),
            received,
            _server: server,
        })
    }

    fn url(&self, host: &str, path: &str) -> String {
        format!("https://{host}:{}{path}", self.port)
    }

    fn resolve(&self, host: &str) -> String {
        format!("{host}:{}:127.0.0.2", self.port)
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

async fn record(
    req: Request<Incoming>,
    sink: Arc<Mutex<Vec<Received>>>,
    encoded: Arc<Encoded>,
) -> Result<Response<Body>, hyper::Error> {
    if let Some((_, coding, body)) = encoded.iter().find(|(p, ..)| p == req.uri().path()) {
        let mut resp = Response::new(full(body.clone()));
        resp.headers_mut()
            .insert("content-encoding", coding.parse().expect("a token"));
        return Ok(resp);
    }
    let (head, body) = req.into_parts();
    let body = body.collect().await?.to_bytes().to_vec();
    let headers: Vec<(String, String)> = head
        .headers
        .iter()
        .map(|(n, v)| (n.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
        .collect();
    let reply = match head.uri.path() {
        "/leak" => format!("{{\"slack_token\": \"{RESPONSE_SECRET}\", \"n\": 1}}"),
        "/v1/echo-auth" => format!(
            "you sent: {}",
            head.headers
                .get("authorization")
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .unwrap_or_default()
        ),
        _ => "ok".into(),
    };
    sink.lock().unwrap().push(Received {
        path: head.uri.path().to_owned(),
        headers,
        body,
    });
    Ok(Response::new(full(reply)))
}

fn rules_dir() -> PathBuf {
    workspace_root().join("policies/rules")
}

/// A daemon that masks with the shipped rules and trusts `pki` upstream.
fn daemon(pki: &TestPki, extra: &[&str]) -> Result<Daemon> {
    daemon_under(pki, &intercept_all_policy(), extra)
}

/// [`daemon`] under the policy at `policy`.
fn daemon_under(pki: &TestPki, policy: &Path, extra: &[&str]) -> Result<Daemon> {
    let (ca, rules) = (pki.ca_file.to_str().unwrap(), rules_dir());
    let mut args = vec!["--upstream-ca", ca, "--rules", rules.to_str().unwrap()];
    args.extend(["--policy", policy.to_str().unwrap()]);
    args.extend_from_slice(extra);
    Daemon::start_with(&args)
}

/// A test CA, the recording server (serving `encoded` too) and a [`daemon`] trusting the CA.
fn masking_setup(encoded: Encoded) -> Result<(TestPki, RecordingServer, Daemon)> {
    let pki = TestPki::new("upstream test CA")?;
    let server = RecordingServer::start_with(&pki, encoded)?;
    let d = daemon(&pki, &[])?;
    Ok((pki, server, d))
}

/// [`masking_setup`]'s CA and server, a directory holding the policy `text` (and the files
/// the test writes), and a [`daemon_under`] that policy.
fn policy_setup(text: &str) -> Result<(TestPki, RecordingServer, TempDir, Daemon)> {
    setup_in_dir(text, false)
}

/// [`policy_setup`] with the [`vault`] in the directory too, handed to the daemon.
fn vault_setup(text: &str) -> Result<(TestPki, RecordingServer, TempDir, Daemon)> {
    setup_in_dir(text, true)
}

fn setup_in_dir(
    text: &str,
    with_vault: bool,
) -> Result<(TestPki, RecordingServer, TempDir, Daemon)> {
    let pki = TestPki::new("upstream test CA")?;
    let server = RecordingServer::start(&pki)?;
    let dir = tempfile::tempdir()?;
    let policy = policy_file(dir.path(), text)?;
    let vault_file = if with_vault {
        Some(vault(dir.path())?)
    } else {
        None
    };
    let vault_args = match &vault_file {
        Some(path) => vec!["--vault", path.to_str().context("utf-8")?],
        None => Vec::new(),
    };
    let d = daemon_under(&pki, &policy, &vault_args)?;
    Ok((pki, server, dir, d))
}

/// A daemon masking raw TCP with the shipped rules (no upstream CA), plus `extra` arguments.
fn raw_daemon(extra: &[&str]) -> Result<Daemon> {
    let rules = rules_dir();
    let mut args = vec!["--rules", rules.to_str().unwrap()];
    args.extend_from_slice(extra);
    Daemon::start_with(&args)
}

/// `body` written to `dir`/body.json, as curl's `--data-binary` argument (from a file: a
/// command line is recorded with the session's identity).
fn data_file(dir: &Path, body: &str) -> Result<String> {
    let file = dir.join("body.json");
    std::fs::write(&file, body)?;
    Ok(format!("@{}", file.display()))
}

/// A copy of curl in `dir`: the same program as another executable (another identity).
fn curl_copy(dir: &Path) -> Result<PathBuf> {
    let other = dir.join("other-curl");
    std::fs::copy(which_real("curl")?, &other)?;
    Ok(other)
}

/// curl (run with `-w "\n%{http_code}"`) got a 403 whose body gives `why`.
fn ensure_403(out: &Output, why: &str, what: &str) -> Result<()> {
    let text = stdout(out);
    ensure!(
        text.ends_with("\n403") && text.contains(why),
        "{what}: {text}"
    );
    Ok(())
}

/// Runs curl (or `program`) under `interceptor exec --include-loopback`.
fn exec(d: &Daemon, program: &[&str]) -> Result<Output> {
    run_with_timeout(&mut d.exec_command(&["--include-loopback"], program), RUN)
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// curl over HTTP/1.1 or HTTP/2 to `url` (resolving `host` to the server), with `args`.
fn curl(
    d: &Daemon,
    server: &RecordingServer,
    host: &str,
    path: &str,
    args: &[&str],
) -> Result<Output> {
    curl_as(d, "curl", server, host, path, args)
}

fn curl_as(
    d: &Daemon,
    program: &str,
    server: &RecordingServer,
    host: &str,
    path: &str,
    args: &[&str],
) -> Result<Output> {
    let (resolve, url) = (server.resolve(host), server.url(host, path));
    let mut argv = vec![program, "-sS", "--resolve", &resolve];
    argv.extend_from_slice(args);
    argv.push(&url);
    let out = exec(d, &argv)?;
    ensure!(
        out.status.success(),
        "{program} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out)
}

/// Waits for `n` ended sessions to the server; returns every session's findings.
fn findings(d: &Daemon, port: u16, n: usize) -> Result<Vec<Value>> {
    let suffix = format!(":{port}");
    d.wait_for_matching(
        |s| s.destination.ends_with(&suffix) && s.outcome != "open",
        n,
        SESSIONS,
    )?;
    let sessions: Vec<Value> = d.cli_json(["sessions", "list", "--json"])?;
    Ok(sessions
        .iter()
        .flat_map(|s| s["secrets"].as_array().cloned().unwrap_or_default())
        .collect())
}

/// A finding of `rule` at `location` in `direction`, with a hash and not the secret.
fn ensure_finding(all: &[Value], rule: &str, direction: &str, location: &str) -> Result<()> {
    let f = all
        .iter()
        .find(|f| f["rule"] == rule && f["direction"] == direction && f["location"] == location)
        .with_context(|| format!("no {rule} finding {direction} in {location}: {all:#?}"))?;
    ensure!(
        f["hash"].as_str().is_some_and(|h| h.len() == 32),
        "finding without a hash: {f}"
    );
    Ok(())
}

/// Every file under `dir`, read whole.
fn files_under(dir: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) -> Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            files_under(&path, out)?;
        } else if let Ok(bytes) = std::fs::read(&path) {
            out.push((path, bytes));
        }
    }
    Ok(())
}

/// Neither the session store (nor anything else in the data directory) nor the daemon log
/// holds any of `secrets`.
fn ensure_nothing_at_rest(d: &Daemon, secrets: &[&str]) -> Result<()> {
    let mut files = Vec::new();
    files_under(d.data_dir(), &mut files)?;
    ensure!(
        files
            .iter()
            .any(|(p, _)| p.starts_with(d.data_dir().join("sessions"))),
        "no session store under {}",
        d.data_dir().display()
    );
    files.push((PathBuf::from("daemon log"), d.log().into_bytes()));
    for (path, bytes) in &files {
        for secret in secrets {
            ensure!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{} holds the planted secret {secret:?}",
                path.display()
            );
        }
    }
    Ok(())
}

#[test]
fn secret_in_a_request_body_is_masked_before_the_server() -> Result<()> {
    require_root();
    let (_pki, server, d) = masking_setup(Vec::new())?;
    let body = format!("{{\"aws_access_key_id\": \"{BODY_SECRET}\", \"note\": \"hi\"}}");
    let dir = tempfile::tempdir()?;
    let data = data_file(dir.path(), &body)?;
    // HTTP/1.1 with Content-Length (kept: masking keeps length), then HTTP/2.
    for version in ["--http1.1", "--http2"] {
        curl(
            &d,
            &server,
            "api.test",
            "/upload",
            &[version, "--data-binary", &data],
        )?;
    }
    let got = server.received();
    ensure!(got.len() == 2, "server got {got:#?}");
    for r in &got {
        let text = String::from_utf8_lossy(&r.body);
        ensure!(!text.contains(BODY_SECRET), "server got the secret: {text}");
        ensure!(text.contains("AKIA****"), "not masked in place: {text}");
        ensure!(r.body.len() == body.len(), "length changed: {text}");
    }
    ensure!(
        got[0].header("content-length") == Some(body.len().to_string().as_str()),
        "content-length not kept: {:?}",
        got[0].headers
    );
    let all = findings(&d, server.port, 2)?;
    ensure_finding(&all, "aws.access-key-id", "up", "body")?;
    ensure_nothing_at_rest(&d, &[BODY_SECRET])
}

#[test]
fn secret_in_a_request_header_is_masked_before_the_server() -> Result<()> {
    require_root();
    let (_pki, server, d) = masking_setup(Vec::new())?;
    // On the command line: recorded with the session's identity, masked too.
    let header = format!("X-Token: {HEADER_SECRET}");
    curl(&d, &server, "api.test", "/hello", &["-H", &header])?;
    let got = server.received();
    let value = got
        .first()
        .and_then(|r| r.header("x-token"))
        .context("no request")?;
    ensure!(value != HEADER_SECRET, "server got the secret");
    ensure!(
        value.starts_with("ghp_") && value.ends_with("****") && value.len() == HEADER_SECRET.len(),
        "masked as {value}"
    );
    let all = findings(&d, server.port, 1)?;
    ensure_finding(&all, "github.ghp", "up", "header:x-token")?;
    ensure_finding(&all, "github.ghp", "up", "cmdline")?;
    ensure_nothing_at_rest(&d, &[HEADER_SECRET])
}

#[test]
fn secret_in_a_response_body_is_masked_before_the_client() -> Result<()> {
    require_root();
    let (_pki, server, d) = masking_setup(Vec::new())?;
    for version in ["--http1.1", "--http2"] {
        let out = curl(&d, &server, "api.test", "/leak", &[version])?;
        let text = stdout(&out);
        ensure!(
            !text.contains(RESPONSE_SECRET),
            "client got the secret: {text}"
        );
        ensure!(text.contains("\"xoxb****"), "not masked in place: {text}");
    }
    let all = findings(&d, server.port, 2)?;
    ensure_finding(&all, "slack.bot-token", "down", "body")?;
    ensure_nothing_at_rest(&d, &[RESPONSE_SECRET])
}

/// Intercepts TLS and lets the vault inject any credential it allows.
const VAULT_POLICY: &str =
    "[settings]\ntls = \"intercept\"\nvault_credentials = [\"*\"]\n[default]\naction = \"allow\"\n";

/// A vault (0600) allowing `/usr/bin/curl` to send [`REAL`] to api.test under /v1/.
fn vault(dir: &Path) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("vault.yaml");
    std::fs::write(
        &path,
        format!(
            "credentials:\n  - name: test-api\n    placeholder: {PLACEHOLDER}\n    secret: {REAL}\n    \
             identities: [{{exe: {}}}]\n    destinations: [{{host: api.test, path_prefix: /v1/}}]\n",
            which_real("curl")?.display()
        ),
    )?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(path)
}

#[test]
fn vault_swaps_in_the_real_credential_for_the_allowed_identity_and_masks_its_echo() -> Result<()> {
    require_root();
    let (_pki, server, _dir, d) = vault_setup(VAULT_POLICY)?;
    let auth = format!("Authorization: Bearer {PLACEHOLDER}");
    for version in ["--http1.1", "--http2"] {
        let out = curl(
            &d,
            &server,
            "api.test",
            "/v1/echo-auth",
            &[version, "-H", &auth],
        )?;
        let text = stdout(&out);
        // The server got the real value and echoed it; the workload sees it masked.
        ensure!(
            !text.contains(REAL),
            "workload got the real credential: {text}"
        );
        ensure!(
            text.starts_with("you sent: Bearer real****"),
            "echo: {text}"
        );
    }
    let got = server.received();
    ensure!(got.len() == 2, "server got {got:#?}");
    for r in &got {
        ensure!(
            r.path == "/v1/echo-auth"
                && r.header("authorization") == Some(format!("Bearer {REAL}").as_str()),
            "server got {:?}",
            r.headers
        );
    }
    let all = findings(&d, server.port, 2)?;
    ensure_finding(&all, "vault.test-api", "down", "body")?;
    ensure_nothing_at_rest(&d, &[REAL])
}

#[test]
fn vault_refuses_another_identity_and_another_destination_with_403() -> Result<()> {
    require_root();
    let (_pki, server, dir, d) = vault_setup(VAULT_POLICY)?;
    let auth = format!("Authorization: Bearer {PLACEHOLDER}");
    let status = ["-w", "\n%{http_code}", "-H", &auth];

    // Another executable: a copy of curl.
    let other = curl_copy(dir.path())?;
    let out = curl_as(
        &d,
        other.to_str().unwrap(),
        &server,
        "api.test",
        "/v1/echo-auth",
        &status,
    )?;
    ensure_403(&out, "not allowed for this identity", "another identity")?;
    // The allowed executable toward another host, and outside the allowed path.
    let out = curl(&d, &server, "other.test", "/v1/echo-auth", &status)?;
    ensure_403(
        &out,
        "not allowed toward other.test/v1/echo-auth",
        "another host",
    )?;
    let out = curl(&d, &server, "api.test", "/v2/echo-auth", &status)?;
    ensure_403(&out, "", "another path")?;

    ensure!(
        server.received().is_empty(),
        "reached the server: {:#?}",
        server.received()
    );
    findings(&d, server.port, 3)?;
    ensure_nothing_at_rest(&d, &[REAL])
}

/// How a raw client ends its side.
#[derive(Clone, Copy, PartialEq)]
enum RawClient {
    /// Half-closes right after sending.
    HalfCloses,
    /// Waits for the whole echo before half-closing, like a request-response client.
    AwaitsReply,
}

/// Sends `payload` through a raw TCP connection (Python, under `exec`) to the echo
/// `server`, half-closes (at once or after the echo, as `client` says), and returns what
/// came back.
fn raw_round_trip(d: &Daemon, server: &Server, payload: &str, client: RawClient) -> Result<String> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("payload");
    std::fs::write(&file, payload)?;
    let script = "import socket, sys\n\
        s = socket.create_connection((sys.argv[1], int(sys.argv[2])))\n\
        s.settimeout(20)\n\
        s.sendall(open(sys.argv[3], 'rb').read())\n\
        out = b''\n\
        while len(out) < int(sys.argv[4]):\n    b = s.recv(65536)\n    if not b: break\n    out += b\n\
        s.shutdown(socket.SHUT_WR)\n\
        while True:\n    b = s.recv(65536)\n    if not b: break\n    out += b\n\
        sys.stdout.write(out.decode())\n";
    let (ip, port) = (server.ip().to_string(), server.port().to_string());
    let awaited = match client {
        RawClient::HalfCloses => 0,
        RawClient::AwaitsReply => payload.len(),
    }
    .to_string();
    let py = python().to_str().unwrap();
    let out = exec(
        d,
        &[
            py,
            "-c",
            script,
            &ip,
            &port,
            file.to_str().unwrap(),
            &awaited,
        ],
    )?;
    ensure!(
        out.status.success(),
        "client: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(stdout(&out))
}

#[test]
fn raw_tcp_is_masked_both_ways() -> Result<()> {
    require_root();
    let server = Server::echo("127.0.0.2")?;
    let d = raw_daemon(&[])?;
    let payload = format!("hello\nkey={BODY_SECRET}\nbye\n");
    let got = raw_round_trip(&d, &server, &payload, RawClient::HalfCloses)?;
    let masked = payload.replace(BODY_SECRET, "AKIA****************");
    ensure!(got == masked, "client got {got:?}");
    let records = server.wait_records(1, SESSIONS)?;
    ensure!(
        records[0].sha256.as_deref() == Some(sha256_hex(masked.as_bytes()).as_str()),
        "the server got other bytes than the masked payload: {records:?}"
    );
    let all = findings(&d, server.port(), 1)?;
    ensure_finding(&all, "aws.access-key-id", "up", "stream")?;
    ensure_nothing_at_rest(&d, &[BODY_SECRET])
}

/// Started outside the checkout, with neither `--rules` nor `--policy`, the daemon masks
/// with the rules built into it, as the built-in default policy says.
#[test]
fn a_daemon_started_outside_the_checkout_masks_with_its_built_in_rules() -> Result<()> {
    require_root();
    let server = Server::echo("127.0.0.2")?;
    let elsewhere = tempfile::tempdir()?;
    let d = Daemon::start_in(elsewhere.path(), &[])?;
    let payload = format!("hello\nkey={BODY_SECRET}\nbye\n");
    let got = raw_round_trip(&d, &server, &payload, RawClient::HalfCloses)?;
    ensure!(
        got == payload.replace(BODY_SECRET, "AKIA****************"),
        "client got {got:?}"
    );
    let all = findings(&d, server.port(), 1)?;
    ensure_finding(&all, "aws.access-key-id", "up", "stream")?;
    ensure_nothing_at_rest(&d, &[BODY_SECRET])
}

#[test]
fn raw_tcp_secret_ending_a_write_is_masked_before_the_idle_flush() -> Result<()> {
    require_root();
    let server = Server::echo("127.0.0.2")?;
    let d = raw_daemon(&[])?;
    // Nothing follows the token until the echo is back: only the idle flush forwards it.
    let payload = format!("token {HEADER_SECRET}");
    let got = raw_round_trip(&d, &server, &payload, RawClient::AwaitsReply)?;
    ensure!(
        got.len() == payload.len() && got.starts_with("token ghp_") && !got.contains(HEADER_SECRET),
        "client got {got:?}"
    );
    let records = server.wait_records(1, SESSIONS)?;
    ensure!(
        records[0].sha256.as_deref() == Some(sha256_hex(got.as_bytes()).as_str()),
        "the server got other bytes than the masked echo: {records:?}"
    );
    let all = findings(&d, server.port(), 1)?;
    ensure_finding(&all, "github.ghp", "up", "stream")?;
    ensure!(
        all.iter().all(|f| f["forwarded_unmasked"] == 0),
        "a secret went out unmasked: {all:#?}"
    );
    ensure_nothing_at_rest(&d, &[HEADER_SECRET])
}

#[test]
fn raw_tcp_follows_the_policy_settings() -> Result<()> {
    require_root();
    let server = Server::echo("127.0.0.2")?;
    let dir = tempfile::tempdir()?;
    let policy = policy_file(
        dir.path(),
        "[settings]\nsecrets_report = [\"aws.access-key-id\"]\n[default]\naction = \"allow\"\n",
    )?;
    let d = raw_daemon(&["--policy", policy.to_str().unwrap()])?;
    let payload = format!("key={BODY_SECRET}\ntoken={HEADER_SECRET}\n");
    let got = raw_round_trip(&d, &server, &payload, RawClient::HalfCloses)?;
    // Reported only: through untouched (both ways). Masked: masked on the way up.
    ensure!(
        got.contains(BODY_SECRET) && !got.contains(HEADER_SECRET) && got.contains("token=ghp_"),
        "client got {got:?}"
    );
    let all = findings(&d, server.port(), 1)?;
    ensure_finding(&all, "aws.access-key-id", "up", "stream")?;
    ensure_finding(&all, "github.ghp", "up", "stream")?;
    ensure!(
        all.iter()
            .filter(|f| f["rule"] == "aws.access-key-id")
            .all(|f| f["report_only"] == true)
            && all
                .iter()
                .filter(|f| f["rule"] == "github.ghp")
                .all(|f| f.get("report_only").is_none()),
        "report_only flags: {all:#?}"
    );
    ensure_nothing_at_rest(&d, &[BODY_SECRET, HEADER_SECRET])
}

/// The entries in a rule cache directory.
fn cache_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        entries.push(entry?.path());
    }
    Ok(entries)
}

/// A restarted daemon loads its rules' compiled databases from its cache; an entry it finds
/// damaged it compiles again and rewrites. Either way it masks.
#[test]
fn a_restarted_daemon_loads_its_rules_from_the_cache_and_recompiles_a_damaged_entry() -> Result<()>
{
    require_root();
    let server = Server::echo("127.0.0.2")?;
    let cache = tempfile::tempdir()?;
    let mut d = raw_daemon(&["--rules-cache", cache.path().to_str().context("utf-8")?])?;
    let count = |d: &Daemon, line: &str| d.log().matches(line).count();
    let (compiled, loaded) = (
        "rule databases compiled and cached",
        "loaded from the cache",
    );
    ensure!(
        count(&d, compiled) == 1 && count(&d, loaded) == 0,
        "first start:\n{}",
        d.log()
    );
    let entries = cache_entries(cache.path())?;
    ensure!(entries.len() == 1, "cache: {entries:?}");
    let payload = format!("hello\nkey={BODY_SECRET}\nbye\n");
    let masked = payload.replace(BODY_SECRET, "AKIA****************");
    d.restart()?;
    ensure!(
        count(&d, compiled) == 1 && count(&d, loaded) == 1,
        "restart:\n{}",
        d.log()
    );
    let got = raw_round_trip(&d, &server, &payload, RawClient::HalfCloses)?;
    ensure!(got == masked, "from the cache, client got {got:?}");
    let entry = std::fs::read(&entries[0])?;
    std::fs::write(&entries[0], &entry[..entry.len() / 2])?;
    d.restart()?;
    ensure!(
        count(&d, compiled) == 2 && count(&d, "not using a rule cache entry") == 1,
        "damaged entry:\n{}",
        d.log()
    );
    let got = raw_round_trip(&d, &server, &payload, RawClient::HalfCloses)?;
    ensure!(got == masked, "recompiled, client got {got:?}");
    ensure!(
        std::fs::read(&entries[0])?.len() == entry.len(),
        "entry not rewritten"
    );
    Ok(())
}

/// A vault's credentials become rules of the engine: its databases are never cached.
#[test]
fn a_daemon_with_a_vault_caches_no_rule_databases() -> Result<()> {
    require_root();
    let (cache, dir) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let vault = vault(dir.path())?;
    let d = raw_daemon(&[
        "--rules-cache",
        cache.path().to_str().context("utf-8")?,
        "--vault",
        vault.to_str().context("utf-8")?,
    ])?;
    d.wait_for_log_line("secret masking on", RUN)?;
    let entries = cache_entries(cache.path())?;
    ensure!(entries.is_empty(), "cached with a vault: {entries:?}");
    Ok(())
}

/// A policy file in `dir`: TLS intercepted, then `text` (settings, rules, default).
fn policy_file(dir: &Path, text: &str) -> Result<PathBuf> {
    let path = dir.join("policy.toml");
    std::fs::write(&path, text)?;
    Ok(path)
}

/// Every HTTP exchange the daemon recorded with the server at `port`, once `n` sessions
/// to it have ended.
fn exchanges(d: &Daemon, port: u16, n: usize) -> Result<Vec<Value>> {
    findings(d, port, n)?;
    let sessions: Vec<Value> = d.cli_json(["sessions", "list", "--json"])?;
    let suffix = format!(":{port}");
    Ok(sessions
        .iter()
        .filter(|s| {
            s["destination"]
                .as_str()
                .is_some_and(|d| d.ends_with(&suffix))
        })
        .flat_map(|s| s["http"].as_array().cloned().unwrap_or_default())
        .collect())
}

#[test]
fn policy_settings_choose_what_is_masked_reported_and_recorded() -> Result<()> {
    require_root();
    let (_pki, server, dir, d) = policy_setup(
        "[settings]\ntls = \"intercept\"\nsecrets_mask = [\"*\"]\n\
         secrets_report = [\"aws.access-key-id\"]\nrecord_body_bytes = 40\n\
         [default]\naction = \"allow\"\n",
    )?;
    let body =
        format!("{{\"aws_access_key_id\": \"{BODY_SECRET}\", \"token\": \"{HEADER_SECRET}\"}}");
    let data = data_file(dir.path(), &body)?;
    curl(
        &d,
        &server,
        "api.test",
        "/upload",
        &["--http1.1", "--data-binary", &data],
    )?;
    let got = server.received();
    let text = String::from_utf8_lossy(&got.first().context("no request")?.body).into_owned();
    // Reported only: it went up untouched. Masked: masked.
    ensure!(
        text.contains(BODY_SECRET),
        "the reported secret was changed: {text}"
    );
    ensure!(
        !text.contains(HEADER_SECRET) && text.contains("\"ghp_"),
        "not masked: {text}"
    );
    let all = findings(&d, server.port, 1)?;
    ensure_finding(&all, "aws.access-key-id", "up", "body")?;
    ensure_finding(&all, "github.ghp", "up", "body")?;
    let report_only = |rule: &str| {
        all.iter()
            .find(|f| f["rule"] == rule)
            .is_some_and(|f| f["report_only"] == true)
    };
    ensure!(
        report_only("aws.access-key-id") && !report_only("github.ghp"),
        "report_only flags: {all:#?}"
    );
    // 40 bytes of the body recorded, the cap noted, the reported secret masked there too.
    let http = exchanges(&d, server.port, 1)?;
    let recorded = &http.first().context("no exchange")?["request_body"];
    ensure!(
        recorded["cap"] == 40
            && recorded["truncated"] == true
            && recorded["data"] == "{\"aws_access_key_id\": \"AKIA*************",
        "recorded body: {recorded}"
    );
    ensure!(
        http[0]["response_body"]["data"] == "ok",
        "response body: {}",
        http[0]
    );
    // The daemon forwarded the reported secret but stored it nowhere.
    ensure_nothing_at_rest(&d, &[BODY_SECRET, HEADER_SECRET])
}

#[test]
fn vault_credentials_follow_the_policy_and_placeholders_in_bodies_are_swapped() -> Result<()> {
    require_root();
    // POST may use the credential; anything else (the default) may not.
    let (_pki, server, dir, d) = vault_setup(
        "[settings]\ntls = \"intercept\"\n\
         [[rule]]\nname = \"post-may-use-the-key\"\naction = \"allow\"\n\
         [rule.match]\nmethod = [\"POST\"]\n\
         [rule.settings]\nvault_credentials = [\"test-api\"]\n\
         [default]\naction = \"allow\"\n",
    )?;
    let auth = format!("Authorization: Bearer {PLACEHOLDER}");
    let body = format!("{{\"api_key\": \"{PLACEHOLDER}\", \"again\": \"{PLACEHOLDER}\"}}");
    let data = data_file(dir.path(), &body)?;
    for version in ["--http1.1", "--http2"] {
        let args = [version, "-H", &auth, "--data-binary", &data];
        let out = curl(&d, &server, "api.test", "/v1/echo-auth", &args)?;
        let text = stdout(&out);
        ensure!(
            !text.contains(REAL) && text.starts_with("you sent: Bearer real****"),
            "echo: {text}"
        );
    }
    let got = server.received();
    ensure!(got.len() == 2, "server got {got:#?}");
    let want = body.replace(PLACEHOLDER, REAL);
    for r in &got {
        ensure!(
            r.body == want.as_bytes(),
            "body upstream: {}",
            String::from_utf8_lossy(&r.body)
        );
        ensure!(
            r.header("authorization") == Some(format!("Bearer {REAL}").as_str()),
            "header upstream: {:?}",
            r.headers
        );
    }
    // The swap changes the length; a body this small is read whole and goes on with its
    // new length, not chunked (some servers refuse chunked uploads).
    let length = want.len().to_string();
    ensure!(
        got[0].header("content-length") == Some(length.as_str())
            && got[0].header("transfer-encoding").is_none(),
        "framing: {:?}",
        got[0].headers
    );
    let status = ["-w", "\n%{http_code}"];
    // A GET: the policy's default lists no credential.
    let out = curl(
        &d,
        &server,
        "api.test",
        "/v1/echo-auth",
        &[&status[..], &["-H", &auth]].concat(),
    )?;
    ensure_403(&out, "not allowed by policy rule \"default\"", "GET")?;
    // Another executable with the placeholder in the body only: refused mid-body.
    let other = curl_copy(dir.path())?;
    let out = curl_as(
        &d,
        other.to_str().unwrap(),
        &server,
        "api.test",
        "/v1/echo-auth",
        &[&status[..], &["--data-binary", &data]].concat(),
    )?;
    ensure_403(&out, "not allowed for this identity", "another identity")?;
    ensure!(
        server.received().len() == 2,
        "refused requests reached the server"
    );
    findings(&d, server.port, 4)?;
    ensure_nothing_at_rest(&d, &[REAL])
}

/// `plain` compressed by Python's codec for `coding` (gzip, br, zstd).
fn compress(coding: &str, plain: &[u8]) -> Result<Vec<u8>> {
    let module = match coding {
        "gzip" => "import gzip as m; c = lambda b: m.compress(b, 1)",
        "br" => "import brotli as m; c = lambda b: m.compress(b, quality=1)",
        _ => "import zstandard as m; c = m.ZstdCompressor(level=1).compress",
    };
    let script =
        format!("{module}\nimport sys\nsys.stdout.buffer.write(c(sys.stdin.buffer.read()))");
    let mut child = std::process::Command::new(python())
        .args(["-c", &script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let mut stdin = child.stdin.take().context("stdin")?;
    let input = plain.to_vec();
    let writer = std::thread::spawn(move || std::io::Write::write_all(&mut stdin, &input));
    let out = child.wait_with_output()?;
    writer.join().expect("writer")?;
    ensure!(out.status.success(), "compressing with {coding} failed");
    Ok(out.stdout)
}

#[test]
fn compressed_responses_are_masked_and_reencoded_and_a_bomb_ends_only_its_exchange() -> Result<()> {
    require_root();
    // A JSON listing long enough to span many chunks, the secret in its middle.
    let filler: String = (0..3000)
        .map(|i| format!("{{\"id\": {i}, \"name\": \"item {i}\"}},\n"))
        .collect();
    let plain = format!("[{filler}{{\"slack_token\": \"{RESPONSE_SECRET}\"}},\n{filler}{{}}]\n");
    let mut routes: Encoded = Vec::new();
    for coding in ["gzip", "br", "zstd"] {
        routes.push((
            format!("/{coding}/leak"),
            coding,
            compress(coding, plain.as_bytes())?,
        ));
    }
    // 80 MiB of zeros: about 80 KB of gzip, over the 64 MiB decoded cap.
    routes.push((
        "/gzip/bomb".into(),
        "gzip",
        compress("gzip", &vec![0u8; 80 << 20])?,
    ));
    let (_pki, server, d) = masking_setup(routes)?;
    for coding in ["gzip", "br", "zstd"] {
        for version in ["--http1.1", "--http2"] {
            let path = format!("/{coding}/leak");
            // curl decodes the body: it must be valid in its coding, and masked.
            let out = curl(&d, &server, "api.test", &path, &[version, "--compressed"])?;
            let text = stdout(&out);
            ensure!(
                !text.contains(RESPONSE_SECRET),
                "{coding} {version}: secret reached the client"
            );
            ensure!(
                text.len() == plain.len() && text.contains("\"xoxb****") && text.ends_with("{}]\n"),
                "{coding} {version}: decoded {} bytes: {}",
                text.len(),
                &text[..text.len().min(200)]
            );
        }
    }
    let all = findings(&d, server.port, 6)?;
    ensure_finding(&all, "slack.bot-token", "down", "body")?;
    ensure!(
        all.iter()
            .filter(|f| f["rule"] == "slack.bot-token")
            .count()
            == 6,
        "one finding per response: {all:#?}"
    );
    // The bomb: curl sees a broken transfer; the daemon carries on.
    let (resolve, url) = (
        server.resolve("api.test"),
        server.url("api.test", "/gzip/bomb"),
    );
    let out = exec(
        &d,
        &[
            "curl",
            "-sS",
            "--http1.1",
            "--compressed",
            "-o",
            "/dev/null",
            "--resolve",
            &resolve,
            &url,
        ],
    )?;
    ensure!(!out.status.success(), "the bomb was delivered whole");
    let out = curl(&d, &server, "api.test", "/hello", &[])?;
    ensure!(stdout(&out) == "ok", "after the bomb: {}", stdout(&out));
    let http = exchanges(&d, server.port, 8)?;
    let bomb = http
        .iter()
        .find(|e| e["path"] == "/gzip/bomb")
        .context("no record of the bomb")?;
    ensure!(
        bomb["error"].as_str().is_some_and(
            |e| e.contains("response body") && e.contains("exceeds the cap of 67108864 bytes")
        ),
        "bomb record: {bomb}"
    );
    // The connection broke because of what the upstream sent: the upstream's error.
    let broken = d.wait_for_matching(
        |s| {
            s.error
                .as_deref()
                .is_some_and(|e| e.contains("exceeds the cap"))
        },
        1,
        Duration::from_secs(30),
    )?;
    ensure!(
        broken[0].outcome == "upstream_error",
        "{}",
        broken[0].brief()
    );
    ensure_nothing_at_rest(&d, &[RESPONSE_SECRET])
}
