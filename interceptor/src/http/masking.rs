//! The secret-masking hook: every request and response passes the secret engine
//! ([`interceptor::detection`]) on its way through. Header values and the request target are
//! scanned whole (block mode); bodies stream through a [`Masker`] chunk by chunk, holding back
//! only its bounded tail. Masking keeps length (a short prefix stays, the rest becomes `*`),
//! so a plain body keeps its `Content-Length`.
//!
//! What is masked, reported or ignored, and how much of each body is recorded, is the
//! policy's decision for the exchange ([`super::settings`]): rules in `secrets_mask` are
//! masked, rules in `secrets_report` only produce a finding (the bytes go on untouched), the
//! others are ignored; with no rule selected nothing is scanned. The recorded start of a body
//! has every secret masked whatever the policy says of the traffic.
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
use std::time::Duration;

use bytes::Bytes;
use http::header::{
    CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue,
};
use http::{StatusCode, Uri};
use interceptor::detection::compression::{ContentEncoding, Decoder, Encoder};
use interceptor::detection::{
    Engine, Finding, Masker, ScanError, SecretHasher, Selection, mask_buffer, mask_buffer_selected,
};
use interceptor::events::{EventMasker, Format};
use interceptor::policy;
use interceptor::relay_scan::{Direction, ScanRelay};

use super::hook::{
    BodyTransform, BoxError, Decision, ExchangeInfo, Hook, HookFuture, RecordedBody, Verdict,
    chained,
};
use super::settings::{Plan, PlanSource};
use super::tokenize::{BodySwap, Tokenized};
use crate::identity::Identity;
use crate::sessions::record::SecretFinding;

/// Largest decoded size of one compressed body.
pub const MAX_DECODED_BODY: u64 = 64 << 20;

/// How long a raw stream's held tail waits for more bytes before it is forwarded anyway (a
/// request-response peer waits for it).
const RAW_IDLE_FLUSH: Duration = Duration::from_millis(20);

/// Where findings go (the session store, in the daemon).
pub type FindingSink = Arc<dyn Fn(SecretFinding) + Send + Sync>;

pub struct Masking {
    /// Swapped whole when the vault's echo rules change.
    engine: RwLock<Arc<Engine>>,
    hasher: SecretHasher,
    sink: FindingSink,
    plans: PlanSource,
}

impl Masking {
    pub fn new(engine: Arc<Engine>, hasher: SecretHasher, sink: FindingSink) -> Masking {
        Masking {
            engine: RwLock::new(engine),
            hasher,
            sink,
            plans: PlanSource::default(),
        }
    }

    /// Puts a new engine in force for the exchanges that start from now on.
    pub fn set_engine(&self, engine: Arc<Engine>) {
        *self.engine.write().unwrap_or_else(|e| e.into_inner()) = engine;
    }

    /// Takes the secret settings from this policy's decisions from now on (until then, and
    /// without a policy, every rule masks).
    pub fn follow_policy(&self, policy: policy::Current) {
        self.plans.follow(policy);
    }

    fn engine(&self) -> Arc<Engine> {
        self.engine
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The policy's secret settings for this exchange (decided once, on its request).
    pub fn plan(&self, info: &ExchangeInfo, head: &http::request::Parts) -> Arc<Plan> {
        info.plan
            .get_or_init(|| self.plans.for_request(&self.engine(), info, head))
            .clone()
    }

    /// The scanner for `plan`; None when it selects no rule.
    fn scanner(&self, plan: &Plan) -> Option<Scanner> {
        Some(Scanner {
            engine: plan.engine.clone(),
            hasher: self.hasher.clone(),
            selection: plan.selection.clone()?,
        })
    }

    fn reporter(&self, info: &ExchangeInfo, direction: Direction) -> Reporter {
        Reporter {
            sink: self.sink.clone(),
            session: info.session,
            seq: info.seq,
            direction,
        }
    }

    /// A relay that masks a raw stream both ways as the policy's decision for it says; None
    /// when that decision selects no secret rule (splice it).
    pub fn scan_relay(
        &self,
        identity: &Identity,
        enrollment: Option<&str>,
        host: Option<&str>,
        dest: std::net::SocketAddr,
    ) -> Option<ScanRelay> {
        let plan = self
            .plans
            .for_stream(&self.engine(), identity, enrollment, host, dest);
        Some(ScanRelay {
            engine: plan.engine.clone(),
            hasher: self.hasher.clone(),
            idle_flush: RAW_IDLE_FLUSH,
            selection: Some(plan.selection.clone()?),
        })
    }

    /// Bytes a streaming masker holds back: read that much past a preview so a secret that
    /// starts in it is seen whole.
    pub fn holdback(&self) -> usize {
        self.engine().holdback()
    }

    /// `data` with every secret any rule finds masked (for what people see: approval
    /// previews); None when it could not be scanned.
    pub fn masked_copy(&self, data: &[u8]) -> Option<Vec<u8>> {
        match mask_buffer(&self.engine(), &self.hasher, data) {
            Ok((masked, _)) => Some(masked),
            Err(e) => {
                tracing::warn!(error = %e, "scanning a body preview");
                None
            }
        }
    }

    /// The first `cap` bytes of `data` with every secret any rule finds masked, for people
    /// to see; None when it could not be scanned. `data` should run a holdback past `cap`,
    /// so that a secret starting before the cap is seen whole; `whole`: it is all there is
    /// (else a stretch that may be an unconfirmed secret's start is not shown).
    pub fn masked_start(&self, data: &[u8], whole: bool, cap: usize) -> Option<Vec<u8>> {
        let mut masked = self.masked_copy(data)?;
        let shown = match whole {
            true => cap,
            false => cap.min(masked.len().saturating_sub(self.holdback())),
        };
        masked.truncate(shown);
        Some(masked)
    }

    /// A finding in a raw stream, as the session records it.
    pub fn stream_finding(
        &self,
        session: u64,
        direction: Direction,
        location: &str,
        finding: Finding,
    ) -> SecretFinding {
        recorded(session, None, direction, location.into(), finding)
    }

    /// Masks secrets in a workload's command line (recorded with its session's identity),
    /// in place; returns the findings, for the session record once it has started.
    pub fn mask_cmdline(&self, session: u64, cmdline: &mut [String]) -> Vec<SecretFinding> {
        let text = cmdline.join("\n");
        let (masked, found) = match mask_buffer(&self.engine(), &self.hasher, text.as_bytes()) {
            Ok(done) => done,
            Err(e) => {
                // Never record what could not be scanned.
                tracing::warn!(session, error = %e, "scanning a command line");
                cmdline.iter_mut().for_each(|a| *a = "*".into());
                return Vec::new();
            }
        };
        if found.is_empty() {
            return Vec::new();
        }
        let masked = String::from_utf8_lossy(&masked);
        for (arg, masked) in cmdline.iter_mut().zip(masked.split('\n')) {
            *arg = masked.to_owned();
        }
        found
            .into_iter()
            .map(|f| recorded(session, None, Direction::Up, "cmdline".into(), f))
            .collect()
    }

    /// The body transform for a head with these headers under `plan`, or a refusal.
    fn body(
        &self,
        plan: &Plan,
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
        let coding = match codings.as_slice() {
            [] => Ok(None),
            [one] => ContentEncoding::from_token(one).map(Some).ok_or(()),
            _ => Err(()),
        };
        let record = BodyRecord::new(plan, &self.hasher);
        let Some(scanner) = self.scanner(plan) else {
            // Nothing to mask: the body goes on as it is, its start recorded.
            let tee = match (record, coding) {
                (Some(record), Ok(coding)) => Tee::new(record, coding),
                _ => None,
            };
            return Decision {
                verdict: Verdict::Forward,
                body: tee.map(|t| Box::new(t) as Box<dyn BodyTransform>),
            };
        };
        let codec = match coding {
            Ok(None) => None,
            Ok(Some(encoding)) => match Codec::new(encoding) {
                Ok(c) => Some(c),
                Err(e) => return refuse(refuse_with, e.to_string()),
            },
            Err(()) => {
                return refuse(
                    refuse_with,
                    format!(
                        "body in Content-Encoding {:?} cannot be scanned for secrets",
                        codings.join(", ")
                    ),
                );
            }
        };
        let events = headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(Format::of);
        Decision {
            verdict: Verdict::Forward,
            body: Some(Box::new(MaskBody {
                scanner,
                events,
                scan: None,
                codec,
                reporter,
                record,
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

impl Hook for Masking {
    fn on_request<'a>(
        &'a self,
        info: &'a ExchangeInfo,
        head: &'a mut http::request::Parts,
    ) -> HookFuture<'a> {
        Box::pin(async move {
            let plan = self.plan(info, head);
            let reporter = self.reporter(info, Direction::Up);
            // Credentials the vault just put in are meant for this upstream.
            let skip = head
                .extensions
                .get::<Tokenized>()
                .map(|t| t.0.clone())
                .unwrap_or_default();
            // Placeholders in the body are swapped after masking, so the real credential
            // is not masked (nor recorded) on its way up.
            let swap = head.extensions.remove::<BodySwap>().and_then(|s| s.take());
            if let Some(scanner) = self.scanner(&plan) {
                let masked = scanner.mask_head(
                    Some(&mut head.uri),
                    &mut head.headers,
                    &skip,
                    "header",
                    &reporter,
                );
                if let Err(e) = masked {
                    return refuse(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
                }
            }
            let mut decision = self.body(
                &plan,
                &head.headers,
                reporter,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
            );
            if decision.verdict == Verdict::Forward {
                decision.body = chained(decision.body.into_iter().chain(swap).collect());
            }
            decision
        })
    }

    fn on_response<'a>(
        &'a self,
        info: &'a ExchangeInfo,
        head: &'a mut http::response::Parts,
    ) -> HookFuture<'a> {
        Box::pin(async move {
            // Set by the request's hooks; a response without them gets the policy-less plan.
            let plan = info
                .plan
                .get_or_init(|| Arc::new(Plan::unruled(&self.engine())))
                .clone();
            let reporter = self.reporter(info, Direction::Down);
            if let Some(scanner) = self.scanner(&plan) {
                let masked = scanner.mask_head(None, &mut head.headers, &[], "header", &reporter);
                if let Err(e) = masked {
                    return refuse(StatusCode::BAD_GATEWAY, e.to_string());
                }
            }
            self.body(&plan, &head.headers, reporter, StatusCode::BAD_GATEWAY)
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
        let seq = Some(self.seq);
        (self.sink)(recorded(
            self.session,
            seq,
            self.direction,
            location,
            finding,
        ));
    }
}

/// A finding as the session records it; logged (without the secret) on the way.
fn recorded(
    session: u64,
    seq: Option<u64>,
    direction: Direction,
    location: String,
    finding: Finding,
) -> SecretFinding {
    if finding.report_only {
        tracing::info!(session, seq, ?direction, %location, rule = %finding.rule,
            hash = %finding.hash, "secret reported (the policy does not mask this rule)");
    } else {
        tracing::info!(session, seq, ?direction, %location, rule = %finding.rule,
            hash = %finding.hash, "secret masked");
    }
    SecretFinding {
        id: session,
        seq,
        direction,
        location,
        finding,
    }
}

/// What one exchange's secrets are scanned with: its plan's engine and rule selection.
struct Scanner {
    engine: Arc<Engine>,
    hasher: SecretHasher,
    selection: Arc<Selection>,
}

impl Scanner {
    /// Masks the request target (if any) and the fields (all but `skip`) of a head or of
    /// trailers (`section`: "header" or "trailer", the findings' location prefix) in place.
    /// They are scanned as one buffer, a `name: value` line each, so rules that anchor on a
    /// header name ("Authorization: Bearer ...") match, with one masker per head.
    fn mask_head(
        &self,
        uri: Option<&mut Uri>,
        headers: &mut HeaderMap,
        skip: &[HeaderName],
        section: &str,
        reporter: &Reporter,
    ) -> Result<(), ScanError> {
        let mut text = Vec::new();
        let mut values: Vec<(String, Range<usize>)> = Vec::new();
        let mut line = |location: String, prefix: &[u8], value: &[u8]| {
            text.extend_from_slice(prefix);
            values.push((location, text.len()..text.len() + value.len()));
            text.extend_from_slice(value);
            text.extend_from_slice(b"\r\n");
        };
        let target = uri.as_ref().and_then(|u| u.path_and_query()).cloned();
        if let Some(target) = &target {
            line("uri".into(), b"", target.as_str().as_bytes());
        }
        for (name, value) in headers.iter().filter(|(n, _)| !skip.contains(n)) {
            let prefix = format!("{name}: ");
            line(
                format!("{section}:{name}"),
                prefix.as_bytes(),
                value.as_bytes(),
            );
        }
        let (masked, found) =
            mask_buffer_selected(&self.engine, &self.hasher, Some(&self.selection), &text)?;
        if found.is_empty() {
            return Ok(());
        }
        for mut finding in found {
            let at = finding.offset as usize;
            let Some((location, range)) = values.iter().rev().find(|(_, r)| r.start <= at) else {
                continue;
            };
            finding.offset = (at - range.start) as u64;
            reporter.report(location.clone(), finding);
        }
        let mut masked_values = values.iter().map(|(_, r)| &masked[r.clone()]);
        if let (Some(uri), Some(_)) = (uri, &target) {
            let value = masked_values.next().expect("one per line");
            let mut parts = uri.clone().into_parts();
            // Only `*` was written into a valid target: it stays valid.
            parts.path_and_query = http::uri::PathAndQuery::try_from(value).ok();
            *uri = Uri::from_parts(parts).unwrap_or_else(|_| Uri::from_static("/"));
        }
        for (name, value) in headers.iter_mut() {
            if skip.contains(name) {
                continue;
            }
            let masked = masked_values.next().expect("one per line");
            if masked != value.as_bytes() {
                let mut v = HeaderValue::from_bytes(masked)
                    .unwrap_or_else(|_| HeaderValue::from_static("*"));
                v.set_sensitive(value.is_sensitive());
                *value = v;
            }
        }
        Ok(())
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

/// The start of a body for the exchange's record: up to the policy's cap, plus (unless the
/// bytes are already masked for every rule) a margin so a secret cut by the cap is still
/// seen whole when the copy is masked at the end.
struct BodyRecord {
    cap: usize,
    keep: usize,
    buf: Vec<u8>,
    seen: u64,
    /// Masked for every rule already.
    clean: bool,
    engine: Arc<Engine>,
    hasher: SecretHasher,
}

impl BodyRecord {
    /// None when the policy records nothing of bodies.
    fn new(plan: &Plan, hasher: &SecretHasher) -> Option<BodyRecord> {
        let cap = plan.record_cap();
        if cap == 0 {
            return None;
        }
        let clean = plan
            .selection
            .as_ref()
            .is_some_and(|s| s.masks_everything());
        let keep = if clean {
            cap
        } else {
            cap.saturating_add(plan.engine.holdback())
        };
        Some(BodyRecord {
            cap,
            keep,
            buf: Vec::new(),
            seen: 0,
            clean,
            engine: plan.engine.clone(),
            hasher: hasher.clone(),
        })
    }

    fn full(&self) -> bool {
        self.buf.len() >= self.keep
    }

    fn push(&mut self, bytes: &[u8]) {
        self.seen += bytes.len() as u64;
        let room = self.keep - self.buf.len().min(self.keep);
        self.buf.extend_from_slice(&bytes[..room.min(bytes.len())]);
    }

    /// Keeps nothing more.
    fn close(&mut self) {
        self.keep = self.buf.len();
    }

    /// Counts bytes that are not kept (the record is full).
    fn skip(&mut self, n: usize) {
        self.seen += n as u64;
    }

    fn finish(&mut self) -> Option<RecordedBody> {
        let mut buf = std::mem::take(&mut self.buf);
        if !self.clean {
            match mask_buffer(&self.engine, &self.hasher, &buf) {
                Ok((masked, _)) => buf = masked,
                Err(e) => {
                    // Never record what could not be scanned.
                    tracing::warn!(error = %e, "scanning a body for its record");
                    return None;
                }
            }
        }
        Some(RecordedBody::new(&buf, self.cap, self.seen))
    }
}

/// A body streaming through a masker (started on its first byte).
struct MaskBody {
    scanner: Scanner,
    /// Set for an event stream: masked per event and field.
    events: Option<Format>,
    scan: Option<BodyScan>,
    codec: Option<Codec>,
    reporter: Reporter,
    record: Option<BodyRecord>,
}

/// How a body's bytes are masked: as one stream of bytes, or event by event. Raw is the
/// common case and lives inline (no allocation per body); the rarer event masker is boxed.
#[allow(clippy::large_enum_variant)]
enum BodyScan {
    Raw(Masker),
    Events(Box<EventMasker>),
}

/// What a masker is asked to do with the bytes it holds.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Release {
    /// Only what can no longer be part of a secret.
    Safe,
    /// Everything: the body paused.
    Idle,
    /// Everything: the body ended.
    End,
}

impl BodyScan {
    fn push(&mut self, plain: &[u8], out: &mut Vec<u8>) -> Result<(), ScanError> {
        match self {
            BodyScan::Raw(m) => m.push(plain, out),
            BodyScan::Events(m) => m.push(plain, out),
        }
    }

    fn release(&mut self, release: Release, out: &mut Vec<u8>) -> Result<(), ScanError> {
        match (self, release) {
            (_, Release::Safe) => Ok(()),
            (BodyScan::Raw(m), Release::Idle) => m.flush(out),
            (BodyScan::Raw(m), Release::End) => m.finish(out),
            (BodyScan::Events(m), Release::Idle) => m.idle(out),
            (BodyScan::Events(m), Release::End) => m.finish(out),
        }
    }

    fn holds(&self) -> bool {
        match self {
            BodyScan::Raw(m) => m.held() > 0,
            BodyScan::Events(m) => m.waiting(),
        }
    }

    /// Findings since the last call, each with where it is in the body.
    fn take_findings(&mut self) -> Vec<(String, Finding)> {
        match self {
            BodyScan::Raw(m) => (m.take_findings().into_iter())
                .map(|f| ("body".to_owned(), f))
                .collect(),
            BodyScan::Events(m) => (m.take_findings().into_iter())
                .map(|f| (f.location, f.finding))
                .collect(),
        }
    }
}

impl MaskBody {
    /// Masks decoded bytes, then lets go what `release` says. Returns what may go on, decoded.
    fn mask(&mut self, plain: &[u8], release: Release) -> Result<Vec<u8>, ScanError> {
        if plain.is_empty() && (release == Release::Safe || self.scan.is_none()) {
            return Ok(Vec::new());
        }
        let scan = match &mut self.scan {
            Some(s) => s,
            None => {
                let (engine, hasher) = (&self.scanner.engine, &self.scanner.hasher);
                let selection = Some(self.scanner.selection.clone());
                self.scan.insert(match self.events {
                    Some(format) => BodyScan::Events(Box::new(EventMasker::new(
                        format,
                        engine.clone(),
                        hasher.clone(),
                        selection,
                    ))),
                    None => BodyScan::Raw(Masker::with_selection(
                        engine.clone(),
                        hasher.clone(),
                        selection,
                    )?),
                })
            }
        };
        let mut out = Vec::with_capacity(plain.len());
        scan.push(plain, &mut out)?;
        scan.release(release, &mut out)?;
        for (location, finding) in scan.take_findings() {
            self.reporter.report(location, finding);
        }
        if let Some(record) = &mut self.record {
            record.push(&out);
        }
        Ok(out)
    }

    /// Masks what came in (`data`, encoded if the body is), letting go what `release` says;
    /// returns it encoded again. A streamed event is flushed through the encoder at once.
    fn pass(&mut self, data: &[u8], release: Release) -> Result<Bytes, BoxError> {
        let Some(codec) = &mut self.codec else {
            return Ok(self.mask(data, release)?.into());
        };
        let plain = codec.decoder.push(data)?;
        let masked = self.mask(&plain, release)?;
        let codec = self.codec.as_mut().expect("present");
        Ok(if self.events.is_some() {
            codec.encoder.push_flushed(&masked)?
        } else {
            codec.encoder.push(&masked)?
        }
        .into())
    }
}

impl BodyTransform for MaskBody {
    fn chunk(&mut self, data: Bytes) -> Result<Bytes, BoxError> {
        self.pass(&data, Release::Safe)
    }

    fn holds(&self) -> bool {
        self.scan.as_ref().is_some_and(BodyScan::holds)
    }

    fn idle(&mut self) -> Result<Bytes, BoxError> {
        self.pass(&[], Release::Idle)
    }

    fn finish(&mut self) -> Result<Bytes, BoxError> {
        match self.codec.take() {
            None => Ok(self.mask(&[], Release::End)?.into()),
            Some(Codec { decoder, encoder }) => {
                let rest = decoder.finish()?;
                let masked = self.mask(&rest, Release::End)?;
                let mut encoder = encoder;
                let mut out = encoder.push(&masked)?;
                out.extend(encoder.finish()?);
                Ok(out.into())
            }
        }
    }

    /// Trailers are fields like the head's: masked the same way, found at `trailer:NAME`.
    fn trailers(&mut self, trailers: &mut HeaderMap) -> Result<(), BoxError> {
        let (scanner, reporter) = (&self.scanner, &self.reporter);
        Ok(scanner.mask_head(None, trailers, &[], "trailer", reporter)?)
    }

    fn keeps_length(&self) -> bool {
        // An event whose field is masked is written again (its JSON escapes may change).
        self.codec.is_none() && self.events.is_none()
    }

    fn recorded(&mut self) -> Option<RecordedBody> {
        self.record.as_mut()?.finish()
    }
}

/// A body the policy does not scan, passed on as it is while its start is recorded
/// (decoded first when compressed; decoding stops once the record is full).
struct Tee {
    record: BodyRecord,
    decoder: Option<Decoder>,
}

impl Tee {
    fn new(record: BodyRecord, coding: Option<ContentEncoding>) -> Option<Tee> {
        let decoder = match coding {
            None => None,
            Some(c) => Some(Decoder::new(c, MAX_DECODED_BODY).ok()?),
        };
        Some(Tee { record, decoder })
    }
}

impl BodyTransform for Tee {
    fn chunk(&mut self, data: Bytes) -> Result<Bytes, BoxError> {
        if self.record.full() {
            self.record.skip(data.len());
            return Ok(data);
        }
        match &mut self.decoder {
            None => self.record.push(&data),
            Some(d) => match d.push(&data) {
                Ok(plain) => self.record.push(&plain),
                // Recording is best effort: what decoded so far is the record; the
                // workload's bytes go on regardless.
                Err(_) => {
                    self.decoder = None;
                    self.record.close();
                }
            },
        }
        Ok(data)
    }

    fn finish(&mut self) -> Result<Bytes, BoxError> {
        if let Some(d) = self.decoder.take()
            && let Ok(rest) = d.finish()
        {
            self.record.push(&rest);
        }
        Ok(Bytes::new())
    }

    fn keeps_length(&self) -> bool {
        true
    }

    fn recorded(&mut self) -> Option<RecordedBody> {
        self.record.finish()
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::{Mutex, OnceLock};

    use super::*;

    const KEY: &str = "AKIAQYLPMN5HHHFPZAM2";

    fn masking() -> (Masking, Arc<Mutex<Vec<SecretFinding>>>) {
        static ENGINE: OnceLock<Arc<Engine>> = OnceLock::new();
        let engine = ENGINE.get_or_init(|| {
            let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/rules");
            let rules = interceptor::detection::load_dir(&dir).unwrap();
            Arc::new(Engine::compile(&rules).unwrap())
        });
        let found = Arc::new(Mutex::new(Vec::new()));
        let sink = found.clone();
        let masking = Masking::new(
            engine.clone(),
            SecretHasher::with_salt([1; 16]),
            Arc::new(move |f| sink.lock().unwrap().push(f)),
        );
        (masking, found)
    }

    fn info() -> ExchangeInfo {
        ExchangeInfo::for_tests()
    }

    #[test]
    fn a_start_cut_at_its_cap_masks_a_secret_that_crosses_the_cap() {
        let (m, _) = masking();
        let cap = 4096;
        // The key starts 6 bytes before the cap; a holdback's worth of text follows.
        let mut text = "word ".repeat(cap / 5);
        text.truncate(cap - 7);
        text += &format!(" {KEY} ");
        text += &"tail ".repeat(m.holdback() / 5 + 1);
        let end = cap + m.holdback();
        let start = m.masked_start(&text.as_bytes()[..end], false, cap).unwrap();
        assert_eq!(start.len(), cap);
        assert!(start.starts_with(b"word word"));
        // What is left of the key within the cap is masked past its kept prefix.
        let shown = String::from_utf8(start[cap - 6..].to_vec()).unwrap();
        assert_ne!(shown, &KEY[..6]);
        assert!(shown.ends_with('*'), "{shown}");
        // A whole text shorter than the cap is all there, masked.
        let short = format!("key {KEY} here");
        let all = m.masked_start(short.as_bytes(), true, cap).unwrap();
        assert_eq!(all.len(), short.len());
        assert!(!String::from_utf8(all).unwrap().contains(KEY));
    }

    fn response(encoding: Option<&str>) -> http::response::Parts {
        let mut b = http::Response::builder();
        if let Some(e) = encoding {
            b = b.header(CONTENT_ENCODING, e);
        }
        b.body(()).unwrap().into_parts().0
    }

    /// Runs `body` through the transform in chunks of `size`.
    fn stream(t: &mut dyn BodyTransform, body: &[u8], size: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for chunk in body.chunks(size) {
            out.extend_from_slice(&t.chunk(Bytes::copy_from_slice(chunk)).unwrap());
        }
        out.extend_from_slice(&t.finish().unwrap());
        out
    }

    #[tokio::test]
    async fn a_gzip_body_is_decoded_masked_and_encoded_again() {
        let (masking, found) = masking();
        let plain = format!("{}key={KEY}\n{}", "x".repeat(5000), "y".repeat(5000));
        let mut encoder = Encoder::new(ContentEncoding::Gzip).unwrap();
        let mut gzip = encoder.push(plain.as_bytes()).unwrap();
        gzip.extend(encoder.finish().unwrap());
        let mut head = response(Some("gzip"));
        let decision = masking.on_response(&info(), &mut head).await;
        let mut t = decision.body.expect("a transform");
        assert!(!t.keeps_length());
        let out = stream(t.as_mut(), &gzip, 7);
        let mut decoder = Decoder::new(ContentEncoding::Gzip, 1 << 20).unwrap();
        let mut decoded = decoder.push(&out).unwrap();
        decoded.extend(decoder.finish().unwrap());
        let decoded = String::from_utf8(decoded).unwrap();
        assert_eq!(decoded.len(), plain.len());
        assert!(!decoded.contains(KEY) && decoded.contains("key=AKIA****"));
        let found = found.lock().unwrap();
        assert_eq!(found[0].finding.rule, "aws.access-key-id");
        assert_eq!(
            (found[0].location.as_str(), found[0].finding.offset),
            ("body", 5004)
        );
    }

    #[tokio::test]
    async fn a_plain_body_keeps_its_length_and_unknown_codings_are_refused() {
        let (masking, _) = masking();
        let mut head = response(None);
        let mut t = masking.on_response(&info(), &mut head).await.body.unwrap();
        assert!(t.keeps_length());
        let body = format!("{{\"k\": \"{KEY}\"}}");
        let out = stream(t.as_mut(), body.as_bytes(), 3);
        assert_eq!(out.len(), body.len());
        assert!(!String::from_utf8(out).unwrap().contains(KEY));
        let mut head = response(Some("compress"));
        let refused = masking.on_response(&info(), &mut head).await.verdict;
        assert!(
            matches!(&refused, Verdict::Refuse { status, reason }
                if *status == StatusCode::BAD_GATEWAY && reason.contains("\"compress\"")),
            "{refused:?}"
        );
    }

    #[tokio::test]
    async fn a_compression_bomb_ends_the_body_with_a_clear_error() {
        let (masking, _) = masking();
        let mut encoder = Encoder::new(ContentEncoding::Zstd).unwrap();
        let mut bomb = Vec::new();
        for _ in 0..(MAX_DECODED_BODY / (1 << 20) + 1) {
            bomb.extend(encoder.push(&[0u8; 1 << 20]).unwrap());
        }
        bomb.extend(encoder.finish().unwrap());
        let mut head = response(Some("zstd"));
        let mut t = masking.on_response(&info(), &mut head).await.body.unwrap();
        let err = bomb
            .chunks(4096)
            .map(|c| t.chunk(Bytes::copy_from_slice(c)))
            .find_map(Result::err)
            .expect("the cap is hit");
        assert!(err.to_string().contains("exceeds the cap"), "{err}");
    }

    #[tokio::test]
    async fn headers_and_the_target_are_masked_and_tokenized_ones_skipped() {
        let (masking, found) = masking();
        let mut head = http::Request::builder()
            .uri(format!("/x?key={KEY}"))
            .header("x-aws", KEY)
            .header("x-real", KEY)
            .body(())
            .unwrap()
            .into_parts()
            .0;
        head.extensions
            .insert(Tokenized(vec![HeaderName::from_static("x-real")]));
        let decision = masking.on_request(&info(), &mut head).await;
        assert_eq!(decision.verdict, Verdict::Forward);
        assert_eq!(head.uri.query(), Some("key=AKIA****************"));
        assert_eq!(head.headers["x-aws"], "AKIA****************");
        assert_eq!(head.headers["x-real"], KEY);
        let locations: Vec<_> = found
            .lock()
            .unwrap()
            .iter()
            .map(|f| (f.location.clone(), f.finding.offset))
            .collect();
        assert_eq!(
            locations,
            [("uri".to_string(), 7), ("header:x-aws".to_string(), 0)]
        );
    }

    const TOKEN: &str = "ghp_aB3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1xY3zA5";

    /// A masking hook that follows a policy whose every decision has `settings` (TOML).
    fn masking_under(settings: &str) -> (Masking, Arc<Mutex<Vec<SecretFinding>>>) {
        let text = format!("[settings]\n{settings}\n[default]\naction = \"allow\"\n");
        let policy = policy::Policy::parse(Path::new("test.toml"), &text).unwrap();
        let (masking, found) = masking();
        masking.follow_policy(policy::Current::new(Arc::new(policy)));
        (masking, found)
    }

    fn post() -> http::request::Parts {
        http::Request::post("/upload")
            .header("host", "api.test")
            .body(())
            .unwrap()
            .into_parts()
            .0
    }

    #[tokio::test]
    async fn the_policy_decides_what_is_masked_reported_and_recorded() {
        let (masking, found) = masking_under(
            "secrets_mask = [\"*\"]\nsecrets_report = [\"aws.access-key-id\"]\nrecord_body_bytes = 24",
        );
        let info = info();
        let mut head = post();
        let mut t = masking.on_request(&info, &mut head).await.body.unwrap();
        assert!(t.keeps_length());
        let body = format!("{{\"k\": \"{KEY}\", \"t\": \"{TOKEN}\"}}");
        let out = String::from_utf8(stream(t.as_mut(), body.as_bytes(), 5)).unwrap();
        // Reported only: forwarded as it is. Masked: masked.
        assert!(out.contains(KEY) && !out.contains(TOKEN), "{out}");
        let found = found.lock().unwrap();
        let mut report: Vec<_> = found
            .iter()
            .map(|f| (f.finding.rule.as_str(), f.finding.report_only))
            .collect();
        report.sort();
        assert_eq!(report, [("aws.access-key-id", true), ("github.ghp", false)]);
        // The record keeps 24 bytes, and masks even the reported secret cut by the cap.
        let recorded = t.recorded().unwrap();
        assert_eq!(
            (recorded.data.as_str(), recorded.cap, recorded.truncated),
            ("{\"k\": \"AKIA*************", 24, true)
        );
    }

    #[tokio::test]
    async fn with_no_rule_selected_nothing_is_scanned_but_the_record_is_masked() {
        let (masking, found) = masking_under("secrets_mask = []\nrecord_body_bytes = 1000");
        let info = info();
        let mut head = post();
        head.headers.insert("x-token", TOKEN.parse().unwrap());
        let mut t = masking.on_request(&info, &mut head).await.body.unwrap();
        assert_eq!(head.headers["x-token"], TOKEN);
        let body = format!("key={KEY}");
        let out = stream(t.as_mut(), body.as_bytes(), 3);
        assert_eq!(out, body.as_bytes());
        assert!(found.lock().unwrap().is_empty());
        let recorded = t.recorded().unwrap();
        assert_eq!(
            (recorded.data.as_str(), recorded.truncated),
            ("key=AKIA****************", false)
        );
        // Nothing recorded either: no transform at all.
        let (masking, _) = masking_under("secrets_mask = []\nrecord_body_bytes = 0");
        let mut head = post();
        let fresh = super::tests::info();
        assert!(masking.on_request(&fresh, &mut head).await.body.is_none());
    }

    #[tokio::test]
    async fn trailers_are_masked_like_headers() {
        let (masking, found) = masking();
        let mut head = post();
        let mut t = masking.on_request(&info(), &mut head).await.body.unwrap();
        stream(t.as_mut(), b"hello", 2);
        let mut trailers = HeaderMap::new();
        trailers.insert("x-checksum", format!("token {TOKEN}").parse().unwrap());
        trailers.insert("x-plain", HeaderValue::from_static("abc123"));
        t.trailers(&mut trailers).unwrap();
        let masked = format!("token ghp_{}", "*".repeat(36));
        assert_eq!(trailers["x-checksum"], masked.as_str());
        assert_eq!(trailers["x-plain"], "abc123");
        let found = found.lock().unwrap();
        let at: Vec<_> = found
            .iter()
            .map(|f| {
                (
                    f.location.as_str(),
                    f.finding.rule.as_str(),
                    f.finding.offset,
                )
            })
            .collect();
        assert_eq!(at, [("trailer:x-checksum", "github.ghp", 6)]);
    }

    #[tokio::test]
    async fn binary_bodies_are_recorded_in_base64_and_the_cap_has_a_ceiling() {
        let (masking, _) = masking_under("record_body_bytes = 4");
        let mut head = post();
        let mut t = masking.on_request(&info(), &mut head).await.body.unwrap();
        stream(t.as_mut(), &[0, 159, 146, 150, 7, 7], 2);
        let recorded = t.recorded().unwrap();
        assert_eq!(
            (recorded.data.as_str(), recorded.base64, recorded.truncated),
            ("AJ+Slg==", true, true)
        );
        let (masking, _) = masking_under("record_body_bytes = 1000000000");
        let mut head = post();
        let fresh = info();
        masking.on_request(&fresh, &mut head).await;
        assert_eq!(
            fresh.plan.get().unwrap().record_cap(),
            super::super::settings::MAX_RECORDED_BODY
        );
    }
}
