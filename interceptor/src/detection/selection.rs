//! Which rules of an engine mask, which only report, and which are ignored: a bitmask per
//! rule, built once (per policy load and engine) so the hot path only tests a bit.

use super::engine::Engine;

/// What to do with a confirmed secret of one rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handling {
    /// Masked in the traffic, and recorded.
    Mask,
    /// Recorded only: the traffic goes on untouched.
    Report,
    /// Neither.
    Ignore,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selection {
    mask: Vec<u64>,
    report: Vec<u64>,
    rules: usize,
}

impl Selection {
    /// Every rule of `engine` handled as `handling(rule id)` says.
    pub fn new(engine: &Engine, mut handling: impl FnMut(&str) -> Handling) -> Selection {
        let rules = engine.rules().len();
        let words = rules.div_ceil(64);
        let mut s = Selection {
            mask: vec![0; words],
            report: vec![0; words],
            rules,
        };
        for (i, rule) in engine.rules().iter().enumerate() {
            let (word, bit) = (i / 64, 1u64 << (i % 64));
            match handling(&rule.id) {
                Handling::Mask => s.mask[word] |= bit,
                Handling::Report => s.report[word] |= bit,
                Handling::Ignore => {}
            }
        }
        s
    }

    /// Every rule masks (what a masker does without a selection).
    pub fn mask_all(engine: &Engine) -> Selection {
        Selection::new(engine, |_| Handling::Mask)
    }

    pub fn handling(&self, rule: usize) -> Handling {
        let (word, bit) = (rule / 64, 1u64 << (rule % 64));
        if self.mask.get(word).is_some_and(|w| w & bit != 0) {
            Handling::Mask
        } else if self.report.get(word).is_some_and(|w| w & bit != 0) {
            Handling::Report
        } else {
            Handling::Ignore
        }
    }

    /// Whether any rule masks or reports (else there is nothing to scan for).
    pub fn any(&self) -> bool {
        self.mask.iter().chain(&self.report).any(|w| *w != 0)
    }

    /// Whether every rule masks: then masked output holds no secret any rule finds.
    pub fn masks_everything(&self) -> bool {
        (0..self.rules).all(|r| self.handling(r) == Handling::Mask)
    }

    /// Built for an engine with this many rules.
    pub fn rules(&self) -> usize {
        self.rules
    }
}
