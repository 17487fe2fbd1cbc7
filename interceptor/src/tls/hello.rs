//! Reading the ClientHello (SNI, ALPN) with rustls' own `Acceptor`, from peeked bytes: the
//! stream is untouched until we know whether to terminate it or pass it through.

use std::io;

use rustls::server::{Accepted, Acceptor};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;

use crate::proxy::peek::{PeekError, peek_until};

/// Larger than any real ClientHello (they are a few KB even with post-quantum key shares).
const MAX_HELLO: usize = 64 << 10;

pub struct PeekedHello {
    pub sni: Option<String>,
    pub alpn: Vec<Vec<u8>>,
    accepted: Accepted,
    /// Bytes the acceptor took in; consumed from the socket when the handshake goes on here.
    len: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum HelloError {
    /// Carries the alert record rustls prepared, for `proxy.rs` to send to the client.
    #[error("malformed ClientHello: {error}")]
    Malformed {
        error: rustls::Error,
        alert: Vec<u8>,
    },
    #[error("reading the ClientHello: {0}")]
    Peek(#[from] PeekError),
}

pub async fn peek_client_hello(tcp: &TcpStream) -> Result<PeekedHello, HelloError> {
    peek_until(tcp, MAX_HELLO, |bytes| {
        let mut acceptor = Acceptor::default();
        let mut rd = bytes;
        while !rd.is_empty() {
            if acceptor.read_tls(&mut rd).is_err() {
                return None; // buffer full: the peek limit turns this into TooLarge
            }
        }
        match acceptor.accept() {
            Ok(None) => None,
            Ok(Some(accepted)) => {
                let hello = accepted.client_hello();
                Some(Ok(PeekedHello {
                    sni: hello.server_name().map(str::to_owned),
                    alpn: hello
                        .alpn()
                        .map(|protocols| protocols.map(<[u8]>::to_vec).collect())
                        .unwrap_or_default(),
                    accepted,
                    len: bytes.len(),
                }))
            }
            Err((error, mut alert)) => {
                let mut bytes = Vec::new();
                let _ = alert.write_all(&mut bytes);
                Some(Err(HelloError::Malformed {
                    error,
                    alert: bytes,
                }))
            }
        }
    })
    .await?
}

impl PeekedHello {
    /// Consumes the hello from the socket and continues the handshake from it, without
    /// parsing it again.
    pub async fn into_handshake<IO: AsyncRead + AsyncWrite + Unpin>(
        self,
        mut tcp: IO,
    ) -> io::Result<tokio_rustls::server::StartHandshake<IO>> {
        let mut sink = vec![0u8; self.len];
        tcp.read_exact(&mut sink).await?;
        Ok(tokio_rustls::server::StartHandshake::from_parts(
            self.accepted,
            tcp,
        ))
    }
}
