//! Session records: every intercepted connection, durably stored.

pub mod chain;
pub mod checkpoint;
pub mod damage;
pub mod index;
pub mod read;
pub mod record;
mod recover;
pub mod retention;
pub mod segment;
pub mod spans;
pub mod store;
pub mod tail;
pub mod verify;
mod writer;

pub use record::{
    Event, HttpExchange, McpServerRecord, Outcome, PolicyDecision, RecordedBody, Session,
    SessionEnd, SessionStart, TlsInfo, TlsMode, ToolCallRecord, UpgradedBytes,
};
pub use store::{Store, StoreWriter};
