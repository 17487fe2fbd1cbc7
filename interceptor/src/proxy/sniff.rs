//! What protocol a connection speaks, from its first bytes.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The protocols the proxy can look into; everything else is relayed as raw TCP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// A TLS handshake record.
    Tls,
    /// An HTTP/1.x request line.
    Http1,
    /// The HTTP/2 connection preface (cleartext, prior knowledge).
    H2Prior,
    Other,
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const METHODS: &[&[u8]] = &[
    b"GET ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"HEAD ",
    b"OPTIONS ",
    b"PATCH ",
    b"CONNECT ",
    b"TRACE ",
];

/// Longest prefix `classify` may need.
pub const MAX_SNIFF: usize = H2_PREFACE.len();

/// `None` while `first` could still become more than one thing.
pub fn classify(first: &[u8]) -> Option<Protocol> {
    // Handshake content type, then a 3.x record version.
    let tls: &[u8] = &[0x16, 0x03];
    let candidates = METHODS
        .iter()
        .map(|m| (*m, Protocol::Http1))
        .chain([(H2_PREFACE, Protocol::H2Prior), (tls, Protocol::Tls)]);
    let mut undecided = false;
    for (pattern, protocol) in candidates {
        if first.starts_with(pattern) {
            return Some(protocol);
        }
        undecided |= pattern.starts_with(first);
    }
    (!undecided).then_some(Protocol::Other)
}

/// A client stream relayed unread that must not turn out to speak HTTP: a connection the
/// policy decides by its HTTP requests whose server spoke first (SMTP, SSH) is relayed as
/// bytes, and a client that then sends an HTTP request is refused rather than relayed
/// uninspected. Its first bytes are held until it is clear what they are.
pub struct NotHttp<S> {
    inner: S,
    held: Vec<u8>,
    decided: bool,
    refused: bool,
}

impl<S> NotHttp<S> {
    pub fn new(inner: S) -> NotHttp<S> {
        NotHttp {
            inner,
            held: Vec::new(),
            decided: false,
            refused: false,
        }
    }

    /// Whether the client spoke HTTP and was refused.
    pub fn refused(&self) -> bool {
        self.refused
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for NotHttp<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        while !this.decided {
            let mut first = [0u8; MAX_SNIFF];
            let mut piece = ReadBuf::new(&mut first[..MAX_SNIFF - this.held.len()]);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut piece))?;
            if piece.filled().is_empty() {
                this.decided = true;
                break;
            }
            this.held.extend_from_slice(piece.filled());
            match classify(&this.held) {
                Some(Protocol::Http1 | Protocol::H2Prior) => {
                    this.refused = true;
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::PermissionDenied,
                        "the client spoke HTTP after its server spoke first: it cannot be \
                         inspected, so it is refused",
                    )));
                }
                Some(_) => this.decided = true,
                None => {}
            }
        }
        if this.held.is_empty() {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let n = this.held.len().min(buf.remaining());
        buf.put_slice(&this.held[..n]);
        this.held.drain(..n);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for NotHttp<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_or_waits_for_more() {
        assert_eq!(classify(b"\x16\x03\x01\x02\x00"), Some(Protocol::Tls));
        assert_eq!(classify(b"\x16"), None);
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Some(Protocol::Http1));
        assert_eq!(classify(b"PO"), None);
        assert_eq!(classify(b"PRI * HTTP/2.0\r\n"), None);
        assert_eq!(classify(H2_PREFACE), Some(Protocol::H2Prior));
        assert_eq!(classify(b"SSH-2.0-x"), Some(Protocol::Other));
        assert_eq!(classify(b"GETX"), Some(Protocol::Other));
        assert_eq!(classify(b"\x16\x02"), Some(Protocol::Other));
    }

    #[tokio::test]
    async fn a_client_that_speaks_http_is_refused_and_others_pass_whole() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        for (sent, refused) in [
            (&b"EHLO mail.test\r\n"[..], false),
            (b"POST /x HTTP/1.1\r\n\r\n", true),
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", true),
            (b"GE", false),
        ] {
            let (mut writer, reader) = tokio::io::duplex(64);
            // One byte at a time: the guard holds them until it is clear what they are.
            for b in sent {
                writer.write_all(&[*b]).await.unwrap();
            }
            drop(writer);
            let mut guarded = NotHttp::new(reader);
            let mut got = Vec::new();
            let read = guarded.read_to_end(&mut got).await;
            assert_eq!(read.is_err(), refused, "{sent:?}");
            assert_eq!(guarded.refused(), refused);
            if !refused {
                assert_eq!(got, sent);
            } else {
                assert!(got.is_empty(), "HTTP bytes were passed on: {got:?}");
            }
        }
    }
}
