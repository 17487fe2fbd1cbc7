//! Holding at the limits: accept loops that neither spin nor go deaf when the daemon runs out
//! of file descriptors ([`accept`]), a bound on proxied connections that leaves descriptors
//! for everything else ([`capacity`]), and warnings that cannot flood the log
//! ([`throttle`]).

pub mod accept;
pub mod capacity;
pub mod throttle;

pub use accept::{Accepted, Acceptor, Reserve};
pub use capacity::Capacity;
pub use throttle::Throttle;
