//! Enrollment by container id and by pid, and a proxy that shrugs off connections it was not
//! meant to get. Run as root; every test has its own daemon, cgroups and servers.

use std::io::Read;
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Result;
use interceptor_tests::*;

const RUN: Duration = Duration::from_secs(60);

#[test]
fn enroll_by_container_id_prefix_and_by_pid() -> Result<()> {
    require_root();
    let d = Daemon::start()?;
    let cid = sha256_hex(format!("ctr-{}-{}", std::process::id(), next_id()).as_bytes());
    let cg = TestCgroup::new(Some(&format!("cri-containerd-{cid}.scope")))?;

    let by_container = d.enroll(["--container", &cid[..12]])?;
    assert_eq!(by_container.cgroup, cg.path().display().to_string());
    assert_eq!(by_container.cgroup_id, cg.id()?);

    // A process in that cgroup names the same enrollment: enrolling is idempotent.
    let mut sleeper = Command::new("sleep");
    sleeper.arg("30").stdout(Stdio::null());
    in_cgroup(&mut sleeper, cg.path())?;
    let sleeper = Reaped(sleeper.spawn()?);
    let by_pid = d.enroll(["--pid", &sleeper.0.id().to_string()])?;
    assert_eq!(by_pid.id, by_container.id);
    assert_eq!(d.status()?.enrollments.len(), 1);

    let missing = d.cli(["enroll", "--container", "feedfacefeedface"])?;
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("feedfacefeedface"),
        "{missing:?}"
    );

    d.cli_ok(["unenroll", "--container", &cid[..12]])?;
    assert!(d.status()?.enrollments.is_empty());
    Ok(())
}

#[test]
fn stray_connection_to_the_proxy_port_is_reset_and_harmless() -> Result<()> {
    require_root();
    let d = Daemon::start()?;
    // Nobody was redirected here, so the proxy has no destination: it must reset, not hang.
    // (Only read: a write racing the reset would consume the error and leave a plain EOF.)
    let mut stray = TcpStream::connect(("127.0.0.1", d.proxy_port()))?;
    stray.set_read_timeout(Some(RUN))?;
    let mut buf = [0u8; 64];
    let got = stray.read(&mut buf);
    assert!(
        matches!(&got, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "expected a reset, got {got:?}"
    );
    d.wait_for_log_line("without a redirect record", RUN)?;

    // The daemon still serves redirected connections afterwards.
    let srv = Server::echo("127.0.0.2")?;
    let out = run_with_timeout(
        &mut d.exec_command(
            &["--include-loopback"],
            &client_argv("connect", &["--connect".into(), srv.addr()]),
        ),
        RUN,
    )?;
    let rep = parse_report(&out)?;
    assert!(rep.results[0].error.is_none(), "{:?}", rep.results[0]);
    d.wait_for_matching(|s| s.identity.pid == rep.pid, 1, RUN)?;
    Ok(())
}
