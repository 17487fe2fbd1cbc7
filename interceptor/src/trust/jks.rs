//! Adding a trusted certificate to a Java KeyStore (JKS) file, the format of the default
//! truststore (`cacerts`) that Debian and Ubuntu JREs read. PKCS#12 truststores are left
//! alone (the caller skips them).
//!
//! Layout: magic `FEEDFEED`, version 2, entry count, entries, then a SHA-1 over the store
//! password (UTF-16BE), the words "Mighty Aphrodite" and everything before it.

const MAGIC: [u8; 4] = [0xfe, 0xed, 0xfe, 0xed];
const DIGEST_LEN: usize = 20;
/// The password every JRE ships `cacerts` with (only the integrity digest uses it).
const PASSWORD: &str = "changeit";
const TRUSTED_CERT_ENTRY: u32 = 2;

/// Whether `store` is a version-2 JKS file.
pub fn is_jks(store: &[u8]) -> bool {
    store.len() >= 12 + DIGEST_LEN && store[..4] == MAGIC && store[4..8] == [0, 0, 0, 2]
}

/// `store` with one more trusted certificate (`alias`, DER), or `None` when it is not JKS.
pub fn with_trusted_cert(
    store: &[u8],
    alias: &str,
    cert_der: &[u8],
    now_ms: u64,
) -> Option<Vec<u8>> {
    if !is_jks(store) {
        return None;
    }
    let count = u32::from_be_bytes(store[8..12].try_into().ok()?);
    let mut out = store[..store.len() - DIGEST_LEN].to_vec();
    out[8..12].copy_from_slice(&count.checked_add(1)?.to_be_bytes());
    out.extend_from_slice(&TRUSTED_CERT_ENTRY.to_be_bytes());
    push_utf(&mut out, alias)?;
    out.extend_from_slice(&now_ms.to_be_bytes());
    push_utf(&mut out, "X.509")?;
    out.extend_from_slice(&u32::try_from(cert_der.len()).ok()?.to_be_bytes());
    out.extend_from_slice(cert_der);
    let digest = integrity_digest(&out);
    out.extend_from_slice(&digest);
    Some(out)
}

fn integrity_digest(body: &[u8]) -> Vec<u8> {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    for unit in PASSWORD.encode_utf16() {
        ctx.update(&unit.to_be_bytes());
    }
    ctx.update(b"Mighty Aphrodite");
    ctx.update(body);
    ctx.finish().as_ref().to_vec()
}

/// Java's modified UTF-8 with a 16-bit length; ASCII aliases only need the plain bytes.
fn push_utf(out: &mut Vec<u8>, s: &str) -> Option<()> {
    if !s.is_ascii() || s.contains('\0') {
        return None;
    }
    out.extend_from_slice(&u16::try_from(s.len()).ok()?.to_be_bytes());
    out.extend_from_slice(s.as_bytes());
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An empty JKS store: header, no entries, digest.
    fn empty_store() -> Vec<u8> {
        let mut s = MAGIC.to_vec();
        s.extend_from_slice(&2u32.to_be_bytes());
        s.extend_from_slice(&0u32.to_be_bytes());
        let d = integrity_digest(&s);
        s.extend_from_slice(&d);
        s
    }

    #[test]
    fn appends_an_entry_with_a_valid_digest() {
        let store = empty_store();
        let out = with_trusted_cert(&store, "interceptor-ca", b"DER", 7).unwrap();
        assert_eq!(&out[8..12], &1u32.to_be_bytes());
        let (body, digest) = out.split_at(out.len() - DIGEST_LEN);
        assert_eq!(digest, integrity_digest(body).as_slice());
        assert!(body.ends_with(b"\x00\x05X.509\x00\x00\x00\x03DER"));
    }

    #[test]
    fn leaves_other_formats_alone() {
        assert!(with_trusted_cert(b"\x30\x82\x01\x00 PKCS#12 store ....", "a", b"x", 0).is_none());
    }
}
