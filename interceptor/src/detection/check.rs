//! `interceptor rules check`: every rule compiles in Hyperscan and in `regex`, Hyperscan
//! finds a candidate wherever the regex matches (its form may be a wider prefilter, never a
//! narrower one), examples are found (with the stated secret) and masked, and negative
//! examples are not found. Also the property the masker keeps for any input: masking does
//! not depend on where the stream was split (the split tests and the fuzz target use it).

use std::path::Path;
use std::sync::Arc;

use super::engine::{Engine, ScanError};
use super::finding::SecretHasher;
use super::masker::{Masker, mask_buffer};
use super::rules::{Rule, RulesError, load_dir};

/// Hyperscan runs the rule's prefilters when it has them, which must cover the pattern.
const MISSED: &str = "the regex matches but Hyperscan does not, in block or stream mode (a \
                      prefilter must match wherever the pattern does, ending on the same byte)";

#[derive(Debug, Default)]
pub struct Report {
    pub rules: usize,
    pub examples: usize,
    pub negative_examples: usize,
    /// One line per problem; empty when every rule passed.
    pub problems: Vec<String>,
}

pub fn check_dir(dir: &Path) -> Result<Report, RulesError> {
    Ok(check_rules(&load_dir(dir)?))
}

pub fn check_rules(rules: &[Rule]) -> Report {
    let mut report = Report {
        rules: rules.len(),
        ..Report::default()
    };
    // Alone first, so a broken rule is named and the others are still checked.
    let mut good = Vec::new();
    for rule in rules {
        match Engine::compile(std::slice::from_ref(rule)) {
            Ok(_) => good.push(rule.clone()),
            Err(e) => report
                .problems
                .push(format!("{}: {e}", rule.source.display())),
        }
    }
    let engine = match Engine::compile(&good) {
        Ok(e) => Arc::new(e),
        Err(e) => {
            report.problems.push(format!("all rules together: {e}"));
            return report;
        }
    };
    for (index, rule) in good.iter().enumerate() {
        let mut problem = |what: String| {
            report.problems.push(format!(
                "{}: rule {}: {what}",
                rule.source.display(),
                rule.id
            ))
        };
        if rule.examples.is_empty() {
            problem("has no examples".into());
        }
        for example in &rule.examples {
            report.examples += 1;
            if let Err(what) = check_example(&engine, index, example.text(), example.secret()) {
                problem(format!("example {:?}: {what}", example.text()));
            }
        }
        for text in &rule.negative_examples {
            report.negative_examples += 1;
            if let Err(what) = check_negative(&engine, index, text) {
                problem(format!("negative example {text:?}: {what}"));
            }
        }
    }
    report
}

fn check_example(
    engine: &Arc<Engine>,
    rule: usize,
    text: &str,
    secret: Option<&str>,
) -> Result<(), String> {
    let data = text.as_bytes();
    let hyperscan = engine
        .candidate_rules(data)
        .map_err(|e| e.to_string())?
        .contains(&rule);
    let Some(capture) = engine.rules()[rule].regex_matches(data) else {
        return Err(format!("regex does not match (hyperscan: {hyperscan})"));
    };
    if !hyperscan {
        return Err(MISSED.into());
    }
    let captured = &text[capture.clone()];
    if let Some(secret) = secret
        && captured != secret
    {
        return Err(format!("captures {captured:?}, expected {secret:?}"));
    }
    let found = engine.find(data).map_err(|e| e.to_string())?;
    if !found.iter().any(|d| d.rule == rule && d.secret == capture) {
        return Err(format!(
            "{captured:?} is not found (keywords or entropy filter)"
        ));
    }
    let masked = mask_all(engine, data).map_err(|e| e.to_string())?;
    if contains(&masked, captured.as_bytes()) {
        return Err("the secret survives masking".into());
    }
    Ok(())
}

fn check_negative(engine: &Engine, rule: usize, text: &str) -> Result<(), String> {
    let data = text.as_bytes();
    let hyperscan = engine
        .candidate_rules(data)
        .map_err(|e| e.to_string())?
        .contains(&rule);
    if !hyperscan && engine.rules()[rule].regex_matches(data).is_some() {
        return Err(MISSED.into());
    }
    let found = engine.find(data).map_err(|e| e.to_string())?;
    if found.iter().any(|d| d.rule == rule) {
        return Err("is found".into());
    }
    Ok(())
}

/// `data` through a masker in one piece.
pub fn mask_all(engine: &Arc<Engine>, data: &[u8]) -> Result<Vec<u8>, super::engine::ScanError> {
    mask_buffer(engine, &SecretHasher::with_salt([0; 16]), data).map(|(out, _)| out)
}

/// How masking `data` in the pieces cut at `points` (ascending) differs from masking it
/// whole, in output or in findings (rule, offset, length); None when it does not.
pub fn split_difference(
    engine: &Arc<Engine>,
    data: &[u8],
    points: &[usize],
) -> Result<Option<String>, ScanError> {
    let mask = |pieces: &mut dyn Iterator<Item = &[u8]>| -> Result<_, ScanError> {
        let mut m = Masker::new(engine.clone(), SecretHasher::with_salt([0; 16]))?;
        let mut out = Vec::with_capacity(data.len());
        for piece in pieces {
            m.push(piece, &mut out)?;
        }
        m.finish(&mut out)?;
        let mut found: Vec<_> = (m.take_findings().into_iter())
            .map(|f| (f.rule, f.offset, f.length))
            .collect();
        found.sort();
        Ok((out, found))
    };
    let (whole, whole_found) = mask(&mut std::iter::once(data))?;
    let mut cuts = points
        .iter()
        .map(|&p| p.min(data.len()))
        .collect::<Vec<_>>();
    cuts.push(data.len());
    let mut from = 0;
    let mut pieces = cuts.iter().map(|&to| {
        let piece = &data[from.min(to)..to];
        from = from.max(to);
        piece
    });
    let (split, split_found) = mask(&mut pieces)?;
    Ok(if whole != split {
        let at = whole.iter().zip(&split).position(|(a, b)| a != b);
        Some(format!(
            "split at {points:?}: output differs from byte {at:?}"
        ))
    } else if whole_found != split_found {
        Some(format!(
            "split at {points:?}: found {split_found:?}, whole {whole_found:?}"
        ))
    } else {
        None
    })
}

pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}
