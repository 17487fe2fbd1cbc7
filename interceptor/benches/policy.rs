//! Policy decision cost: a policy of 10 rules against one of 1,000, in one run.
//!
//! Rules mix host names, exe globs, networks and HTTP rules. Each case decides a connection
//! (or request) that only the last rules (or the default) match, so every rule is in play.
//! `cargo bench -p interceptor --bench policy`

use std::hint::black_box;
use std::path::Path;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use interceptor::policy::{ConnectionFacts, Policy, RequestFacts, Tool, Verdict};

/// `n` rules of four kinds, then a default.
fn policy(n: usize) -> Policy {
    let mut text = String::new();
    for i in 0..n {
        text += &format!("[[rule]]\nname = \"r{i}\"\n");
        text += match i % 4 {
            0 => "action = \"allow\"\n[rule.match]\n",
            1 => "action = \"deny\"\n[rule.match]\n",
            2 => "action = \"deny\"\n[rule.match]\n",
            _ => "action = \"approve\"\n[rule.approval]\ngroups = [\"ops\"]\n[rule.match]\n",
        };
        text += &match i % 4 {
            0 => format!("host = [\"svc-{i}.example.com\"]\nport = [443]\n"),
            1 => format!("exe = [\"/opt/app-{i}/bin/*\"]\n"),
            2 => format!(
                "cidr = [\"10.{}.{}.0/24\"]\nport = [5432]\n",
                i / 256,
                i % 256
            ),
            _ => format!(
                "host = [\"*.team-{i}.internal\"]\nmethod = [\"POST\"]\npath = [\"/api/{i}/**\"]\n"
            ),
        };
    }
    text += "[default]\naction = \"deny\"\n";
    Policy::parse(Path::new("bench.toml"), &text).expect("the bench policy compiles")
}

fn decisions(c: &mut Criterion) {
    let mut group = c.benchmark_group("policy");
    for n in [10, 1000] {
        let p = policy(n);
        // The last rule of each kind: host (i % 4 == 0) and HTTP (i % 4 == 3).
        let (last_host, last_http) = ((n - 1) / 4 * 4, (n - 4) / 4 * 4 + 3);
        let host = format!("svc-{last_host}.example.com");
        let last = ConnectionFacts {
            exe: Some("/usr/bin/python3"),
            comm: "python3",
            uid: 1000,
            cgroup: Some("/agents.slice/agent-7.scope"),
            host: Some(&host),
            ip: Some("93.184.216.34".parse().unwrap()),
            port: 443,
            ..ConnectionFacts::default()
        };
        assert_eq!(p.decide_connection(&last).rule, Some(last_host));
        group.bench_with_input(
            BenchmarkId::new("connection_last_rule", n),
            &last,
            |b, f| b.iter(|| p.decide_connection(black_box(f)).verdict),
        );

        let none = ConnectionFacts {
            host: Some("unknown.example.org"),
            ..last
        };
        assert_eq!(p.decide_connection(&none).rule, None);
        group.bench_with_input(BenchmarkId::new("connection_default", n), &none, |b, f| {
            b.iter(|| p.decide_connection(black_box(f)).verdict)
        });

        let team = format!("build.team-{last_http}.internal");
        let conn = ConnectionFacts {
            host: Some(&team),
            ..last
        };
        let headers: &[(&str, &str)] = &[("content-type", "application/json")];
        let path = format!("/api/{last_http}/jobs/42?force=1");
        let request = RequestFacts {
            method: "POST",
            path: &path,
            headers: &headers,
            tool: Tool::NoCall,
        };
        let d = p.decide_request(&conn, &request);
        assert_eq!((d.verdict, d.rule), (Verdict::Approve, Some(last_http)));
        group.bench_with_input(
            BenchmarkId::new("request_last_rule", n),
            &request,
            |b, r| b.iter(|| p.decide_request(black_box(&conn), black_box(r)).verdict),
        );
    }
    group.finish();
}

criterion_group!(benches, decisions);
criterion_main!(benches);
