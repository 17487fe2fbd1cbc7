//! The CLI's side of the control socket.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

use anyhow::{Context, anyhow};
use serde::de::DeserializeOwned;

use super::protocol::{Reply, Request};

/// Sends one request and decodes the reply.
pub fn call<T: DeserializeOwned>(socket: &Path, request: &Request) -> anyhow::Result<T> {
    let mut stream = UnixStream::connect(socket).with_context(|| {
        format!(
            "cannot reach the interceptor daemon at {} (is `interceptor run` running, and may you use its socket?)",
            socket.display()
        )
    })?;
    let mut line = serde_json::to_vec(request)?;
    line.push(b'\n');
    stream.write_all(&line)?;
    let mut reply = String::new();
    BufReader::new(stream)
        .read_line(&mut reply)
        .context("reading the daemon's reply")?;
    if reply.is_empty() {
        return Err(anyhow!("the daemon closed the connection without replying"));
    }
    let reply: Reply = serde_json::from_str(&reply).context("decoding the daemon's reply")?;
    let value = reply.map_err(|e| anyhow!(e))?;
    serde_json::from_value(value).context("unexpected reply from the daemon")
}
