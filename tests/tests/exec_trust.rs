//! `interceptor exec` makes interceptor's CA trusted by every common TLS stack with no flag
//! or variable in the command (issue 19.1): Python's certifi (requests, httpx over HTTP/2,
//! inside a virtualenv too), Node's bundled roots, OpenSSL's hashed directory, Java's
//! truststore. Each client runs without the CA variables this machine's shell exports
//! (the harness's `exec_command` removes them), against an HTTPS server on 127.0.0.2 whose
//! test CA only the daemon trusts.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use interceptor_tests::https::{HttpsServer, ended_session, https_fixture, openssl_get_hello};
use interceptor_tests::*;
use serde_json::Value;

const RUN: Duration = Duration::from_secs(90);

fn text(o: &[u8]) -> String {
    String::from_utf8_lossy(o).into_owned()
}

/// Runs `cmd` (bounded time) and requires it to exit 0 printing `want` exactly.
fn ensure_prints(cmd: &mut Command, want: &str) -> Result<Output> {
    let out = run_with_timeout(cmd, RUN)?;
    ensure!(
        out.status.success() && text(&out.stdout) == want,
        "{cmd:?}: {}\nstdout: {}\nstderr: {}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    Ok(out)
}

/// `program` under `exec --include-loopback`, in `cwd`.
fn exec_in(d: &Daemon, cwd: &Path, program: &[&str]) -> Command {
    let mut c = d.exec_command(&["--include-loopback"], program);
    c.current_dir(cwd);
    c
}

/// certifi_clients.py run by `python` in `cwd`; its JSON report, after checking that both
/// clients got the page and httpx spoke HTTP/2.
fn certifi_clients(d: &Daemon, cwd: &Path, python: &str, server: &HttpsServer) -> Result<Value> {
    let script = scripts_dir().join("certifi_clients.py");
    let url = server.url("/hello");
    let out = run_with_timeout(
        &mut exec_in(d, cwd, &[python, script.to_str().context("path")?, &url]),
        RUN,
    )?;
    ensure!(
        out.status.success(),
        "{python} certifi_clients.py: {}",
        text(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("certifi_clients.py printed {}", text(&out.stdout)))?;
    ensure!(report["requests"] == "hello over HTTP/1.1", "{report}");
    ensure!(report["httpx"] == "hello over HTTP/2.0", "{report}");
    ensure!(report["httpx_version"] == "HTTP/2", "{report}");
    Ok(report)
}

#[test]
fn python_requests_and_httpx_trust_the_ca_through_certifi() -> Result<()> {
    require_root();
    let (_pki, server, d) = https_fixture("127.0.0.2", &[])?;
    let cwd = tempfile::tempdir()?;
    let report = certifi_clients(&d, cwd.path(), python().to_str().context("path")?, &server)?;
    ensure!(
        report["certifi"]
            .as_str()
            .is_some_and(|p| !p.starts_with("/etc/ssl")),
        "certifi is not its own bundle here, the test proves nothing: {report}"
    );
    let s = ended_session(&d, server.addr.port())?;
    ensure!(s["tls"]["mode"] == "terminated", "session: {s:#}");
    Ok(())
}

/// A virtualenv with its own certifi (a copy of the installed package: no index needed),
/// found both as the command itself and as a `.venv` in the working directory.
#[test]
fn a_virtualenvs_own_certifi_trusts_the_ca() -> Result<()> {
    require_root();
    let (_pki, server, d) = https_fixture("127.0.0.2", &[])?;
    let project = tempfile::tempdir()?;
    let venv = project.path().join(".venv");
    run_ok(
        Command::new(python())
            .args(["-m", "venv", "--system-site-packages", "--without-pip"])
            .arg(&venv),
        RUN,
    )?;
    let venv_python = venv.join("bin/python");
    let printed = |python: &Path, code: &str| -> Result<String> {
        let out = run_ok(Command::new(python).args(["-c", code]), RUN)?;
        Ok(text(&out.stdout).trim().to_string())
    };
    let site = printed(
        &venv_python,
        "import sysconfig; print(sysconfig.get_paths()['purelib'])",
    )?;
    let installed = printed(
        python(),
        "import certifi, os; print(os.path.dirname(certifi.__file__))",
    )?;
    run_ok(
        Command::new("cp")
            .arg("-r")
            .arg(installed)
            .arg(Path::new(&site).join("certifi")),
        RUN,
    )?;

    // The venv's interpreter named by path, run from elsewhere.
    let elsewhere = tempfile::tempdir()?;
    let report = certifi_clients(
        &d,
        elsewhere.path(),
        venv_python.to_str().context("path")?,
        &server,
    )?;
    ensure!(
        report["certifi"]
            .as_str()
            .is_some_and(|p| p.starts_with(venv.to_str().unwrap_or("?"))),
        "certifi not from the virtualenv: {report}"
    );

    // The same interpreter reached through a shell in the project directory.
    let script = scripts_dir().join("certifi_clients.py");
    let line = format!(
        ".venv/bin/python {} {}",
        script.display(),
        server.url("/hello")
    );
    let out = run_with_timeout(&mut exec_in(&d, project.path(), &["sh", "-c", &line]), RUN)?;
    ensure!(out.status.success(), "sh -c: {}", text(&out.stderr));
    ensure!(
        text(&out.stdout).contains("hello over HTTP/2.0"),
        "{}",
        text(&out.stdout)
    );
    Ok(())
}

#[test]
fn node_fetch_trusts_the_ca_and_keeps_a_users_extra_certificates() -> Result<()> {
    require_root();
    let (pki, server, d) = https_fixture("127.0.0.2", &[])?;
    let cwd = tempfile::tempdir()?;
    let js = "fetch(process.argv[1]).then(r => r.text()).then(t => process.stdout.write(t))";
    let url = server.url("/hello");
    ensure_prints(
        &mut exec_in(&d, cwd.path(), &["node", "-e", js, &url]),
        "hello over HTTP/1.1",
    )?;
    // A user's own NODE_EXTRA_CA_CERTS still works, and interceptor's CA is added to it.
    let mut cmd = exec_in(&d, cwd.path(), &["node", "-e", js, &url]);
    cmd.env("NODE_EXTRA_CA_CERTS", &pki.ca_file);
    ensure_prints(&mut cmd, "hello over HTTP/1.1")?;
    Ok(())
}

#[test]
fn openssl_trusts_the_ca_through_the_hashed_directory_alone() -> Result<()> {
    require_root();
    let (_pki, server, d) = https_fixture("127.0.0.2", &[])?;
    let only_the_directory = ["-CApath", "/etc/ssl/certs", "-no-CAfile", "-no-CAstore"];
    let out = openssl_get_hello(&d, &server, &only_the_directory)?;
    ensure!(
        text(&out.stdout).contains("hello over HTTP/1.1"),
        "openssl s_client -CApath: {}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    Ok(())
}

#[test]
fn java_trusts_the_ca_through_its_default_truststore() -> Result<()> {
    require_root();
    let (_pki, server, d) = https_fixture("127.0.0.2", &[])?;
    let cwd = tempfile::tempdir()?;
    let source = scripts_dir().join("HttpsGet.java");
    ensure_prints(
        &mut exec_in(
            &d,
            cwd.path(),
            &[
                "java",
                source.to_str().context("path")?,
                &server.url("/hello"),
            ],
        ),
        "hello over HTTP/1.1",
    )?;
    Ok(())
}
