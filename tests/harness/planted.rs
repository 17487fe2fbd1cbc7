//! Secrets to plant: the `examples` of the shipped rules (policies/rules/*.yaml), how the
//! daemon masks them, and answers that carry one split into deltas at chosen points.

use anyhow::{Context, Result};
use serde::Deserialize;

use crate::util::workspace_root;

#[derive(Deserialize)]
struct RuleFile {
    rules: Vec<Rule>,
}

#[derive(Deserialize)]
struct Rule {
    id: String,
    #[serde(default)]
    examples: Vec<Example>,
}

#[derive(Deserialize)]
struct Example {
    text: String,
    secret: String,
}

/// One shipped rule's first example: a text holding a secret the rule finds.
#[derive(Clone, Debug)]
pub struct Planted {
    pub rule: String,
    pub text: String,
    pub secret: String,
}

/// The first example of the shipped rule `id`.
pub fn example(id: &str) -> Result<Planted> {
    examples()?
        .into_iter()
        .find(|p| p.rule == id)
        .with_context(|| format!("no shipped rule {id} with an example"))
}

/// The first example of every shipped rule that has one, in file and rule order.
pub fn examples() -> Result<Vec<Planted>> {
    let dir = workspace_root().join("policies/rules");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    paths.retain(|p| p.extension().is_some_and(|e| e == "yaml"));
    paths.sort();
    let mut out = Vec::new();
    for path in paths {
        let file: RuleFile = serde_norway::from_str(&std::fs::read_to_string(&path)?)
            .with_context(|| format!("parsing {}", path.display()))?;
        for rule in file.rules {
            if let Some(ex) = rule.examples.into_iter().next() {
                out.push(Planted {
                    rule: rule.id,
                    text: ex.text,
                    secret: ex.secret,
                });
            }
        }
    }
    Ok(out)
}

/// Bytes of a secret of `len` bytes the daemon leaves readable (as
/// interceptor/src/detection/finding.rs `kept_prefix`).
pub fn kept_prefix(len: usize) -> usize {
    (len / 4).min(4)
}

/// `secret` as the daemon masks it: the kept prefix, then `*` for the rest (same length).
pub fn masked(secret: &str) -> String {
    let keep = kept_prefix(secret.len());
    format!("{}{}", &secret[..keep], "*".repeat(secret.len() - keep))
}

/// An answer holding a planted example, cut into deltas.
#[derive(Clone, Debug)]
pub struct Split {
    pub planted: Planted,
    pub deltas: Vec<String>,
    /// The delta in which the secret starts.
    pub secret_delta: usize,
    /// The answer as the client must assemble it: the secret masked.
    pub expected: String,
    /// The parts of the secret past its kept prefix as the deltas carry them (4 bytes or
    /// more: shorter ones occur by chance anywhere), and that whole tail: none may be stored.
    pub fragments: Vec<String>,
}

impl Planted {
    /// `before` + the example's text + `after`, cut every 4 bytes outside the secret (as
    /// tokens come) and, inside it, at the byte offsets `cuts` (relative to its start).
    pub fn split(&self, before: &str, after: &str, cuts: &[usize]) -> Split {
        let answer = format!("{before}{}{after}", self.text);
        let start = answer
            .find(&self.secret)
            .expect("the example holds its secret");
        let end = start + self.secret.len();
        let mut at: Vec<usize> = (4..answer.len())
            .step_by(4)
            .filter(|&i| i <= start || i >= end)
            .chain(cuts.iter().map(|c| start + c))
            .filter(|&i| i > 0 && i < answer.len() && answer.is_char_boundary(i))
            .collect();
        at.sort_unstable();
        at.dedup();
        let mut deltas = Vec::new();
        let mut from = 0;
        for &i in at.iter().chain([&answer.len()]) {
            deltas.push(answer[from..i].to_owned());
            from = i;
        }
        let mut offset = 0;
        let mut secret_delta = 0;
        let mut fragments = vec![self.secret[kept_prefix(self.secret.len())..].to_owned()];
        let keep_until = start + kept_prefix(self.secret.len());
        for (n, d) in deltas.iter().enumerate() {
            let (a, b) = (offset, offset + d.len());
            if a <= start && start < b {
                secret_delta = n;
            }
            let (lo, hi) = (a.max(keep_until), b.min(end));
            if hi >= lo + 4 {
                fragments.push(answer[lo..hi].to_owned());
            }
            offset = b;
        }
        Split {
            planted: self.clone(),
            expected: answer.replacen(&self.secret, &masked(&self.secret), 1),
            deltas,
            secret_delta,
            fragments,
        }
    }
}
