//! TLS re-termination: the workload's TLS ends here with a certificate minted by the local
//! CA, and a second TLS connection, verified against the system roots, goes to the upstream.
//!
//! Order per connection (driven by `proxy.rs`): peek the ClientHello (SNI, ALPN) without
//! consuming it; passthrough hosts are spliced as they are; otherwise the upstream handshake
//! runs first, offering the client's ALPN list, so the client is only ever shown a
//! certificate for a server that verified, and only the protocol that server chose.

pub mod ca;
mod hello;
mod leaf;

use std::collections::HashSet;
use std::io;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use lru::LruCache;
use rustls::server::{
    ClientHello, ResolvesServerCert, ServerSessionMemoryCache, StoresServerSessions,
};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsConnector;

pub use ca::CertificateAuthority;
pub use hello::{HelloError, peek_client_hello};
use leaf::LeafMinter;

/// Leaf certificates kept ready; a busy host talks to far fewer names than this.
const LEAF_CACHE: usize = 1024;
/// A lower-cased name and the ALPN protocol shown with it.
type ConfigKey = (String, Option<Vec<u8>>);
/// TLS sessions workloads may resume.
const SESSION_CACHE: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("CA {path}: {reason}")]
    BadCa { path: PathBuf, reason: String },
    #[error("upstream CA file {path}: {reason}")]
    BadUpstreamCa { path: PathBuf, reason: String },
    #[error("cannot mint a certificate for {name:?}: {reason}")]
    BadName { name: String, reason: String },
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("TLS: {0}")]
    Rustls(#[from] rustls::Error),
}

impl TlsError {
    fn io(path: &Path) -> impl FnOnce(io::Error) -> TlsError + '_ {
        move |source| TlsError::Io {
            path: path.to_owned(),
            source,
        }
    }
}

/// How the daemon terminates TLS (from `interceptor run` flags).
#[derive(Clone, Debug, Default)]
pub struct TlsOptions {
    /// Operator CA; both or neither (clap enforces it).
    pub ca_cert: Option<PathBuf>,
    pub ca_key: Option<PathBuf>,
    /// Extra roots trusted for upstream servers, on top of the system's.
    pub upstream_ca: Vec<PathBuf>,
    /// SNI names relayed without decryption.
    pub passthrough: Vec<String>,
    pub handshake_timeout: Duration,
}

pub struct TlsLayer {
    ca: Arc<CertificateAuthority>,
    leaves: LeafMinter,
    /// Configurations shown to workloads, by (name, ALPN): built once per name.
    configs: Mutex<LruCache<ConfigKey, Arc<ServerConfig>>>,
    /// One session cache behind every configuration, so a workload's next connection to a
    /// name resumes (rustls checks that the SNI matches) instead of a full handshake.
    sessions: Arc<dyn StoresServerSessions>,
    upstream: TlsConnector,
    passthrough: HashSet<String>,
    pub handshake_timeout: Duration,
}

impl TlsLayer {
    pub fn new(data_dir: &Path, options: &TlsOptions) -> Result<Self, TlsError> {
        let ca = Arc::new(match (&options.ca_cert, &options.ca_key) {
            (Some(cert), Some(key)) => CertificateAuthority::load(cert, key)?,
            _ => CertificateAuthority::load_or_create(&ca::default_dir(data_dir))?,
        });
        let roots = upstream_roots(&ca, &options.upstream_ca)?;
        let upstream = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let capacity = NonZeroUsize::new(LEAF_CACHE).unwrap();
        Ok(TlsLayer {
            leaves: LeafMinter::new(ca.clone(), capacity)?,
            configs: Mutex::new(LruCache::new(capacity)),
            sessions: ServerSessionMemoryCache::new(SESSION_CACHE),
            ca,
            upstream: TlsConnector::from(Arc::new(upstream)),
            passthrough: options
                .passthrough
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            handshake_timeout: options.handshake_timeout,
        })
    }

    /// TLS to servers the daemon talks to itself (approval webhooks), verified like upstreams.
    pub fn upstream_connector(&self) -> TlsConnector {
        self.upstream.clone()
    }

    pub fn ca(&self) -> &CertificateAuthority {
        &self.ca
    }

    pub fn is_passthrough(&self, sni: Option<&str>) -> bool {
        sni.is_some_and(|s| self.passthrough.contains(&s.to_ascii_lowercase()))
    }

    /// TLS to the upstream, offering the client's ALPN list, verified for `name`.
    pub async fn connect_upstream<IO: AsyncRead + AsyncWrite + Unpin>(
        &self,
        name: ServerName<'static>,
        alpn: Vec<Vec<u8>>,
        tcp: IO,
    ) -> io::Result<tokio_rustls::client::TlsStream<IO>> {
        self.upstream.with_alpn(alpn).connect(name, tcp).await
    }

    /// The configuration shown to the workload: a certificate for `name` (the SNI, or the
    /// destination address), and the ALPN protocol the upstream chose, if any.
    pub fn server_config(
        &self,
        name: &str,
        alpn: Option<&[u8]>,
    ) -> Result<Arc<ServerConfig>, TlsError> {
        let cache_key = (name.to_ascii_lowercase(), alpn.map(<[u8]>::to_vec));
        if let Some(hit) = self.configs.lock().unwrap().get(&cache_key) {
            return Ok(hit.clone());
        }
        let key = self.leaves.certified_key(name)?;
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Fixed(key)));
        config.alpn_protocols = alpn.map(|p| vec![p.to_vec()]).unwrap_or_default();
        config.session_storage = self.sessions.clone();
        let config = Arc::new(config);
        self.configs.lock().unwrap().put(cache_key, config.clone());
        Ok(config)
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    static PROVIDER: OnceLock<Arc<rustls::crypto::CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// The system's roots plus the operator's extra ones, minus our own CA: an upstream must
/// never pass verification with a certificate that interceptor itself could have minted.
fn upstream_roots(ca: &CertificateAuthority, extra: &[PathBuf]) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        tracing::warn!(error = %e, "skipping part of the system trust store");
    }
    let (added, ignored) = roots.add_parsable_certificates(
        native
            .certs
            .into_iter()
            .filter(|c| c.as_ref() != ca.cert_der().as_ref()),
    );
    tracing::debug!(added, ignored, "system roots for upstream verification");
    for path in extra {
        let bad = |reason: String| TlsError::BadUpstreamCa {
            path: path.clone(),
            reason,
        };
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| bad(e.to_string()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(e.to_string()))?;
        if certs.is_empty() {
            return Err(bad("no certificate in the file".into()));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| bad(e.to_string()))?;
        }
    }
    Ok(roots)
}

/// One certificate, whatever the ClientHello says (it was chosen from that hello already).
#[derive(Debug)]
struct Fixed(Arc<CertifiedKey>);

impl ResolvesServerCert for Fixed {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::{ClientConnection, HandshakeKind, ServerConnection};

    /// Drives one in-memory handshake; returns how the client's side went.
    fn handshake(client: Arc<ClientConfig>, server: Arc<ServerConfig>) -> HandshakeKind {
        let name = ServerName::try_from("api.example.com").unwrap();
        let mut c = ClientConnection::new(client, name).unwrap();
        let mut s = ServerConnection::new(server).unwrap();
        while c.is_handshaking() || s.is_handshaking() || c.wants_write() || s.wants_write() {
            let mut wire = Vec::new();
            while c.wants_write() {
                c.write_tls(&mut wire).unwrap();
            }
            s.read_tls(&mut wire.as_slice()).unwrap();
            s.process_new_packets().unwrap();
            wire.clear();
            while s.wants_write() {
                s.write_tls(&mut wire).unwrap();
            }
            c.read_tls(&mut wire.as_slice()).unwrap();
            c.process_new_packets().unwrap();
        }
        c.handshake_kind().unwrap()
    }

    #[test]
    fn configs_are_built_once_per_name_and_alpn_and_sessions_resume() {
        let dir = tempfile::tempdir().unwrap();
        let tls = TlsLayer::new(dir.path(), &TlsOptions::default()).unwrap();
        let h2 = tls.server_config("API.example.com", Some(b"h2")).unwrap();
        assert!(Arc::ptr_eq(
            &h2,
            &tls.server_config("api.example.com", Some(b"h2")).unwrap()
        ));
        let plain = tls.server_config("api.example.com", None).unwrap();
        assert!(!Arc::ptr_eq(&h2, &plain));

        let mut roots = RootCertStore::empty();
        roots.add(tls.ca().cert_der().clone()).unwrap();
        let client = Arc::new(
            ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        );
        assert_eq!(
            handshake(client.clone(), plain.clone()),
            HandshakeKind::Full
        );
        assert_eq!(handshake(client, plain), HandshakeKind::Resumed);
    }
}
