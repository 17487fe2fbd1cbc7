//! The policy on host names and HTTP requests, end to end: curl under `interceptor exec`
//! against HTTPS servers on 127.0.0.2 (their test CA trusted by the daemon through
//! `--upstream-ca`). A host-name deny gets a TLS alert, an HTTP path deny a 403 naming the
//! rule, an approve rule holds the request until `approvals approve|deny`, and a policy
//! passthrough host is not decrypted.

use std::process::Output;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use interceptor_tests::https::{HttpsServer, TestPki, policy_daemon};
use interceptor_tests::*;
use serde_json::Value;

const RUN: Duration = Duration::from_secs(60);
const WAIT: Duration = Duration::from_secs(30);

const POLICY: &str = r#"
[[rule]]
name = "no-blocked-host"
action = "deny"
reason = "blocked host"
[rule.match]
host = ["blocked.test"]

[[rule]]
name = "hsm-passthrough"
action = "allow"
[rule.match]
host = ["hsm.test"]
[rule.settings]
tls = "passthrough"

[[rule]]
name = "hold-host"
action = "approve"
[rule.match]
host = ["held.test"]
[rule.approval]
users = ["root"]
timeout = "30s"

[[rule]]
name = "no-admin"
action = "deny"
reason = "admin is off limits"
[rule.match]
path = ["/admin/**"]

[[rule]]
name = "hold-echo"
action = "approve"
[rule.match]
method = ["POST"]
path = ["/echo"]
[rule.approval]
users = ["root"]
timeout = "30s"

[[rule]]
name = "hold-briefly"
action = "approve"
[rule.match]
path = ["/bytes/**"]
[rule.approval]
users = ["root"]
timeout = "1s"

# After the HTTP rules: decided by the proxy, only once a stream turns out not to be HTTP.
[[rule]]
name = "no-raw-four"
action = "deny"
reason = "raw TCP to .4"
[rule.match]
cidr = ["127.0.0.4/32"]

[default]
action = "allow"
"#;

struct Setup {
    pki: TestPki,
    server: HttpsServer,
    d: Daemon,
    _policy: PolicyFile,
}

fn setup() -> Result<Setup> {
    setup_with(&[])
}

/// [`setup`] with more `run` arguments.
fn setup_with(extra: &[&str]) -> Result<Setup> {
    require_root();
    let pki = TestPki::new("upstream test CA")?;
    let names = ["127.0.0.2", "blocked.test", "hsm.test", "held.test"];
    let server = HttpsServer::start("127.0.0.2", pki.server_config(&names)?)?;
    let policy = PolicyFile::new(POLICY)?;
    let d = policy_daemon(&pki, policy.path(), extra)?;
    Ok(Setup {
        pki,
        server,
        d,
        _policy: policy,
    })
}

/// `program` under `interceptor exec --include-loopback` (bounded time).
fn exec(d: &Daemon, program: &[&str]) -> Result<Output> {
    run_with_timeout(&mut d.exec_command(&["--include-loopback"], program), RUN)
}

/// curl under exec with `args`.
fn curl(d: &Daemon, args: &[&str]) -> Result<Output> {
    let mut argv = vec!["curl", "-sS"];
    argv.extend_from_slice(args);
    exec(d, &argv)
}

/// The client succeeded and its output passes `ok` (both streams in the message when not).
fn ensure_output(out: &Output, ok: impl Fn(&str) -> bool) -> Result<()> {
    let stdout = text(&out.stdout);
    ensure!(
        out.status.success() && ok(&stdout),
        "client: {stdout} {}",
        text(&out.stderr)
    );
    Ok(())
}

/// The newest session to `port` with SNI blocked.test was denied by the host-name rule.
fn ensure_sni_denied(d: &Daemon, port: u16) -> Result<Value> {
    let rec = session(d, port, |x| x["tls"]["sni"] == "blocked.test")?;
    ensure!(
        rec["outcome"] == "denied" && rec["tls"]["policy"]["rule"] == "no-blocked-host",
        "session: {rec:#}"
    );
    Ok(rec)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `--resolve` for `name` to the server, and its URL for `path`.
fn by_name(server: &HttpsServer, name: &str, path: &str) -> (String, String) {
    let port = server.addr.port();
    (
        format!("{name}:{port}:127.0.0.2"),
        format!("https://{name}:{port}{path}"),
    )
}

/// The newest ended session to `port` that `pred` accepts.
fn session(d: &Daemon, port: u16, pred: impl Fn(&Value) -> bool) -> Result<Value> {
    let suffix = format!(":{port}");
    poll("the session", WAIT, Duration::from_millis(100), || {
        let all: Vec<Value> = d.cli_json(["sessions", "list", "--json"])?;
        Ok(all.into_iter().rev().find(|s| {
            s["destination"]
                .as_str()
                .is_some_and(|x| x.ends_with(&suffix))
                && s["outcome"] != "open"
                && pred(s)
        }))
    })
}

#[test]
fn host_name_deny_gets_a_tls_alert_and_is_recorded_with_its_rule() -> Result<()> {
    let s = setup()?;
    let (resolve, url) = by_name(&s.server, "blocked.test", "/hello");
    let out = curl(&s.d, &["--resolve", &resolve, &url])?;
    ensure!(
        !out.status.success(),
        "curl got through: {}",
        text(&out.stdout)
    );
    let rec = ensure_sni_denied(&s.d, s.server.addr.port())?;
    let error = rec["error"].as_str().unwrap_or_default();
    ensure!(
        error.contains("no-blocked-host") && error.contains("blocked host"),
        "session error: {error}"
    );
    ensure!(
        text(&out.stderr).contains("alert access denied"),
        "curl: {}",
        text(&out.stderr)
    );
    Ok(())
}

#[test]
fn http_path_deny_is_a_403_naming_the_rule_and_other_paths_pass() -> Result<()> {
    let s = setup()?;
    let out = curl(&s.d, &["-i", &s.server.url("/admin/users")])?;
    let body = text(&out.stdout);
    ensure!(body.contains(" 403"), "response: {body}");
    ensure!(
        body.contains("no-admin") && body.contains("admin is off limits"),
        "response: {body}"
    );
    let out = curl(&s.d, &[&s.server.url("/hello")])?;
    ensure_output(&out, |t| t.starts_with("hello over"))?;
    let rec = session(&s.d, s.server.addr.port(), |x| {
        x["http"][0]["path"] == "/admin/users"
    })?;
    let exchange = &rec["http"][0];
    let error = exchange["error"].as_str().unwrap_or_default();
    ensure!(
        error.contains("no-admin")
            && exchange["policy"]["rule"] == "no-admin"
            && exchange["policy"]["verdict"] == "deny",
        "exchange: {exchange:#}"
    );

    // Plain HTTP too.
    let plain = HttpsServer::start_plain("127.0.0.3")?;
    let out = curl(&s.d, &["-i", &plain.plain_url("/admin/users")])?;
    let body = text(&out.stdout);
    ensure!(
        body.contains(" 403") && body.contains("no-admin"),
        "response: {body}"
    );
    Ok(())
}

/// Starts curl with `args` under exec in the background, as `nobody` (a workload's own
/// user may not approve its requests); its output once it ends.
fn background_curl(s: &Setup, args: &[&str]) -> std::thread::JoinHandle<Result<Output>> {
    let mut argv = vec![
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "curl",
        "-sS",
    ];
    argv.extend_from_slice(args);
    let mut cmd = s.d.exec_command(&["--include-loopback"], &argv);
    std::thread::spawn(move || run_with_timeout(&mut cmd, RUN))
}

#[test]
fn held_request_nobody_decides_times_out_with_a_403() -> Result<()> {
    let s = setup()?;
    let out = curl(&s.d, &["-i", &s.server.url("/bytes/3")])?;
    let body = text(&out.stdout);
    ensure!(
        body.contains(" 403") && body.contains("timed out awaiting approval"),
        "response: {body}"
    );
    Ok(())
}

/// The one pending approval, once it is there, and its id.
fn pending(d: &Daemon) -> Result<(Value, String)> {
    let p = poll(
        "a pending approval",
        WAIT,
        Duration::from_millis(50),
        || {
            let list: Vec<Value> = d.cli_json(["approvals", "list", "--json"])?;
            ensure!(list.len() <= 1, "more than one pending: {list:?}");
            Ok(list.into_iter().next())
        },
    )?;
    let id = p["id"].as_u64().context("id")?.to_string();
    Ok((p, id))
}

/// The id of the pending approval of a POST /echo.
fn pending_echo(d: &Daemon) -> Result<String> {
    let (p, id) = pending(d)?;
    ensure!(
        p["rule"] == "hold-echo" && p["request_line"] == "POST /echo",
        "pending: {p:#}"
    );
    Ok(id)
}

#[test]
fn approve_rule_holds_the_request_until_approved_or_denied() -> Result<()> {
    let s = setup()?;
    let url = s.server.url("/echo");
    let client = background_curl(&s, &["-d", "payload-one", &url]);
    let id = pending_echo(&s.d)?;
    s.d.cli_ok(["approvals", "approve", &id])?;
    let out = client.join().expect("client thread")?;
    ensure_output(&out, |t| t == "payload-one")?;

    let client = background_curl(&s, &["-d", "payload-two", &url]);
    let id = pending_echo(&s.d)?;
    s.d.cli_ok(["approvals", "deny", &id, "--reason", "not now"])?;
    let out = client.join().expect("client thread")?;
    let body = text(&out.stdout);
    ensure!(
        body.contains("approval denied by root: not now"),
        "response: {body}"
    );
    Ok(())
}

/// The approver sees the first 4 KiB of a held request's body with its secrets masked; after
/// approval the whole body goes upstream (masked the same way, nothing lost or reordered).
#[test]
fn held_request_shows_a_masked_body_preview_then_forwards_the_whole_body() -> Result<()> {
    let rules = workspace_root().join("policies/rules");
    let s = setup_with(&["--rules", rules.to_str().context("utf-8")?])?;
    let secret = "AKIAQYLPMN5HHHFPZAM2";
    // A second copy straddles the preview's end (byte 4096): it is masked there too.
    let head = format!("key={secret}\n");
    let filler = "0123456789abcdef".repeat(1024);
    let payload = format!(
        "{head}{} {secret} {}END",
        &filler[..4090 - head.len() - 1],
        &filler[..8192]
    );
    assert_eq!(payload.find(&format!(" {secret}")), Some(4089));
    let masked = payload.replace(secret, "AKIA****************");
    let client = background_curl(&s, &["--data-binary", &payload, &s.server.url("/echo")]);
    let (p, id) = pending(&s.d)?;
    let preview = p["body_preview"].as_str().context("no body preview")?;
    ensure!(
        preview == &masked[..4096] && !preview.contains(secret),
        "preview: {preview:?}"
    );
    s.d.cli_ok(["approvals", "approve", &id])?;
    let out = client.join().expect("client thread")?;
    ensure!(
        out.status.success() && text(&out.stdout) == masked,
        "echoed {} of {} bytes: {}",
        out.stdout.len(),
        masked.len(),
        text(&out.stderr)
    );
    Ok(())
}

/// Held by its SNI before the upstream is even dialled: the server sees no connection while
/// it waits, nor after a deny; one after approval.
#[test]
fn host_name_approve_holds_the_connection_before_the_upstream_is_dialled() -> Result<()> {
    let s = setup()?;
    let (resolve, url) = by_name(&s.server, "held.test", "/hello");
    let accepted = || {
        s.server
            .connections
            .load(std::sync::atomic::Ordering::Relaxed)
    };

    let client = background_curl(&s, &["--resolve", &resolve, &url]);
    let (_, id) = pending(&s.d)?;
    ensure!(accepted() == 0, "the server was dialled during the hold");
    s.d.cli_ok(["approvals", "deny", &id])?;
    let out = client.join().expect("client thread")?;
    ensure!(!out.status.success(), "curl: {}", text(&out.stdout));
    ensure!(
        accepted() == 0,
        "the server was dialled for a denied connection"
    );

    let client = background_curl(&s, &["--resolve", &resolve, &url]);
    let (p, id) = pending(&s.d)?;
    ensure!(
        p["rule"] == "hold-host"
            && p["destination"] == format!("held.test:{}", s.server.addr.port()),
        "pending: {p:#}"
    );
    std::thread::sleep(Duration::from_millis(300));
    ensure!(accepted() == 0, "the server was dialled during the hold");
    s.d.cli_ok(["approvals", "approve", &id])?;
    let out = client.join().expect("client thread")?;
    ensure_output(&out, |t| t.starts_with("hello over"))?;
    ensure!(accepted() == 1, "connections: {}", accepted());
    Ok(())
}

#[test]
fn a_stream_that_is_not_http_is_decided_without_the_http_rules() -> Result<()> {
    let s = setup()?;
    let listener = std::net::TcpListener::bind("127.0.0.4:0")?;
    let port = listener.local_addr()?.port();
    let script = format!("exec 3<>/dev/tcp/127.0.0.4/{port}; echo hello >&3; cat <&3");
    let out = exec(&s.d, &["bash", "-c", &script])?;
    ensure!(!out.status.success(), "raw TCP got through");
    let rec = session(&s.d, port, |_| true)?;
    let error = rec["error"].as_str().unwrap_or_default();
    ensure!(
        rec["outcome"] == "denied" && error.contains("no-raw-four"),
        "session: {rec:#}"
    );
    // Not even dialled: nothing waits in the listener's backlog.
    listener.set_nonblocking(true)?;
    ensure!(
        listener
            .accept()
            .is_err_and(|e| e.kind() == std::io::ErrorKind::WouldBlock),
        "the denied destination was dialled"
    );
    Ok(())
}

/// Under host-name rules the upstream is dialled only after the client's first bytes; a
/// client that waits for the server to speak first (SMTP-like) still gets its greeting.
#[test]
fn a_server_that_speaks_first_is_reached_when_the_client_waits() -> Result<()> {
    let s = setup()?;
    let listener = std::net::TcpListener::bind("127.0.0.5:0")?;
    let port = listener.local_addr()?.port();
    let server = std::thread::spawn(move || -> std::io::Result<()> {
        use std::io::Write;
        let (mut conn, _) = listener.accept()?;
        conn.write_all(b"220 greetings first\n")
    });
    let script = format!("exec 3<>/dev/tcp/127.0.0.5/{port}; head -1 <&3");
    let out = exec(&s.d, &["bash", "-c", &script])?;
    ensure_output(&out, |t| t == "220 greetings first\n")?;
    server.join().expect("server thread")?;
    Ok(())
}

/// A server that speaks first (an h2c server's SETTINGS at once) does not turn a connection
/// the policy decides by its HTTP requests into opaque bytes: the client's POST, sent after
/// the proxy stops waiting for it to speak first, is still read as HTTP and held by its
/// rule, and it never reaches the server.
#[test]
fn an_http_rule_holds_a_request_even_when_the_server_speaks_first() -> Result<()> {
    let s = setup()?;
    let listener = std::net::TcpListener::bind("127.0.0.6:0")?;
    let port = listener.local_addr()?.port();
    let server = std::thread::spawn(move || -> std::io::Result<Vec<u8>> {
        use std::io::{Read, Write};
        let (mut conn, _) = listener.accept()?;
        // An empty HTTP/2 SETTINGS frame, as an h2c server sends on accept.
        conn.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0])?;
        conn.set_read_timeout(Some(WAIT))?;
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = conn.read(&mut buf) {
            got.extend_from_slice(&buf[..n]);
            if got.windows(4).any(|w| w == b"\r\n\r\n") {
                conn.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                )?;
                break;
            }
        }
        Ok(got)
    });
    let script = format!(
        "import socket, time\n\
         s = socket.create_connection(('127.0.0.6', {port}))\n\
         time.sleep(0.4)\n\
         s.sendall(b'POST /echo HTTP/1.1\\r\\nHost: 127.0.0.6\\r\\nContent-Length: 2\\r\\nConnection: close\\r\\n\\r\\nhi')\n\
         data = b''\n\
         while True:\n    chunk = s.recv(65536)\n    if not chunk: break\n    data += chunk\n\
         print(data.decode('latin-1'))\n"
    );
    let python = python().to_str().context("utf-8")?.to_owned();
    let mut cmd = s.d.exec_command(
        &["--include-loopback"],
        &[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            &python,
            "-c",
            &script,
        ],
    );
    let client = std::thread::spawn(move || run_with_timeout(&mut cmd, RUN));
    let id = pending_echo(&s.d)?;
    s.d.cli_ok(["approvals", "deny", &id, "--reason", "server spoke first"])?;
    let out = client.join().expect("client thread")?;
    let response = text(&out.stdout);
    ensure!(
        response.contains(" 403") && response.contains("server spoke first"),
        "response: {response} {}",
        text(&out.stderr)
    );
    let got = server.join().expect("server thread")?;
    ensure!(
        !text(&got).contains("POST"),
        "the held request reached the server: {}",
        text(&got)
    );
    Ok(())
}

/// A client that lets its server speak first and then sends an HTTP request cannot have that
/// request read (the connection is already relayed as bytes): it is refused, the request
/// never reaches the server, and the session says why.
#[test]
fn http_after_a_server_that_spoke_first_is_refused_not_relayed() -> Result<()> {
    let s = setup()?;
    let listener = std::net::TcpListener::bind("127.0.0.6:0")?;
    let port = listener.local_addr()?.port();
    let server = std::thread::spawn(move || -> std::io::Result<Vec<u8>> {
        use std::io::{Read, Write};
        let (mut conn, _) = listener.accept()?;
        conn.write_all(b"220 greetings first\n")?;
        conn.set_read_timeout(Some(WAIT))?;
        let mut got = Vec::new();
        let _ = conn.read_to_end(&mut got);
        Ok(got)
    });
    let script = format!(
        "exec 3<>/dev/tcp/127.0.0.6/{port}; head -1 <&3; \
         printf 'POST /echo HTTP/1.1\\r\\nHost: x\\r\\nContent-Length: 2\\r\\n\\r\\nhi' >&3; cat <&3"
    );
    let out = exec(&s.d, &["bash", "-c", &script])?;
    ensure!(
        text(&out.stdout) == "220 greetings first\n",
        "client: {} {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let got = server.join().expect("server thread")?;
    ensure!(got.is_empty(), "the server got: {}", text(&got));
    let rec = session(&s.d, port, |_| true)?;
    let error = rec["error"].as_str().unwrap_or_default();
    ensure!(
        rec["outcome"] == "denied" && error.contains("spoke HTTP after its server"),
        "session: {rec:#}"
    );
    Ok(())
}

/// A client that waits before its ClientHello has its upstream dialled meanwhile (it might be
/// waiting for a server that speaks first), but its SNI still decides: a blocked host is
/// refused.
#[test]
fn a_client_slow_to_say_hello_is_still_decided_by_its_sni() -> Result<()> {
    let s = setup()?;
    let port = s.server.addr.port();
    let script = format!(
        "import socket, ssl, time\n\
         s = socket.create_connection(('127.0.0.2', {port}))\n\
         time.sleep(0.6)\n\
         ctx = ssl.create_default_context()\n\
         ctx.check_hostname = False\n\
         ctx.verify_mode = ssl.CERT_NONE\n\
         try:\n    ctx.wrap_socket(s, server_hostname='blocked.test')\n    print('handshake done')\n\
         except ssl.SSLError as e:\n    print('refused:', e)\n"
    );
    let python = python();
    let python = python.to_str().context("utf-8")?;
    let out = exec(&s.d, &[python, "-c", &script])?;
    ensure_output(&out, |t| t.contains("ACCESS_DENIED"))?;
    ensure_sni_denied(&s.d, port)?;
    Ok(())
}

#[test]
fn policy_passthrough_host_is_not_decrypted() -> Result<()> {
    let s = setup()?;
    let (resolve, url) = by_name(&s.server, "hsm.test", "/hello");
    let ca = s.pki.ca_file.to_str().context("utf-8")?;
    // The client trusts only the server's own CA: it works only if it sees the real cert.
    let out = curl(&s.d, &["-v", "--cacert", ca, "--resolve", &resolve, &url])?;
    ensure!(out.status.success(), "curl failed: {}", text(&out.stderr));
    ensure!(
        text(&out.stderr).contains("CN=upstream test CA"),
        "{}",
        text(&out.stderr)
    );
    let rec = session(&s.d, s.server.addr.port(), |x| {
        x["tls"]["sni"] == "hsm.test"
    })?;
    ensure!(
        rec["tls"]["mode"] == "passthrough" && rec["tls"]["policy"]["rule"] == "hsm-passthrough",
        "session: {rec:#}"
    );
    Ok(())
}
