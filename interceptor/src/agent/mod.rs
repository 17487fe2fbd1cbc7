//! What AI agents ask their tools to do, read from the traffic they send (issue 18): tool
//! calls recognised by the shape of a request's body, not by host name, so self-hosted and
//! proxied endpoints count. The HTTP layer's policy hook decides and records them.

pub mod mcp;

use serde::{Deserialize, Serialize};

/// A tool call's arguments as people see them (records, approvers): JSON text with every
/// secret any rule finds masked, cut at [`ARGUMENTS_CAP`]. Absent when no secret rule is
/// loaded: they could not be masked.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaskedArguments {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arguments: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub arguments_truncated: bool,
}

/// How much of a tool call's arguments is kept.
pub const ARGUMENTS_CAP: usize = 4096;

/// A tool call held for approval, as approvers see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldTool {
    /// Where the call was read ("mcp").
    pub source: String,
    pub name: String,
    #[serde(flatten)]
    pub arguments: MaskedArguments,
}
