//! Userspace half of the redirect: where redirected connections arrive, and how the daemon
//! reaches the original destination from the workload's network namespace.

pub mod listener;
pub mod netns;

pub use listener::Listeners;
pub use netns::Namespace;
