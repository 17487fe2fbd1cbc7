//! Hyperscan scratch space, lent to one scan or masker at a time and given back when it is
//! done. A scratch for both databases is tens of kilobytes, allocated and zeroed: making one
//! per masker cost more than masking a header block or a WebSocket control frame.

use std::ops::Deref;
use std::sync::{Arc, Mutex};

use hyperscan::Scratch;

/// Idle scratch spaces kept for reuse; more are freed when given back (a burst of concurrent
/// bodies does not pin its peak).
const MAX_IDLE: usize = 16;

pub(super) struct ScratchPool {
    /// Allocated for both databases; cloned when none is idle.
    prototype: Mutex<Scratch>,
    idle: Mutex<Vec<Scratch>>,
}

impl ScratchPool {
    pub(super) fn new(prototype: Scratch) -> Arc<ScratchPool> {
        Arc::new(ScratchPool {
            prototype: Mutex::new(prototype),
            idle: Mutex::new(Vec::new()),
        })
    }

    /// A scratch space of the caller's own until the returned guard is dropped.
    pub(super) fn lend(self: &Arc<Self>) -> LentScratch {
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let scratch = idle.unwrap_or_else(|| {
            self.prototype
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
        });
        LentScratch {
            scratch: Some(scratch),
            pool: self.clone(),
        }
    }
}

#[cfg(test)]
impl ScratchPool {
    pub(super) fn idle(&self) -> usize {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// A scratch space from a [`ScratchPool`], given back on drop.
pub(super) struct LentScratch {
    /// Some until dropped.
    scratch: Option<Scratch>,
    pool: Arc<ScratchPool>,
}

impl Deref for LentScratch {
    type Target = Scratch;

    fn deref(&self) -> &Scratch {
        self.scratch.as_ref().expect("lent until dropped")
    }
}

impl Drop for LentScratch {
    fn drop(&mut self) {
        let mut idle = self.pool.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE {
            idle.extend(self.scratch.take());
        }
    }
}

#[cfg(test)]
mod tests {
    use hyperscan::ScratchRef;
    use hyperscan::prelude::*;

    use super::*;

    fn pool() -> Arc<ScratchPool> {
        let db: BlockDatabase = pattern! {"secret"}.build().unwrap();
        ScratchPool::new(db.alloc_scratch().unwrap())
    }

    /// Where Hyperscan's scratch itself is (a `ScratchRef` is a reference to it).
    fn address(s: &LentScratch) -> usize {
        let scratch: &ScratchRef = s;
        std::ptr::from_ref(scratch) as usize
    }

    #[test]
    fn a_scratch_is_lent_to_one_holder_and_reused_once_given_back() {
        let pool = pool();
        let (a, b) = (pool.lend(), pool.lend());
        assert_ne!(address(&a), address(&b), "two holders share a scratch");
        let first = address(&a);
        drop(a);
        assert_eq!(pool.idle.lock().unwrap().len(), 1, "given back");
        let again = pool.lend();
        assert!(pool.idle.lock().unwrap().is_empty());
        assert_eq!(address(&again), first, "a scratch given back is lent again");
    }

    #[test]
    fn at_most_max_idle_scratches_are_kept() {
        let pool = pool();
        let lent: Vec<LentScratch> = (0..MAX_IDLE + 4).map(|_| pool.lend()).collect();
        drop(lent);
        assert_eq!(pool.idle.lock().unwrap().len(), MAX_IDLE);
    }
}
