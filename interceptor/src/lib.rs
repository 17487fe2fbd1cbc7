//! The parts of interceptor that need no kernel or daemon state, as a library so benches and
//! tests can use them.

pub mod agent;
pub mod approvals;
pub mod burst;
pub mod detection;
pub mod events;
pub mod policy;
pub mod private_fs;
pub mod relay_scan;
pub mod vault;
