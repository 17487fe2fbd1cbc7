//! Leaf certificates for the names workloads connect to, signed by the local CA.
//!
//! One leaf key pair serves every leaf of a daemon's lifetime (as in mitmproxy): minting a
//! certificate then costs one signature, and a cached one costs nothing. The key never
//! leaves memory.

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use lru::LruCache;
use rcgen::{
    CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, SerialNumber,
};
use rustls::sign::{CertifiedKey, SigningKey};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use time::{Duration, OffsetDateTime};

use super::TlsError;
use super::ca::CertificateAuthority;

/// Under the 398 days that browsers accept for a server certificate.
const LEAF_VALIDITY: Duration = Duration::days(390);

pub struct LeafMinter {
    ca: Arc<CertificateAuthority>,
    key: KeyPair,
    signing_key: Arc<dyn SigningKey>,
    cache: Mutex<LruCache<String, Arc<CertifiedKey>>>,
    serial: AtomicU64,
}

impl LeafMinter {
    pub fn new(ca: Arc<CertificateAuthority>, capacity: NonZeroUsize) -> Result<Self, TlsError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let signing_key = rustls::crypto::ring::sign::any_ecdsa_type(&der)?;
        // Serials must differ between certificates of one issuer; start from the clock so
        // they also differ across restarts.
        let start = OffsetDateTime::now_utc().unix_timestamp_nanos() as u64;
        Ok(LeafMinter {
            ca,
            key,
            signing_key,
            cache: Mutex::new(LruCache::new(capacity)),
            serial: AtomicU64::new(start),
        })
    }

    /// The certificate (chain: leaf, CA) and key for `name`, a DNS name or an IP address.
    pub fn certified_key(&self, name: &str) -> Result<Arc<CertifiedKey>, TlsError> {
        let name = name.to_ascii_lowercase();
        if let Some(hit) = self.cache.lock().unwrap().get(&name) {
            return Ok(hit.clone());
        }
        let leaf = Arc::new(self.mint(&name)?);
        self.cache.lock().unwrap().put(name, leaf.clone());
        Ok(leaf)
    }

    fn mint(&self, name: &str) -> Result<CertifiedKey, TlsError> {
        let mut params =
            CertificateParams::new(vec![name.to_owned()]).map_err(|e| TlsError::BadName {
                name: name.to_owned(),
                reason: e.to_string(),
            })?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let serial = self.serial.fetch_add(1, Ordering::Relaxed);
        params.serial_number = Some(SerialNumber::from_slice(&serial.to_be_bytes()));
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::days(1);
        params.not_after = now + LEAF_VALIDITY;
        let cert = params.signed_by(&self.key, self.ca.issuer())?;
        tracing::debug!(name, "minted a leaf certificate");
        Ok(CertifiedKey::new(
            vec![cert.der().clone(), self.ca.cert_der().clone()],
            self.signing_key.clone(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::RootCertStore;
    use rustls::client::WebPkiServerVerifier;
    use rustls::client::danger::ServerCertVerifier;
    use rustls_pki_types::{ServerName, UnixTime};

    fn minter(capacity: usize) -> (tempfile::TempDir, Arc<CertificateAuthority>, LeafMinter) {
        let dir = tempfile::tempdir().unwrap();
        let ca = Arc::new(CertificateAuthority::load_or_create(dir.path()).unwrap());
        let m = LeafMinter::new(ca.clone(), NonZeroUsize::new(capacity).unwrap()).unwrap();
        (dir, ca, m)
    }

    /// Verifies `leaf` for `name` the way a client trusting only our CA would.
    fn verify(ca: &CertificateAuthority, leaf: &CertifiedKey, name: &str) -> Result<(), String> {
        let mut roots = RootCertStore::empty();
        roots.add(ca.cert_der().clone()).unwrap();
        let verifier = WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap();
        verifier
            .verify_server_cert(
                &leaf.cert[0],
                &leaf.cert[1..],
                &ServerName::try_from(name.to_owned()).unwrap(),
                &[],
                UnixTime::now(),
            )
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn leaves_verify_for_their_dns_name_or_ip_only() {
        let (_dir, ca, m) = minter(8);
        let leaf = m.certified_key("Example.TEST").unwrap();
        verify(&ca, &leaf, "example.test").unwrap();
        assert!(verify(&ca, &leaf, "other.test").is_err());
        let ip = m.certified_key("127.0.0.2").unwrap();
        verify(&ca, &ip, "127.0.0.2").unwrap();
        let v6 = m.certified_key("fd00::2").unwrap();
        verify(&ca, &v6, "fd00::2").unwrap();
    }

    #[test]
    fn repeat_names_come_from_the_cache_which_is_bounded() {
        let (_dir, _ca, m) = minter(2);
        let a = m.certified_key("a.test").unwrap();
        assert!(Arc::ptr_eq(&a, &m.certified_key("A.test").unwrap()));
        m.certified_key("b.test").unwrap();
        m.certified_key("c.test").unwrap();
        assert_eq!(m.cache.lock().unwrap().len(), 2);
        let again = m.certified_key("a.test").unwrap();
        assert!(!Arc::ptr_eq(&a, &again), "a.test should have been evicted");
        assert_ne!(a.cert[0], again.cert[0], "serials differ");
    }
}
