//! The secret-masking hook: every request and response passes the secret engine
//! ([`interceptor::detection`]) on its way through. Header values and the request target are
//! scanned whole (block mode); bodies stream through a [`Masker`] chunk by chunk, holding back
//! only its bounded tail. Masking keeps length (a short prefix stays, the rest becomes `*`),
//! so a plain body keeps its `Content-Length`.
//!
//! Compressed bodies (`Content-Encoding` gzip, deflate, br, zstd) are decoded as they stream,
//! masked, and encoded again in the same coding; the decoded size is capped
//! ([`MAX_DECODED_BODY`]) against compression bombs, and a body over the cap ends with that
//! error. Their length changes, so `Content-Length` goes. A body in a coding the engine cannot
//! read (stacked or unknown codings) is refused rather than forwarded unscanned.
//!
//! Every finding becomes a [`SecretFinding`] for the session record: rule, direction,
//! location, offset, salted hash; never the secret.

use std::ops::Range;
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use http::header::{CONTENT_ENCODING, CONTENT_LENGTH, HeaderMap, HeaderValue};
use http::{StatusCode, Uri};
use interceptor::detection::compression::{ContentEncoding, Decoder, Encoder};
use interceptor::detection::finding::{MASK_BYTE, kept_prefix};
use interceptor::detection::{Encoding, Engine, Finding, Masker, ScanError, SecretHasher};
use interceptor::relay_scan::Direction;

use super::hook::{BodyTransform, BoxError, Decision, ExchangeInfo, Hook, HookFuture, Verdict};
use super::tokenize::Tokenized;
use crate::sessions::record::SecretFinding;

/// Largest decoded size of one compressed body.
pub const MAX_DECODED_BODY: u64 = 64 << 20;

/// Where findings go (the session store, in the daemon).
pub type FindingSink = Arc<dyn Fn(SecretFinding) + Send + Sync>;

pub struct Masking {
    /// Swapped whole when the vault's echo rules change.
    engine: RwLock<Arc<Engine>>,
    hasher: SecretHasher,
    sink: FindingSink,
}

impl Masking {
    pub fn new(engine: Arc<Engine>, hasher: SecretHasher, sink: FindingSink) -> Masking {
        Masking {
            engine: RwLock::new(engine),
            hasher,
            sink,
        }
    }

    /// Puts a new engine in force for the exchanges that start from now on.
    pub fn set_engine(&self, engine: Arc<Engine>) {
        *self.engine.write().unwrap_or_else(|e| e.into_inner()) = engine;
    }

    fn engine(&self) -> Arc<Engine> {
        self.engine
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn reporter(&self, info: &ExchangeInfo, direction: Direction) -> Reporter {
        Reporter {
            sink: self.sink.clone(),
            session: info.session,
            seq: info.seq,
            direction,
        }
    }

    /// Masks the headers (all but `skip`) in place.
    fn mask_headers(
        &self,
        engine: &Engine,
        headers: &mut HeaderMap,
        skip: &[http::HeaderName],
        reporter: &Reporter,
    ) {
        for (name, value) in headers.iter_mut() {
            if skip.contains(name) {
                continue;
            }
            // Rules may anchor on the header name ("Authorization: Bearer ...").
            let prefix = format!("{name}: ");
            let mut text = prefix.clone().into_bytes();
            text.extend_from_slice(value.as_bytes());
            let Some(spans) = self.scan(engine, &text, prefix.len(), reporter, || {
                format!("header:{name}")
            }) else {
                continue;
            };
            let mut masked = value.as_bytes().to_vec();
            spans.into_iter().for_each(|s| mask(&mut masked, s));
            match HeaderValue::from_bytes(&masked) {
                Ok(mut v) => {
                    v.set_sensitive(value.is_sensitive());
                    *value = v;
                }
                // Only `*` was written into a valid value: cannot happen, but never forward
                // the secret if it did.
                Err(_) => *value = HeaderValue::from_static("*"),
            }
        }
    }

    /// Masks the path and query of a request target.
    fn mask_uri(&self, engine: &Engine, uri: &mut Uri, reporter: &Reporter) {
        let Some(target) = uri.path_and_query() else {
            return;
        };
        let text = target.as_str().as_bytes().to_vec();
        let Some(spans) = self.scan(engine, &text, 0, reporter, || "uri".into()) else {
            return;
        };
        let mut masked = text;
        spans.into_iter().for_each(|s| mask(&mut masked, s));
        let mut parts = uri.clone().into_parts();
        parts.path_and_query = http::uri::PathAndQuery::try_from(masked).ok();
        if let Ok(rewritten) = Uri::from_parts(parts) {
            *uri = rewritten;
        }
    }

    /// Secrets in `text` past `from`, reported; their spans relative to `from`. `None` when
    /// there are none.
    fn scan(
        &self,
        engine: &Engine,
        text: &[u8],
        from: usize,
        reporter: &Reporter,
        location: impl Fn() -> String,
    ) -> Option<Vec<Range<usize>>> {
        let found = match engine.find(text) {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(session = reporter.session, error = %e, "scanning a header");
                return None;
            }
        };
        let spans: Vec<Range<usize>> = found
            .into_iter()
            .filter(|d| d.secret.start >= from)
            .map(|d| {
                let secret = &text[d.secret.clone()];
                let span = d.secret.start - from..d.secret.end - from;
                reporter.report(
                    location(),
                    Finding {
                        rule: engine.rules()[d.rule].id.to_string(),
                        offset: span.start as u64,
                        length: secret.len() as u32,
                        encoding: Encoding::Plain,
                        hash: self.hasher.hash(secret),
                        forwarded_unmasked: 0,
                    },
                );
                span
            })
            .collect();
        (!spans.is_empty()).then_some(spans)
    }

    /// The body transform for a head with these headers, or a refusal.
    fn body(
        &self,
        engine: Arc<Engine>,
        headers: &HeaderMap,
        reporter: Reporter,
        refuse_with: StatusCode,
    ) -> Decision {
        if headers
            .get(CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() == b"0")
        {
            return Decision::default();
        }
        let codings: Vec<&str> = headers
            .get_all(CONTENT_ENCODING)
            .iter()
            .flat_map(|v| v.to_str().unwrap_or("?").split(','))
            .map(str::trim)
            .filter(|c| !c.is_empty() && !c.eq_ignore_ascii_case("identity"))
            .collect();
        let codec = match codings.as_slice() {
            [] => None,
            [one] => ContentEncoding::from_token(one),
            _ => None,
        };
        let codec = match (codings.is_empty(), codec) {
            (true, _) => None,
            (false, Some(encoding)) => match Codec::new(encoding) {
                Ok(c) => Some(c),
                Err(e) => return refuse(refuse_with, e.to_string()),
            },
            (false, None) => {
                return refuse(
                    refuse_with,
                    format!(
                        "body in Content-Encoding {:?} cannot be scanned for secrets",
                        codings.join(", ")
                    ),
                );
            }
        };
        Decision {
            verdict: Verdict::Forward,
            body: Some(Box::new(MaskBody {
                engine,
                hasher: self.hasher.clone(),
                masker: None,
                codec,
                reporter,
            })),
        }
    }
}

fn refuse(status: StatusCode, reason: String) -> Decision {
    Decision {
        verdict: Verdict::Refuse { status, reason },
        body: None,
    }
}

/// Same-length masking of one secret: a short prefix stays readable.
fn mask(bytes: &mut [u8], span: Range<usize>) {
    let keep = kept_prefix(span.len());
    bytes[span.start + keep..span.end].fill(MASK_BYTE);
}

impl Hook for Masking {
    fn on_request<'a>(
        &'a self,
        info: &'a ExchangeInfo,
        head: &'a mut http::request::Parts,
    ) -> HookFuture<'a> {
        Box::pin(async move {
            let engine = self.engine();
            let reporter = self.reporter(info, Direction::Up);
            // Credentials the vault just put in are meant for this upstream.
            let skip = head
                .extensions
                .get::<Tokenized>()
                .map(|t| t.0.clone())
                .unwrap_or_default();
            self.mask_uri(&engine, &mut head.uri, &reporter);
            self.mask_headers(&engine, &mut head.headers, &skip, &reporter);
            self.body(
                engine,
                &head.headers,
                reporter,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
            )
        })
    }

    fn on_response<'a>(
        &'a self,
        info: &'a ExchangeInfo,
        head: &'a mut http::response::Parts,
    ) -> HookFuture<'a> {
        Box::pin(async move {
            let engine = self.engine();
            let reporter = self.reporter(info, Direction::Down);
            self.mask_headers(&engine, &mut head.headers, &[], &reporter);
            self.body(engine, &head.headers, reporter, StatusCode::BAD_GATEWAY)
        })
    }
}

/// Hands findings of one exchange and direction to the sink.
struct Reporter {
    sink: FindingSink,
    session: u64,
    seq: u64,
    direction: Direction,
}

impl Reporter {
    fn report(&self, location: String, finding: Finding) {
        tracing::info!(session = self.session, seq = self.seq, direction = ?self.direction,
            %location, rule = %finding.rule, hash = %finding.hash, "secret masked");
        (self.sink)(SecretFinding {
            id: self.session,
            seq: Some(self.seq),
            direction: self.direction,
            location,
            finding,
        });
    }
}

/// Decodes a compressed body for scanning and encodes the masked result again.
struct Codec {
    decoder: Decoder,
    encoder: Encoder,
}

impl Codec {
    fn new(
        encoding: ContentEncoding,
    ) -> Result<Codec, interceptor::detection::compression::CodecError> {
        Ok(Codec {
            decoder: Decoder::new(encoding, MAX_DECODED_BODY)?,
            encoder: Encoder::new(encoding)?,
        })
    }
}

/// A body streaming through a masker (started on its first byte).
struct MaskBody {
    engine: Arc<Engine>,
    hasher: SecretHasher,
    masker: Option<Masker>,
    codec: Option<Codec>,
    reporter: Reporter,
}

impl MaskBody {
    /// Masks decoded bytes; `last` at the end of the body. Returns what may go on, decoded.
    fn mask(&mut self, plain: &[u8], last: bool) -> Result<Vec<u8>, ScanError> {
        let mut out = Vec::new();
        if plain.is_empty() && (!last || self.masker.is_none()) {
            return Ok(out);
        }
        let masker = match &mut self.masker {
            Some(m) => m,
            None => self
                .masker
                .insert(Masker::new(self.engine.clone(), self.hasher.clone())?),
        };
        masker.push(plain, &mut out)?;
        if last {
            masker.finish(&mut out)?;
        }
        for finding in masker.take_findings() {
            self.reporter.report("body".into(), finding);
        }
        Ok(out)
    }
}

impl BodyTransform for MaskBody {
    fn chunk(&mut self, data: Bytes) -> Result<Bytes, BoxError> {
        match &mut self.codec {
            None => Ok(self.mask(&data, false)?.into()),
            Some(codec) => {
                let plain = codec.decoder.push(&data)?;
                let masked = self.mask(&plain, false)?;
                let codec = self.codec.as_mut().expect("present");
                Ok(codec.encoder.push(&masked)?.into())
            }
        }
    }

    fn finish(&mut self) -> Result<Bytes, BoxError> {
        match self.codec.take() {
            None => Ok(self.mask(&[], true)?.into()),
            Some(Codec { decoder, encoder }) => {
                let rest = decoder.finish()?;
                let masked = self.mask(&rest, true)?;
                let mut encoder = encoder;
                let mut out = encoder.push(&masked)?;
                out.extend(encoder.finish()?);
                Ok(out.into())
            }
        }
    }

    fn keeps_length(&self) -> bool {
        self.codec.is_none()
    }
}
