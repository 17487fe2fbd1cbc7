//! Paths, the deterministic payload, hashing, polling.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

/// The workspace root (parent of this package).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests package is inside the workspace")
        .to_path_buf()
}

/// Cargo's target directory: `$CARGO_TARGET_DIR`, else `target` in the workspace.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if Path::new(&d).is_absolute() => PathBuf::from(d),
        Some(d) => workspace_root().join(d),
        None => workspace_root().join("target"),
    }
}

/// The daemon binary: `$INTERCEPTOR_BIN`, else `<target>/debug/interceptor`.
pub fn interceptor_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("INTERCEPTOR_BIN") {
        return PathBuf::from(p);
    }
    target_dir().join("debug/interceptor")
}

/// The rule cache every test daemon shares (`run --rules-cache`), so that only the first
/// daemon of a rule set compiles it: `<target>/test-rules-cache`. The daemon uses it only if
/// root alone can change it and the directories above it (a checkout owned by another user
/// is not: its daemons compile at every start, and warn).
pub fn rules_cache_dir() -> PathBuf {
    target_dir().join("test-rules-cache")
}

/// `tests/scripts`.
pub fn scripts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts")
}

/// The real Python interpreter (realpath of `python3`'s `sys.executable`), so that clients
/// are started directly, not through a wrapper such as a pyenv shim.
pub fn python() -> &'static Path {
    static PY: OnceLock<PathBuf> = OnceLock::new();
    PY.get_or_init(|| {
        let out = Command::new("python3")
            .args([
                "-c",
                "import os, sys; print(os.path.realpath(sys.executable))",
            ])
            .output()
            .expect("python3 must be installed");
        assert!(out.status.success(), "python3 -c failed: {out:?}");
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    })
}

/// realpath of a command found on PATH (e.g. `curl` → `/usr/bin/curl`).
pub fn which_real(cmd: &str) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let p = dir.join(cmd);
        if p.is_file() {
            return std::fs::canonicalize(&p).with_context(|| format!("realpath {}", p.display()));
        }
    }
    bail!("{cmd} not found on PATH")
}

/// Panics unless running as root (the e2e tests need root for eBPF, cgroups and netns).
pub fn require_root() {
    assert_eq!(
        nix::unistd::geteuid().as_raw(),
        0,
        "the interceptor e2e tests must run as root"
    );
}

/// A number unique within this test process, for names.
pub fn next_id() -> u32 {
    static N: AtomicU32 = AtomicU32::new(0);
    N.fetch_add(1, Ordering::SeqCst)
}

/// The deterministic payload shared with tests/scripts/*.py: sha256(f"{seed}:{i}") blocks.
pub fn payload(seed: &str, n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n + 32);
    let mut i = 0u64;
    while out.len() < n {
        out.extend_from_slice(&Sha256::digest(format!("{seed}:{i}").as_bytes()));
        i += 1;
    }
    out.truncate(n);
    out
}

pub fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Polls `f` every `every` until it returns `Some`, or fails after `timeout` with `what`.
pub fn poll<T>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut f: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    let mut last_err = None;
    loop {
        match f() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_err = Some(e),
        }
        if Instant::now() >= deadline {
            match last_err {
                Some(e) => {
                    bail!("timed out after {timeout:?} waiting for {what}; last error: {e:#}")
                }
                None => bail!("timed out after {timeout:?} waiting for {what}"),
            }
        }
        std::thread::sleep(every);
    }
}

/// A TCP port that is free on 127.0.0.1 right now.
pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("bind 127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// Formats an address the way the daemon records destinations: `1.2.3.4:80`, `[fd00::2]:80`.
pub fn fmt_dest(ip: std::net::IpAddr, port: u16) -> String {
    std::net::SocketAddr::new(ip, port).to_string()
}

/// Last `n` lines of a text, for failure messages.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A socket bound to `ip:<free port>` that does not listen: connections to that port are
/// refused for as long as the returned fd lives, and no one else can take the port.
pub fn closed_port(ip: &str) -> Result<(std::os::fd::OwnedFd, u16)> {
    use nix::sys::socket::{
        AddressFamily, SockFlag, SockType, SockaddrIn, bind, getsockname, socket,
    };
    use std::os::fd::AsRawFd;
    let ip: std::net::Ipv4Addr = ip.parse()?;
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    bind(
        fd.as_raw_fd(),
        &SockaddrIn::from(std::net::SocketAddrV4::new(ip, 0)),
    )?;
    let addr: SockaddrIn = getsockname(fd.as_raw_fd())?;
    Ok((fd, addr.port()))
}

/// Files under `dir`, recursively, whose bytes contain `needle`.
pub fn files_containing(dir: &std::path::Path, needle: &[u8]) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            found.extend(files_containing(&path, needle)?);
        } else if std::fs::read(&path)?
            .windows(needle.len())
            .any(|w| w == needle)
        {
            found.push(path);
        }
    }
    Ok(found)
}

/// A policy written from text to a `policy.toml` of its own (for `run --policy`), in a
/// temporary directory that tests may also use for other files; removed on Drop.
pub struct PolicyFile {
    dir: tempfile::TempDir,
    path: PathBuf,
}

impl PolicyFile {
    pub fn new(text: &str) -> Result<PolicyFile> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("policy.toml");
        std::fs::write(&path, text)?;
        Ok(PolicyFile { dir, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path as a command-line argument.
    pub fn arg(&self) -> Result<&str> {
        self.path.to_str().context("policy path is not UTF-8")
    }

    /// The directory holding the policy file.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}
