//! The CLI's side of the control socket.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

use anyhow::{Context, anyhow};
use serde::de::DeserializeOwned;

use super::protocol::{Reply, Request};

/// Sends one request and decodes the reply.
pub fn call<T: DeserializeOwned>(socket: &Path, request: &Request) -> anyhow::Result<T> {
    let mut stream = connect(socket)?;
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

fn connect(socket: &Path) -> anyhow::Result<UnixStream> {
    UnixStream::connect(socket).with_context(|| {
        format!(
            "cannot reach the interceptor daemon at {} (is `interceptor run` running, and may you use its socket?)",
            socket.display()
        )
    })
}

/// Sends a streaming request (`Tail`): checks the daemon's first reply line and returns the
/// reader of the lines that follow, one JSON record each, until the daemon ends the stream.
pub fn stream(socket: &Path, request: &Request) -> anyhow::Result<BufReader<UnixStream>> {
    let mut stream = connect(socket)?;
    let mut line = serde_json::to_vec(request)?;
    line.push(b'\n');
    stream.write_all(&line)?;
    let mut reader = BufReader::new(stream);
    let mut first = String::new();
    reader
        .read_line(&mut first)
        .context("reading the daemon's reply")?;
    if first.is_empty() {
        return Err(anyhow!("the daemon closed the connection without replying"));
    }
    let reply: Reply = serde_json::from_str(&first).context("decoding the daemon's reply")?;
    reply.map_err(|e| anyhow!(e))?;
    Ok(reader)
}
