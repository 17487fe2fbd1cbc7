//! Secret rules as written in `policies/rules/*.yaml`: one file per provider or family.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        source: serde_norway::Error,
    },
    #[error("rule id {id:?} is defined twice ({first} and {second})")]
    Duplicate {
        id: String,
        first: PathBuf,
        second: PathBuf,
    },
    #[error("{0}: no rule files (*.yaml, *.yml)")]
    Empty(PathBuf),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    rules: Vec<Rule>,
}

/// One credential type.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Stable identifier, used in findings and in policy exclusions.
    pub id: String,
    pub name: String,
    /// Hyperscan- and `regex`-compatible; exactly one capture group: the secret.
    pub pattern: String,
    /// A Hyperscan pattern that finds candidates in place of `pattern`, for a pattern whose
    /// own literals are frequent in traffic: it must match wherever `pattern` does and end
    /// on the same byte (a cheaper superset, even unbounded); `pattern` confirms each one.
    #[serde(default)]
    pub prefilter: Option<String>,
    /// The same, for stream mode only (bodies and connections), where Hyperscan cannot look
    /// back: it may hang on a late, rarer byte (`@`), from which a reverse DFA of `pattern`
    /// walks back, where `prefilter` would have Hyperscan follow every earlier part.
    #[serde(default)]
    pub stream_prefilter: Option<String>,
    /// Case-insensitive words of which one must occur in the whole match.
    #[serde(default)]
    pub keywords: Vec<String>,
    /// Shannon entropy floor (bits per byte) of the captured secret.
    #[serde(default)]
    pub min_entropy: Option<f64>,
    #[serde(default)]
    pub examples: Vec<Example>,
    #[serde(default)]
    pub negative_examples: Vec<String>,
    #[serde(default)]
    pub references: Vec<String>,
    /// The file this rule came from (for messages).
    #[serde(skip)]
    pub source: PathBuf,
}

/// Text that must match; with `secret`, the capture must be exactly that.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Example {
    Text(String),
    WithSecret { text: String, secret: String },
}

impl Example {
    pub fn text(&self) -> &str {
        match self {
            Example::Text(t) | Example::WithSecret { text: t, .. } => t,
        }
    }

    pub fn secret(&self) -> Option<&str> {
        match self {
            Example::Text(_) => None,
            Example::WithSecret { secret, .. } => Some(secret),
        }
    }
}

/// The shipped rule files, `policies/rules/*.yaml` as they were at build time (name, text).
const BUILTIN: &[(&str, &str)] = include!(concat!(env!("OUT_DIR"), "/builtin_rules.rs"));

/// The shipped rules, compiled into the binary (`source` reads `(built-in)/FILE`).
pub fn builtin() -> Result<Vec<Rule>, RulesError> {
    let mut rules = Vec::new();
    for (name, text) in BUILTIN {
        rules.extend(parse(&Path::new("(built-in)").join(name), text)?);
    }
    unique(&rules)?;
    Ok(rules)
}

/// Where a daemon's secret rules come from: the shipped ones unless `builtin` is off, then
/// each directory in turn. A rule replaces an earlier one with its id (a directory can fix or
/// tighten a shipped rule); within one directory an id must be unique.
#[derive(Clone, Debug, Default)]
pub struct RuleSources {
    pub builtin: bool,
    pub dirs: Vec<PathBuf>,
}

impl RuleSources {
    pub fn load(&self) -> Result<Vec<Rule>, RulesError> {
        let mut rules = if self.builtin { builtin()? } else { Vec::new() };
        for dir in &self.dirs {
            for rule in load_dir(dir)? {
                match rules.iter_mut().find(|r| r.id == rule.id) {
                    Some(earlier) => *earlier = rule,
                    None => rules.push(rule),
                }
            }
        }
        Ok(rules)
    }

    /// Says where the rules come from, for messages ("the built-in rules and DIR").
    pub fn describe(&self) -> String {
        let mut parts: Vec<String> = Vec::new();
        if self.builtin {
            parts.push("the built-in rules".into());
        }
        parts.extend(self.dirs.iter().map(|d| d.display().to_string()));
        match parts.len() {
            0 => "no rules (--no-builtin-rules and no --rules)".into(),
            _ => parts.join(" and "),
        }
    }
}

/// Every rule of every `*.yaml` / `*.yml` file in `dir`, files in name order.
pub fn load_dir(dir: &Path) -> Result<Vec<Rule>, RulesError> {
    let read_err = |source| RulesError::Read {
        path: dir.to_path_buf(),
        source,
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(read_err)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(read_err)?;
    files.retain(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")));
    files.sort();
    if files.is_empty() {
        return Err(RulesError::Empty(dir.to_path_buf()));
    }
    let mut rules = Vec::new();
    for path in files {
        rules.extend(load_file(&path)?);
    }
    unique(&rules)?;
    Ok(rules)
}

/// Fails naming both files when two rules share an id.
fn unique(rules: &[Rule]) -> Result<(), RulesError> {
    let mut seen: HashSet<&str> = HashSet::new();
    for (i, rule) in rules.iter().enumerate() {
        if !seen.insert(&rule.id) {
            let first = rules[..i].iter().find(|r| r.id == rule.id).expect("seen");
            return Err(RulesError::Duplicate {
                id: rule.id.clone(),
                first: first.source.clone(),
                second: rule.source.clone(),
            });
        }
    }
    Ok(())
}

pub fn load_file(path: &Path) -> Result<Vec<Rule>, RulesError> {
    let text = std::fs::read_to_string(path).map_err(|source| RulesError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(path, &text)
}

/// The rules of one file's `text`; `path` names it in errors and in the rules' `source`.
fn parse(path: &Path, text: &str) -> Result<Vec<Rule>, RulesError> {
    let file: RuleFile = serde_norway::from_str(text).map_err(|source| RulesError::Parse {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(file
        .rules
        .into_iter()
        .map(|mut r| {
            r.source = path.to_path_buf();
            r
        })
        .collect())
}
