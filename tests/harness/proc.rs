//! Running processes with bounded time.

use std::io::Read;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

fn reader(mut r: impl Read + Send + 'static) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        buf
    })
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Waits for `child` at most `timeout`; kills it (by its pid) when the time is up.
fn wait_bounded(child: &mut Child, timeout: Duration) -> Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(st) = child.try_wait()? {
            return Ok(Some(st));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `cmd` (stdin null, stdout and stderr captured) for at most `timeout`.
/// A command still running then is killed and reported as an error with what it printed.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Result<Output> {
    run_with_input(cmd, None, timeout)
}

/// Like [`run_with_timeout`], and returns the pid the command ran as.
pub fn run_with_pid(cmd: &mut Command, timeout: Duration) -> Result<(u32, Output)> {
    run_command(cmd, None, timeout)
}

/// [`run_with_timeout`] with `input` written to the command's stdin (then closed), or stdin
/// null for `None`.
pub fn run_with_input(
    cmd: &mut Command,
    input: Option<&[u8]>,
    timeout: Duration,
) -> Result<Output> {
    run_command(cmd, input, timeout).map(|(_, out)| out)
}

fn run_command(
    cmd: &mut Command,
    input: Option<&[u8]>,
    timeout: Duration,
) -> Result<(u32, Output)> {
    let what = describe(cmd);
    let mut child = cmd
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start `{what}`"))?;
    let pid = child.id();
    let out = reader(child.stdout.take().expect("piped"));
    let err = reader(child.stderr.take().expect("piped"));
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        // A command that exits without reading all of it is its own business.
        let _ = std::io::Write::write_all(&mut stdin, input);
    }
    let status = wait_bounded(&mut child, timeout)?;
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    match status {
        Some(status) => Ok((
            pid,
            Output {
                status,
                stdout,
                stderr,
            },
        )),
        None => bail!(
            "`{what}` did not finish within {timeout:?} and was killed\nstdout:\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&stdout),
            String::from_utf8_lossy(&stderr)
        ),
    }
}

/// Like [`run_with_timeout`], but also fails when the command exits non-zero.
pub fn run_ok(cmd: &mut Command, timeout: Duration) -> Result<Output> {
    let what = describe(cmd);
    let out = run_with_timeout(cmd, timeout)?;
    if !out.status.success() {
        bail!(
            "`{what}` failed: {}\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

/// A process a test started, killed (by its pid) and reaped on drop, so a failing assertion
/// leaves nothing running.
pub struct Reaped(pub Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Spawns `cmd` with stdout and stderr appended to `log` (stdin null).
pub fn spawn_logged(cmd: &mut Command, log: &std::path::Path) -> Result<Child> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("open {}", log.display()))?;
    let f2 = f.try_clone()?;
    cmd.stdin(Stdio::null())
        .stdout(f)
        .stderr(f2)
        .spawn()
        .with_context(|| format!("cannot start `{}`", describe(cmd)))
}

/// Runs a command and returns its output, panicking with context if it cannot be run.
pub fn sh(cmd: &mut Command) -> Result<String> {
    let out = run_ok(cmd, Duration::from_secs(30))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
