//! Control API: the Unix socket through which the CLI (and operators' tools) talk to the daemon.

pub mod client;
pub mod protocol;
pub mod server;
