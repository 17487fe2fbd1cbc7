//! The daemon's side of the control socket.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use super::change;
use super::protocol::{Reply, Request};
use crate::daemon::Daemon;
use crate::limits::{Acceptor, Reserve};
use crate::sessions::tail;

/// Longest request line accepted; anything longer is not a request of ours.
const MAX_REQUEST: u64 = 1 << 20;

/// Binds the socket (mode 0660, group `group` if given) and serves requests until dropped.
pub fn bind(path: &Path, group: Option<&str>) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent()
        && !dir.exists()
    {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        // The daemon's umask keeps what it creates private; members of the socket's group
        // must reach the socket.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    }
    // A socket file left by a daemon that did not shut down cleanly.
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            anyhow::bail!("another daemon is already serving {}", path.display());
        }
        std::fs::remove_file(path).with_context(|| format!("removing stale {}", path.display()))?;
    }
    let listener = UnixListener::bind(path)
        .with_context(|| format!("binding control socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    if let Some(group) = group {
        let gid = nix::unistd::Group::from_name(group)?
            .with_context(|| format!("no such group {group:?} for the control socket"))?
            .gid;
        nix::unistd::chown(path, Some(nix::unistd::Uid::from_raw(0)), Some(gid))?;
    }
    Ok(listener)
}

/// Serves every client, also at the descriptor limit: a reserve descriptor is let go to
/// accept and answer one ([`Acceptor`]).
pub async fn serve(listener: UnixListener, daemon: Arc<Daemon>) {
    let mut acceptor = Acceptor::new(listener, "control", Reserve::new());
    loop {
        let (stream, spent) = acceptor.next().await.into_parts();
        let daemon = daemon.clone();
        tokio::spawn(async move {
            if let Err(e) = serve_one(stream, &daemon).await {
                tracing::debug!(error = %e, "control connection ended with an error");
            }
            // The connection is closed: the reserve can be taken back.
            drop(spent);
        });
    }
}

async fn serve_one(stream: UnixStream, daemon: &Daemon) -> std::io::Result<()> {
    let (rx, mut tx) = stream.into_split();
    let mut lines = BufReader::new(rx.take(MAX_REQUEST)).lines();
    while let Some(line) = lines.next_line().await? {
        let reply: Reply = match serde_json::from_str::<Request>(&line) {
            Ok(Request::Tail(request)) => {
                tracing::debug!(?request, "tail started");
                tx.write_all(b"{\"Ok\":null}\n").await?;
                // Streams until done, or until the client closes its end.
                return tokio::select! {
                    done = tail::stream(daemon.store(), request, &mut tx) => done,
                    _ = lines.next_line() => Ok(()),
                };
            }
            Ok(request) => match request.change() {
                Some(change) => {
                    let socket = lines.get_ref().get_ref().get_ref().as_ref();
                    change::serve(daemon, request, change, socket).await
                }
                None => daemon.handle(request).await,
            },
            Err(e) => Err(format!("malformed request: {e}")),
        };
        let mut out = serde_json::to_vec(&reply).expect("replies always serialize");
        out.push(b'\n');
        tx.write_all(&out).await?;
    }
    Ok(())
}

/// Removes the socket file when the daemon stops.
pub struct SocketFile(pub PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
