//! Shared by the daemon benchmarks: set-up, and their results in `docs/benchmarks.md`, one
//! marked section each.

use anyhow::{Context, Result};

use crate::util::workspace_root;

/// Replaces the section between `<!-- bench:NAME -->` and `<!-- /bench:NAME -->` (appending it
/// when absent), keeping every other benchmark's section.
pub fn write_section(name: &str, report: &str) -> Result<()> {
    let (start, end) = (
        format!("<!-- bench:{name} -->"),
        format!("<!-- /bench:{name} -->"),
    );
    let path = workspace_root().join("docs/benchmarks.md");
    let old = std::fs::read_to_string(&path).unwrap_or_else(|_| "# Benchmarks\n\n".into());
    let section = format!("{start}\n{report}{end}");
    let new = match (old.find(&start), old.find(&end)) {
        (Some(a), Some(b)) => format!("{}{section}{}", &old[..a], &old[b + end.len()..]),
        _ => format!("{}\n{section}\n", old.trim_end()),
    };
    std::fs::write(&path, new).with_context(|| format!("writing {}", path.display()))
}

/// What every daemon benchmark checks first: root (it loads eBPF programs), and the release
/// daemon as the binary under test unless `INTERCEPTOR_BIN` names another.
pub fn prepare(bench: &str) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        anyhow::bail!("the {bench} benchmark needs root (it loads eBPF programs)");
    }
    if std::env::var_os("INTERCEPTOR_BIN").is_none() {
        let release = workspace_root().join("target/release/interceptor");
        // SAFETY: called first thing in the benchmark, before any thread starts.
        unsafe { std::env::set_var("INTERCEPTOR_BIN", &release) };
    }
    Ok(())
}

/// Runs a benchmark's client `program` (the bench binary in client mode) under `interceptor
/// exec --include-loopback` when `through` is a daemon, else directly; its stdout, or an
/// error naming `what` with its stderr.
pub fn run_client(
    through: Option<&crate::Daemon>,
    program: &[std::ffi::OsString],
    what: &str,
) -> Result<Vec<u8>> {
    let mut cmd = match through {
        Some(d) => d.exec_command(&["--include-loopback"], program),
        None => {
            let mut c = std::process::Command::new(&program[0]);
            c.args(&program[1..]);
            c
        }
    };
    let out = cmd.output()?;
    if !out.status.success() {
        anyhow::bail!(
            "client {what} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out.stdout)
}
