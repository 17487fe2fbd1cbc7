//! Control API: the Unix socket through which the CLI (and operators' tools) talk to the daemon.

pub mod caller;
pub mod change;
pub mod client;
pub mod coverage;
pub mod protocol;
pub mod roles;
pub mod server;
