//! The upstream side of a connection: dialled at accept when the policy's decision is final
//! before anything is seen of the connection, otherwise only once the policy has let it
//! through after the first bytes (the SNI, a stream that is not HTTP), so a connection that is
//! held for approval, denied or timed out never reaches its destination.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use super::peek::peek_until;
use super::sniff::{MAX_SNIFF, Protocol, classify};
use crate::metrics::Metrics;
use crate::redirect::Namespace;

/// How long a client whose upstream is not dialled yet may stay silent before the upstream is
/// dialled anyway, for protocols where the server speaks first (SMTP, MySQL).
const CLIENT_FIRST_WAIT: Duration = Duration::from_millis(250);

/// How to reach the original destination: from the workload's namespace, with the mark the
/// kernel programs let through.
pub struct Dialer {
    pub ns: Namespace,
    pub dest: SocketAddr,
    pub mark: u32,
    pub timeout: Duration,
    /// When the workload's connection was accepted: the set-up time is measured from it.
    pub accepted: Instant,
    pub metrics: Arc<Metrics>,
}

impl Dialer {
    pub async fn dial(&self) -> io::Result<TcpStream> {
        let upstream = self.ns.connect(self.dest, self.mark, self.timeout).await?;
        (self.metrics.connection_setup).observe(self.accepted.elapsed());
        Ok(upstream)
    }
}

/// What a connection speaks, and whether its server spoke before its client did.
pub struct Sniffed {
    pub protocol: Protocol,
    pub server_first: bool,
}

pub enum Upstream {
    Dialled(TcpStream),
    /// Dialled by [`Upstream::connect`] once a later stage has let the connection through.
    Later(Dialer),
}

impl Upstream {
    /// What the connection speaks, from the client's first bytes; a server that speaks first
    /// (SSH, SMTP) means raw TCP. A client silent for [`CLIENT_FIRST_WAIT`] gets its upstream
    /// dialled, and then whichever side speaks first decides: never is a silent client
    /// decided without its bytes (an SNI a host rule would refuse could follow).
    ///
    /// With `needs_http` (the policy decides the connection by its HTTP requests), a server
    /// that speaks first gives the client [`CLIENT_FIRST_WAIT`] more to speak for itself: an
    /// h2c server sends its SETTINGS at once, before a client that is a little slow.
    pub async fn sniff(&mut self, client: &TcpStream, needs_http: bool) -> io::Result<Sniffed> {
        let client_first = |protocol: Result<Protocol, _>| Sniffed {
            protocol: protocol.unwrap_or(Protocol::Other),
            server_first: false,
        };
        loop {
            match self {
                Upstream::Dialled(upstream) => {
                    tokio::select! {
                        p = peek_until(client, MAX_SNIFF, classify) => return Ok(client_first(p)),
                        _ = upstream.readable() => {}
                    }
                    let peeked = peek_until(client, MAX_SNIFF, classify);
                    if needs_http
                        && let Ok(p) = tokio::time::timeout(CLIENT_FIRST_WAIT, peeked).await
                    {
                        return Ok(client_first(p));
                    }
                    return Ok(Sniffed {
                        protocol: Protocol::Other,
                        server_first: true,
                    });
                }
                Upstream::Later(dialer) => {
                    let peeked = peek_until(client, MAX_SNIFF, classify);
                    if let Ok(p) = tokio::time::timeout(CLIENT_FIRST_WAIT, peeked).await {
                        return Ok(client_first(p));
                    }
                    *self = Upstream::Dialled(dialer.dial().await?);
                }
            }
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
