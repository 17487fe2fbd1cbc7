//! An MCP server for tests: tests/scripts/mcp_server.py (the official `mcp` SDK over
//! streamable HTTP with TLS) on a loopback address, and the tool calls it received.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::Value;

use crate::daemon::Daemon;
use crate::https::TestPki;
use crate::proc::{Reaped, spawn_logged};
use crate::util::{poll, python, scripts_dir};

const LISTEN_TIMEOUT: Duration = Duration::from_secs(30);

/// The server on `ip` (a certificate from `pki`); Drop stops it by pid.
pub struct McpServer {
    pub port: u16,
    calls: PathBuf,
    _process: Reaped,
    _dir: tempfile::TempDir,
}

impl McpServer {
    /// `read_config` reports `parts` as progress, then returns `result`.
    pub fn start(ip: &str, pki: &TestPki, parts: &[String], result: &str) -> Result<McpServer> {
        let (cert, key) = pki.server_pem(&[ip])?;
        let dir = tempfile::tempdir()?;
        let log = dir.path().join("mcp_server.log");
        let calls = dir.path().join("calls.jsonl");
        let mut cmd = std::process::Command::new(python());
        cmd.arg(scripts_dir().join("mcp_server.py"))
            .args([ip.as_ref(), cert.as_os_str(), key.as_os_str()])
            .args([serde_json::to_string(parts)?.as_str(), result])
            .arg(&calls);
        let process = Reaped(spawn_logged(&mut cmd, &log)?);
        let port = poll(
            "the MCP server to listen",
            LISTEN_TIMEOUT,
            Duration::from_millis(50),
            || {
                let text = std::fs::read_to_string(&log)?;
                Ok(text
                    .lines()
                    .find_map(|l| l.strip_prefix("LISTENING ")?.parse().ok()))
            },
        )
        .with_context(|| std::fs::read_to_string(&log).unwrap_or_default())?;
        Ok(McpServer {
            port,
            calls,
            _process: process,
            _dir: dir,
        })
    }

    /// The tool calls the server received, in order: `{"tool", "arguments"}`.
    pub fn calls(&self) -> Result<Vec<Value>> {
        let text = match std::fs::read_to_string(&self.calls) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            read => read?,
        };
        text.lines()
            .map(|l| serde_json::from_str(l).context("a call in the server's log"))
            .collect()
    }
}

/// tests/scripts/mcp_client.py against `url` under `interceptor exec` (as the caller, with
/// loopback included): `read_config` with progress, or each of `calls` (tool, arguments) in
/// turn.
pub fn client_command(d: &Daemon, url: &str, calls: &[(&str, Value)]) -> Result<Command> {
    let script = scripts_dir().join("mcp_client.py");
    let mut argv = vec![
        python().to_str().context("utf-8")?.to_owned(),
        script.to_str().context("utf-8")?.to_owned(),
        url.to_owned(),
    ];
    for (tool, arguments) in calls {
        argv.extend([tool.to_string(), arguments.to_string()]);
    }
    Ok(d.exec_command(&["--include-loopback"], &argv))
}

/// The JSON line the client printed; an error (with its stderr) unless it succeeded.
pub fn client_report(out: &Output) -> Result<Value> {
    let stdout = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(
        out.status.success(),
        "the MCP client failed ({}): {}\n{stdout}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).with_context(|| format!("client report: {stdout}"))
}
