//! HTTP/2's counterpart of hyper's HTTP/1 header read timeout, which hyper's HTTP/2 server
//! lacks: a connection on which no request is in progress for the header timeout (a client
//! that never finishes a HEADERS frame, or just sits there) gets a GOAWAY and is closed, as
//! an HTTP/1 connection waiting that long for a request head is.
//!
//! A request is in progress from the moment its head reaches the service until its response
//! body is done ([`InFlight::busy`] lives in the response body), or, for a stream upgraded by
//! extended CONNECT (a WebSocket), until the relay of that stream ends.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::Notify;

use super::exchange::HttpBody;
use super::hook::BoxError;

/// Requests in progress on one connection.
#[derive(Default)]
pub struct InFlight {
    count: AtomicUsize,
    changed: Notify,
}

impl InFlight {
    /// Marks a request as in progress until the returned guard is dropped.
    pub fn busy(self: &Arc<Self>) -> Busy {
        self.count.fetch_add(1, Ordering::AcqRel);
        self.changed.notify_waiters();
        Busy(self.clone())
    }

    /// Whether no request is in progress.
    pub fn is_idle(&self) -> bool {
        self.count.load(Ordering::Acquire) == 0
    }

    /// Resolves once no request has been in progress for `limit`.
    pub async fn idle_for(&self, limit: Duration) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            // Registered before the count is read, so no change in between is missed.
            changed.as_mut().enable();
            if self.count.load(Ordering::Acquire) == 0 {
                tokio::select! {
                    () = tokio::time::sleep(limit) => return,
                    () = changed => {}
                }
            } else {
                changed.await;
            }
        }
    }
}

/// One request in progress.
pub struct Busy(Arc<InFlight>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.count.fetch_sub(1, Ordering::AcqRel);
        self.0.changed.notify_waiters();
    }
}

/// A response body that keeps its request counted as in progress until it is done.
pub struct BusyBody {
    inner: HttpBody,
    _busy: Busy,
}

impl BusyBody {
    pub fn new(inner: HttpBody, busy: Busy) -> Self {
        BusyBody { inner, _busy: busy }
    }
}

impl Body for BusyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    const LIMIT: Duration = Duration::from_millis(200);

    #[tokio::test]
    async fn idle_only_after_the_last_request_is_done_for_the_whole_limit() {
        let inflight = Arc::new(InFlight::default());
        let busy = inflight.busy();
        let idle = inflight.idle_for(LIMIT);
        tokio::pin!(idle);
        // A request in progress for longer than the limit keeps the connection.
        assert!(
            tokio::time::timeout(LIMIT * 2, idle.as_mut())
                .await
                .is_err()
        );
        let done = Instant::now();
        drop(busy);
        idle.await;
        assert!(done.elapsed() >= LIMIT, "{:?}", done.elapsed());
    }

    #[tokio::test]
    async fn a_request_that_arrives_restarts_the_wait() {
        let inflight = Arc::new(InFlight::default());
        let started = Instant::now();
        let waiter = inflight.clone();
        let idle = tokio::spawn(async move { waiter.idle_for(LIMIT).await });
        tokio::time::sleep(LIMIT / 2).await;
        drop(inflight.busy());
        idle.await.unwrap();
        assert!(
            started.elapsed() >= LIMIT / 2 + LIMIT,
            "{:?}",
            started.elapsed()
        );
    }
}
