//! The Python test client (tests/scripts/client.py) and its JSON report.

use std::ffi::OsString;
use std::process::{Command, Output};

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use crate::util::{python, scripts_dir};

#[derive(Clone, Debug, Deserialize)]
pub struct ClientReport {
    pub pid: u32,
    /// readlink /proc/self/exe
    pub exe: String,
    pub comm: String,
    pub uid: u32,
    pub results: Vec<ConnResult>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct ConnResult {
    pub target: String,
    /// getsockname after connect.
    pub local: Option<String>,
    pub peer: Option<String>,
    pub sent: u64,
    pub sent_sha256: Option<String>,
    pub received: u64,
    pub received_sha256: Option<String>,
    /// The server (or proxy) closed cleanly (recv returned b"").
    pub eof: bool,
    /// echo-many: the echo equals what was sent.
    pub r#match: Option<bool>,
    pub error: Option<ConnError>,
    #[serde(default)]
    pub index: Option<usize>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct ConnError {
    pub stage: String,
    pub errno: Option<i32>,
    pub name: Option<String>,
    pub msg: String,
}

/// The argv for a client run: `[python, client.py, MODE, ARGS…]`. Wrap it with
/// `Daemon::exec_command`, or make a [`Command`] with [`client_command`].
pub fn client_argv(mode: &str, args: &[String]) -> Vec<OsString> {
    let mut v: Vec<OsString> = vec![
        python().into(),
        scripts_dir().join("client.py").into(),
        mode.into(),
    ];
    v.extend(args.iter().map(OsString::from));
    v
}

/// `python client.py MODE ARGS…` as a plain command (e.g. to run outside any enrollment).
pub fn client_command(mode: &str, args: &[String]) -> Command {
    let argv = client_argv(mode, args);
    let mut c = Command::new(&argv[0]);
    c.args(&argv[1..]);
    c
}

/// Parses a client's output; fails with its stdout/stderr when it did not exit 0 or printed
/// no report.
pub fn parse_report(out: &Output) -> Result<ClientReport> {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!(
            "client failed: {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
            out.status
        );
    }
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .with_context(|| {
            format!("client printed no report\nstdout:\n{stdout}\nstderr:\n{stderr}")
        })?;
    serde_json::from_str(line).with_context(|| format!("bad client report: {line}"))
}
