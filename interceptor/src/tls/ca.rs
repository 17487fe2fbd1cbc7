//! The local certificate authority that signs the certificates shown to workloads.
//!
//! Created once in the data directory (key mode 0600) and reused on every start, so a trust
//! store that was given the CA keeps working; an operator may bring their own instead.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use time::{Duration, OffsetDateTime};

use super::TlsError;

const CERT_FILE: &str = "ca.pem";
const KEY_FILE: &str = "ca-key.pem";
/// Ten years: the CA is installed in trust stores, which should not need refreshing often.
const CA_VALIDITY: Duration = Duration::days(3650);

pub struct CertificateAuthority {
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl CertificateAuthority {
    /// Loads the CA kept in `dir`, creating it there on first use.
    pub fn load_or_create(dir: &Path) -> Result<Self, TlsError> {
        let (cert, key) = (dir.join(CERT_FILE), dir.join(KEY_FILE));
        if cert.exists() || key.exists() {
            return Self::load(&cert, &key);
        }
        fs::create_dir_all(dir).map_err(TlsError::io(dir))?;
        let key_pair = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let params = ca_params();
        let cert_pem = params.self_signed(&key_pair)?.pem();
        // Key first, cert last: a cert file on disk means its key is there too.
        write_new(&key, &key_pair.serialize_pem(), 0o600)?;
        write_new(&cert, &cert_pem, 0o644)?;
        tracing::info!(cert = %cert.display(), "created the interceptor CA");
        Self::from_pem(cert_pem, key_pair, &cert)
    }

    /// Loads an existing CA certificate and its private key (PEM files).
    pub fn load(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let cert_pem = fs::read_to_string(cert).map_err(TlsError::io(cert))?;
        let key_pem = fs::read_to_string(key).map_err(TlsError::io(key))?;
        let key_pair = KeyPair::from_pem(&key_pem).map_err(|e| TlsError::BadCa {
            path: key.to_owned(),
            reason: format!("private key: {e}"),
        })?;
        Self::from_pem(cert_pem, key_pair, cert)
    }

    fn from_pem(cert_pem: String, key_pair: KeyPair, path: &Path) -> Result<Self, TlsError> {
        let bad = |reason: String| TlsError::BadCa {
            path: path.to_owned(),
            reason,
        };
        let cert_der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| bad(format!("certificate: {e}")))?;
        let issuer = Issuer::from_ca_cert_der(&cert_der, key_pair)
            .map_err(|e| bad(format!("certificate: {e}")))?;
        Ok(CertificateAuthority {
            cert_pem,
            cert_der,
            issuer,
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    pub fn issuer(&self) -> &Issuer<'static, KeyPair> {
        &self.issuer
    }
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "interceptor");
    dn.push(
        DnType::CommonName,
        format!("interceptor local CA ({})", hostname()),
    );
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::days(1);
    params.not_after = now + CA_VALIDITY;
    params
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into())
}

/// Writes a file that must not exist yet, with `mode` from the start (no window in which a
/// key is readable by others).
fn write_new(path: &Path, contents: &str, mode: u32) -> Result<(), TlsError> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(TlsError::io(path))?;
    f.write_all(contents.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(TlsError::io(path))
}

/// Where the CA lives inside the daemon's data directory.
pub fn default_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("tls")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn created_once_with_a_private_key_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::load_or_create(dir.path()).unwrap();
        let mode = fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(ca.cert_pem().starts_with("-----BEGIN CERTIFICATE-----"));
        let again = CertificateAuthority::load_or_create(dir.path()).unwrap();
        assert_eq!(again.cert_der(), ca.cert_der());
    }

    #[test]
    fn operator_ca_is_loaded_and_garbage_is_refused_with_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let made = CertificateAuthority::load_or_create(dir.path()).unwrap();
        let loaded =
            CertificateAuthority::load(&dir.path().join(CERT_FILE), &dir.path().join(KEY_FILE))
                .unwrap();
        assert_eq!(loaded.cert_der(), made.cert_der());
        let junk = dir.path().join("junk.pem");
        fs::write(&junk, "not a key").unwrap();
        let err = CertificateAuthority::load(&dir.path().join(CERT_FILE), &junk)
            .err()
            .unwrap();
        assert!(err.to_string().contains("junk.pem"), "{err}");
    }
}
