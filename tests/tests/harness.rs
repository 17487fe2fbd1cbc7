//! Self-tests of the harness: cgroups, namespaces, veth links, test servers and clients.
//! They need root but no daemon.

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use interceptor_tests::*;

const RUN: Duration = Duration::from_secs(60);

#[test]
fn cgroup_create_run_and_cleanup() -> Result<()> {
    require_root();
    let cg = TestCgroup::new(Some("leaf"))?;
    let root = cg.path().parent().unwrap().to_path_buf();
    assert!(cg.path().join("cgroup.procs").exists());
    assert!(cg.rel_path().starts_with("/interceptor-test-"));
    assert!(cg.rel_path().ends_with("/leaf"));

    let mut cmd = Command::new("sleep");
    cmd.arg("60");
    in_cgroup(&mut cmd, cg.path())?;
    let mut child = cmd.spawn()?;
    let pid = child.id() as i32;
    assert_eq!(cg.procs()?, vec![pid]);
    let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    assert!(
        own.lines().any(|l| l == format!("0::{}", cg.rel_path())),
        "/proc/{pid}/cgroup: {own}"
    );
    drop(cg);
    // The cgroup was killed: the child is gone and so are the directories.
    let st = child.wait()?;
    assert!(!st.success(), "sleep should have been killed: {st}");
    assert!(!root.exists(), "{} still exists", root.display());
    Ok(())
}

#[test]
fn netns_veth_ipv6_and_hash_server() -> Result<()> {
    require_root();
    let ns = Netns::new()?;
    let ns_path = ns.path();
    assert!(ns_path.exists());
    {
        let link = veth(None, &ns)?;
        let srv = Server::hash_in(&ns, link.b_v6.into(), 100_000, "ns-reply")?;
        let out = run_with_timeout(
            &mut client_command(
                "hash",
                &[
                    "--connect".into(),
                    srv.addr(),
                    "--send-bytes".into(),
                    "200000".into(),
                    "--seed".into(),
                    "ns-up".into(),
                ],
            ),
            RUN,
        )?;
        let rep = parse_report(&out)?;
        let r = &rep.results[0];
        assert!(r.error.is_none(), "{r:?}");
        assert_eq!(r.received, 100_000);
        assert_eq!(
            r.received_sha256.as_deref(),
            Some(sha256_hex(&payload("ns-reply", 100_000)).as_str())
        );
        let recs = srv.wait_records(1, RUN)?;
        assert_eq!(recs[0].received, 200_000);
        assert_eq!(
            recs[0].sha256.as_deref(),
            Some(sha256_hex(&payload("ns-up", 200_000)).as_str())
        );
        // A direct connection: the server saw the client's own address.
        assert_eq!(Some(recs[0].peer.clone()), r.local);
        assert!(srv.addr().starts_with("[fd00:"), "{}", srv.addr());
    }
    drop(ns);
    assert!(!ns_path.exists(), "{} still exists", ns_path.display());
    Ok(())
}

#[test]
fn netns_to_netns_veth_ipv4() -> Result<()> {
    require_root();
    let a = Netns::new()?;
    let b = Netns::new()?;
    let link = veth(Some(&a), &b)?;
    let srv = Server::echo_in(&b, link.b_v4.into())?;
    let mut cmd = a.command(python());
    cmd.arg(scripts_dir().join("client.py")).args([
        "echo-many",
        "--connect",
        &srv.addr(),
        "--conns",
        "4",
        "--bytes",
        "10000",
    ]);
    let rep = parse_report(&run_with_timeout(&mut cmd, RUN)?)?;
    assert_eq!(rep.results.len(), 4);
    for r in &rep.results {
        assert!(r.error.is_none() && r.r#match == Some(true), "{r:?}");
    }
    // Unreachable from the host: the namespaces are really separate.
    let rep = parse_report(&run_with_timeout(
        &mut client_command("connect", &["--connect".into(), srv.addr()]),
        RUN,
    )?)?;
    assert!(rep.results[0].error.is_some(), "{:?}", rep.results[0]);
    Ok(())
}

#[test]
fn http_server_with_curl() -> Result<()> {
    let srv = Server::http("127.0.0.3")?;
    let dir = tempfile::tempdir()?;
    let body = payload("http-self", 1_000_000);
    std::fs::write(dir.path().join("in"), &body)?;
    let out = run_ok(
        Command::new("curl")
            .args(["-sS", "--fail", "--noproxy", "*", "--max-time", "30"])
            .args(["-H", "Expect: 100-continue", "--data-binary"])
            .arg(format!("@{}", dir.path().join("in").display()))
            .arg("-o")
            .arg(dir.path().join("out"))
            .arg(format!("http://{}/echo", srv.addr())),
        RUN,
    )?;
    assert!(out.status.success());
    let got = std::fs::read(dir.path().join("out")).context("curl output")?;
    assert_eq!(sha256_hex(&got), sha256_hex(&body));
    let rec = &srv.wait_records(1, RUN)?[0];
    assert_eq!(rec.received, body.len() as u64);
    assert!(rec.error.is_none(), "{rec:?}");
    Ok(())
}

#[test]
fn client_reports_refused_and_python_matches_rust_payload() -> Result<()> {
    // A bound but not listening socket: connecting to its port is refused.
    let (_sock, port) = closed_port("127.0.0.2")?;
    let rep = parse_report(&run_with_timeout(
        &mut client_command(
            "connect",
            &["--connect".into(), format!("127.0.0.2:{port}")],
        ),
        RUN,
    )?)?;
    let e = rep.results[0].error.as_ref().expect("refused");
    assert_eq!(
        (e.stage.as_str(), e.errno),
        ("connect", Some(libc::ECONNREFUSED))
    );
    assert_eq!(rep.pid, rep.pid);
    assert!(rep.exe.starts_with('/'));

    let srv = Server::echo("127.0.0.2")?;
    let rep = parse_report(&run_with_timeout(
        &mut client_command(
            "hash",
            &[
                "--connect".into(),
                srv.addr(),
                "--send-bytes".into(),
                "12345".into(),
                "--seed".into(),
                "cmp".into(),
            ],
        ),
        RUN,
    )?)?;
    let r = &rep.results[0];
    let want = sha256_hex(&payload("cmp", 12345));
    assert_eq!(r.sent_sha256.as_deref(), Some(want.as_str()));
    assert_eq!(r.received_sha256.as_deref(), Some(want.as_str()));
    Ok(())
}
