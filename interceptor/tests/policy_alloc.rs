//! Deciding does not allocate: after a warm-up decision on this thread, `decide_connection`
//! and `decide_request` make no heap allocation (counted per thread by a wrapping allocator),
//! for a policy with every kind of condition.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::Path;

use interceptor::policy::{ConnectionFacts, Policy, RequestFacts, Tool, Verdict};

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

const POLICY: &str = r#"
[[rule]]
name = "metadata"
action = "deny"
[rule.match]
cidr = ["169.254.169.254/32"]
[[rule]]
name = "ci"
action = "allow"
[rule.match]
cgroup = ["/ci.slice/**"]
container = ["3f2a*"]
enrollment = ["ci-*"]
user = ["builder"]
comm = ["cargo"]
uid = [1001]
[[rule]]
name = "api-writes"
action = "approve"
[rule.match]
exe = ["/usr/bin/python3*"]
host = ["*.Example.com"]
port = [443]
method = ["POST"]
path = ["/v1/**"]
header = [{ name = "x-env", value = "prod*" }]
[rule.approval]
groups = ["ops"]
[[rule]]
name = "api"
action = "allow"
[rule.match]
host = ["*.example.com"]
[default]
action = "deny"
"#;

#[test]
fn decisions_do_not_allocate() {
    let p = Policy::parse(Path::new("alloc.toml"), POLICY).unwrap();
    let conn = ConnectionFacts {
        exe: Some("/usr/bin/python3.11"),
        comm: "python3",
        uid: 1000,
        user: Some("agent"),
        cgroup: Some("/agents.slice/a.scope"),
        container_id: Some("9abc"),
        enrollment: Some("agent-1"),
        host: Some("API.example.COM"),
        ip: Some("93.184.216.34".parse().unwrap()),
        port: 443,
        ..ConnectionFacts::default()
    };
    let headers: &[(&str, &str)] = &[("X-Env", "prod-eu"), ("accept", "*/*")];
    let request = RequestFacts {
        method: "post",
        path: "/v1/jobs?x=1",
        headers: &headers,
        tool: Tool::NoCall,
    };
    // Warm-up: the thread-local scratch buffers and the regex caches are made once.
    assert_eq!(p.decide_connection(&conn).verdict, Verdict::Inspect);
    assert_eq!(p.decide_request(&conn, &request).verdict, Verdict::Approve);
    assert_eq!(p.decide_opaque(&conn).name, "api");

    let before = allocations();
    for _ in 0..1000 {
        assert_eq!(p.decide_connection(&conn).verdict, Verdict::Inspect);
        let d = p.decide_request(&conn, &request);
        assert_eq!((d.verdict, d.name), (Verdict::Approve, "api-writes"));
        assert_eq!(p.decide_opaque(&conn).name, "api");
    }
    assert_eq!(allocations() - before, 0, "deciding allocated");
    // The counter does count: explaining allocates.
    let before = allocations();
    let _ = p.explain(&conn, interceptor::policy::Stage::Connection);
    assert!(allocations() > before);
}
