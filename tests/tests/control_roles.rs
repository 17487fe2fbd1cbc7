//! Control socket roles end to end, as users and groups made for the test: members of
//! `--socket-group` may read (status, sessions, approvals list, the CA) but not change;
//! members of `--admin-group` may change; the workload's own user, even an admin, and any
//! process inside the workload may not change the enrollment that covers it, nor approve its
//! own held connection; every change, made, refused or failed, is a record in the session
//! store with the caller's uid, user and pid.

use std::os::unix::fs::MetadataExt;
use std::process::Output;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use interceptor_tests::*;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);

/// A daemon whose socket belongs to `readers`, with `admins` as its admin group. Fields drop
/// in order: the daemon first, then the users, then their groups.
struct Roles {
    d: Daemon,
    reader: TestUser,
    admin: TestUser,
    readers: TestGroup,
    admins: TestGroup,
}

fn setup() -> Result<Roles> {
    setup_with(|_| Ok(Vec::new()))
}

/// `args` gives more `run` arguments, knowing the admin group's name.
fn setup_with(args: impl FnOnce(&str) -> Result<Vec<String>>) -> Result<Roles> {
    require_root();
    let readers = TestGroup::new("read")?;
    let admins = TestGroup::new("adm")?;
    let reader = TestUser::new("r", &[&readers])?;
    let admin = TestUser::new("a", &[&readers, &admins])?;
    let mut run = vec![
        "--socket-group".to_string(),
        readers.name().into(),
        "--admin-group".into(),
        admins.name().into(),
    ];
    run.extend(args(admins.name())?);
    let d = Daemon::start_with(&run.iter().map(String::as_str).collect::<Vec<_>>())?;
    Ok(Roles {
        d,
        reader,
        admin,
        readers,
        admins,
    })
}

fn succeeded(out: &Output) -> Result<String> {
    ensure!(
        out.status.success(),
        "failed: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn refused(out: &Output) -> Result<String> {
    ensure!(
        !out.status.success(),
        "succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    Ok(String::from_utf8_lossy(&out.stderr).into_owned())
}

fn path(p: &std::path::Path) -> &str {
    p.to_str().expect("test paths are UTF-8")
}

/// Waits for the store's record of the change asked by process `pid`; returns its event.
fn change_record(d: &Daemon, pid: u32) -> Result<Value> {
    poll(
        &format!("the control record of pid {pid}"),
        WAIT,
        Duration::from_millis(100),
        || {
            let export = d.cli_ok(["sessions", "export"])?;
            for line in export.lines() {
                let record: Value = serde_json::from_str(line)?;
                let event = &record["event"];
                if event["event"] == "control" && event["caller"]["pid"] == pid {
                    return Ok(Some(event.clone()));
                }
            }
            Ok(None)
        },
    )
}

/// Checks that the change asked by `pid` as `uid`/`user` is recorded as `change` with
/// `outcome`; returns the record.
fn recorded(
    d: &Daemon,
    pid: u32,
    (uid, user): (u32, &str),
    change: &str,
    outcome: &str,
) -> Result<Value> {
    let r = change_record(d, pid)?;
    ensure!(
        r["change"] == change && r["outcome"] == outcome,
        "want {change} {outcome}: {r}"
    );
    ensure!(
        r["caller"]["uid"] == uid && r["caller"]["user"] == user,
        "want uid {uid} ({user}): {r}"
    );
    Ok(r)
}

fn enrolled_ids(d: &Daemon) -> Result<Vec<u64>> {
    Ok(d.status()?.enrollments.iter().map(|e| e.id).collect())
}

#[test]
fn socket_group_members_read_but_do_not_change() -> Result<()> {
    let s = setup()?;
    let (d, reader) = (&s.d, &s.reader);
    let cg = TestCgroup::new(None)?;
    let other = TestCgroup::new(None)?;
    let id = d.enroll([cg.path()])?.id;
    let socket = std::fs::metadata(d.socket())?;
    ensure!(
        socket.gid() == s.readers.gid(),
        "the socket is not the socket group's"
    );

    for args in [
        &["status", "--json"][..],
        &["sessions", "list", "--json"],
        &["approvals", "list", "--json"],
        &["ca", "export"],
    ] {
        let (_, out) = d.cli_as(reader, args)?;
        succeeded(&out).with_context(|| format!("{args:?} as a socket group member"))?;
    }

    let id_arg = id.to_string();
    let changes = [
        (vec!["unenroll", "--id", &id_arg], "unenroll"),
        (vec!["unenroll", path(cg.path())], "unenroll"),
        (vec!["enroll", path(other.path())], "enroll"),
        (vec!["policy", "reload"], "policy reload"),
        (vec!["approvals", "approve", "1"], "approvals approve"),
        (
            vec!["sessions", "acknowledge-damage", "000001.seg"],
            "sessions acknowledge-damage",
        ),
    ];
    let mut asked = Vec::new();
    for (args, change) in changes {
        let (pid, out) = d.cli_as(reader, &args)?;
        let err = refused(&out).with_context(|| format!("{args:?} as a socket group member"))?;
        let want = format!(
            "{change} needs root or group {}; you are uid {} ({})",
            s.admins.name(),
            reader.uid(),
            reader.name()
        );
        ensure!(err.contains(&want), "{args:?}: want {want:?} in {err}");
        asked.push((pid, change));
    }
    ensure!(enrolled_ids(d)? == [id], "the enrollments changed");

    let who = (reader.uid(), reader.name());
    for (pid, change) in &asked {
        let r = recorded(d, *pid, who, change, "refused")?;
        ensure!(
            r["reason"]
                .as_str()
                .unwrap_or("")
                .contains("needs root or group"),
            "{r}"
        );
    }
    // `sessions tail` shows the refusal with who asked.
    let tail = d.cli_ok(["sessions", "tail"])?;
    let line = format!(
        "control unenroll by uid {} ({}) pid {} REFUSED: unenroll needs root",
        reader.uid(),
        reader.name(),
        asked[0].0
    );
    ensure!(tail.contains(&line), "no {line:?} in\n{tail}");
    Ok(())
}

#[test]
fn admin_group_members_change_and_every_change_is_recorded() -> Result<()> {
    let s = setup()?;
    let (d, admin) = (&s.d, &s.admin);
    let cg = TestCgroup::new(None)?;
    let who = (admin.uid(), admin.name());

    let (pid, out) = d.cli_as(admin, ["enroll", path(cg.path()), "--json"])?;
    let e: Enrollment = serde_json::from_str(&succeeded(&out)?)?;
    ensure!(enrolled_ids(d)? == [e.id]);
    let r = recorded(d, pid, who, "enroll", "done")?;
    ensure!(
        r["changed"] == format!("enrollment {} ({})", e.id, e.cgroup),
        "{r}"
    );
    ensure!(r["request"]["target"]["path"] == path(cg.path()), "{r}");

    let (pid, out) = d.cli_as(admin, ["policy", "reload"])?;
    succeeded(&out)?;
    recorded(d, pid, who, "policy reload", "done")?;

    // Allowed by the roles, but there is nothing to deny: recorded as failed.
    let (pid, out) = d.cli_as(admin, ["approvals", "deny", "12345"])?;
    ensure!(refused(&out)?.contains("no pending approval 12345"));
    let r = recorded(d, pid, who, "approvals deny", "failed")?;
    ensure!(r["error"] == "no pending approval 12345", "{r}");
    // Acknowledging store damage is a change too; this store has none to acknowledge.
    let (pid, out) = d.cli_as(admin, ["sessions", "acknowledge-damage", "000001.seg"])?;
    ensure!(refused(&out)?.contains("no unacknowledged damage in 000001.seg"));
    recorded(d, pid, who, "sessions acknowledge-damage", "failed")?;

    let (pid, out) = d.cli_as(admin, ["unenroll", "--id", &e.id.to_string()])?;
    succeeded(&out)?;
    recorded(d, pid, who, "unenroll", "done")?;
    ensure!(enrolled_ids(d)?.is_empty(), "still enrolled");

    // Root's changes are recorded too.
    let (pid, out) = run_with_pid(&mut d.cli_command(["enroll", path(cg.path())]), WAIT)?;
    succeeded(&out)?;
    recorded(d, pid, (0, "root"), "enroll", "done")?;
    Ok(())
}

#[test]
fn a_workload_cannot_change_the_enrollment_that_covers_it() -> Result<()> {
    let s = setup()?;
    let (d, admin) = (&s.d, &s.admin);
    let cg = TestCgroup::new(None)?;
    let sub = cg.child("sub")?;
    let id = d.enroll([cg.path()])?.id;
    let id_arg = id.to_string();

    // The admin's own workload: a process of the admin's uid in the enrolled cgroup.
    let mut sleep = admin.command("sleep");
    sleep.arg("300");
    in_cgroup(&mut sleep, cg.path())?;
    let workload = Reaped(sleep.spawn()?);
    let wpid = workload.0.id();
    ensure!(cg.procs()?.contains(&(wpid as i32)), "not in the cgroup");

    let changes = [
        (vec!["unenroll", "--id", &id_arg], "unenroll"),
        (vec!["unenroll", path(cg.path())], "unenroll"),
        // Other filters would let its traffic by.
        (vec!["enroll", path(cg.path()), "--ports", "1"], "enroll"),
        // A deeper enrollment would override this one beneath it.
        (vec!["enroll", path(&sub), "--ports", "1"], "enroll"),
    ];
    let who = (admin.uid(), admin.name());
    for (args, change) in changes {
        let (pid, out) = d.cli_as(admin, &args)?;
        let err = refused(&out).with_context(|| format!("{args:?} by the workload's user"))?;
        let want = format!(
            "{change} refused: uid {} ({}) runs process {wpid} in {}, which enrollment {id} covers",
            admin.uid(),
            admin.name(),
            cg.path().display()
        );
        ensure!(err.contains(&want), "{args:?}: want {want:?} in {err}");
        recorded(d, pid, who, change, "refused")?;
    }

    // Root from inside the workload may not either.
    let mut inside = d.cli_command(["unenroll", "--id", &id_arg]);
    in_cgroup(&mut inside, cg.path())?;
    let (pid, out) = run_with_pid(&mut inside, WAIT)?;
    let want = format!("your process (pid {pid}) is in {}", cg.path().display());
    let err = refused(&out)?;
    ensure!(err.contains(&want), "want {want:?} in {err}");
    recorded(d, pid, (0, "root"), "unenroll", "refused")?;

    ensure!(enrolled_ids(d)? == [id], "the enrollment changed");
    let status = d.status()?;
    ensure!(status.enrollments[0].ports.is_empty(), "filters changed");

    // Once its workload is gone, the same admin may.
    drop(workload);
    let (pid, out) = d.cli_as(admin, ["unenroll", "--id", &id_arg])?;
    succeeded(&out)?;
    recorded(d, pid, who, "unenroll", "done")?;
    ensure!(enrolled_ids(d)?.is_empty(), "still enrolled");
    Ok(())
}

#[test]
fn an_admin_cannot_approve_its_own_held_connection() -> Result<()> {
    let mut policy = None;
    let s = setup_with(|admins| {
        let file = PolicyFile::new(&format!(
            r#"
[[rule]]
name = "hold-seven"
action = "approve"
[rule.match]
cidr = ["127.0.0.7/32"]
[rule.approval]
groups = ["{admins}"]
timeout = "20s"

[default]
action = "allow"
"#
        ))?;
        let args = vec!["--policy".into(), file.arg()?.to_string()];
        policy = Some(file);
        Ok(args)
    })?;
    let (d, admin) = (&s.d, &s.admin);
    let server = Server::hash("127.0.0.7", 10, "own")?;
    let cg = TestCgroup::new(None)?;
    d.enroll([cg.path().as_os_str(), "--include-loopback".as_ref()])?;

    // The admin's own connection, held for approval.
    let argv = client_argv("connect", &["--connect".into(), server.addr()]);
    let mut client = admin.command(&argv[0]);
    client.args(&argv[1..]);
    in_cgroup(&mut client, cg.path())?;
    let _client = Reaped(client.spawn()?);
    let held: Value = poll(
        "the admin's connection held",
        WAIT,
        Duration::from_millis(50),
        || {
            let list: Vec<Value> = d.cli_json(["approvals", "list", "--json"])?;
            Ok(list.into_iter().next())
        },
    )?;
    ensure!(held["workload"]["uid"] == admin.uid(), "{held}");

    let id = held["id"].to_string();
    let (pid, out) = d.cli_as(admin, ["approvals", "approve", &id])?;
    let err = refused(&out)?;
    ensure!(
        err.contains("cannot approve or deny its own traffic"),
        "{err}"
    );
    let r = recorded(
        d,
        pid,
        (admin.uid(), admin.name()),
        "approvals approve",
        "refused",
    )?;
    ensure!(r["request"]["id"] == held["id"], "{r}");
    ensure!(
        server.records()?.is_empty(),
        "the held connection went through"
    );
    Ok(())
}
