use std::sync::Mutex as StdMutex;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

fn approval(timeout_ms: u64, webhook: Option<String>) -> Approval {
    Approval {
        users: vec!["alice".into()],
        groups: vec!["ops".into()],
        timeout: Duration::from_millis(timeout_ms),
        webhook,
    }
}

fn workload(uid: u32) -> Workload {
    Workload {
        uid,
        user: Some("agent".into()),
        exe: Some("/usr/bin/python3".into()),
        comm: "python3".into(),
        cgroup: Some("/agents.slice/a.scope".into()),
    }
}

fn request(timeout_ms: u64) -> HoldRequest {
    HoldRequest {
        session: 7,
        rule: "github-write".into(),
        approval: approval(timeout_ms, None),
        workload: workload(1000),
        destination: "api.github.com:443".into(),
        request_line: Some("POST /repos/o/r/pulls".into()),
        headers: vec![("authorization".into(), "Bearer [MASKED]".into())],
        body_preview: Some("{\"title\":\"x\"}".into()),
        tool: None,
    }
}

fn person(uid: u32, user: &str, groups: &[&str]) -> Approver {
    Approver {
        uid,
        user: Some(user.into()),
        groups: groups.iter().map(|g| g.to_string()).collect(),
    }
}

/// Approvals whose events are kept for the test to look at (by kind).
fn recorded() -> (Arc<Approvals>, Arc<StdMutex<Vec<String>>>) {
    let events = Arc::new(StdMutex::new(Vec::new()));
    let sink = events.clone();
    let a = Approvals::new(move |e| {
        let v = serde_json::to_value(&e).unwrap();
        sink.lock()
            .unwrap()
            .push(v["approval"].as_str().unwrap().to_string());
    });
    (a, events)
}

/// `a.hold(req)` on a task of its own, as a connection would.
fn spawn_hold(a: &Arc<Approvals>, req: HoldRequest) -> tokio::task::JoinHandle<Outcome> {
    let a = a.clone();
    tokio::spawn(async move { a.hold(req).await })
}

/// `by` approves `id` with a grant for an hour.
fn grant_an_hour(a: &Approvals, id: u64, by: &Approver) {
    let verdict = Verdict::Approve {
        grant_for: Some(Duration::from_secs(3600)),
    };
    a.decide(id, by, verdict, None).unwrap();
}

/// Waits until `n` approvals are pending; returns them.
async fn pending(a: &Approvals, n: usize) -> Vec<Pending> {
    for _ in 0..500 {
        let p = a.pending();
        if p.len() >= n {
            return p;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("{n} approvals never became pending: {:?}", a.pending());
}

#[tokio::test]
async fn hold_then_approve_passes_and_is_recorded() {
    let (a, events) = recorded();
    let held = spawn_hold(&a, request(10_000));
    let p = pending(&a, 1).await;
    assert_eq!(p[0].request_line.as_deref(), Some("POST /repos/o/r/pulls"));
    let alice = person(1001, "alice", &[]);
    a.decide(
        p[0].id,
        &alice,
        Verdict::Approve { grant_for: None },
        Some("ok".into()),
    )
    .unwrap();
    let outcome = held.await.unwrap();
    assert_eq!(
        outcome,
        Outcome::Approved {
            by: alice,
            reason: Some("ok".into())
        }
    );
    assert!(outcome.passes() && a.pending().is_empty());
    assert_eq!(*events.lock().unwrap(), ["created", "approved"]);
}

#[tokio::test]
async fn hold_then_deny_refuses_with_the_reason() {
    let (a, events) = recorded();
    let held = spawn_hold(&a, request(10_000));
    let id = pending(&a, 1).await[0].id;
    let bob = person(1002, "bob", &["ops"]);
    a.decide(id, &bob, Verdict::Deny, Some("not today".into()))
        .unwrap();
    let outcome = held.await.unwrap();
    assert_eq!(
        outcome,
        Outcome::Denied {
            by: bob,
            reason: Some("not today".into())
        }
    );
    assert!(!outcome.passes());
    assert_eq!(*events.lock().unwrap(), ["created", "denied"]);
    let r = a.resolved();
    assert_eq!(
        (r.len(), r[0].id, r[0].rule.as_str(), &r[0].outcome),
        (1, id, "github-write", &outcome)
    );
    let json = serde_json::to_value(&r[0]).unwrap();
    assert_eq!(
        (&json["outcome"], &json["by"]["user"], &json["reason"]),
        (&"denied".into(), &"bob".into(), &"not today".into())
    );
}

#[tokio::test]
async fn nobody_decides_and_the_hold_expires() {
    let (a, events) = recorded();
    let started = std::time::Instant::now();
    assert_eq!(a.hold(request(200)).await, Outcome::Expired);
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert!(a.pending().is_empty());
    assert_eq!(*events.lock().unwrap(), ["created", "expired"]);
    let late = a.decide(1, &person(1001, "alice", &[]), Verdict::Deny, None);
    assert_eq!(late.unwrap_err(), ApprovalError::NoSuchApproval(1));
    let r = a.resolved();
    assert_eq!((r.len(), r[0].id, &r[0].outcome), (1, 1, &Outcome::Expired));
}

#[tokio::test]
async fn own_user_and_strangers_cannot_decide() {
    let (a, events) = recorded();
    let held = spawn_hold(&a, request(10_000));
    let id = pending(&a, 1).await[0].id;
    // The workload's own uid, even if listed as an approver.
    let own = person(1000, "alice", &["ops"]);
    assert_eq!(
        a.decide(id, &own, Verdict::Approve { grant_for: None }, None)
            .unwrap_err(),
        ApprovalError::SelfApproval(1000)
    );
    let stranger = person(1003, "mallory", &["dev"]);
    let e = a
        .decide(id, &stranger, Verdict::Approve { grant_for: None }, None)
        .unwrap_err();
    assert!(
        e.to_string().contains("mallory is not among the approvers"),
        "{e}"
    );
    assert_eq!(
        a.pending().len(),
        1,
        "a refused decision must leave the hold pending"
    );
    a.decide(id, &person(1002, "bob", &["ops"]), Verdict::Deny, None)
        .unwrap();
    assert!(!held.await.unwrap().passes());
    assert_eq!(*events.lock().unwrap(), ["created", "denied"]);
}

#[tokio::test]
async fn a_grant_lets_the_same_workload_and_rule_pass_until_it_expires_or_is_revoked() {
    let (a, events) = recorded();
    let alice = person(1001, "alice", &[]);
    let held = spawn_hold(&a, request(10_000));
    let id = pending(&a, 1).await[0].id;
    let window = Some(Duration::from_millis(400));
    a.decide(id, &alice, Verdict::Approve { grant_for: window }, None)
        .unwrap();
    assert!(held.await.unwrap().passes());
    assert_eq!(
        a.hold(request(10_000)).await,
        Outcome::Granted { grant: id }
    );
    // Another workload (other uid) is not covered by the grant.
    assert_eq!(a.hold(request_for(2000, 100)).await, Outcome::Expired);
    // After the window, the workload waits again.
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert!(a.grants().is_empty());
    assert_eq!(a.hold(request(100)).await, Outcome::Expired);

    // Revoke ends a grant early, and only an approver may revoke.
    let held = spawn_hold(&a, request(10_000));
    let id = pending(&a, 1).await[0].id;
    grant_an_hour(&a, id, &alice);
    held.await.unwrap();
    assert!(a.hold(request(10_000)).await.passes());
    assert!(a.revoke(id, &person(1003, "mallory", &[])).is_err());
    a.revoke(id, &alice).unwrap();
    assert_eq!(a.hold(request(100)).await, Outcome::Expired);
    let kinds = events.lock().unwrap().clone();
    assert_eq!(
        kinds.iter().filter(|k| *k == "revoked").count(),
        1,
        "{kinds:?}"
    );
}

#[tokio::test]
async fn a_grant_for_a_tool_call_covers_that_tool_with_the_same_arguments_only() {
    let (a, _) = recorded();
    let alice = person(1001, "alice", &[]);
    let call = |branch: &str| HoldRequest {
        tool: Some(crate::agent::HeldTool {
            source: "mcp".into(),
            name: "delete_branch".into(),
            arguments: Default::default(),
            arguments_sha256: crate::policy::hex_sha256(branch.as_bytes()),
        }),
        ..request(100)
    };
    let held = spawn_hold(
        &a,
        HoldRequest {
            approval: approval(10_000, None),
            ..call("feature-x")
        },
    );
    let p = pending(&a, 1).await;
    assert_eq!(p[0].tool.as_ref().unwrap().name, "delete_branch");
    grant_an_hour(&a, p[0].id, &alice);
    assert!(held.await.unwrap().passes());
    assert_eq!(
        a.hold(call("feature-x")).await,
        Outcome::Granted { grant: p[0].id }
    );
    // The same tool with other arguments, or the rule without a tool call, waits.
    assert_eq!(a.hold(call("main")).await, Outcome::Expired);
    assert_eq!(a.hold(request(100)).await, Outcome::Expired);
    assert!(a.grants()[0].tool.is_some());
}

#[tokio::test]
async fn a_hundred_concurrent_holds_approved_in_one_go() {
    let (a, _) = recorded();
    let holds: Vec<_> = (0..100).map(|_| spawn_hold(&a, request(30_000))).collect();
    let all = pending(&a, 100).await;
    let alice = person(1001, "alice", &[]);
    for p in &all {
        a.decide(p.id, &alice, Verdict::Approve { grant_for: None }, None)
            .unwrap();
    }
    for h in holds {
        assert!(h.await.unwrap().passes());
    }
    assert!(a.pending().is_empty());
}

#[tokio::test]
async fn webhook_is_posted_and_retried_until_accepted() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks/approvals", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        let mut bodies = Vec::new();
        // The first attempt is refused with a 503, the second accepted.
        for status in ["503 Service Unavailable", "200 OK"] {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                let n = conn.read(&mut chunk).await.unwrap();
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf);
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len: usize = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse().unwrap())
                        })
                        .unwrap();
                    if body.len() >= len {
                        assert!(head.starts_with("POST /hooks/approvals HTTP/1.1"), "{head}");
                        bodies.push(body.to_string());
                        break;
                    }
                }
            }
            let reply =
                format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            conn.write_all(reply.as_bytes()).await.unwrap();
        }
        bodies
    });
    let (a, _) = recorded();
    let mut req = request(2_000);
    req.approval.webhook = Some(url);
    let held = spawn_hold(&a, req);
    let bodies = tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(bodies.len(), 2);
    let doc: serde_json::Value = serde_json::from_str(&bodies[1]).unwrap();
    assert_eq!(doc["rule"], "github-write");
    assert_eq!(doc["destination"], "api.github.com:443");
    assert_eq!(doc["workload"]["uid"], 1000);
    assert_eq!(
        held.await.unwrap(),
        Outcome::Expired,
        "the webhook must not decide"
    );
}

#[test]
fn approver_of_root_has_a_name_and_groups() {
    let root = Approver::of_uid(0);
    assert_eq!(root.user.as_deref(), Some("root"));
    assert!(root.groups.iter().any(|g| g == "root"), "{root:?}");
}

#[tokio::test]
async fn after_a_restart_pending_approvals_expire_and_grants_survive() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("approvals.json");
    let events = Arc::new(StdMutex::new(Vec::new()));
    let sink = events.clone();
    let record =
        move |e: ApprovalEvent| sink.lock().unwrap().push(serde_json::to_value(&e).unwrap());
    let a = Approvals::open(&file, Webhooks::default(), record.clone()).unwrap();
    let alice = person(1001, "alice", &[]);
    let held = spawn_hold(&a, request(30_000));
    let granted = pending(&a, 1).await[0].id;
    grant_an_hour(&a, granted, &alice);
    held.await.unwrap();
    let left = spawn_hold(&a, request_for(2000, 30_000));
    let stale = pending(&a, 1).await[0].id;

    // The "restart".
    events.lock().unwrap().clear();
    let a = Approvals::open(&file, Webhooks::default(), record).unwrap();
    let expired = events.lock().unwrap().clone();
    assert_eq!(expired.len(), 1, "{expired:?}");
    assert_eq!(
        (expired[0]["approval"].as_str(), expired[0]["id"].as_u64()),
        (Some("expired"), Some(stale))
    );
    assert!(a.pending().is_empty());
    assert_eq!(
        a.hold(request(30_000)).await,
        Outcome::Granted { grant: granted }
    );
    // Ids continue.
    let next = spawn_hold(&a, request_for(3000, 30_000));
    assert!(pending(&a, 1).await[0].id > stale);
    next.abort();
    left.abort();
}

#[tokio::test]
async fn a_hold_dropped_by_its_workload_expires_at_once() {
    let (a, events) = recorded();
    let held = spawn_hold(&a, request(30_000));
    pending(&a, 1).await;
    held.abort();
    let _ = held.await;
    assert!(a.pending().is_empty());
    assert_eq!(*events.lock().unwrap(), ["created", "expired"]);
}

fn request_for(uid: u32, timeout_ms: u64) -> HoldRequest {
    let mut r = request(timeout_ms);
    r.workload.uid = uid;
    r
}
