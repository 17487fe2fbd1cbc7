//! `interceptor policy check | explain | reload`. Check and explain work on a file, without
//! the daemon; reload asks the daemon to re-read its policy.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use interceptor::detection::RuleSources;
use interceptor::policy::{
    Api, ConnectionFacts, Policy, RequestFacts, Stage, Tool, ToolCall, Verdict,
};

use crate::control::client;
use crate::control::protocol::{PolicyStatus, Request};

#[derive(Subcommand, Debug)]
pub enum PolicyCommand {
    /// Validate a policy file; errors name file:line:column. Exit code 1 when invalid.
    Check {
        file: PathBuf,
        /// The secret rules whose ids the policy may name, as `run` loads them.
        #[command(flatten)]
        rules: super::args::RuleArgs,
    },
    /// Show which rule decides a connection (or, with --method and --path, a request), why,
    /// and how it is enforced.
    Explain(Box<ExplainArgs>),
    /// Make the daemon re-read its policy file (a policy with an error is refused; the
    /// running one stays).
    Reload {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug)]
pub struct ExplainArgs {
    /// Policy file (default: the one `interceptor run` would use).
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// Destination: IP:PORT, [IPv6]:PORT or HOST:PORT.
    #[arg(long)]
    pub dest: String,
    /// TLS SNI (or HTTP Host) when the destination is given by address.
    #[arg(long)]
    pub sni: Option<String>,
    #[arg(long)]
    pub exe: Option<String>,
    #[arg(long, default_value = "")]
    pub comm: String,
    #[arg(long, default_value_t = 0)]
    pub uid: u32,
    #[arg(long)]
    pub user: Option<String>,
    /// cgroup path as in /proc/PID/cgroup.
    #[arg(long)]
    pub cgroup: Option<String>,
    /// Container id or name.
    #[arg(long)]
    pub container: Option<String>,
    /// Enrollment name.
    #[arg(long)]
    pub enrollment: Option<String>,
    /// HTTP method (with --path: explain a request rather than a connection).
    #[arg(long, requires = "path")]
    pub method: Option<String>,
    #[arg(long, requires = "method")]
    pub path: Option<String>,
    /// HTTP header NAME:VALUE (repeatable).
    #[arg(long, requires = "method", value_parser = parse_header)]
    pub header: Vec<(String, String)>,
    /// A tool call's tool name: explain a request carrying it (`--method` and `--path`
    /// default to POST /).
    #[arg(long)]
    pub tool: Option<String>,
    /// A tool call's argument POINTER=VALUE (repeatable): a string at that JSON pointer.
    #[arg(long, requires = "tool", value_parser = parse_tool_arg)]
    pub tool_arg: Vec<(String, String)>,
    /// The API of the tool call.
    #[arg(long, requires = "tool", default_value = "mcp", value_parser = parse_api)]
    pub api: Api,
}

pub fn run(socket: &Path, cmd: PolicyCommand) -> anyhow::Result<i32> {
    match cmd {
        PolicyCommand::Check { file, rules } => check(&file, &rules.sources()),
        PolicyCommand::Explain(a) => explain(*a),
        PolicyCommand::Reload { json } => {
            let status: PolicyStatus = client::call(socket, &Request::PolicyReload)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                println!(
                    "policy {} in force: {} rules, sha256 {}",
                    status.path.display(),
                    status.rules,
                    status.sha256
                );
            }
            Ok(0)
        }
    }
}

fn check(file: &Path, sources: &RuleSources) -> anyhow::Result<i32> {
    let policy = match Policy::load(file) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            return Ok(1);
        }
    };
    let rules = sources
        .load()
        .with_context(|| format!("loading {}", sources.describe()))?;
    let ids: Vec<&str> = rules.iter().map(|r| r.id.as_str()).collect();
    if let Err(e) = policy.check_secret_rules(&ids) {
        eprintln!("{e} (rules: {})", sources.describe());
        return Ok(1);
    }
    println!(
        "{}: ok, {} rules, default {:?}, sha256 {}",
        file.display(),
        policy.rules().len(),
        policy.default_outcome().action,
        policy.sha256()
    );
    for (i, rule) in policy.rules().iter().enumerate() {
        if policy.in_kernel(i) {
            println!("  #{i} {:?}: denied in the kernel (EPERM)", rule.name);
        } else if let Some(why) = policy.proxy_only(i) {
            println!(
                "  #{i} {:?}: denied by the proxy ({})",
                rule.name,
                describe(&why)
            );
        }
    }
    Ok(0)
}

fn describe(why: &interceptor::policy::ProxyOnly) -> String {
    use interceptor::policy::ProxyOnly;
    match why {
        ProxyOnly::NotByAddress => {
            "it has conditions other than address, port and enrollment".into()
        }
        ProxyOnly::Preempted { by } => format!("rule {by:?} before it may match first"),
        ProxyOnly::TooManyPorts => "more ports than a kernel rule holds".into(),
    }
}

fn explain(a: ExplainArgs) -> anyhow::Result<i32> {
    let policy = interceptor::policy::load(a.policy.as_deref())?;
    let (host, port) = a
        .dest
        .rsplit_once(':')
        .with_context(|| format!("--dest {:?}: expected HOST:PORT", a.dest))?;
    let port: u16 = port
        .parse()
        .with_context(|| format!("--dest {:?}: bad port", a.dest))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let (ip, name) = match host.parse::<IpAddr>() {
        Ok(ip) => (Some(ip), a.sni.as_deref()),
        Err(_) if a.sni.is_some() => bail!("--sni is for destinations given by address"),
        Err(_) => (None, Some(host)),
    };
    let facts = ConnectionFacts {
        cgroup: a.cgroup.as_deref(),
        container_id: a.container.as_deref(),
        container_name: a.container.as_deref(),
        exe: a.exe.as_deref(),
        comm: &a.comm,
        uid: a.uid,
        user: a.user.as_deref(),
        enrollment: a.enrollment.as_deref(),
        host: name,
        ip,
        port,
    };
    let headers: Vec<(&str, &str)> = a
        .header
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let headers = headers.as_slice();
    let arguments = tool_arguments(&a.tool_arg);
    let tool = match &a.tool {
        Some(name) => Tool::Call(ToolCall {
            api: a.api,
            name,
            arguments: &arguments,
        }),
        None => Tool::NoCall,
    };
    let request = match (&a.method, &a.path, &a.tool) {
        (Some(method), Some(path), _) => Some(RequestFacts {
            method,
            path,
            headers: &headers,
            tool,
        }),
        (_, _, Some(_)) => Some(RequestFacts {
            method: "POST",
            path: "/",
            headers: &headers,
            tool,
        }),
        _ => None,
    };
    let stage = match &request {
        Some(r) => Stage::Request(r),
        None => Stage::Connection,
    };
    let explanation = policy.explain(&facts, stage);
    print!("{}", explanation.text);
    // Scripts can branch on the exit code: 0 allow, 2 deny, 3 approve, 4 inspect.
    Ok(match explanation.verdict {
        Verdict::Allow => 0,
        Verdict::Deny => 2,
        Verdict::Approve => 3,
        Verdict::Inspect => 4,
    })
}

/// The arguments object that `--tool-arg`s describe: each value a string at its pointer.
fn tool_arguments(args: &[(String, String)]) -> serde_json::Value {
    let mut root = serde_json::Value::Object(Default::default());
    for (pointer, value) in args {
        let mut at = &mut root;
        for token in pointer.split('/').skip(1) {
            let key = token.replace("~1", "/").replace("~0", "~");
            if !at.is_object() {
                *at = serde_json::Value::Object(Default::default());
            }
            at = at
                .as_object_mut()
                .expect("made an object")
                .entry(key)
                .or_insert(serde_json::Value::Null);
        }
        *at = serde_json::Value::String(value.clone());
    }
    root
}

fn parse_tool_arg(text: &str) -> Result<(String, String), String> {
    let (pointer, value) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?}: expected POINTER=VALUE (e.g. /command=ls)"))?;
    if !pointer.starts_with('/') {
        return Err(format!("{pointer:?}: a JSON pointer starts with \"/\""));
    }
    Ok((pointer.to_string(), value.to_string()))
}

fn parse_api(text: &str) -> Result<Api, String> {
    serde_json::from_value(serde_json::Value::String(text.to_string()))
        .map_err(|_| format!("{text:?}: one of mcp, openai, anthropic, gemini, ollama"))
}

fn parse_header(text: &str) -> Result<(String, String), String> {
    let (name, value) = text
        .split_once(':')
        .ok_or_else(|| format!("{text:?}: expected NAME:VALUE"))?;
    Ok((name.trim().to_ascii_lowercase(), value.trim().to_string()))
}
