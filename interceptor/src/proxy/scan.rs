//! Secret masking for a connection's byte streams that are not HTTP messages: raw TCP, a
//! decrypted TLS stream that is not HTTP, and whatever follows an HTTP upgrade. All of them
//! go through the one scanning relay (`relay_scan`); a WebSocket's frames are unmasked for
//! the scan and masked again after it (`websocket.rs`).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use interceptor::detection::Finding;
use interceptor::policy::ConnectionFacts;
use interceptor::relay_scan::{Counters, Direction, ScanRelay, ScanRelayError};
use tokio::io::{AsyncRead, AsyncWrite};

use super::Proxy;
use super::tap::{Capture, Tap};
use super::websocket;
use crate::http::masking::Masking;
use crate::http::settings::MAX_RECORDED_BODY;
use crate::identity::Identity;
use crate::sessions::record::StreamData;
use crate::sessions::{Event, RecordedBody, Store};

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
            record_cap: self.stream_record_cap(identity, enrollment, host, dest),
        }))
    }

    /// How much of each direction of a stream is recorded: the `record_body_bytes` of the
    /// decision `gate::on_opaque` enforces for it (the one its masking plan follows).
    fn stream_record_cap(
        &self,
        identity: &Identity,
        enrollment: Option<&str>,
        host: Option<&str>,
        dest: SocketAddr,
    ) -> usize {
        let policy = self.gate.policy.get();
        let facts = crate::gate::facts(identity, enrollment, host, dest);
        let decision = if crate::gate::settled_before_dial(&policy, &facts) {
            policy.decide_before_dial(&ConnectionFacts {
                host: None,
                ..facts
            })
        } else {
            Some(policy.decide_opaque(&facts))
        };
        decision.map_or(0, |d| {
            usize::try_from(d.settings.record_body_bytes)
                .unwrap_or(usize::MAX)
                .min(MAX_RECORDED_BODY)
        })
    }
}

/// How one connection's streams are scanned, as the policy's decision for it says.
pub struct StreamScan {
    relay: ScanRelay,
    masking: Arc<Masking>,
    store: Store,
    session: u64,
    /// How many bytes of each direction are recorded.
    record_cap: usize,
}

impl StreamScan {
    /// Relays a byte stream both ways, masking secrets; each finding goes to the session,
    /// and so do the first bytes that went each way.
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
        // Kept a holdback past the cap, so a secret the cap cuts is still recognised whole
        // when the record is masked.
        let keep = match self.record_cap {
            0 => 0,
            cap => cap + self.masking.holdback(),
        };
        let (mut up, mut down) = (Capture::new(keep), Capture::new(keep));
        let relayed = self
            .relay
            .relay(
                Tap::new(client, &mut down),
                Tap::new(upstream, &mut up),
                counters,
                |direction, finding| self.found(direction, "stream", finding),
            )
            .await;
        self.record(Direction::Up, up);
        self.record(Direction::Down, down);
        relayed
    }

    fn found(&self, direction: Direction, location: &str, finding: Finding) {
        let found = self
            .masking
            .stream_finding(self.session, direction, location, finding);
        self.store.append(Event::Secret(found));
    }

    /// Records what went one way, masked again with every rule (secrets the policy only
    /// reports went out as they were), cut to the cap.
    fn record(&self, direction: Direction, capture: Capture) {
        if capture.seen == 0 || self.record_cap == 0 {
            return;
        }
        // Never record what could not be scanned.
        let Some(masked) = self.masking.masked_copy(&capture.kept) else {
            return;
        };
        self.store.append(Event::Stream(StreamData {
            id: self.session,
            direction,
            bytes: capture.seen,
            data: RecordedBody::new(&masked, self.record_cap, capture.seen),
        }));
    }

    /// Relays a WebSocket after its upgrade: the scanner sees the frames' payloads unmasked;
    /// frame headers and the client's masking are put back on the way out.
    pub async fn relay_websocket<C, U>(
        self: &Arc<Self>,
        client: C,
        upstream: U,
        counters: &Counters,
    ) -> Result<(), ScanRelayError>
    where
        C: AsyncRead + AsyncWrite + Unpin,
        U: AsyncRead + AsyncWrite + Unpin,
    {
        let scan = self.clone();
        let control: websocket::ControlScan = Arc::new(move |direction, payload| {
            let found = scan.relay.mask_apart(payload).map_err(io::Error::other)?;
            for finding in found {
                scan.found(direction, "websocket control frame", finding);
            }
            Ok(())
        });
        let (client, upstream) = websocket::framed(client, upstream, control);
        self.relay(client, upstream, counters).await
    }
}
