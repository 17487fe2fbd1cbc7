//! Session records: every intercepted connection, durably stored.

pub mod chain;
pub mod index;
pub mod record;
pub mod retention;
pub mod segment;
pub mod spans;
pub mod store;
pub mod tail;
pub mod verify;

pub use record::{
    Event, HttpExchange, Outcome, PolicyDecision, RecordedBody, Session, SessionEnd, SessionStart,
    TlsInfo, TlsMode, UpgradedBytes,
};
pub use store::{Store, StoreWriter};
