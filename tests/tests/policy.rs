//! Policy end to end: the daemon started with a policy file, address-only deny rules in the
//! kernel (EPERM) for `exec` and for an existing enrollment, reloads by control request and
//! SIGHUP (a broken file is refused with its position and the running policy stays), each
//! reload recorded in the session store with the policy's SHA-256; and the CLI's `policy
//! check` and `policy explain`.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use interceptor_tests::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const RUN: Duration = Duration::from_secs(120);
const WAIT: Duration = Duration::from_secs(30);

fn deny_policy(ip: &str) -> String {
    format!(
        "[[rule]]\nname = \"deny-{ip}\"\naction = \"deny\"\n[rule.match]\ncidr = [\"{ip}/32\"]\n\n\
         [default]\naction = \"allow\"\n"
    )
}

/// Connects to each of `servers` from a client in `cgroup`; returns, per server, the errno of
/// a failed connect() (None when it connected).
fn connect_errnos(cgroup: &Path, servers: &[&Server]) -> Result<Vec<Option<i32>>> {
    let args: Vec<String> = servers
        .iter()
        .flat_map(|s| ["--connect".to_string(), s.addr()])
        .collect();
    let mut cmd = client_command("connect", &args);
    in_cgroup(&mut cmd, cgroup)?;
    let report = parse_report(&run_with_timeout(&mut cmd, RUN)?)?;
    Ok(report
        .results
        .iter()
        .map(|r| match &r.error {
            Some(e) if e.stage == "connect" => e.errno,
            _ => None,
        })
        .collect())
}

/// Policy settings naming one real secret rule and one typo (line 2, column 40).
const TYPO: &str = "[settings]\nsecrets_report = [\"aws.access-key-id\", \"aws.acces-key-id\"]\n";

fn unknown_rule_error(file: &Path) -> String {
    format!(
        "{}:2:40: unknown secret rule id \"aws.acces-key-id\"",
        file.display()
    )
}

/// Every byte the daemon's session store holds (its records are JSON).
fn store_bytes(d: &Daemon) -> Result<String> {
    let mut out = Vec::new();
    let mut dirs = vec![d.data_dir().join("sessions")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                out.extend(std::fs::read(&path)?);
            }
        }
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

#[test]
fn policy_kernel_deny_reload_and_sighup() -> Result<()> {
    require_root();
    let first = deny_policy("127.0.0.5");
    let policy = PolicyFile::new(&first)?;
    let file = policy.path();
    let d = Daemon::start_with(&["--policy", policy.arg()?])?;
    let five = Server::hash("127.0.0.5", 10, "p5")?;
    let six = Server::hash("127.0.0.6", 10, "p6")?;
    let two = Server::hash("127.0.0.2", 10, "p2")?;
    let cg = TestCgroup::new(None)?;
    d.enroll([cg.path().as_os_str(), "--include-loopback".as_ref()])?;

    // The policy's deny rule is in the kernel for an enrollment...
    let eperm = Some(libc::EPERM);
    assert_eq!(
        connect_errnos(cg.path(), &[&five, &six, &two])?,
        [eperm, None, None]
    );
    // ...and for `interceptor exec`.
    let out = run_with_timeout(
        &mut d.exec_command(
            &["--include-loopback"],
            &client_argv("connect", &["--connect".into(), five.addr()]),
        ),
        RUN,
    )?;
    let report = parse_report(&out)?;
    let e = report.results[0]
        .error
        .as_ref()
        .context("exec: connect succeeded")?;
    assert_eq!((e.stage.as_str(), e.errno), ("connect", eperm), "{e:?}");
    assert!(five.records()?.is_empty(), "the denied server was reached");

    // A broken policy is refused with file:line:column; the running one stays.
    std::fs::write(
        file,
        format!("{first}[default.settings]\nrecord_bodies = 1\n"),
    )?;
    let out = d.cli(["policy", "reload"])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a broken policy was accepted");
    let want = format!("{}:10:1: unknown field `record_bodies`", file.display());
    assert!(stderr.contains(&want), "stderr: {stderr}\nwanted: {want}");
    assert_eq!(connect_errnos(cg.path(), &[&five, &six])?, [eperm, None]);

    // A good policy by SIGHUP: the existing enrollment's kernel deny list follows it.
    let second = deny_policy("127.0.0.6");
    std::fs::write(file, &second)?;
    kill(
        Pid::from_raw(d.pid().context("daemon pid")? as i32),
        Signal::SIGHUP,
    )?;
    d.wait_for_log_line("sighup", WAIT)?;
    poll(
        "127.0.0.6 denied after SIGHUP",
        WAIT,
        Duration::from_millis(200),
        || Ok((connect_errnos(cg.path(), &[&five, &six])? == [None, eperm]).then_some(())),
    )?;

    // A reload by control request reports the policy in force.
    let status: serde_json::Value = d.cli_json(["policy", "reload", "--json"])?;
    assert_eq!(status["sha256"], sha256_hex(second.as_bytes()), "{status}");
    assert_eq!(
        status["kernel_denies"][0]["net"], "127.0.0.6/32",
        "{status}"
    );

    // Every load is in the session store with the hash of its text.
    let (sha1, sha2) = (sha256_hex(first.as_bytes()), sha256_hex(second.as_bytes()));
    poll(
        "policy loads in the store",
        WAIT,
        Duration::from_millis(200),
        || {
            let store = store_bytes(&d)?;
            Ok((store.matches("policy_loaded").count() >= 3
                && store.contains(&sha1)
                && store.contains(&sha2))
            .then_some(()))
        },
    )?;
    Ok(())
}

/// A deny rule the kernel cannot enforce (it names the program) is enforced by the proxy
/// before dialing: the connection is reset, the upstream never reached, the session says why.
#[test]
fn proxy_deny_resets_raw_tcp() -> Result<()> {
    require_root();
    let policy = PolicyFile::new(
        "[[rule]]\nname = \"no-python-to-nine\"\naction = \"deny\"\nreason = \"not from scripts\"\n\
         [rule.match]\nexe = [\"**/python3*\"]\ncidr = [\"127.0.0.9/32\"]\n\n[default]\naction = \"allow\"\n",
    )?;
    let d = Daemon::start_with(&["--policy", policy.arg()?])?;
    let nine = Server::hash("127.0.0.9", 10, "p9")?;
    let two = Server::hash("127.0.0.2", 10, "p2")?;
    let out = run_with_timeout(
        &mut d.exec_command(
            &["--include-loopback"],
            &client_argv(
                "connect",
                &[
                    "--connect".into(),
                    nine.addr(),
                    "--connect".into(),
                    two.addr(),
                ],
            ),
        ),
        RUN,
    )?;
    let report = parse_report(&out)?;
    assert_reset_and_allowed(&report, &nine)?;
    let s = d.wait_for_matching(
        |s| s.identity.pid == report.pid && s.destination == nine.addr(),
        1,
        WAIT,
    )?;
    assert_eq!(s[0].outcome, "denied");
    assert_eq!(
        s[0].error.as_deref(),
        Some("denied by policy rule \"no-python-to-nine\": not from scripts")
    );
    Ok(())
}

/// Secret rule ids the policy names are checked against the daemon's `--rules` when it
/// starts and at every reload: a typo keeps the daemon from starting, and a reload (control
/// or SIGHUP) with one is refused with its position while the running policy stays.
#[test]
fn daemon_checks_secret_rule_ids() -> Result<()> {
    require_root();
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("policy.toml");
    let path = file.to_str().context("utf-8 path")?;
    let rules = workspace_root().join("policies/rules");
    let args = [
        "--policy",
        path,
        "--rules",
        rules.to_str().context("utf-8 path")?,
    ];
    let broken = format!("{TYPO}{}", deny_policy("127.0.0.5"));
    let want = unknown_rule_error(&file);

    std::fs::write(&file, &broken)?;
    let refused = match Daemon::start_with(&args) {
        Ok(_) => anyhow::bail!("the daemon started with an unknown secret rule id"),
        Err(e) => format!("{e:#}"),
    };
    ensure!(refused.contains(&want), "{refused}\nwanted: {want}");

    let good = TYPO.replace(", \"aws.acces-key-id\"", "") + &deny_policy("127.0.0.5");
    std::fs::write(&file, &good)?;
    let d = Daemon::start_with(&args)?;
    std::fs::write(&file, &broken)?;
    let out = d.cli(["policy", "reload"])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success(), "a reload with a typo was accepted");
    ensure!(stderr.contains(&want), "{stderr}\nwanted: {want}");
    kill(
        Pid::from_raw(d.pid().context("daemon pid")? as i32),
        Signal::SIGHUP,
    )?;
    let line = d.wait_for_log_line("trigger=\"sighup\"", WAIT)?;
    ensure!(
        line.contains("policy rejected") && line.contains(&want),
        "{line}"
    );
    // Still the good policy, and it was the only one put in force.
    let store = store_bytes(&d)?;
    ensure!(
        store.matches("policy_loaded").count() == 1 && store.contains(&sha256_hex(good.as_bytes())),
        "policy loads in the store: {}",
        store.matches("policy_loaded").count()
    );
    Ok(())
}

/// A policy that masks secrets while no secret rule is loaded would let every secret through
/// while saying it masks them: the daemon refuses it at start (naming where it asks for
/// masking), and at reload, where the running policy stays.
#[test]
fn a_masking_policy_without_rules_is_refused() -> Result<()> {
    require_root();
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("policy.toml");
    let path = file.to_str().context("utf-8 path")?;
    let empty = dir.path().join("no-rules");
    std::fs::create_dir(&empty)?;
    let refused = |args: &[&str]| match Daemon::start_with(args) {
        Ok(_) => anyhow::bail!("the daemon started with {args:?}"),
        Err(e) => Ok(format!("{e:#}")),
    };

    // The built-in default policy masks every rule's findings.
    let e = refused(&["--no-builtin-rules"])?;
    ensure!(
        e.contains("the policy masks secrets") && e.contains("no secret rules are loaded"),
        "{e}"
    );
    // Replaced by a directory without rules: refused too, saying so.
    let e = refused(&["--no-builtin-rules", "--rules", empty.to_str().unwrap()])?;
    ensure!(e.contains("no rule files"), "{e}");
    let masking = format!(
        "[settings]\nsecrets_mask = [\"*\"]\n{}",
        deny_policy("127.0.0.5")
    );
    std::fs::write(&file, &masking)?;
    let e = refused(&["--no-builtin-rules", "--policy", path])?;
    let want = format!("{}:2:17: the policy masks secrets here", file.display());
    ensure!(e.contains(&want), "{e}\nwanted: {want}");

    // Without masking, no rules are needed; a reload that asks for masking is refused.
    let plain = format!(
        "[settings]\nsecrets_mask = []\n{}",
        deny_policy("127.0.0.5")
    );
    std::fs::write(&file, &plain)?;
    let d = Daemon::start_with(&["--no-builtin-rules", "--policy", path])?;
    std::fs::write(&file, &masking)?;
    let out = d.cli(["policy", "reload"])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success(),
        "a masking policy was put in force without rules"
    );
    ensure!(stderr.contains(&want), "{stderr}\nwanted: {want}");
    // The only policy put in force is the one without masking (records reach the files
    // within the sync interval).
    let plain_sha = sha256_hex(plain.as_bytes());
    let store = poll(
        "the start's policy_loaded record",
        WAIT,
        Duration::from_millis(100),
        || Ok(Some(store_bytes(&d)?).filter(|s| s.contains(&plain_sha))),
    )?;
    ensure!(
        store.matches("policy_loaded").count() == 1,
        "policy loads in the store: {}",
        store.matches("policy_loaded").count()
    );
    Ok(())
}

/// The first of `report`'s connections was reset by the proxy without reaching `denied`;
/// the second got its server's 10 bytes.
fn assert_reset_and_allowed(report: &ClientReport, denied: &Server) -> Result<()> {
    let (refused, allowed) = (&report.results[0], &report.results[1]);
    let e = refused
        .error
        .as_ref()
        .context("the denied connection went through")?;
    // The reset can win the race with the end of connect() on loopback.
    ensure!(
        matches!(e.stage.as_str(), "connect" | "recv") && e.errno == Some(libc::ECONNRESET),
        "{e:?}"
    );
    ensure!(
        allowed.error.is_none() && allowed.received == 10,
        "{allowed:?}"
    );
    ensure!(
        denied.records()?.is_empty(),
        "the denied server was reached"
    );
    Ok(())
}

/// A container's name, read from its runtime's metadata (a docker config planted under
/// `run --docker-root`), is in the session's identity, and policy rules match it.
#[test]
fn policy_matches_the_container_name() -> Result<()> {
    require_root();
    let id = "5d1c".repeat(16);
    let dir = tempfile::tempdir()?;
    let docker = dir.path().join("docker");
    let meta = docker.join("containers").join(&id);
    std::fs::create_dir_all(&meta)?;
    std::fs::write(
        meta.join("config.v2.json"),
        format!(r#"{{"ID": "{id}", "Name": "/payments-api", "State": {{"Running": true}}}}"#),
    )?;
    let file = dir.path().join("policy.toml");
    std::fs::write(
        &file,
        "[[rule]]\nname = \"no-payments-to-nine\"\naction = \"deny\"\n[rule.match]\n\
         container = [\"payments-*\"]\ncidr = [\"127.0.0.9/32\"]\n\n[default]\naction = \"allow\"\n",
    )?;
    let d = Daemon::start_with(&[
        "--policy",
        file.to_str().context("utf-8 path")?,
        "--docker-root",
        docker.to_str().context("utf-8 path")?,
    ])?;
    let nine = Server::hash("127.0.0.9", 10, "p9")?;
    let two = Server::hash("127.0.0.2", 10, "p2")?;
    let cg = TestCgroup::new(Some(&format!("docker-{id}.scope")))?;
    d.enroll([cg.path().as_os_str(), "--include-loopback".as_ref()])?;
    let mut cmd = client_command(
        "connect",
        &[
            "--connect".into(),
            nine.addr(),
            "--connect".into(),
            two.addr(),
        ],
    );
    in_cgroup(&mut cmd, cg.path())?;
    let report = parse_report(&run_with_timeout(&mut cmd, RUN)?)?;
    assert_reset_and_allowed(&report, &nine)?;

    let denied = d.wait_for_matching(
        |s| s.identity.pid == report.pid && s.destination == nine.addr(),
        1,
        WAIT,
    )?;
    ensure!(
        denied[0].outcome == "denied"
            && denied[0]
                .error
                .as_deref()
                .is_some_and(|e| e.contains("no-payments-to-nine")),
        "{:?}",
        denied[0]
    );
    let sessions: Vec<serde_json::Value> = d.cli_json(["sessions", "list", "--json"])?;
    let allowed = sessions
        .iter()
        .find(|s| s["destination"] == two.addr().as_str())
        .context("no session to the allowed server")?;
    let container = &allowed["identity"]["container"];
    ensure!(
        container["id"] == id.as_str()
            && container["runtime"] == "docker"
            && container["name"] == "payments-api",
        "container: {container}"
    );
    Ok(())
}

#[test]
fn policy_check_and_explain_cli() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("p.toml");
    let bin = interceptor_bin();
    // `interceptor policy ARGS`: its output once it exited with `code`.
    let policy = |args: &[&str], code: i32, what: &str| -> Result<(String, String)> {
        let out = run_with_timeout(
            std::process::Command::new(&bin).arg("policy").args(args),
            RUN,
        )?;
        ensure!(out.status.code() == Some(code), "{what}: {out:?}");
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        Ok((text(&out.stdout), text(&out.stderr)))
    };

    std::fs::write(
        &file,
        deny_policy("169.254.169.254").replace("cidr", "cidrs"),
    )?;
    let (_, stderr) = policy(
        &["check", file.to_str().unwrap()],
        1,
        "check of a broken file",
    )?;
    ensure!(
        stderr.contains(&format!("{}:5:1: unknown field `cidrs`", file.display())),
        "{stderr}"
    );

    // Secret rule ids are checked against the rules directory.
    let rules = workspace_root().join("policies/rules");
    let rules = rules.to_str().unwrap();
    std::fs::write(&file, format!("{TYPO}{}", deny_policy("169.254.169.254")))?;
    let (_, stderr) = policy(
        &["check", "--rules", rules, file.to_str().unwrap()],
        1,
        "check with an unknown rule id",
    )?;
    let want = unknown_rule_error(&file);
    ensure!(stderr.contains(&want), "{stderr}\nwanted: {want}");

    std::fs::write(&file, deny_policy("169.254.169.254"))?;
    let (stdout, _) = policy(
        &["check", "--rules", rules, file.to_str().unwrap()],
        0,
        "check of a good file",
    )?;
    ensure!(stdout.contains("denied in the kernel"), "{stdout}");

    let (stdout, _) = policy(
        &[
            "explain",
            "--policy",
            file.to_str().unwrap(),
            "--exe",
            "/usr/bin/curl",
            "--dest",
            "169.254.169.254:80",
        ],
        2,
        "explain deny exits 2",
    )?;
    ensure!(
        stdout.starts_with("decision: deny by rule #0 \"deny-169.254.169.254\""),
        "{stdout}"
    );
    ensure!(
        stdout.contains("because: address 169.254.169.254 matches [169.254.169.254/32]"),
        "{stdout}"
    );

    let agent = workspace_root().join("policies/examples/ai-agent.toml");
    let (stdout, _) = policy(
        &[
            "explain",
            "--policy",
            agent.to_str().unwrap(),
            "--dest",
            "api.github.com:443",
            "--method",
            "POST",
            "--path",
            "/repos/o/r/pulls",
        ],
        3,
        "explain approve exits 3",
    )?;
    ensure!(
        stdout.contains("by rule #3 \"github-write-needs-approval\""),
        "{stdout}"
    );
    ensure!(
        stdout.contains("#2 \"github-read\" (line 30): method \"POST\" does not match [GET, HEAD]"),
        "{stdout}"
    );
    Ok(())
}
