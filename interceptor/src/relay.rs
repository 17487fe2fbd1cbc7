//! Byte relay between the workload and the upstream, counting as it goes.
//!
//! Each direction is its own pump so a half-close (one side done sending) is passed on while
//! the other direction keeps flowing. An error on either side resets both connections, so
//! neither peer mistakes a failure for a clean end of stream.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

use socket2::SockRef;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{ReadHalf, WriteHalf};

/// Read buffer per direction: large enough that loopback bulk transfers are not syscall bound.
const BUFFER: usize = 64 << 10;

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

/// Relays until both directions have finished, or either fails.
pub async fn relay(
    mut client: TcpStream,
    mut upstream: TcpStream,
    traffic: &Traffic,
) -> Result<(), RelayError> {
    // Borrowed halves: unlike owned ones they do not send FIN when dropped, so a failure can
    // still be turned into a reset below.
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

async fn pump(
    mut from: ReadHalf<'_>,
    mut to: WriteHalf<'_>,
    counter: &AtomicU64,
    from_side: Side,
) -> Result<(), RelayError> {
    let to_side = match from_side {
        Side::Client => Side::Upstream,
        Side::Upstream => Side::Client,
    };
    let mut buf = vec![0u8; BUFFER];
    loop {
        let n = from.read(&mut buf).await.map_err(|source| RelayError {
            side: from_side,
            source,
        })?;
        let io = if n == 0 {
            to.shutdown().await
        } else {
            to.write_all(&buf[..n]).await
        };
        io.map_err(|source| RelayError {
            side: to_side,
            source,
        })?;
        if n == 0 {
            return Ok(());
        }
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// Makes the close of this socket send RST instead of FIN.
pub fn reset(stream: &TcpStream) {
    let _ = SockRef::from(stream).set_linger(Some(std::time::Duration::ZERO));
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap());
        let (a, b) = tokio::join!(a, l.accept());
        (a.unwrap(), b.unwrap().0)
    }

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
