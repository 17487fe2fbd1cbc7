//! For a rule with a prefilter: whether the rule's pattern can end where Hyperscan reported
//! an end of the (looser) prefilter. A reverse lazy DFA of the pattern runs backwards from
//! that byte, anchored there, so an end no match can have is dropped after a few bytes,
//! before it becomes a candidate whose whole window the regex would search. This is what
//! lets `url.credentials` hang on `@`: the check walks back through an e-mail address's local
//! part and stops at the quote or space before it.

use regex_automata::hybrid::dfa::{Cache, DFA};
use regex_automata::nfa::thompson;
use regex_automata::{Anchored, Input, MatchKind};
use regex_syntax::hir::Hir;

pub(super) struct EndCheck {
    dfa: DFA,
}

impl EndCheck {
    /// A check for `pattern`, given as its escape-tolerant form (the ends come from a
    /// tolerant Hyperscan form, and an escaped match must pass).
    pub(super) fn new(pattern: &Hir) -> Result<EndCheck, String> {
        let nfa = thompson::Compiler::new()
            .configure(
                thompson::Config::new()
                    .reverse(true)
                    .utf8(false)
                    .which_captures(thompson::WhichCaptures::None),
            )
            .build_from_hir(pattern)
            .map_err(|e| e.to_string())?;
        let dfa = DFA::builder()
            // Every match, not only the preferred one: the question is whether any exists.
            .configure(DFA::config().match_kind(MatchKind::All))
            .build_from_nfa(nfa)
            .map_err(|e| e.to_string())?;
        Ok(EndCheck { dfa })
    }

    pub(super) fn cache(&self) -> Cache {
        self.dfa.create_cache()
    }

    /// Whether a match of the pattern, at most `width` bytes long, can end at `end` in `data`
    /// (the bytes around the range still count for `\b` and other look-arounds).
    pub(super) fn can_end_at(
        &self,
        cache: &mut Cache,
        data: &[u8],
        end: usize,
        width: usize,
    ) -> bool {
        let input = Input::new(data)
            .range(end.saturating_sub(width)..end)
            .anchored(Anchored::Yes);
        // A search the lazy DFA gives up on (its cache thrashing) proves nothing: keep it.
        !matches!(self.dfa.try_search_rev(cache, &input), Ok(None))
    }
}
