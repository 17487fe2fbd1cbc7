//! Looking at what a peer sent first without consuming it, so that whatever the verdict
//! (TLS, HTTP, anything else) the stream can still be handed on whole, or spliced as is.

use std::io;
use std::os::fd::AsRawFd;

use tokio::io::Interest;
use tokio::net::TcpStream;

#[derive(Debug, thiserror::Error)]
pub enum PeekError {
    #[error("peer closed the connection after {0} bytes, before they made sense")]
    Closed(usize),
    #[error("no decision after {0} bytes")]
    TooLarge(usize),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// What a peek reads at first. A ClientHello may take up to 64 KiB: a buffer that large for
/// every connection is a large block freed again at once, whose memory the connection's
/// long-lived buffers then take, written pages and all.
const FIRST_PEEK: usize = 4096;

/// Peeks at `tcp` until `decide` returns a verdict on the bytes seen so far, at most `max`.
///
/// Waiting for "more than what is there" uses `SO_RCVLOWAT`, so the task sleeps until the
/// kernel has the next byte instead of polling.
pub async fn peek_until<T>(
    tcp: &TcpStream,
    max: usize,
    mut decide: impl FnMut(&[u8]) -> Option<T>,
) -> Result<T, PeekError> {
    // Most decisions come from a few hundred bytes: the buffer grows toward `max` only when
    // the bytes there fill it.
    let mut buf = vec![0u8; max.min(FIRST_PEEK)];
    let mut want = 1;
    // Also when this future is dropped half-way (the upstream spoke first, a timeout): a
    // low-water mark left behind would stall the relay that takes the socket next.
    let mut low_water = LowWater { tcp, raised: false };
    loop {
        low_water.set(want)?;
        let ready = tcp.ready(Interest::READABLE).await?;
        match tcp.try_io(Interest::READABLE, || {
            let n = recv_peek(tcp, &mut buf)?;
            if n < want && n > 0 && !ready.is_read_closed() {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(n)
        }) {
            Ok(n) if n < want => break Err(PeekError::Closed(n)),
            Ok(n) => match decide(&buf[..n]) {
                Some(verdict) => break Ok(verdict),
                None if n == max => break Err(PeekError::TooLarge(n)),
                // More may be there already: peek again with room for it.
                None if n == buf.len() => {
                    buf.resize((2 * n).min(max), 0);
                    want = n + 1;
                }
                None if ready.is_read_closed() => break Err(PeekError::Closed(n)),
                None => want = n + 1,
            },
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => break Err(e.into()),
        }
    }
}

/// `SO_RCVLOWAT` while peeking. Most connections are classified from the bytes already
/// there, so the option is only touched (and put back) when the peek has to wait for more.
struct LowWater<'a> {
    tcp: &'a TcpStream,
    raised: bool,
}

impl LowWater<'_> {
    fn set(&mut self, bytes: usize) -> io::Result<()> {
        if bytes > 1 || self.raised {
            set_rcvlowat(self.tcp, bytes)?;
            self.raised = bytes > 1;
        }
        Ok(())
    }
}

impl Drop for LowWater<'_> {
    fn drop(&mut self) {
        if self.raised {
            let _ = set_rcvlowat(self.tcp, 1);
        }
    }
}

fn recv_peek(tcp: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: buf is valid for writes of its length; the fd is open for the call.
    let n = unsafe {
        libc::recv(
            tcp.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

fn set_rcvlowat(tcp: &TcpStream, bytes: usize) -> io::Result<()> {
    let v = bytes as libc::c_int;
    // SAFETY: plain setsockopt with an int option on an open socket.
    let rc = unsafe {
        libc::setsockopt(
            tcp.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            (&v as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use crate::test_net::pair;

    #[tokio::test]
    async fn waits_for_enough_bytes_and_consumes_none() {
        let (mut w, r) = pair().await;
        let peek = tokio::spawn(async move {
            let v = peek_until(&r, 64, |b| b.ends_with(b"\n").then_some(b.len())).await;
            (v.unwrap(), r)
        });
        w.write_all(b"GET ").await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        w.write_all(b"/ x\n").await.unwrap();
        let (len, mut r) = peek.await.unwrap();
        assert_eq!(len, 8);
        let mut all = [0u8; 8];
        r.read_exact(&mut all).await.unwrap();
        assert_eq!(&all, b"GET / x\n");
    }

    #[tokio::test]
    async fn a_verdict_past_the_first_peek_is_reached_with_the_bytes_already_there() {
        let (mut w, r) = pair().await;
        let sent = vec![b'x'; 3 * FIRST_PEEK + 1];
        w.write_all(&sent).await.unwrap();
        let len = peek_until(&r, 64 << 10, |b| (b.len() == sent.len()).then_some(b.len()));
        assert_eq!(len.await.unwrap(), sent.len());
        let e = peek_until(&r, 2 * FIRST_PEEK, |_| None::<()>)
            .await
            .unwrap_err();
        assert!(
            matches!(e, PeekError::TooLarge(n) if n == 2 * FIRST_PEEK),
            "{e}"
        );
    }

    #[tokio::test]
    async fn early_close_and_no_verdict_are_errors() {
        let (mut w, r) = pair().await;
        w.write_all(b"abc").await.unwrap();
        drop(w);
        let e = peek_until(&r, 64, |_| None::<()>).await.unwrap_err();
        assert!(matches!(e, PeekError::Closed(3)), "{e}");
        let (mut w, r) = pair().await;
        w.write_all(&[7u8; 16]).await.unwrap();
        let e = peek_until(&r, 16, |_| None::<()>).await.unwrap_err();
        assert!(matches!(e, PeekError::TooLarge(16)), "{e}");
    }

    #[tokio::test]
    async fn a_peek_dropped_half_way_leaves_the_socket_readable_byte_by_byte() {
        let (mut w, mut r) = pair().await;
        w.write_all(b"GE").await.unwrap();
        let peek = peek_until(&r, 64, |b| (b.len() > 4).then_some(()));
        // Gives up while it waits for a third byte.
        let gave_up = tokio::time::timeout(std::time::Duration::from_millis(50), peek).await;
        assert!(gave_up.is_err());
        let mut got = [0u8; 2];
        tokio::time::timeout(std::time::Duration::from_secs(2), r.read_exact(&mut got))
            .await
            .expect("readable again with fewer bytes than the old mark")
            .unwrap();
        assert_eq!(&got, b"GE");
    }
}
