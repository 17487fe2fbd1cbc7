//! For a rule with a prefilter: whether the rule's pattern can end where Hyperscan reported
//! an end of the (looser) prefilter. A reverse lazy DFA of the pattern runs backwards from
//! that byte, anchored there, so an end no match can have is dropped after a few bytes,
//! before it becomes a candidate whose whole window the regex would search. This is what
//! lets `url.credentials` hang on `@`: the check walks back through an e-mail address's local
//! part and stops at the quote or space before it.

use regex_automata::hybrid::dfa::{Cache, DFA};
use regex_automata::nfa::thompson;
use regex_automata::util::syntax;
use regex_automata::{Anchored, Input, MatchKind};

pub(super) struct EndCheck {
    dfa: DFA,
}

impl EndCheck {
    pub(super) fn new(pattern: &str) -> Result<EndCheck, String> {
        let dfa = DFA::builder()
            // Every match, not only the preferred one: the question is whether any exists.
            .configure(DFA::config().match_kind(MatchKind::All))
            .syntax(syntax::Config::new().unicode(false).utf8(false))
            .thompson(thompson::Config::new().reverse(true).utf8(false))
            .build(pattern)
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
