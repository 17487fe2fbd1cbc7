//! Secret scanning throughput: the Hyperscan engine in block mode (`Engine::find`) and in
//! stream mode (a `Masker` fed 16 KiB chunks, masking included), against a `regex::bytes::
//! RegexSet` baseline built from the same rules, over a generated corpus of realistic
//! payloads (JSON API responses, source code, logs), with and without secrets; one run.
//! Then one HTTP request head, per call: what masking costs where a masker is made for a
//! few hundred bytes (every header block, small bodies, WebSocket control frames).
//!
//! Run: `cargo bench -p interceptor --bench scan` (or `cargo xtask bench scan`). After the
//! measurements it writes its section of docs/benchmarks.md from criterion's estimates.

use std::fmt::Write as _;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, Throughput};
use interceptor::detection::{Engine, Masker, Rule, SecretHasher, load_dir, mask_buffer};

const CORPUS_BYTES: usize = 4 << 20;
const CHUNK: usize = 16 * 1024;
/// One planted secret per this many bytes in the "with secrets" corpus.
const SECRET_EVERY: usize = 8 * 1024;
const GROUP: &str = "scan";
const ENGINES: [&str; 3] = ["hyperscan-block", "hyperscan-stream-mask", "regex-set"];
/// A request head as a browser-like client sends it (no secrets).
const HEAD: &str = "GET /api/v2/orders?status=shipped&page=3 HTTP/1.1\r\nhost: api.example.com\r\n\
    user-agent: Mozilla/5.0 (X11; Linux x86_64; rv:132.0) Gecko/20100101 Firefox/132.0\r\n\
    accept: application/json, text/plain, */*\r\naccept-language: en-US,en;q=0.5\r\n\
    accept-encoding: gzip, deflate, br, zstd\r\nreferer: https://app.example.com/orders\r\n\
    x-request-id: 3f2c1a9e-8b7d-4e6f-9a1b-2c3d4e5f6a7b\r\nconnection: keep-alive\r\n\
    sec-fetch-mode: cors\r\nsec-fetch-site: same-site\r\n\r\n";
const HEAD_KIND: &str = "request-head";

/// Deterministic generator (LCG), so every run scans the same bytes.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
    fn chars(&mut self, set: &[u8], n: usize) -> String {
        (0..n).map(|_| set[self.below(set.len())] as char).collect()
    }
    fn hex(&mut self, n: usize) -> String {
        self.chars(b"0123456789abcdef", n)
    }
}

const WORDS: &[&str] = &[
    "alpha", "widget", "order", "customer", "invoice", "status", "pending", "shipped", "region",
    "europe", "account", "quota", "session", "render", "cache", "window", "buffer", "stream",
];

fn json_response(g: &mut Gen, out: &mut String) {
    let _ = writeln!(
        out,
        "{{\"id\":\"{}-{}-{}-{}-{}\",\"type\":\"{}\",\"created_at\":\"2026-11-{:02}T{:02}:{:02}:{:02}Z\",\
         \"amount\":{}.{:02},\"currency\":\"EUR\",\"customer\":{{\"name\":\"{} {}\",\"email\":\"{}@example.com\"}},\
         \"items\":[{{\"sku\":\"SKU-{}\",\"qty\":{},\"etag\":\"{}\"}},{{\"sku\":\"SKU-{}\",\"qty\":{}}}],\
         \"links\":{{\"self\":\"https:\\/\\/api.example.com\\/v1\\/orders\\/{}\"}},\"note\":\"{} {} {}\"}}",
        g.hex(8),
        g.hex(4),
        g.hex(4),
        g.hex(4),
        g.hex(12),
        g.pick(WORDS),
        g.below(28) + 1,
        g.below(24),
        g.below(60),
        g.below(60),
        g.below(10_000),
        g.below(100),
        g.pick(WORDS),
        g.pick(WORDS),
        g.pick(WORDS),
        g.below(99_999),
        g.below(9) + 1,
        g.hex(40),
        g.below(99_999),
        g.below(9) + 1,
        g.below(1_000_000),
        g.pick(WORDS),
        g.pick(WORDS),
        g.pick(WORDS),
    );
}

fn source_code(g: &mut Gen, out: &mut String) {
    let (a, b, c) = (g.pick(WORDS), g.pick(WORDS), g.pick(WORDS));
    let _ = write!(
        out,
        "/// Returns the {a} of a {b}, or None when the {c} is empty.\n\
         pub fn {a}_{b}(input: &[u8], limit: usize) -> Option<{}> {{\n\
         \x20   let mut {c} = Vec::with_capacity(limit.min({}));\n\
         \x20   for (i, byte) in input.iter().enumerate() {{\n\
         \x20       if *byte == b'{}' && i % {} == 0 {{ {c}.push(i as u32); }}\n\
         \x20   }}\n\
         \x20   let key = \"{}_{}\"; // cache key\n\
         \x20   {c}.first().map(|v| {}::from(*v))\n}}\n\n",
        g.pick(&["u32", "u64", "usize"]),
        g.below(4096),
        g.chars(b"abcxyz", 1),
        g.below(7) + 1,
        a,
        g.hex(8),
        g.pick(&["u64", "usize"]),
    );
}

fn log_line(g: &mut Gen, out: &mut String) {
    let _ = writeln!(
        out,
        "2026-11-23T05:{:02}:{:02}.{:03}Z {} request_id={} method={} path=/api/v2/{}/{}?q={}%20{}&page={} \
         status={} duration_ms={} client=127.0.0.{} user_agent=\"curl/8.{}.0\" trace={}",
        g.below(60),
        g.below(60),
        g.below(1000),
        g.pick(&["INFO", "INFO", "WARN", "DEBUG"]),
        g.hex(16),
        g.pick(&["GET", "POST", "PUT"]),
        g.pick(WORDS),
        g.below(100_000),
        g.pick(WORDS),
        g.pick(WORDS),
        g.below(50),
        g.pick(&["200", "201", "404", "500"]),
        g.below(900),
        g.below(250) + 2,
        g.below(12),
        g.hex(32),
    );
}

/// Example texts of every rule, to plant as realistic secrets.
fn planted(rules: &[Rule]) -> Vec<String> {
    rules
        .iter()
        .flat_map(|r| r.examples.iter().map(|e| e.text().to_string()))
        .collect()
}

fn corpus(kind: &str, secrets: &[String]) -> Vec<u8> {
    let mut g = Gen(0x5eed ^ kind.len() as u64);
    let mut out = String::with_capacity(CORPUS_BYTES + 4096);
    let mut next_secret = SECRET_EVERY;
    while out.len() < CORPUS_BYTES {
        match kind {
            "json" => json_response(&mut g, &mut out),
            "source" => source_code(&mut g, &mut out),
            "logs" => log_line(&mut g, &mut out),
            _ => match g.below(3) {
                0 => json_response(&mut g, &mut out),
                1 => source_code(&mut g, &mut out),
                _ => log_line(&mut g, &mut out),
            },
        }
        if kind == "mixed-with-secrets" && out.len() >= next_secret {
            out.push_str(&secrets[g.below(secrets.len())]);
            out.push('\n');
            next_secret += SECRET_EVERY;
        }
    }
    out.into_bytes()
}

fn rules_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/rules")
}

fn main() {
    let rules = load_dir(&rules_dir()).expect("rules");
    let engine = Arc::new(Engine::compile(&rules).expect("engine"));
    let set = regex::bytes::RegexSetBuilder::new(rules.iter().map(|r| r.pattern.as_str()))
        .unicode(false)
        .size_limit(1 << 30)
        .dfa_size_limit(1 << 30)
        .build()
        .expect("regex set");
    let secrets = planted(&rules);
    let kinds = ["json", "source", "logs", "mixed-with-secrets"];
    let hasher = SecretHasher::with_salt([1; 16]);

    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    let mut group = c.benchmark_group(GROUP);
    for kind in kinds {
        let data = corpus(kind, &secrets);
        group.throughput(Throughput::Bytes(data.len() as u64));
        group.bench_function(format!("{}/{kind}", ENGINES[0]), |b| {
            b.iter(|| black_box(engine.find(&data).unwrap().len()))
        });
        group.bench_function(format!("{}/{kind}", ENGINES[1]), |b| {
            let mut out = Vec::with_capacity(data.len() + CHUNK);
            b.iter(|| {
                out.clear();
                let mut m = Masker::new(engine.clone(), hasher.clone()).unwrap();
                for chunk in data.chunks(CHUNK) {
                    m.push(chunk, &mut out).unwrap();
                }
                m.finish(&mut out).unwrap();
                black_box(m.take_findings().len())
            })
        });
        group.bench_function(format!("{}/{kind}", ENGINES[2]), |b| {
            b.iter(|| black_box(set.matches(&data).iter().count()))
        });
    }
    let head = HEAD.as_bytes();
    group.throughput(Throughput::Bytes(head.len() as u64));
    group.bench_function(format!("{}/{HEAD_KIND}", ENGINES[0]), |b| {
        b.iter(|| black_box(engine.find(head).unwrap().len()))
    });
    group.bench_function(format!("{}/{HEAD_KIND}", ENGINES[1]), |b| {
        b.iter(|| black_box(mask_buffer(&engine, &hasher, head).unwrap().1.len()))
    });
    group.bench_function(format!("{}/{HEAD_KIND}", ENGINES[2]), |b| {
        b.iter(|| black_box(set.matches(head).iter().count()))
    });
    group.finish();
    c.final_summary();
    if let Err(e) = write_docs(&kinds, rules.len()) {
        eprintln!("scan bench: docs/benchmarks.md not updated: {e}");
    }
}

/// Mean seconds per iteration of one benchmark, from criterion's saved estimates.
fn mean_seconds(criterion_dir: &Path, engine: &str, kind: &str) -> Option<f64> {
    // Criterion names the directory after the benchmark id, '/' replaced by '_'.
    let path = criterion_dir
        .join(GROUP)
        .join(format!("{engine}_{kind}"))
        .join("new/estimates.json");
    let text = std::fs::read_to_string(path).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    Some(v["mean"]["point_estimate"].as_f64()? / 1e9)
}

fn write_docs(kinds: &[&str], rules: usize) -> Result<(), String> {
    // target/release/deps/scan-HASH → target/criterion
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let target = exe.ancestors().nth(3).ok_or("no target directory")?;
    let criterion_dir = std::env::var_os("CRITERION_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| target.join("criterion"));
    let gbps = |secs: f64| CORPUS_BYTES as f64 / secs / 1e9;
    let mut table = String::new();
    // Block ÷ RegexSet, block and stream GB/s on the corpora without secrets.
    let (mut ratios, mut slowest, mut slowest_stream) = (Vec::new(), f64::MAX, f64::MAX);
    let _ = writeln!(
        table,
        "| corpus | Hyperscan block | Hyperscan stream + masking | regex RegexSet | block ÷ RegexSet | stream ÷ RegexSet |\n| --- | --- | --- | --- | --- | --- |"
    );
    for kind in kinds {
        let t: Vec<f64> = ENGINES
            .iter()
            .map(|e| mean_seconds(&criterion_dir, e, kind))
            .collect::<Option<_>>()
            .ok_or_else(|| format!("no estimates for {kind} under {}", criterion_dir.display()))?;
        if !kind.contains("secrets") {
            ratios.push(t[2] / t[0]);
            slowest = slowest.min(gbps(t[0]));
            slowest_stream = slowest_stream.min(gbps(t[1]));
        }
        let _ = writeln!(
            table,
            "| {kind} | {:.2} GB/s | {:.2} GB/s | {:.3} GB/s | {:.1}× | {:.1}× |",
            gbps(t[0]),
            gbps(t[1]),
            gbps(t[2]),
            t[2] / t[0],
            t[2] / t[1],
        );
    }
    let head: Vec<f64> = ENGINES
        .iter()
        .map(|e| mean_seconds(&criterion_dir, e, HEAD_KIND).map(|s| s * 1e6))
        .collect::<Option<_>>()
        .ok_or("no estimates for the request head")?;
    let (low, high) = ratios
        .iter()
        .fold((f64::MAX, 0f64), |(lo, hi), &r| (lo.min(r), hi.max(r)));
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load = load.split_whitespace().next().unwrap_or("?");
    let section = format!(
        "<!-- bench:scan -->\n## Secret scanning: Hyperscan engine vs `regex::RegexSet` (issue 4)\n\n\
         Command: `cargo bench -p interceptor --bench scan` (release; criterion, 10 samples of \
         3 s, one core). {rules} rules from `policies/rules`; each corpus is 4 MiB generated \
         by the bench (JSON API responses with escaped URLs, Rust-like source, access logs with \
         URL-encoded queries; \"mixed-with-secrets\" plants a rule example every 8 KiB). \
         \"block\" is `Engine::find` on the whole buffer (Hyperscan + `regex` confirmation); \
         \"stream + masking\" is a `Masker` fed 16 KiB chunks, escaped candidates decoded and \
         masked output included; the baseline is `RegexSet::matches` over the same patterns, which only says \
         which rules match (no positions, no masking), so the ratios understate the gap. \
         Measured on the 2-core development machine (load average {load} when the run \
         ended); other work on it moves the numbers by up to ±30%.\n\n\
         {table}\n\
         Targets (issue 4): ≥ 1 GB/s per core without secrets (on the slowest clean corpus, \
         block mode: {slowest:.2} GB/s, stream + masking: {slowest_stream:.2} GB/s) and ≥ 10× `RegexSet` (block mode: {low:.1}× to \
         {high:.1}× on the clean corpora). Stream mode runs the rules' escape-tolerant forms \
         (a `\\/` or `%XX` escape, in every JSON record and log line here, is taken where the \
         rule's byte would be; a candidate with one is confirmed decoded) and probes base64 runs \
         of 24+ characters. Dense secrets (one per 8 KiB) are dominated by `regex` confirmation of the \
         widest rules (PEM and PGP blocks, JWTs).\n\n\
         One request head ({head_bytes} bytes, no secrets), per call: block {:.2} µs, masking \
         {:.2} µs (`mask_buffer`: a `Masker` made, fed and finished, as for every header block, \
         small body and WebSocket control frame), `RegexSet` {:.2} µs; masking ÷ `RegexSet` \
         {:.1}×.\n<!-- /bench:scan -->\n",
        head[0],
        head[1],
        head[2],
        head[2] / head[1],
        head_bytes = HEAD.len(),
    );
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/benchmarks.md");
    let old = std::fs::read_to_string(&docs).unwrap_or_else(|_| "# Benchmarks\n".into());
    let new = match (
        old.find("<!-- bench:scan -->"),
        old.find("<!-- /bench:scan -->"),
    ) {
        (Some(a), Some(b)) => {
            let end = b + "<!-- /bench:scan -->\n".len().min(old.len() - b);
            format!("{}{section}{}", &old[..a], &old[end..])
        }
        _ => format!("{}\n{section}", old.trim_end()),
    };
    std::fs::write(&docs, new).map_err(|e| e.to_string())
}
