//! The proxy's listeners: 127.0.0.1 and ::1 at the proxy port, in the daemon's namespace and
//! in every other network namespace that has enrolled workloads, shared and reference
//! counted so a namespace is let go when its last enrollment is.

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::netns::{Namespace, NetnsThread, netns_cookie, netns_inode};
use crate::limits::{Accepted, Acceptor, Reserve};
use crate::proxy::Proxy;

/// How many kernel-chosen ports to try before giving up on finding one free on both addresses.
const CHOSEN_PORT_ATTEMPTS: u32 = 8;

/// Names the proxy's listeners in the accept loop's log lines.
const LISTENER: &str = "proxy";

struct Entry {
    users: usize,
    accept_loops: Vec<JoinHandle<()>>,
}

impl Drop for Entry {
    fn drop(&mut self) {
        for task in &self.accept_loops {
            task.abort();
        }
    }
}

pub struct Listeners {
    port: u16,
    proxy: Arc<Proxy>,
    host_netns: u64,
    by_netns: HashMap<u64, Entry>,
    /// The spare descriptor every proxy listener resets a connection with at the limit.
    reserve: Arc<Reserve>,
}

impl Listeners {
    /// Starts listening in the daemon's own namespace (always on, even with no enrollments).
    /// Port 0 lets the kernel choose one that is free on both 127.0.0.1 and ::1; [`port`]
    /// says which.
    ///
    /// [`port`]: Listeners::port
    pub async fn start(port: u16, proxy: Arc<Proxy>) -> io::Result<Listeners> {
        let host_netns = netns_inode(Path::new("/proc/self/ns/net"))?;
        let mut listeners = Listeners {
            port,
            proxy,
            host_netns,
            by_netns: HashMap::new(),
            reserve: Reserve::new(),
        };
        let mut attempts = if port == 0 { CHOSEN_PORT_ATTEMPTS } else { 1 };
        let entry = loop {
            attempts -= 1;
            match listeners.listen_in(Namespace::Host).await {
                // The port the kernel gave 127.0.0.1 was taken on ::1: ask for another.
                Err(e) if e.kind() == io::ErrorKind::AddrInUse && attempts > 0 => {
                    listeners.port = 0
                }
                result => break result?,
            }
        };
        listeners.by_netns.insert(host_netns, entry);
        Ok(listeners)
    }

    /// The port the proxy listens on in every namespace.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Makes sure the proxy listens in the namespace at `netns` (None: the daemon's own);
    /// returns a key for `release`.
    pub async fn acquire(&mut self, netns: Option<&Path>) -> io::Result<u64> {
        let key = match netns {
            Some(path) => netns_inode(path)?,
            None => self.host_netns,
        };
        if let Some(entry) = self.by_netns.get_mut(&key) {
            entry.users += 1;
            return Ok(key);
        }
        let path = netns.expect("the host namespace always has an entry");
        let thread = NetnsThread::spawn(path)?;
        let mut entry = self.listen_in(Namespace::Other(Arc::new(thread))).await?;
        entry.users = 1;
        self.by_netns.insert(key, entry);
        tracing::info!(netns = %path.display(), port = self.port, "proxy listening in workload network namespace");
        Ok(key)
    }

    pub fn release(&mut self, key: u64) {
        if key == self.host_netns {
            return;
        }
        if let Some(entry) = self.by_netns.get_mut(&key) {
            entry.users -= 1;
            if entry.users == 0 {
                self.by_netns.remove(&key);
            }
        }
    }

    /// Listens on both loopback addresses in `ns`; with port 0 the first one's port (chosen
    /// by the kernel) becomes the proxy port. On an error, what was started is stopped again
    /// (dropping the entry aborts its accept loops).
    async fn listen_in(&mut self, ns: Namespace) -> io::Result<Entry> {
        let mut entry = Entry {
            users: 0,
            accept_loops: Vec::new(),
        };
        for ip in [Ipv4Addr::LOCALHOST.into(), Ipv6Addr::LOCALHOST.into()] {
            let addr = SocketAddr::new(ip, self.port);
            let listener = ns
                .listen(addr, self.proxy.mark)
                .await
                .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
            self.port = listener.local_addr()?.port();
            let cookie = netns_cookie(&listener)?;
            entry.accept_loops.push(tokio::spawn(accept_loop(
                Acceptor::new(listener, LISTENER, self.reserve.clone()),
                cookie,
                ns.clone(),
                self.proxy.clone(),
            )));
        }
        Ok(entry)
    }
}

/// Serves the connections that fit ([`Capacity`](crate::limits::Capacity)) and resets the
/// others at once, also those accepted on the reserve descriptor when none is left.
async fn accept_loop(
    mut acceptor: Acceptor<TcpListener>,
    netns_cookie: u64,
    ns: Namespace,
    proxy: Arc<Proxy>,
) {
    loop {
        let (stream, peer) = match acceptor.next().await {
            Accepted::Conn(conn) => conn,
            Accepted::OnReserve((stream, peer), spent) => {
                proxy.refuse(stream, peer, netns_cookie, "no file descriptor left");
                drop(spent);
                continue;
            }
        };
        match proxy.capacity.admit() {
            Ok(slot) => {
                let (proxy, ns) = (proxy.clone(), ns.clone());
                tokio::spawn(async move {
                    proxy.handle(stream, peer, netns_cookie, ns).await;
                    drop(slot);
                });
            }
            Err(full) => {
                let why = format!("at capacity ({} of {} connections)", full.open, full.limit);
                proxy.refuse(stream, peer, netns_cookie, &why);
            }
        }
    }
}
