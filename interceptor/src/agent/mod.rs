//! What AI agents ask their tools to do, read from the traffic they send (issue 18): tool
//! calls recognised by the shape of a request's body, not by host name, so self-hosted and
//! proxied endpoints count. The HTTP layer's policy hook decides and records them.

pub mod mcp;
