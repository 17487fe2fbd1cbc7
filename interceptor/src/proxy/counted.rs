//! A stream that counts what passes through it, for the layers that read the stream in
//! userspace (TLS, HTTP, upgraded streams) instead of splicing it.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::relay::Traffic;

pub struct Counted<S = TcpStream> {
    inner: S,
    traffic: Arc<Traffic>,
    /// Whether reads from this stream are the workload's bytes (up) or the upstream's (down).
    /// Only reads count: every byte written to one side was read from the other.
    is_client: bool,
}

impl<S> Counted<S> {
    pub fn client(inner: S, traffic: Arc<Traffic>) -> Self {
        Counted {
            inner,
            traffic,
            is_client: true,
        }
    }

    pub fn upstream(inner: S, traffic: Arc<Traffic>) -> Self {
        Counted {
            inner,
            traffic,
            is_client: false,
        }
    }

    fn counter(&self) -> &AtomicU64 {
        if self.is_client {
            &self.traffic.up
        } else {
            &self.traffic.down
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let poll = Pin::new(&mut this.inner).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        this.counter().fetch_add(n, Ordering::Relaxed);
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
