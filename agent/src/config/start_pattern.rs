//! A multiline `start` pattern, compiled for the one question grouping asks of every
//! line: does this line start a record?
//!
//! Start patterns are nearly always anchored at the line's beginning (`^\d{4}-`,
//! `^\S`, `^\[`), and most lines of a stack trace fail them at their first byte. The
//! general engine (`regex::bytes::Regex::is_match`) pays its set-up on every call
//! whatever the line: measured at ~23 ns a line, 44% of the CPU of Java multiline
//! grouping into the blackhole. So a pattern that every match must begin at the line's
//! start, and whose fully compiled DFA stays within [`DFA_SIZE_LIMIT`], is answered by
//! walking that DFA byte by byte from its anchored start state, which stops at the first
//! byte that rules a match out (or in). Any other pattern — unanchored ones, where the
//! general engine's literal prefilters win, and those a DFA cannot express (Unicode word
//! boundaries) — is answered by the `Regex`. Both are built from the same pattern text
//! with the same syntax options, so they answer alike (checked by the tests below).

use std::fmt;
use std::sync::Arc;

use regex::bytes::Regex;
use regex_automata::dfa::{Automaton, StartKind, dense};
use regex_automata::nfa::thompson;
use regex_automata::util::primitives::StateID;
use regex_automata::util::start;
use regex_automata::util::syntax;
use regex_automata::{Anchored, MatchKind};

/// The most memory a start pattern's DFA may take (and its construction use) before
/// the pattern is left to the general engine. A date prefix with Unicode `\d` takes
/// a few tens of KiB.
const DFA_SIZE_LIMIT: usize = 1 << 20;

/// See the module documentation. Cheap to clone (one shared DFA per configuration).
#[derive(Clone)]
pub struct StartPattern {
    regex: Regex,
    dfa: Option<Arc<AnchoredDfa>>,
}

struct AnchoredDfa {
    dfa: dense::DFA<Vec<u32>>,
    /// The anchored start state at the beginning of a haystack (no look-behind).
    start: StateID,
}

impl StartPattern {
    pub fn new(regex: Regex) -> StartPattern {
        let dfa = AnchoredDfa::build(regex.as_str()).map(Arc::new);
        StartPattern { regex, dfa }
    }

    /// Whether `line` matches anywhere, as `Regex::is_match` answers.
    #[inline]
    pub fn is_match(&self, line: &[u8]) -> bool {
        match self.dfa.as_deref().and_then(|d| d.is_match(line)) {
            Some(answer) => answer,
            None => self.regex.is_match(line),
        }
    }

    pub fn as_str(&self) -> &str {
        self.regex.as_str()
    }

    /// Whether lines are answered by the compiled DFA (see the module documentation).
    pub fn uses_dfa(&self) -> bool {
        self.dfa.is_some()
    }
}

impl From<Regex> for StartPattern {
    fn from(regex: Regex) -> StartPattern {
        StartPattern::new(regex)
    }
}

impl fmt::Debug for StartPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StartPattern")
            .field("regex", &self.regex.as_str())
            .field("dfa", &self.dfa.is_some())
            .finish()
    }
}

impl AnchoredDfa {
    /// `None` when the pattern is not anchored at the start or its DFA is too large or
    /// cannot be built; the general engine answers then.
    fn build(pattern: &str) -> Option<AnchoredDfa> {
        // `regex::bytes::Regex::new`'s options: Unicode on, matches may be invalid UTF-8.
        let nfa = thompson::Compiler::new()
            .syntax(syntax::Config::new().utf8(false))
            .configure(
                thompson::Config::new()
                    .utf8(false)
                    .which_captures(thompson::WhichCaptures::None),
            )
            .build(pattern)
            .ok()?;
        if !nfa.is_always_start_anchored() {
            return None;
        }
        let dfa = dense::Builder::new()
            .configure(
                dense::Config::new()
                    .match_kind(MatchKind::LeftmostFirst)
                    .start_kind(StartKind::Anchored)
                    .accelerate(false)
                    .dfa_size_limit(Some(DFA_SIZE_LIMIT))
                    .determinize_size_limit(Some(DFA_SIZE_LIMIT)),
            )
            .build_from_nfa(&nfa)
            .ok()?;
        let start = dfa
            .start_state(&start::Config::new().anchored(Anchored::Yes))
            .ok()?;
        Some(AnchoredDfa { dfa, start })
    }

    /// Whether a match begins at the start of `line`; `None` if the DFA gave up (a quit
    /// state: none are configured, so never in practice).
    #[inline]
    fn is_match(&self, line: &[u8]) -> Option<bool> {
        let dfa = &self.dfa;
        let mut state = self.start;
        if dfa.is_special_state(state) {
            return self.settle(state);
        }
        for &byte in line {
            state = dfa.next_state(state, byte);
            if dfa.is_special_state(state) {
                return self.settle(state);
            }
        }
        Some(dfa.is_match_state(dfa.next_eoi_state(state)))
    }

    /// The answer a special state gives: a match state (matches are reported one byte
    /// late, so a match ended before this byte), the dead state (none can), a quit
    /// state (the DFA gives up).
    #[cold]
    fn settle(&self, state: StateID) -> Option<bool> {
        let dfa = &self.dfa;
        if dfa.is_match_state(state) {
            Some(true)
        } else if dfa.is_dead_state(state) {
            Some(false)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Start patterns as people write them, anchored or not, with Unicode classes,
    /// alternations, look-arounds the DFA supports and one it does not.
    const PATTERNS: &[&str] = &[
        r"^\d{4}-\d{2}-\d{2} ",
        r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}",
        r"^\S",
        r"^[^\s]",
        r"^\[",
        r"^(INFO|WARN|ERROR|DEBUG)\b",
        r"^(?i)(info|warn)",
        r"^[A-Z][a-z]{2} \d{1,2}",
        r"^\w+:",
        r"^$",
        r"^.",
        r"^(?-u:\xff)",
        r"^a|^b",
        r"^\d+$",
        r"(?m)^\d",
        r"Exception",
        r"^\bx",
        r"\d{4}-",
        r"^a|b",
    ];

    #[test]
    fn anchored_patterns_use_the_dfa_and_the_others_the_regex() {
        let uses = |p: &str| StartPattern::new(Regex::new(p).unwrap()).uses_dfa();
        assert!(uses(r"^\d{4}-\d{2}-\d{2} "));
        assert!(uses(r"^\S"));
        assert!(uses(r"^a|^b"));
        // Not anchored (or not on every branch): the general engine's prefilters.
        assert!(!uses(r"Exception"));
        assert!(!uses(r"^a|b"));
        assert!(!uses(r"(?m)^\d"));
        // A Unicode word boundary has no DFA.
        assert!(!uses(r"^\bx"));
    }

    #[test]
    fn a_dfa_too_large_is_left_to_the_regex() {
        let p = StartPattern::new(Regex::new(r"^\w{40}x").unwrap());
        assert!(!p.uses_dfa());
        assert!(
            p.is_match(
                "é".repeat(40)
                    .as_bytes()
                    .iter()
                    .chain(b"x")
                    .copied()
                    .collect::<Vec<_>>()
                    .as_slice()
            )
        );
    }

    #[test]
    fn the_examples_answer_as_the_regex() {
        let lines: &[&[u8]] = &[
            b"",
            b"2026-11-21 10:00:00.000 ERROR x",
            b"2026-11-21T10:00:00",
            b"\tat com.shop.Handler.handle(Handler.java:10)",
            b"java.lang.IllegalStateException: boom",
            b"[main] started",
            b"INFO ok",
            b"INFOx",
            b"Nov  7 10:00:00",
            b"\xff\xfe",
            "٢٠٢٦-١١-٢١ x".as_bytes(),
            b"key: value",
            b" leading space",
            b"12345",
        ];
        for p in PATTERNS {
            let regex = Regex::new(p).unwrap();
            let start = StartPattern::new(regex.clone());
            for line in lines {
                assert_eq!(
                    start.is_match(line),
                    regex.is_match(line),
                    "{p:?} on {:?}",
                    String::from_utf8_lossy(line)
                );
            }
        }
    }

    proptest! {
        #[test]
        fn any_line_is_answered_as_the_regex_answers_it(
            pattern in prop::sample::select(PATTERNS),
            line in prop::collection::vec(
                prop_oneof![
                    prop::sample::select(b"0123456789-: TtxaAb[]\xff\xc3\xa9".to_vec()),
                    any::<u8>(),
                ],
                0..24,
            ),
        ) {
            let regex = Regex::new(pattern).unwrap();
            prop_assert_eq!(StartPattern::new(regex.clone()).is_match(&line), regex.is_match(&line));
        }
    }
}
