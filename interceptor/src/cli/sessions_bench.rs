//! `interceptor sessions bench` (hidden): the session store's own benchmark, on one core.
//!
//! 1. Recording rate: one thread appends small events as fast as it can to a fresh store;
//!    the clock stops when the writer has written (and synced) the last one.
//! 2. Event-to-tailer delay: events are appended at a steady rate while a follower (the
//!    daemon's own tail code, reading the files) receives them; the delay of each is the
//!    time from its append to its arrival at the follower.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use tokio::io::AsyncBufReadExt;

use super::args::BenchArgs;
use crate::identity::Identity;
use crate::sessions::chain::Record;
use crate::sessions::store::StoreOptions;
use crate::sessions::tail::{self, TailRequest};
use crate::sessions::{Event, Outcome, SessionEnd, SessionStart, Store};

pub fn run(args: BenchArgs) -> anyhow::Result<i32> {
    pin_to_one_core()?;
    let dir = args
        .dir
        .unwrap_or_else(std::env::temp_dir)
        .join(format!("interceptor-bench-{}", std::process::id()));
    let measured = recording_rate(&dir.join("rate"), args.events).and_then(|rate| {
        Ok((
            rate,
            tail_delays(&dir.join("tail"), args.rate, args.seconds)?,
        ))
    });
    let removed = std::fs::remove_dir_all(&dir);
    let ((per_second, per_cpu_second, bytes), delays) = measured?;
    removed.with_context(|| format!("removing {}", dir.display()))?;
    let pct = |p: f64| delays[((delays.len() - 1) as f64 * p) as usize];
    println!("| metric | result | target |");
    println!("| --- | --- | --- |");
    println!(
        "| events recorded per second of CPU time (one core, {} events, {:.0} B each on disk) | {:.0} | ≥ 200,000 |",
        args.events,
        bytes as f64 / args.events as f64,
        per_cpu_second
    );
    println!("| events recorded per second of wall-clock time | {per_second:.0} | |");
    println!(
        "| event → tailer delay at {} events/s, p50 | {:.2} ms | |",
        args.rate,
        ms(pct(0.50))
    );
    println!(
        "| event → tailer delay at {} events/s, p99 | {:.2} ms | < 50 ms |",
        args.rate,
        ms(pct(0.99))
    );
    println!(
        "| event → tailer delay, max ({} events) | {:.2} ms | |",
        delays.len(),
        ms(pct(1.0))
    );
    Ok(0)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Both the appending thread and the writer share CPU 0, as on a one-core host.
fn pin_to_one_core() -> anyhow::Result<()> {
    let mut set = nix::sched::CpuSet::new();
    set.set(0)?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
        .context("pinning to CPU 0")?;
    Ok(())
}

/// A session's worth of small events, alternating start and end.
fn event(n: u64) -> Event {
    let id = n / 2 + 1;
    if n.is_multiple_of(2) {
        Event::Start(SessionStart {
            id,
            enrollment: 1,
            identity: Identity {
                pid: 4242,
                tid: 4242,
                comm: "agent".into(),
                exe: Some("/usr/bin/agent".into()),
                ..Default::default()
            },
            destination: "10.0.0.7:443".into(),
            started_at: SystemTime::now(),
        })
    } else {
        Event::End(SessionEnd {
            id,
            ended_at: SystemTime::now(),
            bytes_up: 512,
            bytes_down: 4096,
            outcome: Outcome::Closed,
            error: None,
        })
    }
}

/// Events per second of wall-clock time and per second of this process's CPU time (the
/// same on an idle host; on a shared one the CPU figure is the one-core capacity), and the
/// bytes on disk.
fn recording_rate(dir: &Path, events: u64) -> anyhow::Result<(f64, f64, u64)> {
    let (store, writer) = Store::open(dir, StoreOptions::default())?;
    let (start, cpu_start) = (Instant::now(), cpu_time()?);
    for n in 0..events {
        store.append(event(n));
    }
    drop(store);
    writer.finish();
    let (wall, cpu) = (start.elapsed(), cpu_time()? - cpu_start);
    let bytes = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum();
    let rate = |d: Duration| events as f64 / d.as_secs_f64();
    Ok((rate(wall), rate(cpu), bytes))
}

fn cpu_time() -> anyhow::Result<Duration> {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_PROCESS_CPUTIME_ID)?;
    Ok(Duration::from(t))
}

fn tail_delays(dir: &Path, rate: u64, seconds: u64) -> anyhow::Result<Vec<Duration>> {
    let (store, writer) = Store::open(dir, StoreOptions::default())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let follower_store = store.clone();
    let total = rate * seconds;
    let follower = std::thread::spawn(move || {
        runtime.block_on(async move {
            let (mut tx, rx) = tokio::io::duplex(1 << 20);
            let request = TailRequest {
                follow: true,
                ..Default::default()
            };
            tokio::spawn(async move { tail::stream(&follower_store, request, &mut tx).await });
            let mut lines = tokio::io::BufReader::new(rx).lines();
            let mut delays = Vec::with_capacity(total as usize);
            while (delays.len() as u64) < total {
                let Some(line) = lines.next_line().await? else {
                    break;
                };
                let record: Record = serde_json::from_str(&line)?;
                delays.push(
                    SystemTime::now()
                        .duration_since(record.at)
                        .unwrap_or_default(),
                );
            }
            anyhow::Ok(delays)
        })
    });
    // Give the follower time to subscribe before the first event.
    std::thread::sleep(Duration::from_millis(100));
    let start = Instant::now();
    let tick = Duration::from_millis(1);
    let per_tick = (rate / 1000).max(1);
    let mut sent = 0;
    while sent < total {
        for _ in 0..per_tick.min(total - sent) {
            store.append(event(sent));
            sent += 1;
        }
        let due = start + tick * (sent / per_tick) as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    let mut delays = follower
        .join()
        .map_err(|_| anyhow::anyhow!("the follower panicked"))??;
    drop(store);
    writer.finish();
    anyhow::ensure!(
        delays.len() as u64 == total,
        "the follower received {} of {total} events",
        delays.len()
    );
    delays.sort();
    Ok(delays)
}
