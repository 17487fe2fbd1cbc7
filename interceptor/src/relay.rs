//! Byte relay between the workload and the upstream, counting as it goes.
//!
//! Each direction is its own pump so a half-close (one side done sending) is passed on while
//! the other direction keeps flowing. An error on either side resets both connections, so
//! neither peer mistakes a failure for a clean end of stream.
//!
//! Bulk bytes move with `splice(2)` through a pipe: socket pages are handed from one
//! connection to the other inside the kernel, never copied through userspace. Streams that a later layer
//! must read (TLS, HTTP, secret scanning) are relayed by that layer instead.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};

use interceptor::burst::read_burst;
use socket2::SockRef;
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::TcpStream;
use tokio::net::tcp::{ReadHalf, WriteHalf};

/// Pipe size per direction: the most one splice moves.
const PIPE_SIZE: usize = 1 << 20;
/// Reads up to this size are copied; a read that fills it switches the direction to splice.
const COPY_LIMIT: usize = 16 << 10;

/// Bytes moved so far; readable while the relay runs (for `status`) and after it fails.
#[derive(Debug, Default)]
pub struct Traffic {
    /// Workload → upstream.
    pub up: AtomicU64,
    /// Upstream → workload.
    pub down: AtomicU64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Client,
    Upstream,
}

#[derive(Debug, thiserror::Error)]
#[error("{side:?} side: {source}")]
pub struct RelayError {
    pub side: Side,
    pub source: io::Error,
}

impl Side {
    fn err(self) -> impl FnOnce(io::Error) -> RelayError {
        move |source| RelayError { side: self, source }
    }

    fn other(self) -> Side {
        match self {
            Side::Client => Side::Upstream,
            Side::Upstream => Side::Client,
        }
    }
}

/// Relays until both directions have finished, or either fails.
pub async fn relay(
    mut client: TcpStream,
    mut upstream: TcpStream,
    traffic: &Traffic,
) -> Result<(), RelayError> {
    let (client_rx, client_tx) = client.split();
    let (upstream_rx, upstream_tx) = upstream.split();
    let result = tokio::try_join!(
        pump(client_rx, upstream_tx, &traffic.up, Side::Client),
        pump(upstream_rx, client_tx, &traffic.down, Side::Upstream),
    );
    if result.is_err() {
        reset(&client);
        reset(&upstream);
    }
    result.map(|_| ())
}

/// Moves one direction until end of stream. Small exchanges (requests, responses) are copied
/// through a buffer, which costs fewer syscalls than setting up a pipe; once a read fills the
/// buffer the stream is bulk, and from then on it is spliced.
///
/// Copies go through tokio's `AsyncRead`/`AsyncWrite`, which take a short read as "drained"
/// and wait for the next readiness event instead of reading again into `EAGAIN`.
async fn pump(
    mut rx: ReadHalf<'_>,
    mut tx: WriteHalf<'_>,
    counter: &AtomicU64,
    from_side: Side,
) -> Result<(), RelayError> {
    let to_side = from_side.other();
    let mut pipe: Option<(OwnedFd, OwnedFd)> = None;
    loop {
        let n = match &pipe {
            // The buffer exists from the read that fills it until its bytes are written:
            // an idle connection holds none.
            None => {
                let burst = read_burst(&mut rx, COPY_LIMIT)
                    .await
                    .map_err(from_side.err())?;
                tx.write_all(&burst).await.map_err(to_side.err())?;
                if burst.len() == COPY_LIMIT {
                    pipe = Some(new_pipe().map_err(from_side.err())?);
                }
                burst.len()
            }
            Some((pipe_rx, pipe_tx)) => {
                let (from, to): (&TcpStream, &TcpStream) = (rx.as_ref(), tx.as_ref());
                let (from_fd, to_fd) = (from.as_raw_fd(), to.as_raw_fd());
                let n = when_ready(from, Interest::READABLE, || {
                    from.try_io(Interest::READABLE, || {
                        splice(from_fd, pipe_tx.as_raw_fd(), PIPE_SIZE)
                    })
                })
                .await
                .map_err(from_side.err())?;
                let mut left = n;
                while left > 0 {
                    left -= when_ready(to, Interest::WRITABLE, || {
                        to.try_io(Interest::WRITABLE, || {
                            splice(pipe_rx.as_raw_fd(), to_fd, left)
                        })
                    })
                    .await
                    .map_err(to_side.err())?;
                }
                n
            }
        };
        if n == 0 {
            return SockRef::from(tx.as_ref())
                .shutdown(std::net::Shutdown::Write)
                .map_err(to_side.err());
        }
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// Runs a non-blocking operation once the socket is ready for it, again after each spurious
/// wake-up (`WouldBlock` clears tokio's readiness, so the next wait is real).
async fn when_ready<T>(
    socket: &TcpStream,
    interest: Interest,
    mut op: impl FnMut() -> io::Result<T>,
) -> io::Result<T> {
    loop {
        socket.ready(interest).await?;
        match op() {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            result => return result,
        }
    }
}

fn new_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid out-array of two ints.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 returned two fresh descriptors that nothing else owns.
    let (rx, tx) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // A bigger pipe means fewer syscalls for bulk transfers; the default still works.
    // SAFETY: plain fcntl on a descriptor we own.
    unsafe { libc::fcntl(tx.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE as libc::c_int) };
    Ok((rx, tx))
}

fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: both descriptors are open for the duration of the call; null offsets.
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Makes the close of this socket send RST instead of FIN.
pub fn reset(stream: &TcpStream) {
    let _ = SockRef::from(stream).set_linger(Some(std::time::Duration::ZERO));
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use crate::test_net::pair;

    #[tokio::test]
    async fn relays_both_ways_with_half_close_and_counts() {
        let (mut workload, client) = pair().await;
        let (upstream, mut server) = pair().await;
        let traffic = std::sync::Arc::new(Traffic::default());
        let t = traffic.clone();
        let relay = tokio::spawn(async move { relay(client, upstream, &t).await });

        let up: Vec<u8> = (0..300_000u32).map(|i| i as u8).collect();
        workload.write_all(&up).await.unwrap();
        workload.shutdown().await.unwrap();
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, up);
        // The other direction still works after the workload's half-close.
        server.write_all(b"reply").await.unwrap();
        server.shutdown().await.unwrap();
        let mut back = Vec::new();
        workload.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"reply");
        relay.await.unwrap().unwrap();
        assert_eq!(traffic.up.load(Ordering::Relaxed), 300_000);
        assert_eq!(traffic.down.load(Ordering::Relaxed), 5);
    }

    /// A relay lives as long as its connection, mostly idle: it must not carry its copy
    /// buffers in its state (they are taken per read), or every open connection pins them.
    #[tokio::test]
    async fn a_relay_carries_no_buffer() {
        let (_workload, client) = pair().await;
        let (upstream, _server) = pair().await;
        let traffic = Traffic::default();
        let relay = relay(client, upstream, &traffic);
        assert!(
            std::mem::size_of_val(&relay) < 2048,
            "{} bytes per connection",
            std::mem::size_of_val(&relay)
        );
    }

    #[tokio::test]
    async fn upstream_reset_resets_the_workload() {
        let (mut workload, client) = pair().await;
        let (upstream, server) = pair().await;
        let relay = tokio::spawn(async move { relay(client, upstream, &Traffic::default()).await });
        reset(&server);
        drop(server);
        let err = relay.await.unwrap().unwrap_err();
        assert_eq!(err.side, Side::Upstream);
        let mut buf = [0u8; 16];
        let e = workload.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionReset);
    }
}
