//! The match index: every rule's globs of one field compiled into one `GlobSet`, so that a
//! decision matches each fact once against the whole policy (not once per rule), and then
//! walks only the rules whose glob conditions all hold. Scratch bitsets live in a
//! thread-local buffer: after the first decision on a thread, deciding does not allocate.

use std::cell::RefCell;

use globset::{Candidate, GlobSet, GlobSetBuilder};

use super::decide::Stage;
use super::facts::{ConnectionFacts, glob_values};
use super::model::{GlobField, Rule};

#[derive(Debug)]
pub struct Index {
    rules: usize,
    fields: Vec<FieldIndex>,
}

/// The globs of one field across all rules.
#[derive(Debug)]
struct FieldIndex {
    field: GlobField,
    set: GlobSet,
    /// Rule of each glob in `set`.
    owner: Vec<usize>,
    /// Rules without a condition on this field (they pass it whatever the value).
    unconstrained: Vec<u64>,
}

#[derive(Default)]
struct Scratch {
    candidates: Vec<u64>,
    field: Vec<u64>,
    hits: Vec<usize>,
    /// A host name in lower case.
    lower: Vec<u8>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

fn words(rules: usize) -> usize {
    rules.div_ceil(64)
}

fn set_bit(bits: &mut [u64], i: usize) {
    bits[i / 64] |= 1 << (i % 64);
}

/// All bits of `rules` rules set, none beyond.
fn fill(bits: &mut Vec<u64>, rules: usize) {
    bits.clear();
    bits.resize(words(rules), !0);
    if !rules.is_multiple_of(64)
        && let Some(last) = bits.last_mut()
    {
        *last = (1 << (rules % 64)) - 1;
    }
}

impl Index {
    pub fn build(rules: &[Rule]) -> Result<Index, globset::Error> {
        let mut fields = Vec::new();
        for field in GlobField::ALL {
            let mut builder = GlobSetBuilder::new();
            let mut owner = Vec::new();
            let mut unconstrained = vec![0; words(rules.len())];
            for (i, rule) in rules.iter().enumerate() {
                let patterns = rule.when.globs(field);
                if patterns.is_empty() {
                    set_bit(&mut unconstrained, i);
                }
                for p in patterns {
                    builder.add(p.matcher.glob().clone());
                    owner.push(i);
                }
            }
            if !owner.is_empty() {
                fields.push(FieldIndex {
                    field,
                    set: builder.build()?,
                    owner,
                    unconstrained,
                });
            }
        }
        Ok(Index {
            rules: rules.len(),
            fields,
        })
    }

    /// The first rule (in file order) whose glob conditions hold and that `accept`s.
    pub fn first_match(
        &self,
        c: &ConnectionFacts,
        stage: Stage,
        mut accept: impl FnMut(usize) -> bool,
    ) -> Option<usize> {
        SCRATCH.with_borrow_mut(|s| {
            fill(&mut s.candidates, self.rules);
            let request = stage.request();
            for f in &self.fields {
                // Conditions the stage leaves undecided are left to the rule check.
                if stage.skips(f.field) {
                    continue;
                }
                // No candidate left has a condition on this field: nothing to match.
                let constrained = s.candidates.iter().zip(&f.unconstrained);
                if constrained.into_iter().all(|(c, u)| c & !u == 0) {
                    continue;
                }
                s.field.clear();
                s.field.extend_from_slice(&f.unconstrained);
                for value in glob_values(f.field, c, request).into_iter().flatten() {
                    let value = if f.field == GlobField::Host {
                        s.lower.clear();
                        s.lower
                            .extend(value.bytes().map(|b| b.to_ascii_lowercase()));
                        &s.lower[..]
                    } else {
                        value.as_bytes()
                    };
                    f.set
                        .matches_candidate_into(&Candidate::from_bytes(value), &mut s.hits);
                    for &h in &s.hits {
                        set_bit(&mut s.field, f.owner[h]);
                    }
                }
                for (m, x) in s.candidates.iter_mut().zip(&s.field) {
                    *m &= x;
                }
            }
            for (w, &word) in s.candidates.iter().enumerate() {
                let mut bits = word;
                while bits != 0 {
                    let i = w * 64 + bits.trailing_zeros() as usize;
                    if accept(i) {
                        return Some(i);
                    }
                    bits &= bits - 1;
                }
            }
            None
        })
    }
}
