//! Accept loops at the descriptor limit. When the daemon has no descriptor left, `accept`
//! fails with EMFILE (or ENFILE, system-wide) without taking the connection off the backlog,
//! and the listener stays readable: a loop that only logs and retries spins, and the peer
//! waits forever. Here a loop backs off (doubling, up to a second) and logs through a
//! [`Throttle`]; and it holds a reserve descriptor (`/dev/null`, opened early, so its number
//! is low and under any limit) that it lets go of to accept one pending connection at the
//! limit: the control socket answers it, a proxy listener resets it. The reserve is taken
//! back once that connection is closed.

use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};

use super::Throttle;

const BACKOFF_MIN: Duration = Duration::from_millis(5);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
const WARN_EVERY: Duration = Duration::from_secs(10);

/// A listener an [`Acceptor`] can drive.
pub trait Listener {
    type Conn: Send;
    fn accept_one(&self) -> impl Future<Output = io::Result<Self::Conn>> + Send;
}

impl Listener for TcpListener {
    type Conn = (TcpStream, SocketAddr);
    fn accept_one(&self) -> impl Future<Output = io::Result<Self::Conn>> + Send {
        self.accept()
    }
}

impl Listener for UnixListener {
    type Conn = UnixStream;
    async fn accept_one(&self) -> io::Result<UnixStream> {
        self.accept().await.map(|(stream, _)| stream)
    }
}

/// One spare descriptor, shared by the accept loops it serves.
#[derive(Debug)]
pub struct Reserve(Mutex<Option<File>>);

impl Reserve {
    /// Opens the spare descriptor (at start-up, while descriptors are plentiful and their
    /// numbers low).
    pub fn new() -> Arc<Reserve> {
        let reserve = Arc::new(Reserve(Mutex::new(None)));
        reserve.refill();
        reserve
    }

    /// Closes the spare descriptor; false when there was none to close.
    fn release(&self) -> bool {
        self.lock().take().is_some()
    }

    /// Takes the spare descriptor back if it was let go (fails quietly at the limit: tried
    /// again after the next accept).
    fn refill(&self) {
        let mut spare = self.lock();
        if spare.is_none() {
            *spare = File::open("/dev/null").ok();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<File>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The reserve spent on one connection: dropping it (after the connection is closed) takes
/// the reserve back.
#[must_use = "drop it once the connection accepted on the reserve is closed"]
pub struct Spent(Arc<Reserve>);

impl Drop for Spent {
    fn drop(&mut self) {
        self.0.refill();
    }
}

pub enum Accepted<C> {
    Conn(C),
    /// Accepted at the descriptor limit on the reserve: answer or refuse it, close it, then
    /// drop the [`Spent`].
    OnReserve(C, Spent),
}

impl<C> Accepted<C> {
    /// The connection, and the reserve to drop once it is closed (if it was spent on it).
    pub fn into_parts(self) -> (C, Option<Spent>) {
        match self {
            Accepted::Conn(c) => (c, None),
            Accepted::OnReserve(c, spent) => (c, Some(spent)),
        }
    }
}

/// Accepts from `listener`, backing off on errors and using the reserve at the limit.
pub struct Acceptor<L> {
    listener: L,
    reserve: Arc<Reserve>,
    /// Names the listener in log lines.
    what: &'static str,
    backoff: Duration,
    warnings: Throttle,
}

impl<L: Listener> Acceptor<L> {
    pub fn new(listener: L, what: &'static str, reserve: Arc<Reserve>) -> Self {
        Acceptor {
            listener,
            reserve,
            what,
            backoff: BACKOFF_MIN,
            warnings: Throttle::new(WARN_EVERY),
        }
    }

    /// The next connection.
    pub async fn next(&mut self) -> Accepted<L::Conn> {
        loop {
            let e = match self.listener.accept_one().await {
                Ok(conn) => {
                    self.backoff = BACKOFF_MIN;
                    self.reserve.refill();
                    return Accepted::Conn(conn);
                }
                Err(e) => e,
            };
            let exhausted = out_of_descriptors(&e);
            if let Some(suppressed) = self.warnings.ready() {
                tracing::warn!(listener = self.what, error = %e, exhausted, suppressed,
                    "accept failed; backing off");
            }
            if exhausted && self.reserve.release() {
                // One try, not a wait: the reserve is not kept from the other loops sharing
                // it. Nothing pending (Linux checks for a free descriptor before the backlog)
                // leaves the listener waiting for the next connection; another task taking
                // the freed descriptor first, for a back-off.
                let once = tokio::time::timeout(Duration::ZERO, self.listener.accept_one());
                match once.await {
                    Ok(Ok(conn)) => return Accepted::OnReserve(conn, Spent(self.reserve.clone())),
                    Ok(Err(_)) | Err(_) => self.reserve.refill(),
                }
            }
            tokio::time::sleep(self.backoff).await;
            self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        }
    }
}

fn out_of_descriptors(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}
