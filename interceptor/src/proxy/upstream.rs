//! The upstream side of a connection: dialled at accept when the policy's decision is final
//! before anything is seen of the connection, otherwise only once the policy has let it
//! through after the first bytes (the SNI, a stream that is not HTTP), so a connection that is
//! held for approval, denied or timed out never reaches its destination.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;

use super::peek::peek_until;
use super::sniff::{MAX_SNIFF, Protocol, classify};
use crate::redirect::Namespace;

/// How long a client that has not dialled its upstream yet may stay silent before it is taken
/// for one that waits for the server to speak first (SMTP, MySQL): raw TCP.
const CLIENT_FIRST_WAIT: Duration = Duration::from_millis(250);

/// How to reach the original destination: from the workload's namespace, with the mark the
/// kernel programs let through.
pub struct Dialer {
    pub ns: Namespace,
    pub dest: SocketAddr,
    pub mark: u32,
    pub timeout: Duration,
}

impl Dialer {
    pub async fn dial(&self) -> io::Result<TcpStream> {
        self.ns.connect(self.dest, self.mark, self.timeout).await
    }
}

pub enum Upstream {
    Dialled(TcpStream),
    /// Dialled by [`Upstream::connect`] once a later stage has let the connection through.
    Later(Dialer),
}

impl Upstream {
    /// What the connection speaks, from the client's first bytes. A dialled server that
    /// speaks first (SSH, SMTP), or a client silent for [`CLIENT_FIRST_WAIT`] before its
    /// upstream is dialled, means raw TCP.
    pub async fn sniff(&self, client: &TcpStream) -> Protocol {
        let peeked = peek_until(client, MAX_SNIFF, classify);
        match self {
            Upstream::Dialled(upstream) => tokio::select! {
                p = peeked => p.unwrap_or(Protocol::Other),
                _ = upstream.readable() => Protocol::Other,
            },
            Upstream::Later(_) => match tokio::time::timeout(CLIENT_FIRST_WAIT, peeked).await {
                Ok(Ok(p)) => p,
                _ => Protocol::Other,
            },
        }
    }

    /// The upstream connection, dialled now if it was not yet.
    pub async fn connect(self) -> io::Result<TcpStream> {
        match self {
            Upstream::Dialled(upstream) => Ok(upstream),
            Upstream::Later(dialer) => dialer.dial().await,
        }
    }
}
