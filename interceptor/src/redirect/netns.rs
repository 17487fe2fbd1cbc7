//! Sockets in the workload's network namespace.
//!
//! A container has its own loopback: the kernel rewrites its connections to 127.0.0.1 *there*,
//! so the proxy must listen there, and must dial upstream from there so the container's routes
//! and DNS view apply. A socket keeps the namespace it was created in, so one thread per
//! namespace enters it once (`setns`) and creates sockets on request; tokio then drives them
//! like any other.

use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::oneshot;

type Job = Box<dyn FnOnce() + Send>;

/// Inode of a network namespace file: equal inodes, same namespace.
pub fn netns_inode(path: &Path) -> io::Result<u64> {
    Ok(std::fs::metadata(path)?.ino())
}

/// A thread living in one network namespace, creating sockets there.
pub struct NetnsThread {
    jobs: mpsc::Sender<Job>,
}

impl NetnsThread {
    pub fn spawn(path: &Path) -> io::Result<NetnsThread> {
        let ns = File::open(path)?;
        let (jobs, rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("netns".into())
            .spawn(move || {
                let entered = nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET);
                let ok = entered.is_ok();
                let _ = ready_tx.send(entered.map_err(io::Error::from));
                if ok {
                    // Lives until every sender is gone, i.e. the namespace is no longer used.
                    for job in rx {
                        job();
                    }
                }
            })?;
        ready_rx
            .recv()
            .map_err(|_| io::Error::other("netns thread died"))??;
        Ok(NetnsThread { jobs })
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> io::Result<T> {
        let (tx, rx) = oneshot::channel();
        self.jobs
            .send(Box::new(move || {
                let _ = tx.send(f());
            }))
            .map_err(|_| io::Error::other("netns thread is gone"))?;
        rx.await
            .map_err(|_| io::Error::other("netns thread is gone"))
    }
}

/// Where sockets are made: the daemon's own namespace or a workload's.
#[derive(Clone)]
pub enum Namespace {
    Host,
    Other(std::sync::Arc<NetnsThread>),
}

impl Namespace {
    async fn in_ns<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> io::Result<T> + Send + 'static,
    ) -> io::Result<T> {
        match self {
            Namespace::Host => f(),
            Namespace::Other(thread) => thread.run(f).await?,
        }
    }

    /// A loopback listener on `addr` in this namespace, carrying `mark` (0: none). The kernel
    /// programs redirect to a listener only when it carries the daemon's mark, which no
    /// unprivileged process can set: a port taken by someone else while the daemon is down
    /// gets nothing.
    pub async fn listen(&self, addr: SocketAddr, mark: u32) -> io::Result<TcpListener> {
        let listener = self
            .in_ns(move || {
                let socket =
                    Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
                if mark != 0 {
                    socket.set_mark(mark)?;
                }
                if addr.is_ipv6() {
                    socket.set_only_v6(true)?;
                }
                socket.set_reuse_address(true)?;
                // Accepted sockets inherit it, which saves a setsockopt per connection.
                socket.set_tcp_nodelay(true)?;
                socket.set_nonblocking(true)?;
                socket.bind(&addr.into())?;
                socket.listen(4096)?;
                Ok(std::net::TcpListener::from(socket))
            })
            .await?;
        TcpListener::from_std(listener)
    }

    /// Connects to `addr` from this namespace. `mark` is set on the socket so the kernel
    /// programs never redirect the daemon's own upstream connections.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        mark: u32,
        timeout: Duration,
    ) -> io::Result<TcpStream> {
        let socket = self
            .in_ns(move || {
                // Non-blocking from the start: one syscall less than setting it afterwards.
                let stream = Type::STREAM.nonblocking();
                let socket = Socket::new(Domain::for_address(addr), stream, Some(Protocol::TCP))?;
                socket.set_mark(mark)?;
                Ok(std::net::TcpStream::from(socket))
            })
            .await?;
        let socket = TcpSocket::from_std_stream(socket);
        let stream = tokio::time::timeout(timeout, socket.connect(addr))
            .await
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no answer within {}", humantime::format_duration(timeout)),
                )
            })??;
        stream.set_nodelay(true)?;
        Ok(stream)
    }
}

/// `SO_NETNS_COOKIE` of a socket: the same value the kernel programs record.
pub fn netns_cookie(fd: &impl std::os::fd::AsRawFd) -> io::Result<u64> {
    const SO_NETNS_COOKIE: libc::c_int = 71;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: valid fd, out-pointer to a u64 with its size.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(cookie)
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The proxy relies on this instead of a setsockopt per accepted connection.
    #[tokio::test]
    async fn accepted_connections_inherit_nodelay_from_the_listener() {
        let listener = Namespace::Host
            .listen("127.0.0.1:0".parse().unwrap(), 0)
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let (accepted, _) = accepted.unwrap();
        assert!(accepted.nodelay().unwrap());
        assert!(!client.unwrap().nodelay().unwrap());
    }
}
