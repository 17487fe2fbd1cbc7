//! Project tasks: `cargo xtask setup | run | test`.
//!
//! * `setup` installs whatever a fresh Debian 12 machine of this project's kind lacks (apt
//!   packages, the nightly `rust-src` component, `bpf-linker` linked against the nightly's own
//!   libLLVM) and mounts bpffs. It is idempotent: each step checks first and skips when done.
//! * `run` sets up, builds the daemon in release mode and execs `interceptor run`.
//! * `test` sets up, then fmt check, clippy, build, and the whole workspace's tests.
//! * `fuzz` runs the fuzz targets of `fuzz/` for a short while each (see `fuzz.rs`).

mod fuzz;

use std::env;
use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::symlink;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

/// bpf-linker version known to work with the pinned aya set (see shared design notes).
const BPF_LINKER_VERSION: &str = "0.13.0";
/// Where the libLLVM symlinks live; bpf-linker keeps this directory as its rpath.
const LLVM_LINK_DIR: &str = ".local/share/interceptor/llvm";
const BPFFS: &str = "/sys/fs/bpf";
/// Test threads for `cargo test`: every e2e test runs its own daemon, servers and clients
/// (one of them 200 concurrent connections); two at a time is reliable on 2 cores.
const DEFAULT_TEST_THREADS: &str = "2";

#[derive(Parser)]
#[command(name = "xtask", about = "interceptor project tasks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install missing build and test dependencies (idempotent).
    Setup,
    /// Set up, build the daemon (release) and run it in the foreground.
    Run {
        /// Extra arguments for `interceptor run`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Set up, build the release daemon and run the benchmarks (all, or the ones named); each
    /// writes its own section of docs/benchmarks.md.
    Bench {
        /// Bench targets to run: `redirect`, `https`, `masking`, `memory`, `start`, `streaming`
        /// (default: all).
        names: Vec<String>,
    },
    /// Run each fuzz target (all, or the ones named) for a while from its seed corpus.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        names: Vec<String>,
    },
    /// Set up, then fmt check, clippy, build and test the workspace.
    Test {
        /// Value for `cargo test -- --test-threads` (env XTASK_TEST_THREADS).
        #[arg(long, env = "XTASK_TEST_THREADS", default_value = DEFAULT_TEST_THREADS)]
        test_threads: String,
        /// Extra arguments passed to the test binaries (after `--`), e.g. a test name filter.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Setup => setup(),
        Cmd::Run { args } => run(args),
        Cmd::Bench { names } => bench(&names),
        Cmd::Fuzz { seconds, names } => fuzz::fuzz(seconds, &names),
        Cmd::Test { test_threads, args } => test(&test_threads, args),
    };
    if let Err(e) = result {
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}

fn step(msg: &str) {
    eprintln!("==> {msg}");
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace")
        .to_path_buf()
}

fn cargo() -> Command {
    let mut c = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(workspace_root());
    c
}

fn show(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs a command with inherited stdio; fails unless it exits 0.
fn run_cmd(cmd: &mut Command) -> Result<()> {
    eprintln!("    $ {}", show(cmd));
    let status = cmd
        .stdin(Stdio::null())
        .status()
        .with_context(|| format!("cannot start `{}`", show(cmd)))?;
    if !status.success() {
        bail!("`{}` failed: {status}", show(cmd));
    }
    Ok(())
}

/// Runs a command quietly and returns its stdout when it exits 0.
fn capture(cmd: &mut Command) -> Option<String> {
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn have_command(name: &str) -> bool {
    capture(
        Command::new("sh")
            .arg("-c")
            .arg("command -v \"$1\"")
            .arg("sh")
            .arg(name),
    )
    .is_some()
}

fn dpkg_installed(pkg: &str) -> bool {
    capture(Command::new("dpkg-query").args(["-W", "-f=${Status}", pkg]))
        .is_some_and(|s| s.contains("install ok installed"))
}

// ---------------------------------------------------------------------------------------------
// setup

fn setup() -> Result<()> {
    step("setup: system packages");
    setup_apt()?;
    step("setup: python modules for the test clients");
    setup_python_modules()?;
    step("setup: nightly rust-src");
    setup_rust_src()?;
    step("setup: bpf-linker");
    setup_bpf_linker()?;
    step("setup: bpffs");
    setup_bpffs()?;
    Ok(())
}

fn setup_apt() -> Result<()> {
    // (package, check): a command the package provides, or None to ask dpkg.
    // nodejs and a JDK (`java File.java` needs the compiler) are clients exec's trust is
    // tested with.
    let wanted: [(&str, Option<&str>); 8] = [
        ("pkg-config", Some("pkg-config")),
        ("curl", Some("curl")),
        ("openssl", Some("openssl")),
        ("iproute2", Some("ip")),
        ("python3", Some("python3")),
        ("libhyperscan-dev", None),
        ("nodejs", Some("node")),
        ("default-jdk-headless", Some("javac")),
    ];
    let missing: Vec<&str> = wanted
        .iter()
        .filter(|(pkg, cmd)| match cmd {
            Some(c) => !have_command(c),
            None => !dpkg_installed(pkg),
        })
        .map(|(pkg, _)| *pkg)
        .collect();
    if all_present(&missing) {
        return Ok(());
    }
    run_cmd(Command::new("apt-get").arg("update"))?;
    run_cmd(
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

/// Python modules the end-to-end tests import beyond the standard library (each installed
/// by pip under the same name): `h2` for HTTP/2 clients, `brotli` and `zstandard` to encode
/// test bodies, `requests` and `httpx` (HTTP/2 through `h2`) as the certifi-based clients
/// exec must make trust the CA, and the official SDKs agents use (`openai`, `anthropic`, and
/// `mcp` for both ends of an MCP tool call).
const PYTHON_MODULES: [&str; 8] = [
    "h2",
    "brotli",
    "zstandard",
    "requests",
    "httpx",
    "openai",
    "anthropic",
    "mcp",
];

fn setup_python_modules() -> Result<()> {
    let missing: Vec<&str> = PYTHON_MODULES
        .into_iter()
        .filter(|module| {
            !Command::new("python3")
                .args(["-c", &format!("import {module}")])
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .collect();
    if all_present(&missing) {
        return Ok(());
    }
    run_cmd(
        Command::new("python3")
            .args(["-m", "pip", "install", "--quiet"])
            .args(&missing),
    )
}

/// Says what a setup step found missing; true when nothing is.
fn all_present(missing: &[&str]) -> bool {
    if missing.is_empty() {
        eprintln!("    all present");
    } else {
        eprintln!("    missing: {}", missing.join(" "));
    }
    missing.is_empty()
}

fn setup_mitmproxy() -> Result<()> {
    if have_command("mitmdump") {
        eprintln!("    present");
        return Ok(());
    }
    run_cmd(Command::new("python3").args(["-m", "pip", "install", "--quiet", "mitmproxy"]))
}

fn setup_rust_src() -> Result<()> {
    let installed = capture(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .unwrap_or_default();
    if installed
        .lines()
        .any(|l| l.trim() == "rust-src" || l.starts_with("rust-src"))
    {
        eprintln!("    present");
        return Ok(());
    }
    run_cmd(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

fn bpf_linker_works() -> bool {
    capture(Command::new("bpf-linker").arg("--version")).is_some()
}

fn setup_bpf_linker() -> Result<()> {
    if bpf_linker_works() {
        eprintln!("    present");
        return Ok(());
    }
    let sysroot = capture(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))
        .context("`rustc +nightly --print sysroot` failed: is the nightly toolchain installed?")?;
    let sysroot = PathBuf::from(sysroot.trim());
    let libdir = sysroot.join("lib");
    let libllvm = find_libllvm(&libdir)?;
    let major = llvm_major()?;
    eprintln!(
        "    nightly libLLVM: {} (LLVM {major})",
        libdir.join(&libllvm).display()
    );

    let home = env::var_os("HOME").context("HOME is not set")?;
    let prefix = Path::new(&home).join(LLVM_LINK_DIR);
    let lib = prefix.join("lib");
    fs::create_dir_all(&lib).with_context(|| format!("mkdir {}", lib.display()))?;
    for name in ["libLLVM.so", libllvm.as_str()] {
        let link = lib.join(name);
        if fs::symlink_metadata(&link).is_ok() {
            fs::remove_file(&link).with_context(|| format!("rm {}", link.display()))?;
        }
        symlink(libdir.join(&libllvm), &link)
            .with_context(|| format!("ln -s {}", link.display()))?;
    }
    run_cmd(
        Command::new("cargo")
            .args(["+nightly", "install", "bpf-linker", "--version"])
            .arg(BPF_LINKER_VERSION)
            .args(["--locked", "--force", "--no-default-features", "--features"])
            .arg(format!("llvm-{major}"))
            .env("LLVM_PREFIX", &prefix)
            // Don't let the outer cargo's target dir or toolchain choice leak into the install.
            .env_remove("CARGO_TARGET_DIR")
            .env_remove("RUSTUP_TOOLCHAIN")
            .env_remove("CARGO")
            .env_remove("RUSTC"),
    )?;
    if !bpf_linker_works() {
        bail!(
            "bpf-linker was installed but `bpf-linker --version` still fails (is ~/.cargo/bin on PATH?)"
        );
    }
    Ok(())
}

/// The nightly's shared libLLVM file name, e.g. `libLLVM.so.22.1-rust-1.97.0-nightly`
/// (the name bpf-linker records as its dependency), derived from the sysroot listing.
fn find_libllvm(libdir: &Path) -> Result<String> {
    let mut names: Vec<String> = fs::read_dir(libdir)
        .with_context(|| format!("read {}", libdir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("libLLVM"))
        .collect();
    names.sort();
    names
        .iter()
        .find(|n| n.starts_with("libLLVM.so."))
        .or_else(|| names.iter().find(|n| n.ends_with(".so")))
        .cloned()
        .with_context(|| format!("no libLLVM in {}", libdir.display()))
}

fn llvm_major() -> Result<u32> {
    let vv = capture(Command::new("rustc").args(["+nightly", "-vV"]))
        .context("`rustc +nightly -vV` failed")?;
    let ver = vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version:"))
        .context("nightly rustc reports no LLVM version")?;
    ver.trim()
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .with_context(|| format!("cannot parse LLVM version {ver:?}"))
}

fn bpffs_mounted() -> Result<bool> {
    let mounts = fs::read_to_string("/proc/mounts").context("read /proc/mounts")?;
    Ok(mounts.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 2 && f[1] == BPFFS && f[2] == "bpf"
    }))
}

fn setup_bpffs() -> Result<()> {
    if bpffs_mounted()? {
        eprintln!("    mounted at {BPFFS}");
        return Ok(());
    }
    fs::create_dir_all(BPFFS).with_context(|| format!("mkdir {BPFFS}"))?;
    run_cmd(Command::new("mount").args(["-t", "bpf", "bpf", BPFFS]))?;
    if !bpffs_mounted()? {
        bail!("mounted bpffs but {BPFFS} is still not a bpf mount");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// run / test

fn run(args: Vec<OsString>) -> Result<()> {
    setup()?;
    step("build: cargo build --release -p interceptor");
    run_cmd(cargo().args(["build", "--release", "-p", "interceptor"]))?;
    let bin = target_dir().join("release/interceptor");
    step(&format!("run: {} run", bin.display()));
    let mut cmd = Command::new(&bin);
    cmd.arg("run");
    // The checkout's default policy, whatever the working directory.
    if !args
        .iter()
        .any(|a| a.to_string_lossy().starts_with("--policy"))
    {
        cmd.arg("--policy")
            .arg(workspace_root().join("policies/default.toml"));
    }
    let err = cmd.args(&args).exec();
    Err(err).with_context(|| format!("exec {}", bin.display()))
}

fn bench(names: &[String]) -> Result<()> {
    setup()?;
    step("setup: mitmproxy (the https benchmark's peer)");
    setup_mitmproxy()?;
    step("build: cargo build --release -p interceptor");
    run_cmd(cargo().args(["build", "--release", "-p", "interceptor"]))?;
    let mut cmd = cargo();
    cmd.args(["bench", "--workspace"]);
    for name in names {
        cmd.args(["--bench", name]);
    }
    // The daemon under test logs at warn: per-connection debug lines would be measured too.
    cmd.env("INTERCEPTOR_TEST_LOG", "warn");
    step(&format!("bench: {}", show(&cmd)));
    run_cmd(&mut cmd)
}

fn target_dir() -> PathBuf {
    match env::var_os("CARGO_TARGET_DIR") {
        Some(d) => {
            let d = PathBuf::from(d);
            if d.is_absolute() {
                d
            } else {
                workspace_root().join(d)
            }
        }
        None => workspace_root().join("target"),
    }
}

fn test(test_threads: &str, args: Vec<OsString>) -> Result<()> {
    // The tests need bpffs; a mount made only for them is taken down again, pass or fail, so
    // the kernel's own entries in it (bpf_preload's maps.debug, progs.debug) go with it.
    let mounted_here = !bpffs_mounted()?;
    let result = setup().and_then(|()| checks_and_tests(test_threads, args));
    if mounted_here {
        unmount_bpffs_if_unused()?;
    }
    result
}

/// Unmounts bpffs unless something besides the kernel's preload entries is pinned in it.
fn unmount_bpffs_if_unused() -> Result<()> {
    const KERNEL_ENTRIES: [&str; 2] = ["maps.debug", "progs.debug"];
    let others: Vec<String> = fs::read_dir(BPFFS)
        .with_context(|| format!("read {BPFFS}"))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| !KERNEL_ENTRIES.contains(&name.as_str()))
        .collect();
    if !others.is_empty() {
        eprintln!("    leaving {BPFFS} mounted: still pinned there: {others:?}");
        return Ok(());
    }
    step("cleanup: unmount the bpffs the tests mounted");
    run_cmd(Command::new("umount").arg(BPFFS))
}

fn checks_and_tests(test_threads: &str, args: Vec<OsString>) -> Result<()> {
    step("fmt: cargo fmt --all --check");
    run_cmd(cargo().args(["fmt", "--all", "--check"]))?;
    step("clippy: cargo clippy --workspace --all-targets -- -D warnings");
    run_cmd(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    step("build: cargo build -p interceptor");
    run_cmd(cargo().args(["build", "-p", "interceptor"]))?;
    step(&format!(
        "test: cargo test --workspace -- --test-threads={test_threads}"
    ));
    run_cmd(
        cargo()
            .args(["test", "--workspace", "--", "--test-threads"])
            .arg(test_threads)
            .args(&args),
    )?;
    step("all steps passed");
    Ok(())
}
