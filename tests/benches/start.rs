//! Start benchmark: how long the daemon takes from spawn to serving with the shipped secret
//! rules, compiled at start (`--no-rules-cache`, as before the rule cache), with an empty rule
//! cache (compiled, then written) and with a warm one (loaded), written to
//! `docs/benchmarks.md`.
//!
//! Run (as root): `cargo xtask bench start` (builds the release daemon, then runs this).
//! Each run starts the three cases in turn; the medians are reported. "ready" is the time
//! until `interceptor status` first answers (the harness asks every 100 ms); "rules" is the
//! daemon's own measure of building its engine (`compile_ms` in its log).

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use interceptor_tests::Daemon;

const RUNS: usize = 5;

struct Case {
    label: &'static str,
    /// What the daemon must log about its rule cache, so the case measured is the one named.
    expect: Option<&'static str>,
    ready: Vec<Duration>,
    rules: Vec<Duration>,
}

fn main() -> Result<()> {
    interceptor_tests::bench_report::prepare("start")?;
    // SAFETY: before any thread starts. Warn, as for every benchmark, but the lines saying
    // how the rules were built.
    unsafe {
        std::env::set_var(
            "INTERCEPTOR_TEST_LOG",
            "warn,interceptor::secrets=info,interceptor::detection::db_cache=info",
        )
    };
    let case = |label, expect| Case {
        label,
        expect,
        ready: Vec::new(),
        rules: Vec::new(),
    };
    let mut cases = [
        case("compiled at every start (`--no-rules-cache`)", None),
        case(
            "cold cache: compiled, then cached",
            Some("compiled and cached"),
        ),
        case("warm cache: loaded", Some("loaded from the cache")),
    ];
    let mut rules = 0;
    for _ in 0..RUNS {
        let cache = tempfile::tempdir()?;
        let cache = cache.path().to_str().context("utf-8")?;
        rules = start(&mut cases[0], &["--no-rules-cache"])?;
        start(&mut cases[1], &["--rules-cache", cache])?;
        start(&mut cases[2], &["--rules-cache", cache])?;
    }
    let load = std::fs::read_to_string("/proc/loadavg")?;
    let load = load.split_whitespace().next().unwrap_or("?");
    let mut report = format!(
        "## Daemon start: secret rules compiled or loaded from the rule cache (issue 20)\n\n\
         Command: `cargo xtask bench start` (release build; {RUNS} runs of the three cases in \
         turn, median shown). Each start is a fresh daemon with the {rules} shipped rules; \"ready\" is \
         spawn until `interceptor status` answers (the harness polls every 100 ms, so it \
         overstates by up to that), \"rules\" is the daemon's own time to build its engine \
         (`compile_ms`: Hyperscan databases compiled or loaded, and the `regex` confirmers and \
         end-check DFAs built, which are not cached). Load average {load} when the run ended, \
         on the shared 2-core development machine.\n\n\
         | case | ready | rules |\n| --- | --- | --- |\n",
    );
    for c in &cases {
        report.push_str(&format!(
            "| {} | {:.2} s | {} ms |\n",
            c.label,
            median(&c.ready).as_secs_f64(),
            median(&c.rules).as_millis()
        ));
    }
    report.push_str(
        "\nTarget (issue 20): a daemon starts, rules compiled, in under 3 s. The cache is keyed by \
         the Hyperscan forms of the rules, their patterns and the Hyperscan version, so a warm \
         start is every start after the first with the same rules (and library).\n",
    );
    print!("{report}");
    interceptor_tests::bench_report::write_section("start", &report)
}

/// Starts a daemon with `args`, records its times in `case`, and stops it; returns the number
/// of rules it loaded.
fn start(case: &mut Case, args: &[&str]) -> Result<u64> {
    let began = Instant::now();
    let daemon = Daemon::start_with(args)?;
    case.ready.push(began.elapsed());
    let log = daemon.log();
    if let Some(expect) = case.expect
        && !log.contains(expect)
    {
        bail!("{}: the daemon did not log {expect:?}:\n{log}", case.label);
    }
    case.rules
        .push(Duration::from_millis(logged(&log, "compile_ms")?));
    logged(&log, "rules")
}

/// The number in `NAME=NUMBER` on the daemon's "secret masking on" line.
fn logged(log: &str, name: &str) -> Result<u64> {
    let line = (log.lines().find(|l| l.contains("secret masking on")))
        .with_context(|| format!("the daemon did not log its rules:\n{log}"))?;
    line.split(&format!(" {name}="))
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|digits| digits.parse().ok())
        .with_context(|| format!("no {name} in {line:?}"))
}

fn median(values: &[Duration]) -> Duration {
    let mut sorted = values.to_vec();
    sorted.sort();
    sorted[sorted.len() / 2]
}
