//! What protocol a connection speaks, from its first bytes.

/// The protocols the proxy can look into; everything else is relayed as raw TCP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// A TLS handshake record.
    Tls,
    /// An HTTP/1.x request line.
    Http1,
    /// The HTTP/2 connection preface (cleartext, prior knowledge).
    H2Prior,
    Other,
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const METHODS: &[&[u8]] = &[
    b"GET ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"HEAD ",
    b"OPTIONS ",
    b"PATCH ",
    b"CONNECT ",
    b"TRACE ",
];

/// Longest prefix `classify` may need.
pub const MAX_SNIFF: usize = H2_PREFACE.len();

/// `None` while `first` could still become more than one thing.
pub fn classify(first: &[u8]) -> Option<Protocol> {
    // Handshake content type, then a 3.x record version.
    let tls: &[u8] = &[0x16, 0x03];
    let candidates = METHODS
        .iter()
        .map(|m| (*m, Protocol::Http1))
        .chain([(H2_PREFACE, Protocol::H2Prior), (tls, Protocol::Tls)]);
    let mut undecided = false;
    for (pattern, protocol) in candidates {
        if first.starts_with(pattern) {
            return Some(protocol);
        }
        undecided |= pattern.starts_with(first);
    }
    (!undecided).then_some(Protocol::Other)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_or_waits_for_more() {
        assert_eq!(classify(b"\x16\x03\x01\x02\x00"), Some(Protocol::Tls));
        assert_eq!(classify(b"\x16"), None);
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Some(Protocol::Http1));
        assert_eq!(classify(b"PO"), None);
        assert_eq!(classify(b"PRI * HTTP/2.0\r\n"), None);
        assert_eq!(classify(H2_PREFACE), Some(Protocol::H2Prior));
        assert_eq!(classify(b"SSH-2.0-x"), Some(Protocol::Other));
        assert_eq!(classify(b"GETX"), Some(Protocol::Other));
        assert_eq!(classify(b"\x16\x02"), Some(Protocol::Other));
    }
}
