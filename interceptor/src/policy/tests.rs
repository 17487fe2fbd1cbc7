use std::net::IpAddr;
use std::path::Path;

use proptest::prelude::*;

use super::decide::Globs;
use super::*;

fn parse(text: &str) -> Policy {
    Policy::parse(Path::new("test.toml"), text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn error(text: &str) -> String {
    Policy::parse(Path::new("test.toml"), text)
        .expect_err("the policy should be rejected")
        .to_string()
}

fn conn<'a>(exe: &'a str, ip: &str, port: u16) -> ConnectionFacts<'a> {
    ConnectionFacts {
        exe: Some(exe),
        comm: "comm",
        uid: 1000,
        ip: Some(ip.parse().unwrap()),
        port,
        ..ConnectionFacts::default()
    }
}

const AGENT: &str = r#"
[[rule]]
name = "metadata"
action = "deny"
reason = "no metadata"
[rule.match]
cidr = ["169.254.169.254"]

[[rule]]
name = "github-read"
action = "allow"
[rule.match]
host = ["*.github.com", "github.com"]
method = ["get"]

[[rule]]
name = "github-write"
action = "approve"
[rule.match]
host = ["api.github.com"]
path = ["/repos/**"]
header = [{ name = "Authorization", value = "Bearer *" }]
[rule.approval]
users = ["alice"]

[[rule]]
name = "python"
action = "allow"
[rule.match]
exe = ["/usr/bin/python3*"]
port = [443]
[rule.settings]
tls = "passthrough"
vault_credentials = ["llm"]

[default]
action = "deny"
"#;

#[test]
fn first_match_decides_and_the_default_ends() {
    let p = parse(AGENT);
    let d = p.decide_connection(&conn("/usr/bin/python3.11", "169.254.169.254", 80));
    assert_eq!(
        (d.verdict, d.rule, d.name),
        (Verdict::Deny, Some(0), "metadata")
    );
    assert_eq!(d.reason, Some("no metadata"));
    let d = p.decide_connection(&conn("/usr/bin/python3.11", "10.0.0.1", 443));
    assert_eq!((d.verdict, d.name), (Verdict::Allow, "python"));
    assert_eq!(d.settings.tls, TlsMode::Passthrough);
    assert!(d.settings.may_inject("llm") && !d.settings.may_inject("other"));
    // `*` does not cross `/` in exe globs.
    let d = p.decide_connection(&conn("/usr/bin/python3/evil", "10.0.0.1", 443));
    assert_eq!(
        (d.verdict, d.rule, d.name),
        (Verdict::Deny, None, "default")
    );
}

#[test]
fn http_rules_make_connections_inspected_and_decide_requests() {
    let p = parse(AGENT);
    let mut c = conn("/usr/bin/curl", "140.82.112.6", 443);
    c.host = Some("API.GitHub.com");
    let d = p.decide_connection(&c);
    assert_eq!((d.verdict, d.name), (Verdict::Inspect, "github-read"));
    assert_eq!(d.settings.tls, TlsMode::Intercept);
    let no_headers: &[(&str, &str)] = &[];
    let get = RequestFacts {
        method: "GET",
        path: "/user?x=1",
        headers: &no_headers,
        tool: Tool::NoCall,
    };
    assert_eq!(p.decide_request(&c, &get).name, "github-read");
    let auth: &[(&str, &str)] = &[("authorization", "Bearer abc")];
    let post = RequestFacts {
        method: "POST",
        path: "/repos/a/b/issues?q",
        headers: &auth,
        tool: Tool::NoCall,
    };
    let d = p.decide_request(&c, &post);
    assert_eq!((d.verdict, d.name), (Verdict::Approve, "github-write"));
    assert_eq!(d.approval.unwrap().users, ["alice"]);
    assert_eq!(d.approval.unwrap().timeout, Approval::DEFAULT_TIMEOUT);
    let post_anon = RequestFacts {
        headers: &no_headers,
        ..post
    };
    assert_eq!(p.decide_request(&c, &post_anon).name, "default");
    // Not HTTP after all: the HTTP rules cannot match.
    assert_eq!(p.decide_opaque(&c).name, "default");
}

#[test]
fn header_conditions_read_hyper_header_maps() {
    let p = parse(AGENT);
    let mut c = conn("/usr/bin/curl", "140.82.112.6", 443);
    c.host = Some("api.github.com");
    let mut headers = http::HeaderMap::new();
    headers.append("accept", "*/*".parse().unwrap());
    headers.append("authorization", "Basic x".parse().unwrap());
    let decide = |headers: &http::HeaderMap| {
        let post = RequestFacts {
            method: "POST",
            path: "/repos/a/b",
            headers,
            tool: Tool::NoCall,
        };
        p.decide_request(&c, &post).name.to_string()
    };
    assert_eq!(decide(&headers), "default");
    headers.append("authorization", "Bearer abc".parse().unwrap());
    assert_eq!(decide(&headers), "github-write");
}

const TOOLS: &str = r#"
[[rule]]
name = "no-deletes"
action = "deny"
reason = "deleting needs a ticket"
[rule.match]
tool = ["delete_*"]

[[rule]]
name = "shell-rm"
action = "approve"
[rule.match]
api = ["mcp"]
tool = ["run_shell"]
tool_args = [{ pointer = "/command", value = "rm *" }, { pointer = "/opts/force", value = "true" }]
[rule.approval]
users = ["alice"]

[[rule]]
name = "web"
action = "allow"
[rule.match]
port = [443]

[default]
action = "deny"
"#;

#[test]
fn tool_rules_match_tool_calls_by_name_arguments_and_api() {
    let p = parse(TOOLS);
    let c = conn("/usr/bin/python3", "127.0.0.2", 443);
    // The connection is inspected: its requests may carry tool calls.
    assert_eq!(p.decide_connection(&c).verdict, Verdict::Inspect);
    let none: &[(&str, &str)] = &[];
    let decide = |tool: Tool| {
        let request = RequestFacts {
            method: "POST",
            path: "/mcp",
            headers: &none,
            tool,
        };
        let d = p.decide_request(&c, &request);
        (d.verdict, d.name.to_string())
    };
    let call = |name, arguments| {
        Tool::Call(ToolCall {
            api: Api::Mcp,
            name,
            arguments,
        })
    };
    let args = serde_json::json!({"command": "rm -rf /srv", "opts": {"force": true}});
    assert_eq!(
        decide(call("delete_repo", &args)),
        (Verdict::Deny, "no-deletes".into())
    );
    assert_eq!(
        decide(call("run_shell", &args)),
        (Verdict::Approve, "shell-rm".into())
    );
    // Every argument condition must hold; a missing pointer does not.
    let soft = serde_json::json!({"command": "rm -rf /srv", "opts": {"force": false}});
    assert_eq!(decide(call("run_shell", &soft)).1, "web");
    let no_opts = serde_json::json!({"command": "rm x"});
    assert_eq!(decide(call("run_shell", &no_opts)).1, "web");
    let ls = serde_json::json!({"command": "ls", "opts": {"force": true}});
    assert_eq!(decide(call("run_shell", &ls)).1, "web");
    // Another API's call does not match an `api = ["mcp"]` rule.
    let openai = Tool::Call(ToolCall {
        api: Api::OpenAi,
        name: "run_shell",
        arguments: &args,
    });
    assert_eq!(decide(openai).1, "web");
    // No tool call: tool rules do not match. Not read yet: the first tool rule that may
    // match decides (the body must be read).
    assert_eq!(decide(Tool::NoCall).1, "web");
    assert_eq!(decide(Tool::Unread), (Verdict::Deny, "no-deletes".into()));
    // A stream that is not HTTP carries no tool call either.
    assert_eq!(p.decide_opaque(&c).name, "web");
}

#[test]
fn explain_shows_tool_conditions() {
    let p = parse(TOOLS);
    let c = conn("/usr/bin/python3", "127.0.0.2", 443);
    let none: &[(&str, &str)] = &[];
    let args = serde_json::json!({"command": "rm -rf /srv", "opts": {"force": "true"}});
    let request = RequestFacts {
        method: "POST",
        path: "/",
        headers: &none,
        tool: Tool::Call(ToolCall {
            api: Api::Mcp,
            name: "run_shell",
            arguments: &args,
        }),
    };
    let e = p.explain(&c, Stage::Request(&request));
    assert_eq!(e.verdict, Verdict::Approve);
    assert!(
        e.text.contains(r#"because: tool "run_shell" matches ["run_shell"]; api "mcp" matches ["mcp"]; tool argument "/command" has a value matching "rm *"; tool argument "/opts/force" has a value matching "true""#),
        "{}",
        e.text
    );
    assert!(
        e.text
            .contains(r#"#0 "no-deletes" (line 3): tool "run_shell" does not match ["delete_*"]"#),
        "{}",
        e.text
    );
    let plain = RequestFacts {
        tool: Tool::NoCall,
        ..request
    };
    let e = p.explain(&c, Stage::Request(&plain));
    assert!(
        e.text
            .contains("the rule has tool conditions and the request is no tool call"),
        "{}",
        e.text
    );
}

#[test]
fn settings_layer_builtin_then_policy_then_rule() {
    let p = parse(
        r#"
[settings]
record_body_bytes = 10
secrets_report = ["aws-key"]
[[rule]]
name = "r"
action = "allow"
[rule.settings]
secrets_mask = ["github-token"]
secrets_report = []
[default]
action = "allow"
"#,
    );
    let d = p.default_outcome();
    assert_eq!(d.settings.record_body_bytes, 10);
    assert_eq!(
        d.settings.secret_handling("aws-key"),
        SecretHandling::Report
    );
    assert_eq!(d.settings.secret_handling("other"), SecretHandling::Mask);
    let r = &p.rules()[0].outcome.settings;
    assert_eq!(r.record_body_bytes, 10);
    assert_eq!(r.secret_handling("github-token"), SecretHandling::Mask);
    assert_eq!(r.secret_handling("aws-key"), SecretHandling::Ignore);
}

#[test]
fn errors_name_file_line_and_column() {
    let base = "[default]\naction = \"allow\"\n";
    let cases = [
        // unknown field (a typo)
        (
            format!(
                "{base}[[rule]]\nname = \"a\"\naction = \"allow\"\n[rule.match]\nexe_path = [\"x\"]\n"
            ),
            "test.toml:7:1:",
            "unknown field `exe_path`",
        ),
        // bad glob
        (
            format!(
                "{base}[[rule]]\nname = \"a\"\naction = \"allow\"\n[rule.match]\nhost = [\"a{{b\"]\n"
            ),
            "test.toml:7:9:",
            "bad glob",
        ),
        // bad CIDR
        (
            format!(
                "{base}[[rule]]\nname = \"a\"\naction = \"deny\"\n[rule.match]\ncidr = [\"10.0.0.0/33\"]\n"
            ),
            "test.toml:7:9:",
            "neither an IP address nor a CIDR",
        ),
        // bad action
        (
            format!("{base}[[rule]]\nname = \"a\"\naction = \"block\"\n"),
            "test.toml:5:10:",
            "unknown variant `block`",
        ),
        // duplicate names
        (
            format!(
                "{base}[[rule]]\nname = \"a\"\naction = \"allow\"\n[[rule]]\nname = \"a\"\naction = \"deny\"\n"
            ),
            "test.toml:7:8:",
            "duplicate rule name \"a\" (first used on line 4)",
        ),
        // approve without approvers
        (
            format!("{base}[[rule]]\nname = \"a\"\naction = \"approve\"\n"),
            "test.toml:5:10:",
            "needs an [approval] table",
        ),
        // approval on an allow rule
        (
            format!(
                "{base}[[rule]]\nname = \"a\"\naction = \"allow\"\n[rule.approval]\nusers = [\"x\"]\n"
            ),
            "test.toml:6:1:",
            "only applies to action",
        ),
        // bad header name
        (
            format!(
                "{base}[[rule]]\nname = \"a\"\naction = \"allow\"\n[rule.match]\nheader = [{{ name = \"a b\", value = \"*\" }}]\n"
            ),
            "test.toml:7:20:",
            "not a header name",
        ),
        // a tool argument's pointer that is none
        (
            format!(
                "{base}[[rule]]\nname = \"a\"\naction = \"deny\"\n[rule.match]\ntool_args = [{{ pointer = \"command\", value = \"rm *\" }}]\n"
            ),
            "test.toml:7:26:",
            "\"command\" is not a JSON pointer",
        ),
        // a bad glob on a tool name
        (
            format!(
                "{base}[[rule]]\nname = \"a\"\naction = \"deny\"\n[rule.match]\ntool = [\"[x\"]\n"
            ),
            "test.toml:7:9:",
            "bad glob",
        ),
        // an API we do not know
        (
            format!(
                "{base}[[rule]]\nname = \"a\"\naction = \"deny\"\n[rule.match]\napi = [\"mcp\", \"grpc\"]\n"
            ),
            "test.toml:7:15:",
            "unknown variant `grpc`",
        ),
        // missing default
        (
            "[[rule]]\nname = \"a\"\naction = \"allow\"\n".to_string(),
            "test.toml:1:1:",
            "missing field `default`",
        ),
        // not TOML
        (
            format!("{base}[[rule]\n"),
            "test.toml:3:8:",
            "unclosed array table",
        ),
    ];
    for (text, position, message) in cases {
        let e = error(&text);
        assert!(
            e.starts_with(position) && e.contains(message),
            "got {e:?}, want {position} … {message}\n{text}"
        );
    }
}

#[test]
fn unknown_secret_rule_ids_are_rejected_with_their_position() {
    let p = parse(
        "[settings]\nsecrets_mask = [\"*\", \"aws-key\"]\n\n[default]\naction = \"allow\"\n[default.settings]\nsecrets_report = [\"nope\"]\n",
    );
    assert!(
        p.check_references(ReferenceKind::SecretRule, &["aws-key", "nope"])
            .is_ok()
    );
    let e = p
        .check_references(ReferenceKind::SecretRule, &["aws-key"])
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "test.toml:7:19: unknown secret rule id \"nope\""
    );
    assert!(
        p.check_references::<&str>(ReferenceKind::VaultCredential, &[])
            .is_ok()
    );
}

#[test]
fn masking_with_no_secret_rules_loaded_is_an_error() {
    let none: &[&str] = &[];
    // The default settings mask every rule's findings.
    let e = parse("[default]\naction = \"allow\"\n")
        .check_secret_rules(none)
        .unwrap_err();
    assert!(
        e.to_string().starts_with("test.toml: the policy masks secrets (secrets_mask = [\"*\"] is the default), but no secret rules are loaded"),
        "{e}"
    );
    // Named in a rule: that is where the error points.
    let p = parse(
        "[settings]\nsecrets_mask = []\n[[rule]]\nname = \"r\"\naction = \"allow\"\n[rule.match]\nport = [1]\n[rule.settings]\nsecrets_report = [\"aws-key\"]\n[default]\naction = \"allow\"\n",
    );
    let e = p.check_secret_rules(none).unwrap_err().to_string();
    assert!(
        e.starts_with("test.toml:9:19: the policy masks secrets here"),
        "{e}"
    );
    assert!(p.check_secret_rules(&["aws-key"]).is_ok());
    // Masking off everywhere: no rules needed.
    let off = parse("[settings]\nsecrets_mask = []\n[default]\naction = \"allow\"\n");
    assert!(off.check_secret_rules(none).is_ok());
    // With rules, unknown ids are still caught.
    let e = p.check_secret_rules(&["other"]).unwrap_err().to_string();
    assert!(e.contains("unknown secret rule id \"aws-key\""), "{e}");
}

#[test]
fn kernel_denies_only_address_rules_not_preempted() {
    let p = parse(
        r#"
[[rule]]
name = "meta"
action = "deny"
[rule.match]
cidr = ["169.254.169.254/32"]
port = [80]
[[rule]]
name = "ci-only"
action = "deny"
[rule.match]
cidr = ["10.9.0.0/16"]
enrollment = ["ci-*"]
[[rule]]
name = "by-host"
action = "deny"
[rule.match]
host = ["evil.example"]
[[rule]]
name = "allow-admin"
action = "allow"
[rule.match]
uid = [0]
cidr = ["10.0.0.0/8"]
[[rule]]
name = "preempted"
action = "deny"
[rule.match]
cidr = ["10.1.0.0/16"]
[[rule]]
name = "v6-mapped-overlap-is-preempted-too"
action = "deny"
[rule.match]
cidr = ["::ffff:10.2.0.0/112"]
[default]
action = "allow"
"#,
    );
    let nets = |name: Option<&str>| {
        p.kernel_denies(name)
            .iter()
            .map(|r| format!("{}{:?}", r.net, r.ports))
            .collect::<Vec<_>>()
    };
    assert_eq!(nets(None), ["169.254.169.254/32[80]"]);
    assert_eq!(
        nets(Some("ci-7")),
        ["169.254.169.254/32[80]", "10.9.0.0/16[]"]
    );
    assert_eq!(p.proxy_only(2), Some(ProxyOnly::NotByAddress));
    assert_eq!(
        p.proxy_only(4),
        Some(ProxyOnly::Preempted {
            by: "allow-admin".into()
        })
    );
    assert_eq!(
        p.proxy_only(5),
        Some(ProxyOnly::Preempted {
            by: "allow-admin".into()
        })
    );
    assert_eq!(p.proxy_only(3), None);
    assert!(p.in_kernel(0) && p.in_kernel(1) && !p.in_kernel(4));
}

#[test]
fn explain_names_the_rule_its_conditions_and_the_rules_skipped() {
    let p = parse(AGENT);
    let mut c = conn("/usr/bin/python3", "10.1.2.3", 443);
    c.host = Some("example.org");
    let e = p.explain(&c, Stage::Connection);
    assert_eq!((e.verdict, e.rule), (Verdict::Allow, Some(3)));
    let want = [
        "decision: allow by rule #3 \"python\" (test.toml line 27)",
        "because: port 443 matches [443]; exe \"/usr/bin/python3\" matches [\"/usr/bin/python3*\"]",
        "settings: tls=passthrough secrets_mask=[\"*\"] secrets_report=[] vault_credentials=[\"llm\"] record_body_bytes=65536",
        "earlier rules that did not match:",
        "  #0 \"metadata\" (line 3): address 10.1.2.3 does not match [169.254.169.254/32]",
        "  #1 \"github-read\" (line 10): host \"example.org\" does not match [\"*.github.com\", \"github.com\"]",
        "  #2 \"github-write\" (line 17): host \"example.org\" does not match [\"api.github.com\"]",
    ];
    assert_eq!(e.text.lines().collect::<Vec<_>>(), want, "{}", e.text);
    let e = p.explain(&conn("/bin/sh", "169.254.169.254", 80), Stage::Connection);
    assert!(e.text.contains("reason: no metadata\n"), "{}", e.text);
    assert!(e.text.contains("enforced: in the kernel"), "{}", e.text);
}

#[test]
fn shipped_policies_compile() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    let mut files = vec![root.join("default.toml")];
    for entry in std::fs::read_dir(root.join("examples")).unwrap() {
        let path = entry.unwrap().path();
        // The examples' vault sample is checked by the vault's tests.
        if path.extension().is_some_and(|e| e == "toml") {
            files.push(path);
        }
    }
    assert!(files.len() >= 4, "{files:?}");
    let rules = crate::detection::load_dir(&root.join("rules")).unwrap();
    let ids: Vec<&str> = rules.iter().map(|r| r.id.as_str()).collect();
    for f in files {
        let p = Policy::load(&f).unwrap_or_else(|e| panic!("{e}"));
        p.check_references(ReferenceKind::SecretRule, &ids)
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let p = Policy::load(&root.join("default.toml")).unwrap();
    let d = p.decide_connection(&conn("/usr/bin/curl", "169.254.169.254", 80));
    assert_eq!(d.verdict, Verdict::Deny);
    assert!(p.in_kernel(d.rule.unwrap()));
    let d = p.decide_connection(&conn("/usr/bin/curl", "93.184.216.34", 443));
    assert_eq!(
        (d.verdict, d.settings.tls),
        (Verdict::Allow, TlsMode::Intercept)
    );
    assert_eq!(d.settings.secret_handling("anything"), SecretHandling::Mask);
}

// ---- property tests: random policies (as TOML text) and random facts ----

const EXES: [&str; 4] = [
    "/usr/bin/curl",
    "/usr/bin/python3",
    "/opt/agent/bin/agent",
    "/bin/sh",
];
const EXE_GLOBS: [&str; 5] = [
    "/usr/bin/*",
    "/usr/bin/curl",
    "**/agent",
    "/opt/**",
    "/bin/s?",
];
const HOSTS: [&str; 4] = [
    "api.example.com",
    "a.b.internal",
    "API.EXAMPLE.COM",
    "other.org",
];
const HOST_GLOBS: [&str; 4] = ["api.example.com", "*.example.com", "*.internal", "other.*"];
const IPS: [&str; 6] = [
    "10.1.2.3",
    "169.254.169.254",
    "127.0.0.2",
    "::1",
    "fd00::5",
    "::ffff:10.9.9.9",
];
const CIDRS: [&str; 6] = [
    "10.0.0.0/8",
    "169.254.169.254/32",
    "127.0.0.0/8",
    "::1",
    "fd00::/8",
    "10.9.0.0/16",
];
const PORTS: [u16; 3] = [80, 443, 8080];
const METHODS: [&str; 3] = ["GET", "POST", "DELETE"];
const PATHS: [&str; 4] = ["/v1/chat", "/admin/x", "/", "/v1/a/b?q=1"];
const PATH_GLOBS: [&str; 3] = ["/v1/**", "/admin*", "/"];
const NAMES: [&str; 3] = ["ci-1", "agent", "web"];
const NAME_GLOBS: [&str; 2] = ["ci-*", "agent"];

fn pick<T: Clone + std::fmt::Debug + 'static>(items: &'static [T]) -> impl Strategy<Value = T> {
    proptest::sample::select(items)
}

fn some_of<T: Clone + std::fmt::Debug + 'static>(
    items: &'static [T],
) -> impl Strategy<Value = Vec<T>> {
    prop_oneof![
        2 => Just(Vec::new()),
        1 => proptest::collection::vec(pick(items), 1..3),
    ]
}

fn quoted(v: &[&str]) -> String {
    v.iter()
        .map(|s| format!("{s:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

prop_compose! {
    fn rule_text()(
        action in pick(&["allow", "deny", "approve"]),
        exe in some_of(&EXE_GLOBS),
        host in some_of(&HOST_GLOBS),
        cidr in some_of(&CIDRS),
        port in some_of(&PORTS),
        uid in some_of(&[0u32, 1000]),
        enrollment in some_of(&NAME_GLOBS),
        method in some_of(&METHODS),
        path in some_of(&PATH_GLOBS),
        header in some_of(&["prod*", "*"]),
        tool in some_of(&["delete_*", "read_config"]),
        tool_arg in some_of(&["rm *", "ls*"]),
    ) -> String {
        let mut t = format!("action = {action:?}\n[rule.match]\n");
        for (key, values) in [("exe", &exe), ("host", &host), ("cidr", &cidr), ("enrollment", &enrollment), ("method", &method), ("path", &path), ("tool", &tool)] {
            if !values.is_empty() {
                t += &format!("{key} = [{}]\n", quoted(values));
            }
        }
        if !port.is_empty() {
            t += &format!("port = {port:?}\n");
        }
        if !uid.is_empty() {
            t += &format!("uid = {uid:?}\n");
        }
        if let Some(v) = header.first() {
            t += &format!("header = [{{ name = \"X-Env\", value = {v:?} }}]\n");
        }
        if let Some(v) = tool_arg.first() {
            t += &format!("tool_args = [{{ pointer = \"/command\", value = {v:?} }}]\n");
        }
        if action == "approve" {
            t += "[rule.approval]\nusers = [\"alice\"]\n";
        }
        t
    }
}

prop_compose! {
    fn policy_text()(rules in proptest::collection::vec(rule_text(), 0..12), default in pick(&["allow", "deny"])) -> String {
        let mut t = String::new();
        for (i, r) in rules.iter().enumerate() {
            t += &format!("[[rule]]\nname = \"r{i}\"\n{r}\n");
        }
        t + &format!("[default]\naction = {default:?}\n")
    }
}

#[derive(Debug, Clone)]
struct Facts {
    exe: Option<&'static str>,
    host: Option<&'static str>,
    ip: Option<&'static str>,
    port: u16,
    uid: u32,
    enrollment: Option<&'static str>,
    method: &'static str,
    path: &'static str,
    env: Option<&'static str>,
    tool: Option<&'static str>,
}

prop_compose! {
    fn facts()(
        exe in proptest::option::of(pick(&EXES)),
        host in proptest::option::of(pick(&HOSTS)),
        ip in proptest::option::of(pick(&IPS)),
        port in pick(&PORTS),
        uid in pick(&[0u32, 1000]),
        enrollment in proptest::option::of(pick(&NAMES)),
        method in pick(&METHODS),
        path in pick(&PATHS),
        env in proptest::option::of(pick(&["prod-eu", "dev"])),
        tool in proptest::option::of(pick(&["delete_repo", "read_config"])),
    ) -> Facts {
        Facts { exe, host, ip, port, uid, enrollment, method, path, env, tool }
    }
}

impl Facts {
    fn conn(&self) -> ConnectionFacts<'static> {
        ConnectionFacts {
            exe: self.exe,
            comm: "x",
            uid: self.uid,
            enrollment: self.enrollment,
            host: self.host,
            ip: self.ip.map(|ip| ip.parse::<IpAddr>().unwrap()),
            port: self.port,
            ..ConnectionFacts::default()
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// Any policy and any request give exactly one decision: the first rule that matches
    /// (checked rule by rule without the index), or the default when none does.
    #[test]
    fn exactly_one_decision_the_first_match(text in policy_text(), f in facts()) {
        let p = parse(&text);
        let c = f.conn();
        let headers: Vec<(&str, &str)> = f.env.map(|v| ("x-env", v)).into_iter().collect();
        let headers = headers.as_slice();
        let arguments = serde_json::json!({"command": "rm -rf /tmp"});
        let tool = f.tool.map_or(Tool::NoCall, |name| Tool::Call(ToolCall { api: Api::Mcp, name, arguments: &arguments }));
        let req = RequestFacts { method: f.method, path: f.path, headers: &headers, tool };
        // Deciding before the body is read answers for the body too, unless a tool rule decides.
        let unread = p.decide_request(&c, &RequestFacts { tool: Tool::Unread, ..req });
        if !unread.rule.is_some_and(|i| p.rules()[i].when.is_tool()) {
            prop_assert_eq!(p.decide_request(&c, &req).rule, unread.rule);
        }
        for stage in [Stage::Dial, Stage::Connection, Stage::Opaque, Stage::Request(&req)] {
            let d = p.decide(&c, stage);
            let naive = p.rules().iter().position(|r| r.first_unmet(&c, stage, Globs::Check).is_none());
            prop_assert_eq!(d.rule, naive, "stage {:?}", stage);
            let explained = p.explain(&c, stage);
            prop_assert_eq!((explained.rule, explained.verdict), (d.rule, d.verdict));
            match d.rule {
                Some(i) => prop_assert_eq!(d.name, p.rules()[i].name.as_str()),
                None => prop_assert_eq!(d.verdict, Verdict::from(p.default_outcome().action)),
            }
            prop_assert_eq!(d.verdict == Verdict::Inspect, matches!(stage, Stage::Dial | Stage::Connection) && d.rule.is_some_and(|i| p.rules()[i].when.is_http()));
        }
    }

    /// A decision made before dialing is final: whatever host name the connection turns out
    /// to have, deciding it again with that name gives the same rule.
    #[test]
    fn decisions_before_dial_hold_for_every_host(text in policy_text(), f in facts()) {
        let p = parse(&text);
        let mut c = f.conn();
        c.host = None;
        if let Some(d) = p.decide_before_dial(&c) {
            for host in HOSTS.iter().copied().map(Some).chain([None]) {
                let with_host = ConnectionFacts { host, ..c };
                prop_assert_eq!(p.decide_connection(&with_host).rule, d.rule, "host {:?}", host);
            }
        }
    }

    /// What the kernel denies, the policy denies: a connection the kernel would refuse is
    /// denied by the proxy too (or, before HTTP is known, inspected and then denied).
    #[test]
    fn kernel_denies_agree_with_the_policy(text in policy_text(), f in facts()) {
        let p = parse(&text);
        let c = f.conn();
        let Some(ip) = c.dest_ip() else { return Ok(()) };
        let refused = p.kernel_denies(f.enrollment).iter().any(|d| {
            d.net.contains(&ip) && (d.ports.is_empty() || d.ports.contains(&c.port))
        });
        if refused {
            let headers: Vec<(&str, &str)> = f.env.map(|v| ("x-env", v)).into_iter().collect();
        let headers = headers.as_slice();
            let req = RequestFacts { method: f.method, path: f.path, headers: &headers, tool: Tool::NoCall };
            prop_assert!(matches!(p.decide_connection(&c).verdict, Verdict::Deny | Verdict::Inspect));
            prop_assert_eq!(p.decide_opaque(&c).verdict, Verdict::Deny);
            prop_assert_eq!(p.decide_request(&c, &req).verdict, Verdict::Deny);
        }
    }
}
