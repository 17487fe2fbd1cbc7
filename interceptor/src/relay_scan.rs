//! A relay that scans both directions for secrets and masks them as the bytes flow: the
//! copying path for raw TCP (and any other byte stream, such as an upgraded WebSocket or a
//! decrypted TLS stream) when secret masking is on. `relay.rs` splices, which never shows
//! the bytes to userspace; this one reads them, runs each direction through its own
//! `Masker`, and writes what the masker releases: same length, so byte counts still match.
//!
//! A masker holds back a short tail so a secret split across reads is still seen whole. A
//! peer that waits for that tail (a request-response protocol) gets it after `idle_flush`
//! without new bytes; a secret cut by such a flush is still reported, with
//! `forwarded_unmasked` set on its finding.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::burst::read_burst;

use crate::detection::{
    Engine, Finding, Masker, ScanError, SecretHasher, Selection, mask_buffer_selected,
};

const READ_SIZE: usize = 16 * 1024;

/// Which way bytes went.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Workload → upstream.
    Up,
    /// Upstream → workload.
    Down,
}

/// Which connection failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peer {
    Client,
    Upstream,
}

#[derive(Debug, thiserror::Error)]
pub enum ScanRelayError {
    #[error("reading from {0:?}: {1}")]
    Read(Peer, io::Error),
    #[error("writing to {0:?}: {1}")]
    Write(Peer, io::Error),
    #[error("{0}")]
    Scan(#[from] ScanError),
}

impl ScanRelayError {
    /// The connection at fault (a scanning failure is ours: blamed on neither peer).
    pub fn peer(&self) -> Option<Peer> {
        match self {
            ScanRelayError::Read(p, _) | ScanRelayError::Write(p, _) => Some(*p),
            ScanRelayError::Scan(_) => None,
        }
    }
}

pub struct ScanRelay {
    pub engine: Arc<Engine>,
    pub hasher: SecretHasher,
    /// Forward the held tail after this long without new bytes.
    pub idle_flush: Duration,
    /// Which rules mask or only report (None: every rule masks).
    pub selection: Option<Arc<Selection>>,
}

/// Bytes moved each way; readable while the relay runs.
#[derive(Debug, Default)]
pub struct Counters {
    pub up: AtomicU64,
    pub down: AtomicU64,
}

impl ScanRelay {
    /// Relays until both directions end (half-closes passed on) or one fails; `on_finding`
    /// gets every secret found, with its direction. On error the caller resets both
    /// connections, so neither peer mistakes the failure for a clean end.
    pub async fn relay<C, U>(
        &self,
        client: C,
        upstream: U,
        counters: &Counters,
        on_finding: impl Fn(Direction, Finding),
    ) -> Result<(), ScanRelayError>
    where
        C: AsyncRead + AsyncWrite + Unpin,
        U: AsyncRead + AsyncWrite + Unpin,
    {
        let (mut client_rx, mut client_tx) = tokio::io::split(client);
        let (mut upstream_rx, mut upstream_tx) = tokio::io::split(upstream);
        let up = self.pump(
            (&mut client_rx, Peer::Client),
            (&mut upstream_tx, Peer::Upstream),
            Direction::Up,
            &counters.up,
            &on_finding,
        );
        let down = self.pump(
            (&mut upstream_rx, Peer::Upstream),
            (&mut client_tx, Peer::Client),
            Direction::Down,
            &counters.down,
            &on_finding,
        );
        tokio::try_join!(up, down).map(|_| ())
    }

    /// Masks a short buffer that passes apart from the streams (a WebSocket control frame
    /// inside a fragmented message) whole and in place, with the same rules.
    pub fn mask_apart(&self, data: &mut [u8]) -> Result<Vec<Finding>, ScanError> {
        let (masked, found) =
            mask_buffer_selected(&self.engine, &self.hasher, self.selection.as_ref(), data)?;
        data.copy_from_slice(&masked);
        Ok(found)
    }

    async fn pump(
        &self,
        (from, from_peer): (&mut (impl AsyncRead + Unpin), Peer),
        (to, to_peer): (&mut (impl AsyncWrite + Unpin), Peer),
        direction: Direction,
        counter: &AtomicU64,
        on_finding: &impl Fn(Direction, Finding),
    ) -> Result<(), ScanRelayError> {
        let mut masker = Masker::with_selection(
            self.engine.clone(),
            self.hasher.clone(),
            self.selection.clone(),
        )?;
        // Buffers are taken when bytes come and dropped once they are passed on: an idle
        // direction holds none.
        loop {
            let read = if masker.held() > 0 {
                tokio::time::timeout(self.idle_flush, read_burst(from, READ_SIZE))
                    .await
                    .ok()
            } else {
                Some(read_burst(from, READ_SIZE).await)
            };
            let mut out = Vec::new();
            let done = match read {
                // Quiet: the peer may be waiting for the held tail, and the masker keeps
                // no more than its context while nothing flows.
                None => {
                    masker.flush(&mut out)?;
                    masker.release_memory();
                    false
                }
                Some(Ok(chunk)) if chunk.is_empty() => {
                    masker.finish(&mut out)?;
                    true
                }
                Some(Ok(chunk)) => {
                    out.reserve(chunk.len() + self.engine.holdback());
                    masker.push(&chunk, &mut out)?;
                    counter.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                    false
                }
                Some(Err(e)) => return Err(ScanRelayError::Read(from_peer, e)),
            };
            for finding in masker.take_findings() {
                on_finding(direction, finding);
            }
            let write = async {
                to.write_all(&out).await?;
                if done {
                    to.shutdown().await?;
                } else {
                    to.flush().await?;
                }
                Ok(())
            };
            write.await.map_err(|e| ScanRelayError::Write(to_peer, e))?;
            if done {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::{Mutex, OnceLock};

    use tokio::io::AsyncReadExt;
    use tokio::net::{TcpListener, TcpStream};

    use super::*;
    use crate::detection::load_dir;

    const TOKEN: &str = "ghp_aB3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1xY3zA5";
    const KEY: &str = "AKIAQYLPMN5HHHFPZAM2";

    fn scanner() -> ScanRelay {
        static ENGINE: OnceLock<Arc<Engine>> = OnceLock::new();
        let engine = ENGINE.get_or_init(|| {
            let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/rules");
            Arc::new(Engine::compile(&load_dir(&dir).unwrap()).unwrap())
        });
        ScanRelay {
            engine: engine.clone(),
            hasher: SecretHasher::with_salt([3; 16]),
            idle_flush: Duration::from_millis(30),
            selection: None,
        }
    }

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap());
        let (a, b) = tokio::join!(a, l.accept());
        (a.unwrap(), b.unwrap().0)
    }

    #[tokio::test]
    async fn secrets_are_masked_both_ways_across_small_writes() {
        let (mut workload, client) = pair().await;
        let (upstream, mut server) = pair().await;
        let findings = Arc::new(Mutex::new(Vec::new()));
        let counters = Arc::new(Counters::default());
        let relay = {
            let (findings, counters) = (findings.clone(), counters.clone());
            tokio::spawn(async move {
                scanner()
                    .relay(client, upstream, &counters, |d, f| {
                        findings.lock().unwrap().push((d, f))
                    })
                    .await
            })
        };
        let request = format!("POST /log HTTP/1.1\r\n\r\nkey={KEY} and token {TOKEN}\n");
        // Three bytes per write: every secret is split across many reads.
        for piece in request.as_bytes().chunks(3) {
            workload.write_all(piece).await.unwrap();
        }
        workload.shutdown().await.unwrap();
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got.len(), request.len());
        let got = String::from_utf8(got).unwrap();
        assert!(!got.contains(TOKEN) && !got.contains(KEY), "{got}");
        assert!(got.contains("ghp_*") || got.contains("ghp_a*"), "{got}");

        let response = format!("{{\"echo\": \"{TOKEN}\"}}");
        server.write_all(response.as_bytes()).await.unwrap();
        server.shutdown().await.unwrap();
        let mut back = Vec::new();
        workload.read_to_end(&mut back).await.unwrap();
        assert_eq!(back.len(), response.len());
        assert!(!String::from_utf8(back).unwrap().contains(TOKEN));

        relay.await.unwrap().unwrap();
        let findings = findings.lock().unwrap();
        let rules: Vec<_> = findings
            .iter()
            .map(|(d, f)| (*d, f.rule.as_str()))
            .collect();
        assert!(
            rules.contains(&(Direction::Up, "aws.access-key-id")),
            "{rules:?}"
        );
        assert!(rules.contains(&(Direction::Up, "github.ghp")), "{rules:?}");
        assert!(
            rules.contains(&(Direction::Down, "github.ghp")),
            "{rules:?}"
        );
        assert!(findings.iter().all(|(_, f)| f.forwarded_unmasked == 0));
        assert_eq!(counters.up.load(Ordering::Relaxed), request.len() as u64);
        assert_eq!(counters.down.load(Ordering::Relaxed), response.len() as u64);
    }

    #[tokio::test]
    async fn a_peer_waiting_for_the_held_tail_gets_it() {
        // Compiled before any timer starts: the compile blocks this single-threaded runtime.
        let scanner = scanner();
        let (mut workload, client) = pair().await;
        let (upstream, mut server) = pair().await;
        let relay = tokio::spawn(async move {
            scanner
                .relay(client, upstream, &Counters::default(), |_, _| {})
                .await
        });
        // A request-response protocol: each side waits for the other's short message.
        for round in 0..3 {
            workload.write_all(b"PING\r\n").await.unwrap();
            let mut buf = [0u8; 6];
            tokio::time::timeout(Duration::from_secs(2), server.read_exact(&mut buf))
                .await
                .expect("held tail flushed when idle")
                .unwrap();
            assert_eq!(&buf, b"PING\r\n", "round {round}");
            server.write_all(b"+PONG\r\n").await.unwrap();
            let mut buf = [0u8; 7];
            tokio::time::timeout(Duration::from_secs(2), workload.read_exact(&mut buf))
                .await
                .expect("reply flushed when idle")
                .unwrap();
            assert_eq!(&buf, b"+PONG\r\n");
        }
        drop(workload);
        drop(server);
        let _ = relay.await.unwrap();
    }
}
