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
    /// SHA-256 (hex) of all the arguments as masked: what a grant for this call is bound
    /// to, so that approving one call does not approve the same tool with other arguments.
    pub arguments_sha256: String,
}

impl HeldTool {
    pub fn binding(&self) -> ToolBinding {
        ToolBinding {
            name: self.name.clone(),
            arguments_sha256: self.arguments_sha256.clone(),
        }
    }
}

/// The tool call a grant covers: this tool with exactly these arguments (secrets aside: they
/// are masked before hashing, as the approver saw them).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolBinding {
    pub name: String,
    pub arguments_sha256: String,
}
