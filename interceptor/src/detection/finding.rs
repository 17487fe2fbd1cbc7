//! What a detection leaves in the session record: never the secret, only a salted hash so
//! repeats of one secret can be correlated.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// How the secret was written in the traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    Plain,
    JsonEscaped,
    UrlEncoded,
    Base64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    pub rule: String,
    /// Offset of the secret in the stream or buffer (as written, so in encoded bytes).
    pub offset: u64,
    /// Length as written.
    pub length: u32,
    pub encoding: Encoding,
    /// Salted SHA-256 of the (decoded) secret, hex, first 16 bytes.
    pub hash: String,
    /// Bytes of the secret that had already been forwarded when it was recognised (only
    /// after an explicit flush cut a secret in two); 0 means it was fully masked.
    pub forwarded_unmasked: u32,
    /// The policy asked only to report this rule (`secrets_report`): the secret went on
    /// untouched.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub report_only: bool,
}

/// Hashes secrets with a salt fixed for the daemon's lifetime (or given, for tests).
#[derive(Clone)]
pub struct SecretHasher {
    salt: [u8; 16],
}

impl SecretHasher {
    pub fn random() -> Result<SecretHasher, getrandom::Error> {
        let mut salt = [0u8; 16];
        getrandom::fill(&mut salt)?;
        Ok(SecretHasher { salt })
    }

    pub fn with_salt(salt: [u8; 16]) -> SecretHasher {
        SecretHasher { salt }
    }

    pub fn hash(&self, secret: &[u8]) -> String {
        let digest = Sha256::new()
            .chain_update(self.salt)
            .chain_update(secret)
            .finalize();
        digest[..16].iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl std::fmt::Debug for SecretHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretHasher(..)")
    }
}

/// Most bytes of a secret left readable at its start.
pub const MAX_KEPT_PREFIX: usize = 4;

/// Bytes of a secret of `len` bytes left readable at its start, for recognition.
pub fn kept_prefix(len: usize) -> usize {
    (len / 4).min(MAX_KEPT_PREFIX)
}

/// Same-length masking: keeps a short prefix and replaces the rest with `*`.
pub const MASK_BYTE: u8 = b'*';
