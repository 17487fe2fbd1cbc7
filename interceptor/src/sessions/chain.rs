//! Tamper evidence: every record carries the SHA-256 of the record before it, across segment
//! boundaries, so changing, removing or reordering any record but the newest breaks the chain
//! at that point. The newest record's hash (the head) is what `verify` prints: keeping a copy
//! elsewhere also covers the tail.

use std::fmt;
use std::time::SystemTime;

use serde::{Deserialize, Deserializer, Serialize, Serializer, de::Error as _};
use sha2::{Digest, Sha256};

use super::record::Event;

/// A SHA-256 digest, hex in JSON.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct Hash(pub [u8; 32]);

impl Hash {
    /// What the very first record of a store links to.
    pub const GENESIS: Hash = Hash([0; 32]);

    /// The hash of a record: of its payload exactly as stored.
    pub fn of(payload: &[u8]) -> Hash {
        Hash(Sha256::digest(payload).into())
    }
}

impl fmt::Display for Hash {
    // Every record writes one: byte-wise `write!` was a tenth of the writer's time.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut hex = [0; 64];
        for (i, b) in self.0.iter().enumerate() {
            hex[2 * i] = DIGITS[usize::from(b >> 4)];
            hex[2 * i + 1] = DIGITS[usize::from(b & 0xf)];
        }
        f.write_str(std::str::from_utf8(&hex).expect("hex digits are ASCII"))
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for Hash {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Hash {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Hash, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        let bytes = text.as_bytes();
        if bytes.len() != 64 {
            return Err(D::Error::custom("a hash is 64 hex digits"));
        }
        let mut out = [0; 32];
        for (i, pair) in bytes.chunks(2).enumerate() {
            let pair = std::str::from_utf8(pair).map_err(D::Error::custom)?;
            out[i] = u8::from_str_radix(pair, 16).map_err(D::Error::custom)?;
        }
        Ok(Hash(out))
    }
}

/// One stored record: an event, when it was recorded, and its place in the chain.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Record {
    /// Position in the whole store, from 0, never reused.
    pub seq: u64,
    /// When the event was handed to the store (replay timing, `--since`, export ranges).
    #[serde(with = "humantime_serde")]
    pub at: SystemTime,
    /// Hash of the record with `seq - 1` (GENESIS for the first).
    pub prev: Hash,
    pub event: Event,
}

/// The same record for writing, borrowing its event.
#[derive(Serialize)]
pub struct RecordRef<'a> {
    pub seq: u64,
    #[serde(with = "humantime_serde")]
    pub at: SystemTime,
    pub prev: Hash,
    pub event: &'a Event,
}

/// The chain fields of a record and what kind its event is, readable whatever the event's
/// shape (cheaper than decoding it, and works for kinds this version does not know).
#[derive(Deserialize)]
pub struct Link {
    pub seq: u64,
    #[serde(with = "humantime_serde")]
    pub at: SystemTime,
    pub prev: Hash,
    pub event: EventKind,
}

#[derive(Deserialize)]
pub struct EventKind {
    #[serde(rename = "event")]
    pub kind: String,
    /// The session, for the kinds that belong to one (approvals carry their own ids here).
    pub id: Option<u64>,
}

impl EventKind {
    /// The session this event belongs to; None for store events (approvals, retention,
    /// policy loads), whose `id`, if any, is something else.
    pub fn session(&self) -> Option<u64> {
        match self.kind.as_str() {
            "approval" | "retention" | "policy_loaded" => None,
            _ => self.id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_round_trips_as_hex() {
        let h = Hash::of(b"abc");
        let json = serde_json::to_string(&h).unwrap();
        assert_eq!(
            json,
            "\"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\""
        );
        assert_eq!(serde_json::from_str::<Hash>(&json).unwrap(), h);
        assert!(serde_json::from_str::<Hash>("\"abc\"").is_err());
    }
}
