//! `Content-Encoding` bodies (gzip, deflate, br, zstd) decoded as they stream, with a cap on
//! the decoded size against compression bombs, and encoded again after masking.

use std::io::{self, Write};

use flate2::Compression;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContentEncoding {
    Gzip,
    /// HTTP's "deflate" is the zlib format (RFC 9110 §8.4.1.2).
    Deflate,
    Brotli,
    Zstd,
}

impl ContentEncoding {
    /// From a `Content-Encoding` token; `None` for identity or anything unknown.
    pub fn from_token(token: &str) -> Option<ContentEncoding> {
        match token.trim().to_ascii_lowercase().as_str() {
            "gzip" | "x-gzip" => Some(ContentEncoding::Gzip),
            "deflate" => Some(ContentEncoding::Deflate),
            "br" => Some(ContentEncoding::Brotli),
            "zstd" => Some(ContentEncoding::Zstd),
            _ => None,
        }
    }

    pub fn token(self) -> &'static str {
        match self {
            ContentEncoding::Gzip => "gzip",
            ContentEncoding::Deflate => "deflate",
            ContentEncoding::Brotli => "br",
            ContentEncoding::Zstd => "zstd",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("decoded {encoding} body exceeds the cap of {limit} bytes (compression bomb?)")]
    TooLarge { encoding: &'static str, limit: u64 },
    #[error("corrupt {encoding} body: {source}")]
    Corrupt {
        encoding: &'static str,
        source: io::Error,
    },
}

/// Output sink that refuses to grow past a total.
struct Capped {
    out: Vec<u8>,
    total: u64,
    limit: u64,
}

impl Write for Capped {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.total + buf.len() as u64 > self.limit {
            return Err(io::Error::new(
                io::ErrorKind::FileTooLarge,
                "decoded size cap",
            ));
        }
        self.total += buf.len() as u64;
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

enum Decompressor {
    Gzip(flate2::write::MultiGzDecoder<Capped>),
    Deflate(flate2::write::ZlibDecoder<Capped>),
    Brotli(Box<brotli::DecompressorWriter<Capped>>),
    Zstd(zstd::stream::write::Decoder<'static, Capped>),
}

/// Decodes a body chunk by chunk; refuses to produce more than `limit` bytes in total.
pub struct Decoder {
    encoding: ContentEncoding,
    inner: Decompressor,
    limit: u64,
}

/// Buffer size for the brotli writers.
const BROTLI_BUFFER: usize = 16 * 1024;

impl Decoder {
    pub fn new(encoding: ContentEncoding, limit: u64) -> Result<Decoder, CodecError> {
        let sink = Capped {
            out: Vec::new(),
            total: 0,
            limit,
        };
        let inner = match encoding {
            ContentEncoding::Gzip => Decompressor::Gzip(flate2::write::MultiGzDecoder::new(sink)),
            ContentEncoding::Deflate => {
                Decompressor::Deflate(flate2::write::ZlibDecoder::new(sink))
            }
            ContentEncoding::Brotli => Decompressor::Brotli(Box::new(
                brotli::DecompressorWriter::new(sink, BROTLI_BUFFER),
            )),
            ContentEncoding::Zstd => Decompressor::Zstd(
                zstd::stream::write::Decoder::new(sink).map_err(|e| corrupt(encoding, e))?,
            ),
        };
        Ok(Decoder {
            encoding,
            inner,
            limit,
        })
    }

    /// Feeds compressed bytes; returns what they decoded to.
    pub fn push(&mut self, compressed: &[u8]) -> Result<Vec<u8>, CodecError> {
        let written = match &mut self.inner {
            Decompressor::Gzip(d) => d.write_all(compressed),
            Decompressor::Deflate(d) => d.write_all(compressed),
            Decompressor::Brotli(d) => d.write_all(compressed),
            Decompressor::Zstd(d) => d.write_all(compressed),
        };
        written.map_err(|e| self.error(e))?;
        Ok(std::mem::take(&mut self.sink().out))
    }

    /// End of the compressed body: the rest of the decoded bytes; fails if it was cut short.
    pub fn finish(mut self) -> Result<Vec<u8>, CodecError> {
        let finished = match &mut self.inner {
            Decompressor::Gzip(d) => d.try_finish(),
            Decompressor::Deflate(d) => d.try_finish(),
            Decompressor::Brotli(d) => d.close(),
            Decompressor::Zstd(d) => d.do_finish(),
        };
        finished.map_err(|e| self.error(e))?;
        Ok(std::mem::take(&mut self.sink().out))
    }

    fn sink(&mut self) -> &mut Capped {
        match &mut self.inner {
            Decompressor::Gzip(d) => d.get_mut(),
            Decompressor::Deflate(d) => d.get_mut(),
            Decompressor::Brotli(d) => d.get_mut(),
            Decompressor::Zstd(d) => d.get_mut(),
        }
    }

    fn error(&mut self, e: io::Error) -> CodecError {
        if e.kind() == io::ErrorKind::FileTooLarge || self.sink().total >= self.limit {
            CodecError::TooLarge {
                encoding: self.encoding.token(),
                limit: self.limit,
            }
        } else {
            corrupt(self.encoding, e)
        }
    }
}

fn corrupt(encoding: ContentEncoding, source: io::Error) -> CodecError {
    CodecError::Corrupt {
        encoding: encoding.token(),
        source,
    }
}

enum Compressor {
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
    Deflate(flate2::write::ZlibEncoder<Vec<u8>>),
    Brotli(Box<brotli::CompressorWriter<Vec<u8>>>),
    Zstd(zstd::stream::write::Encoder<'static, Vec<u8>>),
}

/// Encodes a (masked) body chunk by chunk, in the encoding it arrived in.
pub struct Encoder {
    encoding: ContentEncoding,
    inner: Compressor,
}

/// Fast levels: re-encoding happens inline on the traffic path.
const BROTLI_QUALITY: u32 = 4;
const BROTLI_WINDOW: u32 = 22;
const ZSTD_LEVEL: i32 = 3;

impl Encoder {
    pub fn new(encoding: ContentEncoding) -> Result<Encoder, CodecError> {
        let inner = match encoding {
            ContentEncoding::Gzip => Compressor::Gzip(flate2::write::GzEncoder::new(
                Vec::new(),
                Compression::fast(),
            )),
            ContentEncoding::Deflate => Compressor::Deflate(flate2::write::ZlibEncoder::new(
                Vec::new(),
                Compression::fast(),
            )),
            ContentEncoding::Brotli => Compressor::Brotli(Box::new(brotli::CompressorWriter::new(
                Vec::new(),
                BROTLI_BUFFER,
                BROTLI_QUALITY,
                BROTLI_WINDOW,
            ))),
            ContentEncoding::Zstd => Compressor::Zstd(
                zstd::stream::write::Encoder::new(Vec::new(), ZSTD_LEVEL)
                    .map_err(|e| corrupt(encoding, e))?,
            ),
        };
        Ok(Encoder { encoding, inner })
    }

    /// Feeds plain bytes; returns the compressed bytes ready so far (possibly none).
    pub fn push(&mut self, plain: &[u8]) -> Result<Vec<u8>, CodecError> {
        self.write(plain, false)
    }

    /// Feeds plain bytes and flushes them through (a sync flush): the client can decode
    /// everything fed so far, as a streamed event must be at once.
    pub fn push_flushed(&mut self, plain: &[u8]) -> Result<Vec<u8>, CodecError> {
        self.write(plain, true)
    }

    fn write(&mut self, plain: &[u8], flush: bool) -> Result<Vec<u8>, CodecError> {
        fn feed(w: &mut impl Write, plain: &[u8], flush: bool) -> std::io::Result<()> {
            w.write_all(plain)?;
            if flush { w.flush() } else { Ok(()) }
        }
        let (written, out) = match &mut self.inner {
            Compressor::Gzip(e) => (feed(e, plain, flush), e.get_mut()),
            Compressor::Deflate(e) => (feed(e, plain, flush), e.get_mut()),
            Compressor::Brotli(e) => (feed(e.as_mut(), plain, flush), e.get_mut()),
            Compressor::Zstd(e) => (feed(e, plain, flush), e.get_mut()),
        };
        let out = std::mem::take(out);
        written.map_err(|e| corrupt(self.encoding, e))?;
        Ok(out)
    }

    /// The rest of the compressed body.
    pub fn finish(self) -> Result<Vec<u8>, CodecError> {
        let encoding = self.encoding;
        match self.inner {
            Compressor::Gzip(e) => e.finish(),
            Compressor::Deflate(e) => e.finish(),
            Compressor::Brotli(e) => Ok(e.into_inner()),
            Compressor::Zstd(e) => e.finish(),
        }
        .map_err(|e| corrupt(encoding, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [ContentEncoding; 4] = [
        ContentEncoding::Gzip,
        ContentEncoding::Deflate,
        ContentEncoding::Brotli,
        ContentEncoding::Zstd,
    ];

    fn encode(encoding: ContentEncoding, plain: &[u8]) -> Vec<u8> {
        let mut e = Encoder::new(encoding).unwrap();
        let mut out = Vec::new();
        for chunk in plain.chunks(1000) {
            out.extend(e.push(chunk).unwrap());
        }
        out.extend(e.finish().unwrap());
        out
    }

    fn decode(encoding: ContentEncoding, body: &[u8], limit: u64) -> Result<Vec<u8>, CodecError> {
        let mut d = Decoder::new(encoding, limit)?;
        let mut out = Vec::new();
        for chunk in body.chunks(777) {
            out.extend(d.push(chunk)?);
        }
        out.extend(d.finish()?);
        Ok(out)
    }

    #[test]
    fn every_encoding_round_trips_in_chunks() {
        let plain: Vec<u8> = (0..200_000u32)
            .flat_map(|i| format!("line {i} {}\n", i % 97).into_bytes())
            .collect();
        for encoding in ALL {
            let body = encode(encoding, &plain);
            assert!(body.len() < plain.len() / 2, "{encoding:?} compresses");
            assert_eq!(
                decode(encoding, &body, 1 << 30).unwrap(),
                plain,
                "{encoding:?}"
            );
        }
        assert_eq!(
            ContentEncoding::from_token(" GZIP "),
            Some(ContentEncoding::Gzip)
        );
        assert_eq!(ContentEncoding::from_token("identity"), None);
    }

    #[test]
    fn compression_bomb_is_rejected_with_a_clear_error() {
        // 64 MiB of zeros compresses to a few kilobytes in every encoding.
        let zeros = vec![0u8; 64 << 20];
        for encoding in ALL {
            let bomb = encode(encoding, &zeros);
            assert!(bomb.len() < 1 << 20, "{encoding:?}: {} bytes", bomb.len());
            let err = decode(encoding, &bomb, 8 << 20).unwrap_err();
            assert!(matches!(err, CodecError::TooLarge { limit, .. } if limit == 8 << 20));
            let message = err.to_string();
            assert!(
                message.contains("exceeds the cap of 8388608 bytes"),
                "{message}"
            );
        }
    }

    #[test]
    fn truncated_and_corrupt_bodies_are_errors() {
        for encoding in ALL {
            let body = encode(
                encoding,
                b"some body that is long enough to matter, some body",
            );
            let cut = &body[..body.len() / 2];
            assert!(
                matches!(
                    decode(encoding, cut, 1 << 20),
                    Err(CodecError::Corrupt { .. })
                ),
                "{encoding:?} truncated"
            );
        }
        let err = decode(ContentEncoding::Gzip, b"not gzip at all", 1 << 20).unwrap_err();
        assert!(err.to_string().starts_with("corrupt gzip body"), "{err}");
    }
}
