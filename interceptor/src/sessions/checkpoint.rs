//! Anchors: the chain head `(seq, hash)` written beside the store (`checkpoint.json`), signed
//! with an ed25519 key of the daemon's own (`checkpoint.key`, made on first start, 0600).
//! The chain alone shows every change but a cut tail; a checkpoint says how far the chain had
//! reached, so `verify` can name records missing after it. Both files are in the data
//! directory: this holds against anyone who can cut the segments but not also forge a
//! checkpoint (a root attacker on the host can do both; anchoring off-host covers that).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

use super::chain::Hash;
use crate::private_fs;

pub const CHECKPOINT_FILE: &str = "checkpoint.json";
const KEY_FILE: &str = "checkpoint.key";

/// A record's place in the chain: its sequence number and hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    pub seq: u64,
    pub hash: Hash,
}

/// A signed statement that the chain reached `head` at `at`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Checkpoint {
    #[serde(flatten)]
    pub head: Head,
    #[serde(with = "humantime_serde")]
    pub at: SystemTime,
    /// The public key it is signed with (base64), to pin elsewhere.
    pub key: String,
    /// ed25519 over [`Checkpoint::message`] (base64).
    pub signature: String,
}

impl Checkpoint {
    /// What is signed: every field but the signature, in a fixed text form.
    fn message(head: Head, at: SystemTime, key: &str) -> String {
        format!(
            "interceptor checkpoint v1\nseq {}\nhash {}\nat {}\nkey {key}\n",
            head.seq,
            head.hash,
            humantime::format_rfc3339_nanos(at)
        )
    }

    pub fn sign(key: &SigningKey, head: Head, at: SystemTime) -> Checkpoint {
        let public = BASE64.encode(key.verifying_key().as_bytes());
        let signature = key.sign(Self::message(head, at, &public).as_bytes());
        Checkpoint {
            head,
            at,
            key: public,
            signature: BASE64.encode(signature.to_bytes()),
        }
    }

    /// Whether `key` signed exactly this checkpoint.
    pub fn check(&self, key: &VerifyingKey) -> Result<(), String> {
        if self.key != BASE64.encode(key.as_bytes()) {
            return Err(format!(
                "the checkpoint names key {}, not the daemon's key {}",
                self.key,
                BASE64.encode(key.as_bytes())
            ));
        }
        let bytes = BASE64
            .decode(&self.signature)
            .map_err(|e| format!("signature is not base64: {e}"))?;
        let signature = Signature::from_slice(&bytes).map_err(|e| e.to_string())?;
        key.verify(
            Self::message(self.head, self.at, &self.key).as_bytes(),
            &signature,
        )
        .map_err(|_| "the signature does not match the checkpoint: it was altered".into())
    }
}

fn key_path(dir: &Path) -> PathBuf {
    dir.join(KEY_FILE)
}

fn checkpoint_path(dir: &Path) -> PathBuf {
    dir.join(CHECKPOINT_FILE)
}

/// The daemon's signing key, made (0600) the first time.
pub fn load_or_create_key(dir: &Path) -> io::Result<SigningKey> {
    let path = key_path(dir);
    match read_key(&path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        other => return other,
    }
    let mut seed = [0; 32];
    getrandom::fill(&mut seed).map_err(|e| io::Error::other(e.to_string()))?;
    let mut file = private_fs::private_file()
        .write(true)
        .create_new(true)
        .open(&path)?;
    io::Write::write_all(&mut file, format!("{}\n", BASE64.encode(seed)).as_bytes())?;
    file.sync_all()?;
    tracing::info!(key = %path.display(), "created the session checkpoint signing key");
    Ok(SigningKey::from_bytes(&seed))
}

fn read_key(path: &Path) -> io::Result<SigningKey> {
    let text = fs::read_to_string(path)?;
    let seed: [u8; 32] = BASE64
        .decode(text.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: not a base64 ed25519 seed", path.display()),
            )
        })?;
    Ok(SigningKey::from_bytes(&seed))
}

/// The newest checkpoint of the store in `dir`, checked against the daemon's key: `Ok(None)`
/// when there is none, `Err` saying why the one there cannot be trusted.
pub fn load(dir: &Path) -> Result<Option<Checkpoint>, String> {
    let path = checkpoint_path(dir);
    let text = match fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let checkpoint: Checkpoint = serde_json::from_slice(&text)
        .map_err(|e| format!("{}: not a checkpoint: {e}", path.display()))?;
    let key = read_key(&key_path(dir)).map_err(|e| {
        format!(
            "{}: the key the checkpoint is signed with: {e}",
            key_path(dir).display()
        )
    })?;
    checkpoint
        .check(&key.verifying_key())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(Some(checkpoint))
}

/// Writes checkpoints of heads already fsynced, at most once per interval (and the last one
/// when the store closes). Runs on the fsync thread: a checkpoint never covers a record that
/// is not on disk.
pub struct Checkpointer {
    dir: PathBuf,
    key: SigningKey,
    interval: Duration,
    /// The seq of the newest checkpoint written.
    written: Option<u64>,
    /// When one was last written or tried (a failed write is tried again an interval later).
    tried: Option<Instant>,
    pending: Option<Head>,
}

impl Checkpointer {
    pub fn new(dir: &Path, key: SigningKey, interval: Duration) -> Checkpointer {
        Checkpointer {
            dir: dir.to_owned(),
            key,
            interval,
            written: None,
            tried: None,
            pending: None,
        }
    }

    /// How long until the pending head is due.
    pub fn wait(&self) -> Duration {
        match (self.pending, self.tried) {
            (None, _) => Duration::MAX,
            (Some(_), None) => Duration::ZERO,
            (Some(_), Some(at)) => self.interval.saturating_sub(at.elapsed()),
        }
    }

    /// `head` is on disk: write it now if one is due.
    pub fn synced(&mut self, head: Head) {
        if self.written.is_some_and(|seq| seq >= head.seq) {
            return;
        }
        self.pending = Some(head);
        if self.wait().is_zero() {
            self.flush();
        }
    }

    /// Writes the pending head, if any.
    pub fn flush(&mut self) {
        let Some(head) = self.pending.take() else {
            return;
        };
        let checkpoint = Checkpoint::sign(&self.key, head, SystemTime::now());
        let path = checkpoint_path(&self.dir);
        let tmp = self.dir.join(format!("{CHECKPOINT_FILE}.tmp"));
        let bytes = serde_json::to_vec_pretty(&checkpoint).expect("checkpoints serialize");
        self.tried = Some(Instant::now());
        match private_fs::replace(&path, &tmp, &bytes) {
            Ok(()) => self.written = Some(head.seq),
            Err(e) => {
                tracing::error!(file = %path.display(), error = %e, "writing the session checkpoint failed");
                self.pending = Some(head);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_verifies_until_any_field_changes() {
        let dir = tempfile::tempdir().unwrap();
        let key = load_or_create_key(dir.path()).unwrap();
        // The same key the second time.
        assert_eq!(
            load_or_create_key(dir.path()).unwrap().to_bytes(),
            key.to_bytes()
        );
        let head = Head {
            seq: 7,
            hash: Hash::of(b"x"),
        };
        let mut c = Checkpointer::new(dir.path(), key, Duration::from_secs(3600));
        c.synced(head);
        let loaded = load(dir.path()).unwrap().unwrap();
        assert_eq!(loaded.head, head);
        // Within the interval the next head waits; flush writes it.
        c.synced(Head { seq: 9, ..head });
        assert_eq!(load(dir.path()).unwrap().unwrap().head.seq, 7);
        c.flush();
        assert_eq!(load(dir.path()).unwrap().unwrap().head.seq, 9);

        let path = checkpoint_path(dir.path());
        let text = fs::read_to_string(&path).unwrap();
        fs::write(&path, text.replace("\"seq\": 9", "\"seq\": 19")).unwrap();
        let err = load(dir.path()).unwrap_err();
        assert!(err.contains("altered"), "{err}");
        // Signed by another key.
        let other = SigningKey::from_bytes(&[1; 32]);
        let forged = Checkpoint::sign(&other, head, SystemTime::now());
        fs::write(&path, serde_json::to_vec(&forged).unwrap()).unwrap();
        let err = load(dir.path()).unwrap_err();
        assert!(err.contains("not the daemon's key"), "{err}");
    }
}
