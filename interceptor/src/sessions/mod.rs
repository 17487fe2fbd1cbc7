//! Session records: every intercepted connection, durably stored.

pub mod record;
pub mod store;

pub use record::{Event, Outcome, Session, SessionEnd, SessionStart, TlsInfo, TlsMode};
pub use store::{Store, StoreWriter};
