//! Engine and masker tests over the project's own rule files.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use super::check::{check_dir, contains, mask_all};
use super::end_check::EndCheck;
use super::tolerant;
use super::*;

pub(crate) fn rules_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../policies/rules")
}

pub(crate) fn engine() -> Arc<Engine> {
    static ENGINE: OnceLock<Arc<Engine>> = OnceLock::new();
    ENGINE
        .get_or_init(|| Arc::new(Engine::compile(&load_dir(&rules_dir()).unwrap()).unwrap()))
        .clone()
}

#[test]
fn rules_check_passes_for_every_rule() {
    let report = check_dir(&rules_dir()).unwrap();
    assert!(report.problems.is_empty(), "{}", report.problems.join("\n"));
    assert!(report.rules >= 120, "{} rules", report.rules);
    assert!(report.examples >= report.rules);
    assert!(report.negative_examples >= report.rules);
}

#[test]
fn the_built_in_rules_are_the_shipped_files() {
    let shipped = load_dir(&rules_dir()).unwrap();
    let built_in = builtin().unwrap();
    let ids = |rules: &[Rule]| {
        rules
            .iter()
            .map(|r| (r.id.clone(), r.pattern.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&built_in), ids(&shipped));
    assert!(
        built_in[0].source.starts_with("(built-in)"),
        "{:?}",
        built_in[0].source
    );
}

#[test]
fn a_rules_directory_adds_to_the_built_in_rules_and_replaces_by_id() {
    let dir = tempfile::tempdir().unwrap();
    let stricter = "rules:\n  - id: github.ghp\n    name: stricter\n    pattern: \"(ghp_[A-Za-z0-9]{36})\"\n  - id: local.token\n    name: local\n    pattern: \"(lt_[a-z]{20})\"\n";
    std::fs::write(dir.path().join("local.yaml"), stricter).unwrap();
    let sources = |builtin| RuleSources {
        builtin,
        dirs: vec![dir.path().to_path_buf()],
    };
    let all = sources(true).load().unwrap();
    let shipped = builtin().unwrap();
    assert_eq!(all.len(), shipped.len() + 1);
    let ghp = all.iter().find(|r| r.id == "github.ghp").unwrap();
    assert_eq!(ghp.name, "stricter");
    assert_eq!(all.last().unwrap().id, "local.token");
    let only = sources(false).load().unwrap();
    assert_eq!(only.len(), 2);
    assert!(RuleSources::default().load().unwrap().is_empty());
}

#[test]
fn the_rule_in_the_rules_guide_passes_check() {
    let guide = std::fs::read_to_string(rules_dir().join("../../docs/rules.md")).unwrap();
    let (_, rest) = guide.split_once("```yaml\n").expect("a yaml block");
    let (yaml, _) = rest.split_once("```").unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("guide.yaml"), yaml).unwrap();
    let report = check_dir(dir.path()).unwrap();
    assert!(report.problems.is_empty(), "{}", report.problems.join("\n"));
    assert_eq!((report.rules, report.examples), (1, 1));
}

#[test]
fn a_broken_rule_is_reported_by_check() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.yaml"),
        r#"rules:
  - id: t.no-capture
    name: no capture group
    pattern: 'tok_[a-z]{8}'
    examples: ['tok_abcdefgh']
  - id: t.lookahead
    name: hyperscan rejects lookahead
    pattern: 'key_(?=x)([a-z]{8})'
    examples: ['key_xabcdefg']
  - id: t.wrong-secret
    name: example names another capture
    pattern: 'id_([a-z]{8})'
    examples: [{text: 'id_abcdefgh', secret: 'abcdefgX'}]
  - id: t.negative-matches
    name: negative example matches
    pattern: 'pw_([a-z]{8})'
    examples: ['pw_abcdefgh']
    negative_examples: ['pw_zzzzzzzz']
  - id: t.narrow-prefilter
    name: the prefilter misses what the pattern matches
    pattern: 'pk_([a-z]{8})'
    prefilter: 'pk_[a-z]{8}x'
    examples: ['pk_abcdefgh']
  - id: t.narrow-stream-prefilter
    name: the stream prefilter misses what the pattern matches
    pattern: 'sk_([a-z]{8})'
    stream_prefilter: 'sk_[a-z]{8}y'
    examples: ['sk_abcdefgh']
  - id: t.early-prefilter
    name: the prefilter ends before the pattern does
    pattern: 'ak_([a-z]{8})'
    prefilter: 'ak_'
    examples: ['ak_abcdefgh']
"#,
    )
    .unwrap();
    let report = check_dir(dir.path()).unwrap();
    let text = report.problems.join("\n");
    assert_eq!(report.problems.len(), 7, "{text}");
    for id in [
        "t.no-capture",
        "t.lookahead",
        "t.wrong-secret",
        "t.negative-matches",
        "t.narrow-prefilter",
        "t.narrow-stream-prefilter",
        "t.early-prefilter",
    ] {
        assert!(text.contains(id), "{id} missing in:\n{text}");
    }
    for id in [
        "t.narrow-prefilter",
        "t.narrow-stream-prefilter",
        "t.early-prefilter",
    ] {
        let problem = report.problems.iter().find(|p| p.contains(id));
        assert!(
            problem.unwrap().contains("a prefilter must match"),
            "{text}"
        );
    }
}

#[test]
fn the_end_check_walks_back_from_where_a_prefilter_ends() {
    let pattern = tolerant::parse(r"\bhttps?://[^:/\s@]{1,64}:([^@/\s]{1,128})@[a-z]").unwrap();
    let check = EndCheck::new(&tolerant::tolerant(&pattern, tolerant::Precision::Exact)).unwrap();
    let mut cache = check.cache();
    // A prefilter on `@` plus one byte ends after each `@x`: only the URL's can be a match.
    let text = b"mail \"bob@example.com\" or https://deploy:s3cret@git.example.com";
    let verdicts: Vec<bool> = memchr::memchr_iter(b'@', text)
        .map(|at| check.can_end_at(&mut cache, text, at + 2, 256))
        .collect();
    assert_eq!(verdicts, [false, true]);
    // The range starts at `https`; the byte before it still decides the leading `\b`.
    for (text, boundary) in [(&b"xhttps://u:p@h"[..], false), (b" https://u:p@h", true)] {
        let end = text.len();
        assert_eq!(check.can_end_at(&mut cache, text, end, end - 1), boundary);
    }
}

fn masker() -> Masker {
    Masker::new(engine(), SecretHasher::with_salt([7; 16])).unwrap()
}

/// `text` through a masker in the given chunks; the output and the findings.
pub(super) fn mask_chunks<'a>(
    chunks: impl IntoIterator<Item = &'a [u8]>,
) -> (Vec<u8>, Vec<Finding>) {
    let mut m = masker();
    let mut out = Vec::new();
    for c in chunks {
        m.push(c, &mut out).unwrap();
    }
    m.finish(&mut out).unwrap();
    (out, m.take_findings())
}

/// One example secret per family, in surrounding text: (text, secret, rule id).
fn samples() -> Vec<(String, String, String)> {
    let pick = [
        "aws.access-key-id",
        "aws.secret-access-key",
        "github.ghp",
        "openai.api-key",
        "anthropic.api-key",
        "stripe.secret-key",
        "slack.bot-token",
        "pem.private-key",
        "jwt",
        "postgres.url-password",
        "url.credentials",
        "http.basic-auth",
        "generic.password",
    ];
    let rules = load_dir(&rules_dir()).unwrap();
    pick.iter()
        .map(|id| {
            let rule = rules.iter().find(|r| r.id == *id).expect(id);
            let ex = &rule.examples[0];
            let text = format!(
                "GET /x HTTP/1.1\r\nHost: a\r\n\r\nlead ops@example.com {} trail\n",
                ex.text()
            );
            (
                text,
                ex.secret().expect("examples name their secret").to_string(),
                rule.id.clone(),
            )
        })
        .collect()
}

#[test]
fn a_secret_split_at_every_point_is_masked() {
    for (text, secret, rule) in samples() {
        let data = text.as_bytes();
        let at = text.find(&secret).unwrap() as u64;
        for split in 0..=data.len() {
            let (out, findings) = mask_chunks([&data[..split], &data[split..]]);
            assert_eq!(out.len(), data.len(), "{rule} split {split}: same length");
            assert!(
                !contains(&out, secret.as_bytes()),
                "{rule} split {split}: secret survived"
            );
            let f = findings
                .iter()
                .find(|f| f.rule == rule)
                .unwrap_or_else(|| panic!("{rule} split {split}: no finding in {findings:?}"));
            assert_eq!(
                (f.offset, f.length as usize),
                (at, secret.len()),
                "{rule} split {split}"
            );
            assert_eq!(f.forwarded_unmasked, 0);
            // A short prefix stays for recognition; the rest is masked.
            let keep = finding::kept_prefix(secret.len());
            let masked = &out[at as usize..at as usize + secret.len()];
            assert_eq!(&masked[..keep], &secret.as_bytes()[..keep]);
            assert!(
                masked[keep..].iter().all(|&b| b == b'*'),
                "{rule} split {split}"
            );
        }
    }
}

#[test]
fn masking_is_independent_of_chunking_and_never_leaks() {
    let samples = samples();
    let corpus: String = samples.iter().map(|(t, ..)| t.as_str()).collect();
    let data = corpus.as_bytes();
    let (whole, mut whole_findings) = mask_chunks([data]);
    whole_findings.sort_by(|a, b| (a.offset, &a.rule).cmp(&(b.offset, &b.rule)));
    for (_, _, rule) in &samples {
        assert!(whole_findings.iter().any(|f| &f.rule == rule), "{rule}");
    }
    // Deterministic pseudo-random chunk sizes from 1 to 300 bytes.
    let mut seed = 0x9e37_79b9_u32;
    for round in 0..20 {
        let mut chunks = Vec::new();
        let mut rest = data;
        while !rest.is_empty() {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let n = ((seed >> 16) as usize % 300 + 1).min(rest.len());
            let (c, r) = rest.split_at(n);
            chunks.push(c);
            rest = r;
        }
        let (out, mut findings) = mask_chunks(chunks);
        assert_eq!(out, whole, "round {round}");
        // Two rules that match the same bytes may be confirmed in either order.
        findings.sort_by(|a, b| (a.offset, &a.rule).cmp(&(b.offset, &b.rule)));
        assert_eq!(findings, whole_findings, "round {round}");
    }
    for (_, secret, rule) in &samples {
        assert!(!contains(&whole, secret.as_bytes()), "{rule} leaked");
    }
}

#[test]
fn the_holdback_is_bounded_and_plain_text_passes_unchanged() {
    let mut m = masker();
    let mut out = Vec::new();
    let line = b"{\"id\": 12345, \"name\": \"widget\", \"tags\": [\"a\", \"b\"]}\n";
    for _ in 0..2000 {
        m.push(line, &mut out).unwrap();
        assert!(m.held() <= engine().holdback());
    }
    assert!(engine().holdback() <= engine::MAX_HOLDBACK);
    m.finish(&mut out).unwrap();
    assert_eq!(out, line.repeat(2000));
    assert!(m.take_findings().is_empty());
}

#[test]
fn findings_carry_a_salted_hash_never_the_secret() {
    let token = format!("ghp_{}", "aB3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1xY3zA5");
    let text = format!("one {token} two {token}\n");
    let (out, findings) = mask_chunks([text.as_bytes()]);
    assert_eq!(findings.len(), 2);
    assert_eq!(findings[0].hash, findings[1].hash, "repeats correlate");
    assert_eq!(findings[0].hash.len(), 32);
    let json = serde_json::to_string(&findings).unwrap();
    assert!(!json.contains(&token[4..]), "{json}");
    assert!(!contains(&out, token.as_bytes()));
    // Another salt, another hash.
    let other = SecretHasher::with_salt([8; 16]).hash(token.as_bytes());
    assert_ne!(other, findings[0].hash);
}

#[test]
fn json_escaped_url_encoded_and_base64_secrets_are_found_and_masked() {
    let aws = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYzQ8x3Lk2Vd";
    let pg = "S3cr3t-pAssw0rd-x9";
    let ghp = "ghp_aB3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1xY3zA5";
    let cases = [
        (
            format!(r#"{{"url": "postgres:\/\/app:{pg}@db.internal\/app"}}"#),
            pg.to_string(),
            "postgres.url-password",
            Encoding::JsonEscaped,
        ),
        (
            format!(
                r#"{{"aws_secret_access_key": "{}"}}"#,
                aws.replace('+', r"\u002b").replace('/', r"\/")
            ),
            aws.replace('+', r"\u002b").replace('/', r"\/"),
            "aws.secret-access-key",
            Encoding::JsonEscaped,
        ),
        (
            format!(
                "GET /cb?aws_secret_access_key={}&x=1 HTTP/1.1\r\n",
                aws.replace('+', "%2B").replace('/', "%2F")
            ),
            aws.replace('+', "%2B").replace('/', "%2F"),
            "aws.secret-access-key",
            Encoding::UrlEncoded,
        ),
        // A callback URL in a JSON string: `\/` escapes around a URL-encoded secret.
        (
            format!(
                r#"{{"cb": "https:\/\/app.test\/cb?aws_secret_access_key={}&x=1"}}"#,
                aws.replace('+', "%2B").replace('/', "%2F")
            ),
            aws.replace('+', "%2B").replace('/', "%2F"),
            "aws.secret-access-key",
            Encoding::UrlEncoded,
        ),
    ];
    for (text, written, rule, encoding) in cases {
        let (out, findings) = mask_chunks([text.as_bytes()]);
        let f = findings
            .iter()
            .find(|f| f.rule == rule)
            .unwrap_or_else(|| panic!("{rule} in {text}: {findings:?}"));
        assert_eq!(f.encoding, encoding, "{text}");
        assert_eq!(f.offset as usize, text.find(&written).unwrap(), "{text}");
        assert_eq!(f.length as usize, written.len());
        assert!(
            !contains(&out, written.as_bytes()),
            "{}",
            String::from_utf8_lossy(&out)
        );
        assert_eq!(out.len(), text.len());
    }
    // Base64-wrapped: a token inside a base64 blob (e.g. a Kubernetes secret's data).
    use base64::Engine as _;
    let blob = base64::engine::general_purpose::STANDARD.encode(format!("token={ghp}\n"));
    let text = format!("data:\n  config: {blob}\n");
    let (out, findings) = mask_chunks(text.as_bytes().chunks(7));
    let f = findings
        .iter()
        .find(|f| f.rule == "github.ghp")
        .expect("found in base64");
    assert_eq!(f.encoding, Encoding::Base64);
    assert_eq!(
        f.hash,
        SecretHasher::with_salt([7; 16]).hash(ghp.as_bytes())
    );
    let decoded_out = String::from_utf8(out).unwrap();
    assert!(!decoded_out.contains(&blob), "base64 run masked");
}

#[test]
fn compressed_bodies_are_masked_after_decoding_and_re_encoded() {
    use compression::{ContentEncoding, Decoder, Encoder};
    let secret = "sk_live_4eC39HqLyjWDarjtT1zdp7dcXyZ4eC39HqLyjWDarjtT1";
    let body = format!(
        "{{\"items\": [{}], \"key\": \"{secret}\"}}",
        "1,".repeat(5000) + "1"
    );
    for encoding in [
        ContentEncoding::Gzip,
        ContentEncoding::Deflate,
        ContentEncoding::Brotli,
        ContentEncoding::Zstd,
    ] {
        let mut enc = Encoder::new(encoding).unwrap();
        let mut wire = enc.push(body.as_bytes()).unwrap();
        wire.extend(enc.finish().unwrap());
        // Decode → mask → re-encode, chunk by chunk, as a proxy would.
        let mut dec = Decoder::new(encoding, 1 << 20).unwrap();
        let mut m = masker();
        let mut re = Encoder::new(encoding).unwrap();
        let mut out_wire = Vec::new();
        let mut plain = Vec::new();
        for chunk in wire.chunks(100) {
            let decoded = dec.push(chunk).unwrap();
            plain.clear();
            m.push(&decoded, &mut plain).unwrap();
            out_wire.extend(re.push(&plain).unwrap());
        }
        plain.clear();
        m.push(&dec.finish().unwrap(), &mut plain).unwrap();
        m.finish(&mut plain).unwrap();
        out_wire.extend(re.push(&plain).unwrap());
        out_wire.extend(re.finish().unwrap());
        assert!(
            m.take_findings()
                .iter()
                .any(|f| f.rule == "stripe.secret-key")
        );
        let mut check = Decoder::new(encoding, 1 << 20).unwrap();
        let mut result = check.push(&out_wire).unwrap();
        result.extend(check.finish().unwrap());
        assert_eq!(result.len(), body.len(), "{encoding:?}");
        assert!(!contains(&result, secret.as_bytes()), "{encoding:?}");
        assert!(!contains(&out_wire, secret.as_bytes()));
    }
}

/// An engine of the rules in `yaml` (a rule file's text).
fn engine_of(yaml: &str) -> Arc<Engine> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("t.yaml"), yaml).unwrap();
    Arc::new(Engine::compile(&load_dir(dir.path()).unwrap()).unwrap())
}

#[test]
fn a_leading_boundary_is_checked_against_the_byte_before_the_window() {
    // The prefilter has no `\b`, and the window to confirm starts right after the `x`:
    // only the bytes before the window say there is no boundary.
    let e = engine_of(
        r#"rules:
  - id: t.bounded
    name: word-bounded token
    pattern: '\btok_([a-z]{8})'
    prefilter: 'tok_[a-z]{8}'
"#,
    );
    assert!(e.find(b"xtok_abcdefgh").unwrap().is_empty());
    assert_eq!(e.find(b"x tok_abcdefgh").unwrap().len(), 1);
    let (out, found) =
        mask_buffer(&e, &SecretHasher::with_salt([0; 16]), b"xtok_abcdefgh").unwrap();
    assert_eq!((out.as_slice(), found.len()), (&b"xtok_abcdefgh"[..], 0));
}

#[test]
fn a_prefilter_finds_candidates_and_the_pattern_decides() {
    let e = engine_of(
        r#"rules:
  - id: t.anchored
    name: anchored on a rare byte
    pattern: 'key=([a-z]{8})#'
    prefilter: '#'
"#,
    );
    let found = e.find(b"a key=abcdefgh# b key=abc# c #").unwrap();
    let spans: Vec<(usize, usize)> = found
        .iter()
        .map(|d| (d.secret.start, d.secret.end))
        .collect();
    assert_eq!(spans, [(6, 14)]);
    let text = b"key=abcdefgh#";
    for split in 0..=text.len() {
        let mut m = Masker::new(e.clone(), SecretHasher::with_salt([0; 16])).unwrap();
        let mut out = Vec::new();
        m.push(&text[..split], &mut out).unwrap();
        m.push(&text[split..], &mut out).unwrap();
        m.finish(&mut out).unwrap();
        assert!(!contains(&out, b"abcdefgh"), "split {split}");
    }
}

#[test]
fn block_find_reports_exact_spans() {
    let e = engine();
    let value = "Bearer ghp_aB3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1xY3zA5";
    let found = e.find(value.as_bytes()).unwrap();
    let d = found
        .iter()
        .find(|d| &*e.rules()[d.rule].id == "github.ghp")
        .unwrap();
    assert_eq!(d.secret, 7..value.len());
    assert!(e.find(b"plain words and numbers 12345").unwrap().is_empty());
    assert_eq!(
        mask_all(&e, b"no secrets here").unwrap(),
        b"no secrets here"
    );
}

#[test]
fn encoded_secrets_split_at_every_point_are_masked() {
    use base64::Engine as _;
    let aws = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYzQ8x3Lk2Vd";
    let ghp = "ghp_aB3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1xY3zA5";
    let json = aws.replace('+', r"\u002b").replace('/', r"\/");
    let url = aws.replace('+', "%2B").replace('/', "%2F");
    let b64 = base64::engine::general_purpose::STANDARD.encode(format!("token={ghp}\n"));
    // Escapes no encoder writes: the raw stream signals them (split or not), a view decodes.
    let obfuscated = ghp.replacen('_', "%5F", 1).replacen('g', r"\u0067", 1);
    let cases = [
        (
            format!(r#"{{"aws_secret_access_key": "{json}"}}"#),
            json.clone(),
            "aws.secret-access-key",
            Encoding::JsonEscaped,
        ),
        (
            format!("GET /?aws_secret_access_key={url}&x=1 HTTP/1.1\r\n"),
            url.clone(),
            "aws.secret-access-key",
            Encoding::UrlEncoded,
        ),
        (
            format!(r#"{{"q": "token={obfuscated}"}}"#),
            obfuscated.clone(),
            "github.ghp",
            // A `%XX` among the escapes makes it URL-encoded.
            Encoding::UrlEncoded,
        ),
        (
            format!("config: {b64}\n"),
            b64.clone(),
            "github.ghp",
            Encoding::Base64,
        ),
    ];
    for (text, written, rule, encoding) in cases {
        let data = text.as_bytes();
        for split in 0..=data.len() {
            let (out, findings) = mask_chunks([&data[..split], &data[split..]]);
            assert_eq!(out.len(), data.len());
            assert!(
                findings
                    .iter()
                    .any(|f| f.rule == rule && f.encoding == encoding),
                "{rule} {encoding:?} split {split}: {findings:?}"
            );
            assert!(!contains(&out, written.as_bytes()), "{rule} split {split}");
        }
    }
}

#[test]
fn block_find_reports_every_secret_of_a_large_buffer() {
    let e = engine();
    let key = |i: usize| format!("ghp_{i:04}{}", "aB3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1xY");
    let mut data = String::new();
    for i in 0..50 {
        data.push_str(&format!("{{\"token\": \"{}\"}}\n", key(i)));
        data.push_str(&"{\"id\": 1, \"name\": \"widget\"}\n".repeat(400));
    }
    let found: Vec<_> = e
        .find(data.as_bytes())
        .unwrap()
        .into_iter()
        .filter(|d| &*e.rules()[d.rule].id == "github.ghp")
        .collect();
    assert_eq!(found.len(), 50);
    for (i, d) in found.iter().enumerate() {
        assert_eq!(&data[d.secret.clone()], key(i));
    }
}

#[test]
fn arbitrary_bytes_in_arbitrary_chunks_never_panic_and_keep_length() {
    // Bytes biased toward what the decoders and rules react to: escapes, base64, prefixes.
    const ALPHABET: &[u8] = b"\\u00%2Bf/=+-_AaZz09\"': \r\nghp_sk-AKIAeyJ.xoxb-";
    let mut seed = 0x2545_f491_u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for round in 0..30 {
        let len = 2000 + (next() % 40_000) as usize;
        let data: Vec<u8> = (0..len)
            .map(|_| match next() % 4 {
                0 => next() as u8,
                _ => ALPHABET[(next() % ALPHABET.len() as u64) as usize],
            })
            .collect();
        let mut m = masker();
        let mut out = Vec::new();
        let mut rest = data.as_slice();
        while !rest.is_empty() {
            let n = (1 + next() % 5000).min(rest.len() as u64) as usize;
            let (chunk, tail) = rest.split_at(n);
            m.push(chunk, &mut out).unwrap();
            if next() % 7 == 0 {
                m.flush(&mut out).unwrap();
            }
            rest = tail;
        }
        m.finish(&mut out).unwrap();
        assert_eq!(out.len(), data.len(), "round {round}");
    }
}

#[test]
fn a_flush_that_cuts_a_secret_is_reported_as_partly_forwarded() {
    let token = "ghp_aB3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1xY3zA5";
    let mut m = masker();
    let mut out = Vec::new();
    m.push(format!("auth {}", &token[..10]).as_bytes(), &mut out)
        .unwrap();
    // The peer went quiet: everything held is forwarded.
    m.flush(&mut out).unwrap();
    assert_eq!(out, format!("auth {}", &token[..10]).as_bytes());
    m.push(format!("{}\n", &token[10..]).as_bytes(), &mut out)
        .unwrap();
    m.finish(&mut out).unwrap();
    let findings = m.take_findings();
    let f = findings.iter().find(|f| f.rule == "github.ghp").unwrap();
    assert_eq!((f.offset, f.forwarded_unmasked), (5, 10));
    // What was still held is masked.
    assert!(out[15..45].iter().all(|&b| b == b'*'));
}

#[test]
fn a_selection_masks_reports_or_ignores_each_rule() {
    let aws = "AKIAQYLPMN5HHHFPZAM2";
    let ghp = "ghp_aB3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1xY3zA5";
    let slack = "xoxb-983227406196-9740026249223-5hMAac3c0tfFVXPcWdPxLbH0";
    let text = format!("a={aws} g={ghp} s={slack}\n");
    let selection = Arc::new(Selection::new(&engine(), |id| match id {
        "aws.access-key-id" => Handling::Report,
        "slack.bot-token" => Handling::Ignore,
        _ => Handling::Mask,
    }));
    assert!(selection.any() && !selection.masks_everything());
    for split in [0, 5, 30, text.len()] {
        let mut m = Masker::with_selection(
            engine(),
            SecretHasher::with_salt([7; 16]),
            Some(selection.clone()),
        )
        .unwrap();
        let mut out = Vec::new();
        m.push(&text.as_bytes()[..split], &mut out).unwrap();
        m.push(&text.as_bytes()[split..], &mut out).unwrap();
        m.finish(&mut out).unwrap();
        let out = String::from_utf8(out).unwrap();
        assert!(
            out.contains(aws) && out.contains(slack) && !out.contains(ghp),
            "{out}"
        );
        let mut found: Vec<_> = m
            .take_findings()
            .into_iter()
            .map(|f| (f.rule, f.report_only))
            .collect();
        found.sort();
        assert_eq!(
            found,
            [
                ("aws.access-key-id".to_string(), true),
                ("github.ghp".to_string(), false)
            ],
            "split {split}"
        );
    }
    let none = Selection::new(&engine(), |_| Handling::Ignore);
    assert!(!none.any());
    assert!(Selection::mask_all(&engine()).masks_everything());
}

#[test]
fn a_long_stream_is_masked_the_same_across_compactions() {
    // Several times the compaction batch, secrets all along (escaped and plain).
    let samples = samples();
    let mut corpus = String::new();
    for round in 0..40 {
        for (text, ..) in &samples {
            corpus.push_str(text);
            corpus.push_str(&format!(
                "{{\"url\": \"https:\\/\\/cdn.test\\/{round}\"}}\n"
            ));
            corpus.push_str(&"filler line without secrets\n".repeat(20));
        }
    }
    let data = corpus.as_bytes();
    assert!(data.len() > 4 * 64 * 1024);
    let sorted = |mut f: Vec<Finding>| {
        f.sort_by(|a, b| (a.offset, &a.rule).cmp(&(b.offset, &b.rule)));
        f
    };
    let (whole, whole_findings) = mask_chunks([data]);
    let (chunked, chunked_findings) = mask_chunks(data.chunks(16 * 1024 + 7));
    assert!(chunked == whole, "chunked output differs");
    let (whole_findings, chunked_findings) = (sorted(whole_findings), sorted(chunked_findings));
    assert_eq!(whole_findings.len(), chunked_findings.len());
    if let Some((w, c)) = whole_findings
        .iter()
        .zip(&chunked_findings)
        .find(|(w, c)| w != c)
    {
        panic!("findings differ: {w:?} / {c:?}");
    }
    for (_, secret, rule) in &samples {
        assert!(!contains(&whole, secret.as_bytes()), "{rule} leaked");
        let n = whole_findings.iter().filter(|f| &f.rule == rule).count();
        assert!(n >= 40, "{rule}: {n} findings");
    }
}

#[test]
fn a_secret_that_ends_the_held_tail_is_masked_by_an_idle_flush() {
    let rules = load_dir(&rules_dir()).unwrap();
    let ghp = rules.iter().find(|r| r.id == "github.ghp").unwrap();
    let token = ghp.examples[0].secret().unwrap().to_string();
    // Its trailing `\b` is only confirmed by the next byte or the end; neither has come.
    let plain = format!("token {token}");
    let url = format!("token={}", token.replacen('_', "%5F", 1));
    for (text, encoding) in [(plain, Encoding::Plain), (url, Encoding::UrlEncoded)] {
        let mut m = masker();
        let mut out = Vec::new();
        m.push(text.as_bytes(), &mut out).unwrap();
        m.flush(&mut out).unwrap();
        assert_eq!(out.len(), text.len());
        assert!(!contains(&out, &token.as_bytes()[10..]), "{encoding:?}");
        assert!(out.ends_with(b"****"), "{}", String::from_utf8_lossy(&out));
        // The stream goes on: the boundary that now arrives does not report it again.
        m.push(b"\n", &mut out).unwrap();
        m.finish(&mut out).unwrap();
        let findings = m.take_findings();
        assert_eq!(findings.len(), 1, "{findings:?}");
        let f = &findings[0];
        assert_eq!((f.rule.as_str(), f.encoding), ("github.ghp", encoding));
        assert_eq!(f.forwarded_unmasked, 0);
    }
}

#[test]
fn escape_tolerant_forms_take_what_encoders_write_and_print_as_they_parse() {
    use tolerant::Precision;
    // Hyperscan's syntax here is also the regex crate's: the printed form is checked by it.
    let regex = |printed: &str| {
        regex::bytes::RegexBuilder::new(printed)
            .unicode(false)
            .build()
            .unwrap()
    };
    let hir = tolerant::parse(r"\bkey=([A-Za-z0-9/+]{8})\b").unwrap();
    let exact = regex(&tolerant::hyperscan_syntax(&tolerant::tolerant(
        &hir,
        Precision::Exact,
    )));
    let wide = regex(&tolerant::hyperscan_form(&hir));
    for written in [
        "key=ab/cd+ef",
        r"key\u003dab\/cd\u002Bef",
        "key%3Dab%2fcd%2Bef",
        r#"{"k": "key=ab\/cd+ef"}"#,
    ] {
        assert!(exact.is_match(written.as_bytes()), "{written}");
        assert!(wide.is_match(written.as_bytes()), "{written}");
    }
    for other in ["kex=ab/cd+ef", "key=ab/cd+e", "key:ab/cd+ef"] {
        assert!(!exact.is_match(other.as_bytes()), "{other}");
        assert!(!wide.is_match(other.as_bytes()), "{other}");
    }
    // An escaped `:` is no byte of the secret's class: only the wide superset takes it.
    let colon = b"key=ab%3Acdef";
    assert!(!exact.is_match(colon) && wide.is_match(colon));
    // A leading byte and its escapes become branches of their own, each with the rest.
    let at = tolerant::hyperscan_form(&tolerant::parse("@[a-z]").unwrap());
    let branches = match tolerant::parse(&at).unwrap().into_kind() {
        regex_syntax::hir::HirKind::Alternation(b) => b.len(),
        _ => 0,
    };
    assert_eq!(branches, 3, "{at}");
    let at = regex(&at);
    for written in ["@x", r"\u0040x", "%40x"] {
        assert!(at.is_match(written.as_bytes()), "{written}");
    }
    for other in ["%41x", "@1", "%40"] {
        assert!(!at.is_match(other.as_bytes()), "{other}");
    }
}

#[test]
fn only_escapes_no_encoder_writes_start_the_decoded_view() {
    let engine = engine();
    let scratch = engine.lend_scratch();
    // Whether the raw stream signals such an escape, split at every point in two chunks.
    let signals = |text: &str| {
        let seen: Vec<bool> = (0..=text.len())
            .map(|split| {
                let mut scan = super::stream::StreamScan::new(&engine).unwrap();
                for (len, new) in [(split, split), (text.len(), text.len() - split)] {
                    let buf = &text.as_bytes()[..len];
                    scan.scan(&engine, &scratch, buf, 0, new, false, |_, _, _| {})
                        .unwrap();
                }
                scan.close(&scratch);
                scan.saw_unusual_escape()
            })
            .collect();
        assert!(seen.iter().all(|&s| s == seen[0]), "{text}: {seen:?}");
        seen[0]
    };
    // What JSON and URL encoders write: the escape-tolerant forms take it.
    for usual in [
        r"a\/b",
        "q=red%20shoes",
        "%2F%2b%40",
        r"\u002b\u003c",
        r"caf\u00e9",
        "%C3%A9",
        "100%",
        r"\u00",
    ] {
        assert!(!signals(usual), "{usual}");
    }
    // Letters, digits and `_` escaped: obfuscation, for the view.
    for unusual in ["ghp%5Ftoken", r"\u0067hp_", "%41KIA", "%2d", r"x\u004A"] {
        assert!(signals(unusual), "{unusual}");
    }
}

#[test]
fn an_escaped_secret_that_ends_the_held_tail_is_masked_by_an_idle_flush() {
    let aws = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYzQ8x3Lk2Vd";
    let written = aws.replace('/', r"\/").replace('+', r"\u002b");
    // The rule wants the byte after the key (or the end) before it is sure; neither came.
    let text = format!(r#"{{"aws_secret_access_key": "{written}"#);
    let mut m = masker();
    let mut out = Vec::new();
    m.push(text.as_bytes(), &mut out).unwrap();
    m.flush(&mut out).unwrap();
    assert_eq!(out.len(), text.len());
    assert!(out.ends_with(b"****"), "{}", String::from_utf8_lossy(&out));
    let findings = m.take_findings();
    let f = findings
        .iter()
        .find(|f| f.rule == "aws.secret-access-key")
        .unwrap_or_else(|| panic!("{findings:?}"));
    assert_eq!(
        (f.encoding, f.length as usize, f.forwarded_unmasked),
        (Encoding::JsonEscaped, written.len(), 0)
    );
}

/// An idle connection has a masker per direction; they must not pin what only a scan needs.
/// A scratch space (tens of kilobytes) is lent per scan, and after a burst the masker gives
/// back its buffer down to the tail it holds as context.
#[test]
fn an_idle_masker_holds_no_scratch_and_releases_its_buffer() {
    let e = engine_of(
        r#"rules:
  - id: t.token
    name: a token
    pattern: 'tok_([a-z]{8})'
"#,
    );
    let hasher = SecretHasher::with_salt([0; 16]);
    let (mut up, mut down) = (
        Masker::new(e.clone(), hasher.clone()).unwrap(),
        Masker::new(e.clone(), hasher).unwrap(),
    );
    // Spaces: no base64 run, whose bytes would be kept until its next segment is scanned.
    let burst = vec![b' '; 200 * 1024];
    let mut out = Vec::new();
    up.push(&burst, &mut out).unwrap();
    down.push(b"tok_abcdefgh and more", &mut out).unwrap();
    // Both scanned with the one scratch space, back in the pool between scans.
    assert_eq!(e.idle_scratches(), 1);
    up.flush(&mut out).unwrap();
    up.release_memory();
    assert_eq!(up.held(), 0);
    assert!(
        up.buffer_capacity() <= e.holdback(),
        "{} bytes kept after the burst, holdback {}",
        up.buffer_capacity(),
        e.holdback()
    );
}
