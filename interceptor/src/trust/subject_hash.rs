//! OpenSSL's subject-name hash (`openssl x509 -subject_hash`), the `<hash>.0` file name by
//! which OpenSSL looks a CA up in a hashed certificate directory (`-CApath`, `SSL_CERT_DIR`).
//!
//! The hash is over a canonical form of the name: the DER of each RDN (without the outer
//! SEQUENCE), where every string value is re-encoded as a UTF8String with surrounding
//! whitespace removed, inner whitespace runs collapsed to one space and ASCII letters
//! lowercased. The first four bytes of its SHA-1, little-endian, are the hash.

use anyhow::{Context, bail};
use x509_parser::prelude::{FromDer, X509Certificate};

/// The subject hash of a DER certificate, as OpenSSL prints it (8 lowercase hex digits).
pub fn subject_hash(cert_der: &[u8]) -> anyhow::Result<String> {
    let (_, cert) = X509Certificate::from_der(cert_der).context("unparsable CA certificate")?;
    let mut canonical = Vec::new();
    for rdn in cert.subject().iter() {
        let mut values: Vec<Vec<u8>> = Vec::new();
        for atv in rdn.iter() {
            let mut ava = Vec::new();
            der(0x06, atv.attr_type().as_bytes(), &mut ava);
            let value = atv.attr_value();
            let tag = value.header.tag().0;
            match canonical_text(tag, value.data)? {
                Some(text) => der(0x0c, &text, &mut ava),
                None => {
                    let Ok(tag) = u8::try_from(tag) else {
                        bail!("name value with a multi-byte tag");
                    };
                    let class = (value.header.class() as u8) << 6;
                    let constructed = if value.header.is_constructed() {
                        0x20
                    } else {
                        0
                    };
                    der(class | constructed | tag, value.data, &mut ava);
                }
            }
            let mut seq = Vec::new();
            der(0x30, &ava, &mut seq);
            values.push(seq);
        }
        // DER orders the members of a SET OF by their encodings.
        values.sort();
        der(0x31, &values.concat(), &mut canonical);
    }
    let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &canonical);
    let d = digest.as_ref();
    Ok(format!(
        "{:08x}",
        u32::from_le_bytes([d[0], d[1], d[2], d[3]])
    ))
}

/// The canonical UTF-8 of a string value, or `None` for a type OpenSSL keeps as it is.
fn canonical_text(tag: u32, data: &[u8]) -> anyhow::Result<Option<Vec<u8>>> {
    let text: String = match tag {
        12 => String::from_utf8_lossy(data).into_owned(),
        // PrintableString, T61String, IA5String, VisibleString: one byte per character.
        19 | 20 | 22 | 26 => data.iter().map(|&b| char::from(b)).collect(),
        // BMPString (UTF-16BE) and UniversalString (UCS-4BE).
        30 => char::decode_utf16(data.chunks(2).map(|c| u16::from_be_bytes([c[0], c[1]])))
            .collect::<Result<_, _>>()
            .context("bad BMPString in the CA's name")?,
        28 => data
            .chunks(4)
            .map(|c| char::from_u32(u32::from_be_bytes([c[0], c[1], c[2], c[3]])))
            .collect::<Option<_>>()
            .context("bad UniversalString in the CA's name")?,
        _ => return Ok(None),
    };
    let space = |b: &u8| matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r');
    let bytes = text.as_bytes();
    let start = bytes.iter().position(|b| !space(b)).unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !space(b))
        .map_or(start, |i| i + 1);
    let mut out = Vec::with_capacity(end - start);
    let mut in_space = false;
    for &b in &bytes[start..end] {
        if space(&b) {
            if !in_space {
                out.push(b' ');
            }
            in_space = true;
        } else {
            out.push(b.to_ascii_lowercase());
            in_space = false;
        }
    }
    Ok(Some(out))
}

/// Appends a DER TLV.
fn der(tag: u8, content: &[u8], out: &mut Vec<u8>) {
    out.push(tag);
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|&&b| b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DistinguishedName, DnType, DnValue, KeyPair};
    use std::process::{Command, Stdio};

    fn openssl_hash(pem: &str) -> String {
        let mut child = Command::new("openssl")
            .args(["x509", "-noout", "-subject_hash"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("openssl must be installed");
        std::io::Write::write_all(child.stdin.as_mut().unwrap(), pem.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    #[test]
    fn matches_openssl_for_mixed_case_spacing_and_string_types() {
        let subjects: Vec<Vec<(DnType, DnValue)>> = vec![
            vec![
                (
                    DnType::OrganizationName,
                    DnValue::Utf8String("interceptor".into()),
                ),
                (
                    DnType::CommonName,
                    DnValue::Utf8String("interceptor local CA".into()),
                ),
            ],
            vec![
                (
                    DnType::CountryName,
                    DnValue::PrintableString("DE".try_into().unwrap()),
                ),
                (
                    DnType::CommonName,
                    DnValue::Utf8String("  Mixed   CASE\tName  ".into()),
                ),
            ],
            vec![(
                DnType::CommonName,
                DnValue::Utf8String("Zürich Ünïcode CA".into()),
            )],
            vec![(
                DnType::CommonName,
                DnValue::BmpString("Bmp Name".try_into().unwrap()),
            )],
            vec![(
                DnType::CommonName,
                DnValue::Ia5String("ia5 NAME".try_into().unwrap()),
            )],
        ];
        for subject in subjects {
            let mut params = CertificateParams::default();
            let mut dn = DistinguishedName::new();
            for (t, v) in subject {
                dn.push(t, v);
            }
            params.distinguished_name = dn;
            let cert = params.self_signed(&KeyPair::generate().unwrap()).unwrap();
            assert_eq!(
                subject_hash(cert.der()).unwrap(),
                openssl_hash(&cert.pem()),
                "{:?}",
                params.distinguished_name
            );
        }
    }
}
