//! `cargo xtask fuzz [--seconds N] [TARGET...]`: installs cargo-fuzz if missing and runs each
//! fuzz target of `fuzz/` (or the ones named) for a while, starting from its seed corpus in
//! `fuzz/corpus/TARGET` (read only) plus a working corpus under the target directory, so a
//! run never writes into the repository. A crash stops the run; libFuzzer leaves the input
//! in `fuzz/artifacts/TARGET/`.

use std::fs;
use std::process::Command;

use anyhow::{Context, Result};

use crate::{capture, cargo, run_cmd, setup, step, target_dir, workspace_root};

/// Longest input libFuzzer makes: the masker target asks for long filler with one byte.
const MAX_LEN: &str = "8192";

pub fn fuzz(seconds: u64, names: &[String]) -> Result<()> {
    setup()?;
    if capture(cargo().args(["fuzz", "--version"])).is_none() {
        step("setup: cargo install cargo-fuzz");
        run_cmd(cargo().args(["install", "cargo-fuzz", "--locked"]))?;
    }
    let targets = if names.is_empty() {
        let listed = capture(cargo().args(["+nightly", "fuzz", "list"]))
            .context("`cargo fuzz list` failed")?;
        listed.lines().map(str::to_owned).collect()
    } else {
        names.to_vec()
    };
    for target in &targets {
        let work = target_dir().join("fuzz-corpus").join(target);
        fs::create_dir_all(&work).with_context(|| format!("create {}", work.display()))?;
        let seeds = workspace_root().join("fuzz/corpus").join(target);
        step(&format!("fuzz: {target} for {seconds} s"));
        run_cmd(
            Command::new("cargo")
                .current_dir(workspace_root())
                // Without AddressSanitizer: the targets are safe Rust over C libraries the
                // sanitizer does not instrument, and uninstrumented runs are many times faster.
                .args(["+nightly", "fuzz", "run", "--sanitizer", "none", target])
                .arg(&work)
                .arg(&seeds)
                .arg("--")
                .arg(format!("-max_total_time={seconds}"))
                .arg(format!("-max_len={MAX_LEN}")),
        )?;
    }
    step(&format!("fuzz: {} targets ran clean", targets.len()));
    Ok(())
}
