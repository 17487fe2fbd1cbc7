//! The rules' Hyperscan databases: the forms each rule is compiled in for block and stream
//! mode, and the databases compiled from them (or taken from a
//! [`DatabaseCache`](super::db_cache::DatabaseCache): compiling is most of an engine's
//! build time).

use hyperscan::CompileFlags;
use hyperscan::prelude::*;

use super::engine::{EngineError, MAX_RULE_WIDTH};
use super::rules::Rule;
use super::tolerant;

/// What Hyperscan compiles for a list of rules, pattern `i` being rule `i`'s. With the rules'
/// patterns (which give their widths) and the Hyperscan library, all the databases depend on.
pub(super) struct Forms {
    pub block: Patterns,
    /// Ends with the unusual-escape signal (see [`unusual_escape_signal`]).
    pub stream: Patterns,
}

pub(super) struct Databases {
    pub block: BlockDatabase,
    pub stream: StreamingDatabase,
    /// Each rule's widest match, of its pattern (see [`Forms::of`]).
    pub widths: Vec<usize>,
}

impl Forms {
    /// The rules' forms: their prefilters where they have them, else their patterns; in
    /// stream mode, escape-tolerant. Only the pattern's width counts: candidates are
    /// confirmed on the bytes a match of the pattern can span, so a prefilter may even be
    /// unbounded. No Hyperscan call: this is the cache's key.
    pub(super) fn of(rules: &[Rule]) -> Result<Forms, EngineError> {
        let (mut block, mut stream) = (Vec::with_capacity(rules.len()), Vec::new());
        for (index, rule) in rules.iter().enumerate() {
            block.push(pattern(
                rule,
                index,
                rule.prefilter.as_deref().unwrap_or(&rule.pattern),
            )?);
            // Streams meet escaped text (a masker's decoded view runs only for escapes no
            // encoder writes); a block scan here is of decoded base64, or `find` on text as
            // it is.
            let form = (rule.stream_prefilter.as_deref())
                .or(rule.prefilter.as_deref())
                .unwrap_or(&rule.pattern);
            let hir = tolerant::parse(form).map_err(|e| rule_error(rule, format!("regex: {e}")))?;
            stream.push(pattern(rule, index, &tolerant::hyperscan_form(&hir))?);
        }
        stream.push(unusual_escape_signal(rules.len())?);
        Ok(Forms {
            block: Patterns(block),
            stream: Patterns(stream),
        })
    }
}

impl Databases {
    /// Compiles `forms`, the forms of `rules`. Each rule's are first checked alone, so that
    /// one Hyperscan rejects is named. The stream database, the slower, compiles on a thread
    /// of its own meanwhile.
    pub(super) fn compile(rules: &[Rule], forms: &Forms) -> Result<Databases, EngineError> {
        std::thread::scope(|scope| {
            let stream = scope.spawn(|| forms.stream.build());
            let widths = widths(rules, forms)?;
            let block = forms.block.build().map_err(EngineError::Database)?;
            let stream = stream
                .join()
                .expect("compiling the stream database panicked");
            Ok(Databases {
                block,
                stream: stream.map_err(EngineError::Database)?,
                widths,
            })
        })
    }
}

/// Each rule's width, once Hyperscan has taken each of its forms alone.
fn widths(rules: &[Rule], forms: &Forms) -> Result<Vec<usize>, EngineError> {
    let mut widths = Vec::with_capacity(rules.len());
    for (index, rule) in rules.iter().enumerate() {
        let width = max_width(rule, &pattern(rule, index, &rule.pattern)?)?;
        if width > MAX_RULE_WIDTH {
            return Err(rule_error(
                rule,
                format!("a match can be wider than {MAX_RULE_WIDTH} bytes; bound every repeat"),
            ));
        }
        max_width(rule, &forms.block[index])?;
        max_width(rule, &forms.stream[index])?;
        widths.push(width);
    }
    Ok(widths)
}

fn rule_error(rule: &Rule, message: String) -> EngineError {
    EngineError::Rule {
        id: rule.id.clone(),
        message,
    }
}

/// `expression` as rule `index`'s pattern.
fn pattern(rule: &Rule, index: usize, expression: &str) -> Result<Pattern, EngineError> {
    let mut pattern = Pattern::with_flags(expression, CompileFlags::empty())
        .map_err(|e| rule_error(rule, e.to_string()))?;
    pattern.id = Some(index);
    Ok(pattern)
}

/// The widest match of `pattern`, a form of `rule`, if Hyperscan takes it.
fn max_width(rule: &Rule, pattern: &Pattern) -> Result<usize, EngineError> {
    let info = pattern
        .info()
        .map_err(|e| rule_error(rule, format!("hyperscan rejects the pattern: {e}")))?;
    Ok(info.max_width())
}

/// The stream database's one pattern past the rules (its id is theirs, `rule_count`): an
/// escape no encoder writes, for which a masker starts its decoded view. Reported once per
/// stream.
fn unusual_escape_signal(rule_count: usize) -> Result<Pattern, EngineError> {
    let mut pattern = Pattern::with_flags(
        tolerant::unusual_escape_pattern(),
        CompileFlags::SINGLEMATCH,
    )
    .map_err(EngineError::Database)?;
    pattern.id = Some(rule_count);
    Ok(pattern)
}
