//! A TCP stream that counts what passes through it, for the layers that read the stream in
//! userspace (TLS, HTTP) instead of splicing it.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::relay::Traffic;

pub struct Counted {
    inner: TcpStream,
    traffic: Arc<Traffic>,
    /// Whether reads from this stream are the workload's bytes (up) or the upstream's (down).
    is_client: bool,
}

impl Counted {
    pub fn client(inner: TcpStream, traffic: Arc<Traffic>) -> Self {
        Counted {
            inner,
            traffic,
            is_client: true,
        }
    }

    pub fn upstream(inner: TcpStream, traffic: Arc<Traffic>) -> Self {
        Counted {
            inner,
            traffic,
            is_client: false,
        }
    }

    fn counter(&self, reading: bool) -> &AtomicU64 {
        if reading == self.is_client {
            &self.traffic.up
        } else {
            &self.traffic.down
        }
    }
}

impl AsyncRead for Counted {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let poll = Pin::new(&mut this.inner).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        this.counter(true).fetch_add(n, Ordering::Relaxed);
        poll
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = poll {
            this.counter(false).fetch_add(n as u64, Ordering::Relaxed);
        }
        poll
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
