//! Session records: every intercepted connection, durably stored.

pub mod record;
pub mod store;

pub use record::{
    Event, HttpExchange, Outcome, Session, SessionEnd, SessionStart, TlsInfo, TlsMode, UpgradedBytes,
};
pub use store::{Store, StoreWriter};
