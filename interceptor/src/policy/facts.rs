//! What a decision is made from: who connects where, and for HTTP, the request. Borrowed
//! views, so building them on the hot path costs nothing. The proxy fills them from the
//! connection's `Identity`, its enrollment's name and the original destination.

use std::net::IpAddr;

use super::model::{Api, GlobField};

/// One connection: the workload's identity and its destination.
#[derive(Clone, Copy, Debug, Default)]
pub struct ConnectionFacts<'a> {
    pub cgroup: Option<&'a str>,
    pub container_id: Option<&'a str>,
    pub container_name: Option<&'a str>,
    pub exe: Option<&'a str>,
    pub comm: &'a str,
    pub uid: u32,
    pub user: Option<&'a str>,
    pub enrollment: Option<&'a str>,
    /// TLS SNI or HTTP Host, once known.
    pub host: Option<&'a str>,
    /// None when only a host name is known (`policy explain --dest name:port`).
    pub ip: Option<IpAddr>,
    pub port: u16,
}

impl ConnectionFacts<'_> {
    /// The destination address with IPv4-mapped IPv6 seen as IPv4, as rules are written.
    pub fn dest_ip(&self) -> Option<IpAddr> {
        self.ip.map(|ip| ip.to_canonical())
    }
}

/// Header lookup over whatever the HTTP layer keeps headers in.
pub trait Headers {
    /// Calls `pred` with each value of header `name` (lower case) until it returns true;
    /// returns whether it did.
    fn any_value(&self, name: &str, pred: &mut dyn FnMut(&[u8]) -> bool) -> bool;
}

impl Headers for &[(&str, &str)] {
    fn any_value(&self, name: &str, pred: &mut dyn FnMut(&[u8]) -> bool) -> bool {
        self.iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .any(|(_, v)| pred(v.as_bytes()))
    }
}

/// The HTTP layer's headers (hyper's `HeaderMap`), looked up without copying.
impl Headers for http::HeaderMap {
    fn any_value(&self, name: &str, pred: &mut dyn FnMut(&[u8]) -> bool) -> bool {
        self.get_all(name).iter().any(|v| pred(v.as_bytes()))
    }
}

/// One HTTP request on a connection.
#[derive(Clone, Copy)]
pub struct RequestFacts<'a> {
    pub method: &'a str,
    /// Request target path; a query string is ignored.
    pub path: &'a str,
    pub headers: &'a dyn Headers,
    pub tool: Tool<'a>,
}

/// What a request is to rules with tool conditions.
#[derive(Clone, Copy, Debug)]
pub enum Tool<'a> {
    /// Its body was not read: tool conditions count as met. A decision by a rule with tool
    /// conditions then says that the body must be read and the request decided again.
    Unread,
    /// It carries no tool call: rules with tool conditions do not match.
    NoCall,
    Call(ToolCall<'a>),
}

/// A tool call an agent makes.
#[derive(Clone, Copy, Debug)]
pub struct ToolCall<'a> {
    pub api: Api,
    pub name: &'a str,
    /// The arguments, as sent (JSON).
    pub arguments: &'a serde_json::Value,
}

impl<'a> Tool<'a> {
    pub fn call(&self) -> Option<&ToolCall<'a>> {
        match self {
            Tool::Call(c) => Some(c),
            _ => None,
        }
    }
}

impl<'a> RequestFacts<'a> {
    pub fn path_only(&self) -> &'a str {
        self.path.split_once('?').map_or(self.path, |(p, _)| p)
    }
}

impl std::fmt::Debug for RequestFacts<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.method, self.path)
    }
}

/// The values a glob field is matched against (a container has an id and maybe a name).
pub fn glob_values<'a>(
    field: GlobField,
    c: &ConnectionFacts<'a>,
    r: Option<&RequestFacts<'a>>,
) -> [Option<&'a str>; 2] {
    match field {
        GlobField::Cgroup => [c.cgroup, None],
        GlobField::Container => [c.container_id, c.container_name],
        GlobField::Exe => [c.exe, None],
        GlobField::Comm => [Some(c.comm), None],
        GlobField::User => [c.user, None],
        GlobField::Enrollment => [c.enrollment, None],
        GlobField::Host => [c.host, None],
        GlobField::Path => [r.map(RequestFacts::path_only), None],
        GlobField::Tool => [r.and_then(|r| r.tool.call()).map(|t| t.name), None],
    }
}
