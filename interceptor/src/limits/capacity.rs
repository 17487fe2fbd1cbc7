//! How many proxied connections the daemon takes at once. Each holds two descriptors (the
//! workload's socket and the upstream's), so the open-files limit, less what the rest of the
//! daemon may need, bounds them. A connection past the bound is reset at once and counted
//! (by the accept loop), rather than accepted into a daemon that then cannot dial, record or
//! answer its control socket.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use nix::sys::resource::{Resource, getrlimit};

/// Descriptors per proxied connection.
const PER_CONNECTION: u64 = 2;
/// Descriptors kept for everything else: the daemon's own (eBPF objects, session segments,
/// listeners and namespace threads, control and metrics clients, webhooks, /proc reads) and
/// the identity cache's pidfds.
const RESERVED: u64 = 256 + crate::identity::MAX_CACHED_PROCESSES as u64;

/// Proxied connections open now, against the bound.
#[derive(Debug, Default)]
pub struct Capacity {
    open: AtomicU64,
}

/// One admitted connection's place, given back when dropped.
pub struct Slot(Arc<Capacity>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// No room: how many are open and how many fit.
#[derive(Clone, Copy, Debug)]
pub struct Full {
    pub open: u64,
    pub limit: u64,
}

impl Capacity {
    /// The most connections the open-files limit leaves room for. Read at every call: the
    /// limit can change while the daemon runs (`prlimit`). With a small limit, half of it
    /// is kept for the rest.
    pub fn limit() -> u64 {
        let soft = getrlimit(Resource::RLIMIT_NOFILE).map_or(1024, |(soft, _)| soft);
        let reserved = RESERVED.min(soft / 2);
        (soft - reserved) / PER_CONNECTION
    }

    /// A place for one more connection, if there is room.
    pub fn admit(self: &Arc<Self>) -> Result<Slot, Full> {
        let limit = Capacity::limit();
        self.open
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < limit).then_some(n + 1)
            })
            .map(|_| Slot(self.clone()))
            .map_err(|open| Full { open, limit })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_up_to_the_limit_and_gives_places_back() {
        let c = Arc::new(Capacity::default());
        let limit = Capacity::limit();
        assert!(limit > 0);
        c.open.store(limit - 1, Ordering::Relaxed);
        let last = c.admit().expect("one place left");
        let full = c.admit().err().expect("full");
        assert_eq!((full.open, full.limit), (limit, limit));
        drop(last);
        assert!(c.admit().is_ok());
    }
}
