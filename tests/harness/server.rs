//! Python test servers (tests/scripts/server.py): echo, hash, http, say, ws.

use std::io::{BufRead, BufReader, Read};
use std::net::IpAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use crate::netns::Netns;
use crate::util::{fmt_dest, poll, python, scripts_dir};

const START_TIMEOUT: Duration = Duration::from_secs(15);

/// What the server reports for each finished connection.
#[derive(Clone, Debug, Deserialize)]
pub struct ServerRecord {
    pub mode: String,
    /// The connection's peer as the server saw it ("ip:port" / "[ip6]:port").
    pub peer: String,
    pub local: String,
    /// Bytes the client sent (the request body in http mode) and their sha256.
    pub received: u64,
    pub sha256: Option<String>,
    pub sent: u64,
    pub error: Option<String>,
    #[serde(default)]
    pub request: Option<String>,
    /// say and ws modes: the line, or the end of each WebSocket payload.
    #[serde(default)]
    pub messages: Vec<String>,
}

/// A running test server. Drop kills it (by pid) and prints what it logged to stderr.
pub struct Server {
    child: Child,
    ip: IpAddr,
    port: u16,
    records: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<String>>,
}

pub struct ServerOpts<'a> {
    /// Run inside this namespace (`ip netns exec`).
    pub netns: Option<&'a Netns>,
    /// hash mode: size of the reply payload.
    pub reply_bytes: usize,
    /// hash mode: seed of the reply payload; say and ws modes: the reply text.
    pub seed: &'a str,
    /// TLS on every connection: certificate chain and key (PEM files).
    pub tls: Option<(&'a Path, &'a Path)>,
}

impl Default for ServerOpts<'_> {
    fn default() -> Self {
        ServerOpts {
            netns: None,
            reply_bytes: 0,
            seed: "reply",
            tls: None,
        }
    }
}

impl Server {
    /// Echo server on `ip` (a free port).
    pub fn echo(ip: &str) -> Result<Server> {
        Server::start("echo", ip, ServerOpts::default())
    }

    /// Hash server on `ip`: replies `reply_bytes` of payload(`seed`) after the client's EOF.
    pub fn hash(ip: &str, reply_bytes: usize, seed: &str) -> Result<Server> {
        Server::hash_on(None, ip, reply_bytes, seed)
    }

    /// [`Server::hash`] inside `ns`, on `ip` (an address of one of its links).
    pub fn hash_in(ns: &Netns, ip: IpAddr, reply_bytes: usize, seed: &str) -> Result<Server> {
        Server::hash_on(Some(ns), &ip.to_string(), reply_bytes, seed)
    }

    /// [`Server::echo`] inside `ns`, on `ip` (an address of one of its links).
    pub fn echo_in(ns: &Netns, ip: IpAddr) -> Result<Server> {
        let opts = ServerOpts {
            netns: Some(ns),
            ..Default::default()
        };
        Server::start("echo", &ip.to_string(), opts)
    }

    fn hash_on(netns: Option<&Netns>, ip: &str, reply_bytes: usize, seed: &str) -> Result<Server> {
        Server::start(
            "hash",
            ip,
            ServerOpts {
                netns,
                reply_bytes,
                seed,
                ..Default::default()
            },
        )
    }

    /// HTTP server on `ip` that echoes request bodies.
    pub fn http(ip: &str) -> Result<Server> {
        Server::start("http", ip, ServerOpts::default())
    }

    pub fn start(mode: &str, ip: &str, opts: ServerOpts<'_>) -> Result<Server> {
        let ip_addr: IpAddr = ip.parse().with_context(|| format!("bad IP {ip}"))?;
        let script = scripts_dir().join("server.py");
        let mut cmd = match opts.netns {
            Some(ns) => ns.command(python()),
            None => Command::new(python()),
        };
        cmd.arg("-u")
            .arg(&script)
            .arg(mode)
            .args(["--bind", ip])
            .args(["--reply-bytes", &opts.reply_bytes.to_string()])
            .args(["--seed", opts.seed])
            .args(opts.tls.iter().flat_map(|(cert, key)| {
                [
                    "--tls-cert".as_ref(),
                    cert.as_os_str(),
                    "--tls-key".as_ref(),
                    key.as_os_str(),
                ]
            }))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("start {}", script.display()))?;
        let stdout = child.stdout.take().expect("piped");
        let mut stderr_pipe = child.stderr.take().expect("piped");
        let records = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        {
            let records = records.clone();
            std::thread::spawn(move || {
                let mut tx = Some(tx);
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if let Some(p) = line.strip_prefix("LISTENING ")
                        && let Some(tx) = tx.take()
                    {
                        let _ = tx.send(p.trim().parse::<u16>().ok());
                        continue;
                    }
                    records.lock().unwrap().push(line);
                }
            });
        }
        {
            let stderr = stderr.clone();
            std::thread::spawn(move || {
                let mut buf = String::new();
                let _ = stderr_pipe.read_to_string(&mut buf);
                stderr.lock().unwrap().push_str(&buf);
            });
        }
        let port = match rx.recv_timeout(START_TIMEOUT) {
            Ok(Some(p)) => p,
            other => {
                let _ = child.kill();
                let _ = child.wait();
                std::thread::sleep(Duration::from_millis(100));
                bail!(
                    "{mode} server on {ip} did not start ({other:?}); stderr:\n{}",
                    stderr.lock().unwrap()
                );
            }
        };
        Ok(Server {
            child,
            ip: ip_addr,
            port,
            records,
            stderr,
        })
    }

    pub fn ip(&self) -> IpAddr {
        self.ip
    }
    pub fn port(&self) -> u16 {
        self.port
    }
    /// "ip:port" / "[ip6]:port": what a client connects to, and what the daemon records.
    pub fn addr(&self) -> String {
        fmt_dest(self.ip, self.port)
    }

    /// Records of the connections finished so far.
    pub fn records(&self) -> Result<Vec<ServerRecord>> {
        self.records
            .lock()
            .unwrap()
            .iter()
            .map(|l| serde_json::from_str(l).with_context(|| format!("bad server record {l}")))
            .collect()
    }

    /// Waits until at least `n` connections have finished; returns all records.
    pub fn wait_records(&self, n: usize, timeout: Duration) -> Result<Vec<ServerRecord>> {
        poll(
            &format!("{n} finished connection(s) at the server {}", self.addr()),
            timeout,
            Duration::from_millis(20),
            || {
                let r = self.records()?;
                Ok((r.len() >= n).then_some(r))
            },
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let err = self.stderr.lock().unwrap();
        if !err.is_empty() {
            eprintln!("--- server {} stderr ---\n{err}", self.addr());
        }
    }
}
