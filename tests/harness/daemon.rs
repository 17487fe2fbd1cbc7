//! One private interceptor daemon per test.

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tempfile::TempDir;

use crate::model::{Enrollment, Session, Status, brief_all};
use crate::proc::{run_with_pid, run_with_timeout, spawn_logged};
use crate::users::TestUser;
use crate::util::{files_containing, interceptor_bin, next_id, poll, rules_cache_dir, tail};

/// Every daemon compiles its built-in secret rules before it serves: Hyperscan takes several
/// seconds for them, more on a loaded machine (daemons share [`rules_cache_dir`], so most load
/// them instead).
const READY_TIMEOUT: Duration = Duration::from_secs(120);
const CLI_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_GRACE: Duration = Duration::from_secs(5);

/// A running `interceptor run` with its own data dir, control socket, bpffs pin dir and
/// proxy port. Drop stops it (SIGTERM by pid, SIGKILL after 5 s), removes the pin dir and
/// the temp dir. Drop also prints the tail of the daemon log to stderr, which the test runner
/// shows only for a failing test.
pub struct Daemon {
    child: Option<Child>,
    tmp: TempDir,
    data_dir: PathBuf,
    socket: PathBuf,
    bpffs_dir: PathBuf,
    proxy_port: u16,
    log_path: PathBuf,
    extra_args: Vec<String>,
    /// The umask the daemon is started with (else the test's).
    umask: Option<u32>,
    /// The daemon's working directory (None: the test's).
    cwd: Option<PathBuf>,
}

/// Variables that point TLS clients at a CA bundle (set by this machine's shell).
pub const CA_VARIABLES: [&str; 9] = [
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "NODE_EXTRA_CA_CERTS",
    "GIT_SSL_CAINFO",
    "NIX_SSL_CERT_FILE",
    "AWS_CA_BUNDLE",
    "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH",
];

impl Daemon {
    pub fn start() -> Result<Daemon> {
        Daemon::start_with(&[])
    }

    /// Starts a daemon with extra `run` arguments (kept for [`restart`](Self::restart)).
    pub fn start_with(extra_args: &[&str]) -> Result<Daemon> {
        Daemon::start_as(extra_args, None, None)
    }

    /// Starts a daemon whose umask is `mask`, as an operator's shell may hand it one.
    pub fn start_with_umask(mask: u32, extra_args: &[&str]) -> Result<Daemon> {
        Daemon::start_as(extra_args, Some(mask), None)
    }

    /// [`start_with`](Self::start_with) in the working directory `cwd` (outside the checkout:
    /// no `policies/` to fall back on).
    pub fn start_in(cwd: &Path, extra_args: &[&str]) -> Result<Daemon> {
        Daemon::start_as(extra_args, None, Some(cwd))
    }

    fn start_as(extra_args: &[&str], umask: Option<u32>, cwd: Option<&Path>) -> Result<Daemon> {
        let bin = interceptor_bin();
        if !bin.exists() {
            bail!(
                "{} does not exist: build it first (cargo build -p interceptor) or set INTERCEPTOR_BIN",
                bin.display()
            );
        }
        let tmp = tempfile::Builder::new()
            .prefix("interceptor-test-")
            .tempdir()?;
        let data_dir = tmp.path().join("data");
        std::fs::create_dir(&data_dir)?;
        let mut d = Daemon {
            child: None,
            socket: tmp.path().join("control.sock"),
            log_path: tmp.path().join("daemon.log"),
            bpffs_dir: PathBuf::from(format!(
                "/sys/fs/bpf/interceptor-test-{}-{}",
                std::process::id(),
                next_id()
            )),
            // The daemon picks a free port and reports it; a port picked here and handed over
            // could be taken by another test's socket in between.
            proxy_port: 0,
            data_dir,
            tmp,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            umask,
            cwd: cwd.map(Path::to_path_buf),
        };
        d.spawn()?;
        Ok(d)
    }

    fn spawn(&mut self) -> Result<()> {
        let mut cmd = Command::new(interceptor_bin());
        cmd.arg("run")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--socket")
            .arg(&self.socket)
            .arg("--bpffs-dir")
            .arg(&self.bpffs_dir)
            .arg("--proxy-port")
            .arg(self.proxy_port.to_string())
            .args(&self.extra_args)
            .args(self.shared_cache())
            // debug everywhere but aya's per-instruction relocation chatter, unless the caller
            // (a benchmark) asks for another level.
            .env(
                "RUST_LOG",
                std::env::var("INTERCEPTOR_TEST_LOG")
                    .unwrap_or_else(|_| "debug,aya_obj=info".into()),
            )
            .env("NO_COLOR", "1")
            .env_remove("INTERCEPTOR_SOCKET");
        if let Some(mask) = self.umask {
            let mode = nix::sys::stat::Mode::from_bits_truncate(mask);
            // SAFETY: umask(2) is async-signal-safe and touches no memory.
            unsafe {
                std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
                    nix::sys::stat::umask(mode);
                    Ok(())
                });
            }
        }
        if let Some(cwd) = &self.cwd {
            cmd.current_dir(cwd);
        }
        let child = spawn_logged(&mut cmd, &self.log_path)?;
        self.child = Some(child);
        self.wait_ready()
    }

    /// `--rules-cache` [`rules_cache_dir`], unless the test chose its own or none.
    fn shared_cache(&self) -> Vec<std::ffi::OsString> {
        let chosen = (self.extra_args.iter())
            .any(|a| a.starts_with("--rules-cache") || a == "--no-rules-cache");
        match chosen {
            true => Vec::new(),
            false => vec!["--rules-cache".into(), rules_cache_dir().into()],
        }
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(st) = self.child.as_mut().expect("spawned").try_wait()? {
                self.child = None;
                bail!(
                    "daemon exited during start-up: {st}\n--- daemon log ---\n{}",
                    tail(&self.log(), 80)
                );
            }
            let out = self.cli(["status", "--json"]);
            if let Ok(out) = &out
                && out.status.success()
                && let Ok(status) = serde_json::from_slice::<Status>(&out.stdout)
            {
                // A restart asks for the same port again.
                self.proxy_port = status.proxy_port;
                return Ok(());
            }
            if Instant::now() >= deadline {
                let last = match out {
                    Ok(o) => format!(
                        "{}: {}{}",
                        o.status,
                        String::from_utf8_lossy(&o.stdout),
                        String::from_utf8_lossy(&o.stderr)
                    ),
                    Err(e) => format!("{e:#}"),
                };
                bail!(
                    "daemon not ready within {READY_TIMEOUT:?} (last `status --json`: {last})\n--- daemon log ---\n{}",
                    tail(&self.log(), 80)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }
    pub fn socket(&self) -> &Path {
        &self.socket
    }
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }
    /// Fails naming the file when any file under the data directory holds one of `secrets`.
    pub fn ensure_not_stored(&self, secrets: &[&str]) -> Result<()> {
        for secret in secrets {
            let found = files_containing(&self.data_dir, secret.as_bytes())?;
            anyhow::ensure!(found.is_empty(), "{secret:?} stored in {found:?}");
        }
        Ok(())
    }
    pub fn bpffs_dir(&self) -> &Path {
        &self.bpffs_dir
    }
    pub fn proxy_port(&self) -> u16 {
        self.proxy_port
    }
    pub fn tmp_dir(&self) -> &Path {
        self.tmp.path()
    }

    /// The daemon's log (stderr and stdout) so far, across restarts.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Polls the log until it has a line containing `needle`; returns that line.
    pub fn wait_for_log_line(&self, needle: &str, timeout: Duration) -> Result<String> {
        poll(
            &format!("a daemon log line containing {needle:?}"),
            timeout,
            Duration::from_millis(50),
            || {
                Ok(self
                    .log()
                    .lines()
                    .find(|l| l.contains(needle))
                    .map(str::to_string))
            },
        )
    }

    /// A command running the CLI against this daemon: `interceptor --socket S ARGS…`.
    pub fn cli_command<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut c = Command::new(interceptor_bin());
        c.arg("--socket")
            .arg(&self.socket)
            .args(args)
            .env_remove("INTERCEPTOR_SOCKET");
        c
    }

    /// Runs the CLI (bounded time) and returns its output, whatever the exit code.
    pub fn cli<I, S>(&self, args: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        run_with_timeout(&mut self.cli_command(args), CLI_TIMEOUT)
    }

    /// Runs the CLI as `user` (bounded time); returns its pid and output, whatever the exit
    /// code. The daemon's temp dir is first opened for traversal, so that the socket's own
    /// mode and group decide whether the user may use it.
    pub fn cli_as<I, S>(&self, user: &TestUser, args: I) -> Result<(u32, Output)>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        std::fs::set_permissions(self.tmp.path(), std::fs::Permissions::from_mode(0o711))?;
        let mut c = user.command(interceptor_bin());
        c.arg("--socket")
            .arg(&self.socket)
            .args(args)
            .env_remove("INTERCEPTOR_SOCKET");
        run_with_pid(&mut c, CLI_TIMEOUT)
    }

    /// Runs the CLI and returns stdout; fails (with stderr) unless it exits 0.
    pub fn cli_ok<I, S>(&self, args: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<_> = args
            .into_iter()
            .map(|a| a.as_ref().to_os_string())
            .collect();
        let out = self.cli(&args)?;
        if !out.status.success() {
            bail!(
                "`interceptor {:?}` failed: {}\nstdout: {}\nstderr: {}",
                args,
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn cli_json<T: serde::de::DeserializeOwned, I, S>(&self, args: I) -> Result<T>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let out = self.cli_ok(args)?;
        serde_json::from_str(&out).with_context(|| format!("unexpected JSON: {out}"))
    }

    pub fn status(&self) -> Result<Status> {
        self.cli_json(["status", "--json"])
    }

    pub fn sessions(&self) -> Result<Vec<Session>> {
        self.cli_json(["sessions", "list", "--json"])
    }

    /// `enroll ARGS… --json`.
    pub fn enroll<I, S>(&self, args: I) -> Result<Enrollment>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut a: Vec<std::ffi::OsString> = vec!["enroll".into()];
        a.extend(args.into_iter().map(|s| s.as_ref().to_os_string()));
        a.push("--json".into());
        self.cli_json(a)
    }

    /// A command running `interceptor --socket S exec EXEC_ARGS… -- PROGRAM ARGS…`, without
    /// the CA variables this machine's shell exports and a user's does not
    /// ([`CA_VARIABLES`]): exec's trust must work without them.
    pub fn exec_command<S: AsRef<OsStr>>(&self, exec_args: &[&str], program: &[S]) -> Command {
        let mut c = self.cli_command(["exec"]);
        c.args(exec_args).arg("--").args(program);
        for var in CA_VARIABLES {
            c.env_remove(var);
        }
        c
    }

    /// Polls `sessions list --json` until `pred` holds for the whole list; returns the list.
    pub fn wait_for_sessions(
        &self,
        pred: impl Fn(&[Session]) -> bool,
        timeout: Duration,
    ) -> Result<Vec<Session>> {
        let deadline = Instant::now() + timeout;
        loop {
            let last = self.sessions();
            if let Ok(list) = &last
                && pred(list)
            {
                return last;
            }
            if Instant::now() >= deadline {
                let shown = match last {
                    Ok(l) => brief_all(&l),
                    Err(e) => format!("  (sessions list failed: {e:#})"),
                };
                bail!("timed out after {timeout:?} waiting for sessions; last list:\n{shown}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until at least `n` sessions satisfy `filter`; returns those sessions.
    pub fn wait_for_matching(
        &self,
        filter: impl Fn(&Session) -> bool,
        n: usize,
        timeout: Duration,
    ) -> Result<Vec<Session>> {
        let all =
            self.wait_for_sessions(|l| l.iter().filter(|s| filter(s)).count() >= n, timeout)?;
        Ok(all.into_iter().filter(|s| filter(s)).collect())
    }

    fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let pid = Pid::from_raw(child.id() as i32);
        if child.try_wait()?.is_none() {
            let _ = kill(pid, Signal::SIGTERM);
            let deadline = Instant::now() + STOP_GRACE;
            while child.try_wait()?.is_none() {
                if Instant::now() >= deadline {
                    eprintln!("warning: daemon {pid} ignored SIGTERM for {STOP_GRACE:?}; SIGKILL");
                    let _ = child.kill();
                    child.wait()?;
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }

    /// SIGTERM the daemon, wait for it, and start it again with the same dirs and port.
    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        self.spawn()
    }

    /// SIGKILL the daemon (a crash: nothing of it runs) and wait until it is gone. Its pinned
    /// programs stay attached; [`start_again`](Self::start_again) brings it back.
    pub fn kill(&mut self) -> Result<()> {
        let mut child = self.child.take().context("the daemon is not running")?;
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    /// Starts the daemon again after [`kill`](Self::kill), with the same dirs and port.
    pub fn start_again(&mut self) -> Result<()> {
        anyhow::ensure!(self.child.is_none(), "the daemon is still running");
        self.spawn()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("warning: stopping the daemon failed: {e:#}");
        }
        if self.bpffs_dir.exists()
            && let Err(e) = std::fs::remove_dir_all(&self.bpffs_dir)
        {
            eprintln!(
                "warning: removing {} failed: {e:#}",
                self.bpffs_dir.display()
            );
        }
        eprintln!(
            "--- daemon log ({}), last 200 lines ---\n{}\n--- end of daemon log ---",
            self.log_path.display(),
            tail(&self.log(), 200)
        );
    }
}
