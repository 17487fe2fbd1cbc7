//! Keeps the first bytes written through a stream, for the session record of a byte stream
//! that is not HTTP. It sits on the writing side after the scanning relay, so what it keeps
//! is what actually went out (masked), and costs one bounded copy until it is full.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What a [`Tap`] kept.
#[derive(Debug, Default)]
pub struct Capture {
    pub kept: Vec<u8>,
    /// Every byte written, kept or not.
    pub seen: u64,
    cap: usize,
}

impl Capture {
    pub fn new(cap: usize) -> Capture {
        Capture {
            kept: Vec::new(),
            seen: 0,
            cap,
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        self.seen += bytes.len() as u64;
        let room = self.cap.saturating_sub(self.kept.len());
        self.kept.extend_from_slice(&bytes[..room.min(bytes.len())]);
    }
}

/// A stream whose writes are also kept in a [`Capture`] (up to its cap).
pub struct Tap<'a, S> {
    inner: S,
    capture: &'a mut Capture,
}

impl<'a, S> Tap<'a, S> {
    pub fn new(inner: S, capture: &'a mut Capture) -> Self {
        Tap { inner, capture }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tap<'_, S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tap<'_, S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let written = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = written {
            this.capture.push(&buf[..n]);
        }
        written
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn keeps_up_to_the_cap_of_what_was_written_and_counts_the_rest() {
        let mut capture = Capture::new(5);
        let mut out = Vec::new();
        {
            let mut tap = Tap::new(&mut out, &mut capture);
            tap.write_all(b"abc").await.unwrap();
            tap.write_all(b"defgh").await.unwrap();
        }
        assert_eq!(out, b"abcdefgh");
        assert_eq!((capture.kept.as_slice(), capture.seen), (&b"abcde"[..], 8));
    }
}
