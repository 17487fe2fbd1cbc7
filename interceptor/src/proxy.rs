//! One redirected connection, from accept to the session record: claim the kernel's record,
//! resolve the identity, dial the original destination, relay, record how it ended.
//!
//! Between the dial and the relay, `dispatch` looks at the first bytes and hands the
//! connection to the TLS and HTTP layers, or splices it as raw TCP.

pub mod counted;
mod dispatch;
pub mod peek;
mod prefixed;
pub mod scan;
mod sniff;
mod tap;
mod upstream;
mod websocket;

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use interceptor_ebpf::{ConnKey, ConnectInfo};
use tokio::net::TcpStream;

use crate::cgroup::Cgroup;
use crate::gate::Dial;
use crate::identity::{Identity, IdentityResolver};
use crate::kernel::OriginalDstTable;
use crate::limits::Throttle;
use crate::redirect::Namespace;
use crate::relay::{self, Traffic};
use crate::sessions::record::SecretFinding;
use crate::sessions::{Event, Outcome, SessionEnd, SessionStart, Store};
use dispatch::{Peer, Then};
use upstream::{Dialer, Upstream};

/// What the proxy knows of a live enrollment.
pub struct EnrollmentLive {
    pub cgroup: Cgroup,
    /// The enrollment's name (`--name`), which policy rules can match.
    pub name: Option<String>,
    pub live: AtomicU64,
    pub total: AtomicU64,
}

pub type Registry = Arc<RwLock<HashMap<u32, Arc<EnrollmentLive>>>>;

pub struct Proxy {
    pub original: OriginalDstTable,
    pub identities: IdentityResolver,
    pub store: Store,
    pub registry: Registry,
    pub connect_timeout: Duration,
    /// `SO_MARK` on upstream sockets, which the kernel programs let through.
    pub mark: u32,
    pub live: AtomicU64,
    pub tls: crate::tls::TlsLayer,
    pub http: crate::http::HttpLayer,
    /// Masks secrets in recorded command lines (None with no rules loaded).
    pub masking: Option<Arc<crate::http::masking::Masking>>,
    /// Policy decisions and approval holds before dialing.
    pub gate: crate::gate::Gate,
    /// Connections open against what the open-files limit leaves room for.
    pub capacity: Arc<crate::limits::Capacity>,
}

/// A session that has started: who connected, where to, under which enrollment.
struct Started {
    id: u64,
    dest: SocketAddr,
    identity: Arc<Identity>,
    enrollment: Option<Arc<EnrollmentLive>>,
}

/// Warnings about connections that can come by the thousand, one line per interval.
static NO_RECORD: Throttle = Throttle::new(Duration::from_secs(10));
static REFUSED: Throttle = Throttle::new(Duration::from_secs(10));

impl Proxy {
    /// Serves one redirected connection until it ends. The task lives as long as the
    /// connection, mostly idle, and its state is as large as its largest step: every step of
    /// the set-up (policy, dial, sniffing, handshakes) runs in a box of its own, freed before
    /// the connection is served, and what serves it comes boxed, sized for itself (`Then`).
    pub async fn handle(
        self: Arc<Self>,
        client: TcpStream,
        peer: SocketAddr,
        netns_cookie: u64,
        ns: Namespace,
    ) {
        let accepted = Instant::now();
        let Some(Started {
            id,
            dest,
            identity,
            enrollment,
        }) = self.start(&client, peer, netns_cookie)
        else {
            return;
        };
        let _live = LiveGuard::new(&self.live, enrollment.as_deref());
        let name = enrollment.as_ref().and_then(|e| e.name.as_deref());
        let dial = match Box::pin(self.gate.before_dial(id, &identity, name, dest)).await {
            Ok(dial) => dial,
            Err(why) => {
                tracing::info!(session = id, %dest, %why, "connection refused by policy");
                relay::reset(&client);
                self.store.append(Event::End(SessionEnd {
                    id,
                    ended_at: SystemTime::now(),
                    bytes_up: 0,
                    bytes_down: 0,
                    outcome: Outcome::Denied,
                    error: Some(why),
                }));
                return;
            }
        };
        let traffic = Arc::new(Traffic::default());
        let peer = Peer {
            id,
            identity,
            enrollment: name.map(Arc::from),
            dest,
        };
        let set_up = Box::pin(self.set_up(peer, dial, client, ns, accepted, traffic.clone()));
        let (outcome, error) = match set_up.await {
            Then::Ended(ended) => ended,
            Then::Serve(serving) => serving.await,
        };
        let (bytes_up, bytes_down) = (
            traffic.up.load(Ordering::Relaxed),
            traffic.down.load(Ordering::Relaxed),
        );
        tracing::info!(session = id, %dest, bytes_up, bytes_down, ?outcome, error = error.as_deref().unwrap_or(""), "session ended");
        self.store.append(Event::End(SessionEnd {
            id,
            ended_at: SystemTime::now(),
            bytes_up,
            bytes_down,
            outcome,
            error,
        }));
    }

    /// The session of a redirected connection: claims the kernel's record, resolves and
    /// records who connected where. None (the client reset) for a connection without a
    /// record: someone dialled the proxy port directly, there is no destination to relay to.
    fn start(&self, client: &TcpStream, peer: SocketAddr, netns_cookie: u64) -> Option<Started> {
        let Some(info) = self.original.take(&conn_key(peer, netns_cookie)) else {
            if let Some(suppressed) = NO_RECORD.ready() {
                tracing::warn!(%peer, suppressed, "connection without a redirect record; resetting");
            }
            relay::reset(client);
            return None;
        };
        let dest = original_destination(&info);
        let enrollment = self.registry.read().unwrap().get(&info.enrollment).cloned();
        let identity = self
            .identities
            .resolve(&info, enrollment.as_ref().map(|e| &e.cgroup));
        let id = self.store.next_session_id();
        let (identity, found) = self.masked(id, identity);
        let shared = Arc::new(identity.clone());
        tracing::debug!(session = id, pid = identity.pid, comm = %identity.comm, %dest, "intercepted");
        self.store.append(Event::Start(SessionStart {
            id,
            enrollment: info.enrollment,
            identity,
            destination: dest.to_string(),
            started_at: ktime_to_system(info.ktime_ns),
        }));
        found
            .into_iter()
            .for_each(|f| self.store.append(Event::Secret(f)));
        Some(Started {
            id,
            dest,
            identity: shared,
            enrollment,
        })
    }

    /// Dials (now or once a later stage lets the connection through) and sets the
    /// connection up.
    async fn set_up(
        &self,
        peer: Peer,
        dial: Dial,
        client: TcpStream,
        ns: Namespace,
        accepted: Instant,
        traffic: Arc<Traffic>,
    ) -> Then<'_> {
        let dest = peer.dest;
        let dialer = Dialer {
            ns,
            dest,
            mark: self.mark,
            timeout: self.connect_timeout,
            accepted,
            metrics: self.store.metrics().clone(),
        };
        let upstream = match dial {
            Dial::Now => dialer.dial().await.map(Upstream::Dialled),
            Dial::Later => Ok(Upstream::Later(dialer)),
        };
        match upstream {
            Err(e) => dial_failed(&client, dest, &e).into(),
            Ok(upstream) => self.dispatch(peer, client, upstream, traffic).await,
        }
    }

    /// A redirected connection the daemon has no room for (`why`): reset at once, so the
    /// workload sees a failure instead of a connection nobody serves, and counted; its
    /// redirect record is let go.
    pub fn refuse(&self, client: TcpStream, peer: SocketAddr, netns_cookie: u64, why: &str) {
        let _ = self.original.take(&conn_key(peer, netns_cookie));
        relay::reset(&client);
        drop(client);
        self.store.metrics().connection_refused();
        if let Some(suppressed) = REFUSED.ready() {
            tracing::warn!(%peer, why, suppressed, "connection refused: no room for it");
        }
    }

    /// The identity as it is recorded: secrets in its command line masked, and their findings.
    fn masked(&self, session: u64, mut identity: Identity) -> (Identity, Vec<SecretFinding>) {
        let found = match &self.masking {
            Some(m) => m.mask_cmdline(session, &mut identity.cmdline),
            None => Vec::new(),
        };
        (identity, found)
    }

    /// Records a connect() that the kernel refused with EPERM.
    pub fn record_denied(&self, info: &ConnectInfo) {
        self.store.metrics().kernel_denial();
        let dest = original_destination(info);
        let enrollment = self.registry.read().unwrap().get(&info.enrollment).cloned();
        let identity = self
            .identities
            .resolve(info, enrollment.as_ref().map(|e| &e.cgroup));
        tracing::warn!(pid = identity.pid, comm = %identity.comm, exe = identity.exe.as_deref().unwrap_or("?"),
            %dest, enrollment = info.enrollment, "connect denied in the kernel (deny list)");
        let id = self.store.next_session_id();
        let (identity, found) = self.masked(id, identity);
        let at = ktime_to_system(info.ktime_ns);
        self.store.append(Event::Start(SessionStart {
            id,
            enrollment: info.enrollment,
            identity,
            destination: dest.to_string(),
            started_at: at,
        }));
        found
            .into_iter()
            .for_each(|f| self.store.append(Event::Secret(f)));
        self.store.append(Event::End(SessionEnd {
            id,
            ended_at: at,
            bytes_up: 0,
            bytes_down: 0,
            outcome: Outcome::Denied,
            error: Some("destination is on the enrollment's deny list".into()),
        }));
    }
}

/// Relays two userspace streams (decrypted, upgraded) both ways until both end. A peer that
/// closes TCP without TLS close_notify has still ended its stream: most clients do that.
pub async fn relay_streams<A, B>(a: &mut A, b: &mut B) -> io::Result<()>
where
    A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    B: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    match tokio::io::copy_bidirectional(a, b).await {
        Err(e) if e.kind() != io::ErrorKind::UnexpectedEof => Err(e),
        _ => Ok(()),
    }
}

/// The upstream could not be dialled: the client is reset (rather than closed: a clean EOF
/// would read as "connected, got nothing").
fn dial_failed(client: &TcpStream, dest: SocketAddr, e: &io::Error) -> dispatch::Ended {
    relay::reset(client);
    (
        connect_outcome(e),
        Some(format!("connecting to {dest}: {e}")),
    )
}

fn connect_outcome(e: &io::Error) -> Outcome {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => Outcome::UpstreamRefused,
        io::ErrorKind::TimedOut => Outcome::UpstreamTimeout,
        _ => Outcome::UpstreamError,
    }
}

/// Counts a connection as live (daemon-wide and per enrollment) for as long as it exists.
struct LiveGuard<'a> {
    daemon: &'a AtomicU64,
    enrollment: Option<&'a EnrollmentLive>,
}

impl<'a> LiveGuard<'a> {
    fn new(daemon: &'a AtomicU64, enrollment: Option<&'a EnrollmentLive>) -> Self {
        daemon.fetch_add(1, Ordering::Relaxed);
        if let Some(e) = enrollment {
            e.live.fetch_add(1, Ordering::Relaxed);
            e.total.fetch_add(1, Ordering::Relaxed);
        }
        LiveGuard { daemon, enrollment }
    }
}

impl Drop for LiveGuard<'_> {
    fn drop(&mut self) {
        self.daemon.fetch_sub(1, Ordering::Relaxed);
        if let Some(e) = self.enrollment {
            e.live.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// The key the kernel filed the connection under: the client's address as the proxy sees it.
pub fn conn_key(peer: SocketAddr, netns_cookie: u64) -> ConnKey {
    ConnKey {
        netns_cookie,
        addr: mapped(peer.ip()).octets(),
        port: peer.port(),
        _pad: [0; 6],
    }
}

fn mapped(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

pub fn original_destination(info: &ConnectInfo) -> SocketAddr {
    let v6 = Ipv6Addr::from(info.dst_addr);
    let ip = v6
        .to_ipv4_mapped()
        .map(IpAddr::V4)
        .unwrap_or(IpAddr::V6(v6));
    SocketAddr::new(ip, info.dst_port)
}

/// Converts a CLOCK_MONOTONIC timestamp from the kernel to wall-clock time.
fn ktime_to_system(ktime_ns: u64) -> SystemTime {
    let now = SystemTime::now();
    let Ok(mono) = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) else {
        return now;
    };
    let mono_ns = mono.tv_sec() as u64 * 1_000_000_000 + mono.tv_nsec() as u64;
    now - Duration::from_nanos(mono_ns.saturating_sub(ktime_ns))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_destinations_use_v4_mapped_form() {
        let k = conn_key("127.0.0.1:4242".parse().unwrap(), 7);
        assert_eq!(&k.addr[10..], &[0xff, 0xff, 127, 0, 0, 1]);
        assert_eq!((k.port, k.netns_cookie), (4242, 7));
        let mut info = ConnectInfo {
            dst_addr: k.addr,
            dst_port: 80,
            ..Default::default()
        };
        assert_eq!(original_destination(&info).to_string(), "127.0.0.1:80");
        info.dst_addr = "fd00::2".parse::<Ipv6Addr>().unwrap().octets();
        assert_eq!(original_destination(&info).to_string(), "[fd00::2]:80");
    }

    /// The size of the future `f` returns, without calling it.
    fn future_size<A, B, C, D, E, F: std::future::Future>(
        _: impl FnOnce(A, B, C, D, E) -> F,
    ) -> usize {
        std::mem::size_of::<F>()
    }

    /// A connection's task lives as long as the connection, mostly idle: its state must not
    /// hold room for the set-up's steps (sniffing, handshakes, policy) or for the layer that
    /// serves it, which come boxed, each sized for itself (`Then`). It was 35 KiB.
    #[test]
    fn a_connection_task_keeps_no_room_for_its_set_up() {
        let size = future_size(Proxy::handle);
        assert!(size < 1024, "{size} bytes per connection");
    }
}
