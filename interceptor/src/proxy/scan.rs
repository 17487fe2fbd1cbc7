//! Secret masking for a connection's byte streams that are not HTTP messages: raw TCP, a
//! decrypted TLS stream that is not HTTP, and whatever follows an HTTP upgrade. All of them
//! go through the one scanning relay (`relay_scan`); a WebSocket's frames are unmasked for
//! the scan and masked again after it (`websocket.rs`).

use std::net::SocketAddr;
use std::sync::Arc;

use interceptor::relay_scan::{Counters, ScanRelay, ScanRelayError};
use tokio::io::{AsyncRead, AsyncWrite};

use super::Proxy;
use super::websocket;
use crate::http::masking::Masking;
use crate::identity::Identity;
use crate::sessions::{Event, Store};

impl Proxy {
    /// The scanning of session `id`'s streams, when masking is on and the policy's decision
    /// for the connection selects secret rules; None: they are relayed as they are.
    pub(super) fn stream_scan(
        &self,
        id: u64,
        identity: &Identity,
        enrollment: Option<&str>,
        host: Option<&str>,
        dest: SocketAddr,
    ) -> Option<Arc<StreamScan>> {
        let masking = self.masking.as_ref()?;
        let relay = masking.scan_relay(identity, enrollment, host, dest)?;
        Some(Arc::new(StreamScan {
            relay,
            masking: masking.clone(),
            store: self.store.clone(),
            session: id,
        }))
    }
}

/// How one connection's streams are scanned, as the policy's decision for it says.
pub struct StreamScan {
    relay: ScanRelay,
    masking: Arc<Masking>,
    store: Store,
    session: u64,
}

impl StreamScan {
    /// Relays a byte stream both ways, masking secrets; each finding goes to the session.
    pub async fn relay<C, U>(
        &self,
        client: C,
        upstream: U,
        counters: &Counters,
    ) -> Result<(), ScanRelayError>
    where
        C: AsyncRead + AsyncWrite + Unpin,
        U: AsyncRead + AsyncWrite + Unpin,
    {
        self.relay
            .relay(client, upstream, counters, |direction, finding| {
                let found = self
                    .masking
                    .stream_finding(self.session, direction, finding);
                self.store.append(Event::Secret(found));
            })
            .await
    }

    /// Relays a WebSocket after its upgrade: the scanner sees the frames' payloads unmasked;
    /// frame headers and the client's masking are put back on the way out.
    pub async fn relay_websocket<C, U>(
        &self,
        client: C,
        upstream: U,
        counters: &Counters,
    ) -> Result<(), ScanRelayError>
    where
        C: AsyncRead + AsyncWrite + Unpin,
        U: AsyncRead + AsyncWrite + Unpin,
    {
        let (client, upstream) = websocket::framed(client, upstream);
        self.relay(client, upstream, counters).await
    }
}
