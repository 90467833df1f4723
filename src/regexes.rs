//! The `regex` tests of one load, compiled once each and bounded together.
//!
//! A compiled regex can be large: `\w{100}` is a hundred copies of Unicode's word class, about
//! 6 MiB once compiled, and compiling it takes tens of milliseconds. Each pattern is held under
//! a per-pattern limit, but a handler file of a few kilobytes can hold hundreds of such
//! patterns, so one load also has a budget for all its patterns together (handler files and
//! runtime handlers alike). The same pattern written many times is compiled once and shared.
//! A pattern is compiled with the smaller of the two limits as its size limit, so past the
//! budget it is refused as soon as it grows too large, which bounds the time spent too.

use std::collections::HashMap;
use std::sync::Arc;

use regex_automata::meta::{self, Regex};
use regex_automata::util::syntax;
use regex_automata::{Input, MatchKind};

/// The most one pattern may take once compiled (the regex crate's own default).
pub const PATTERN_LIMIT: usize = 10 << 20;

/// The most all the patterns of one load may take together once compiled.
pub const LOAD_BUDGET: usize = 64 << 20;

/// A compiled pattern, shared by every test that writes it.
#[derive(Debug, Clone)]
pub struct Pattern(Arc<Compiled>);

#[derive(Debug)]
struct Compiled {
    text: String,
    regex: Regex,
}

impl Pattern {
    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.0.text
    }

    /// True when the pattern matches anywhere in `text`.
    pub fn is_match(&self, text: &str) -> bool {
        self.0.regex.is_match(Input::new(text))
    }
}

/// The patterns compiled so far in one load and the memory they take.
#[derive(Debug)]
pub struct Regexes {
    compiled: HashMap<String, Pattern>,
    used: usize,
    budget: usize,
    /// Set once a pattern did not fit: the load fails for it, so the patterns after it are
    /// only read for mistakes of their own, not compiled.
    spent: bool,
}

impl Default for Regexes {
    fn default() -> Self {
        Self::with_budget(LOAD_BUDGET)
    }
}

impl Regexes {
    pub fn with_budget(budget: usize) -> Self {
        Self {
            compiled: HashMap::new(),
            used: 0,
            budget,
            spent: false,
        }
    }

    /// Memory the compiled patterns take, in bytes.
    pub fn used(&self) -> usize {
        self.used
    }

    /// `pattern` compiled (or the same pattern compiled before), or why not, as a message.
    pub fn compile(&mut self, pattern: &str) -> Result<Pattern, String> {
        if let Some(found) = self.compiled.get(pattern) {
            return Ok(found.clone());
        }
        if self.spent {
            syntax::parse(pattern)
                .map_err(|e| format!("invalid regex: {}", headline_first(&e.to_string())))?;
            return Err(format!(
                "regex not compiled: the {} MiB for the regex tests of all handlers together is spent before it (see the first \"regex too large\")",
                self.budget >> 20
            ));
        }
        let left = self.budget.saturating_sub(self.used);
        let limit = PATTERN_LIMIT.min(left);
        let regex = match build(pattern, limit) {
            Ok(regex) => regex,
            Err(Refused::TooLarge) if limit < PATTERN_LIMIT => {
                self.spent = true;
                return Err(self.past_budget());
            }
            Err(Refused::TooLarge) => {
                return Err(format!(
                    "invalid regex: Compiled regex exceeds size limit of {limit} bytes."
                ))
            }
            Err(Refused::Invalid(why)) => return Err(format!("invalid regex: {why}")),
        };
        let size = regex.memory_usage();
        if size > left {
            self.spent = true;
            return Err(self.past_budget());
        }
        self.used += size;
        let compiled = Pattern(Arc::new(Compiled {
            text: pattern.to_owned(),
            regex,
        }));
        self.compiled.insert(pattern.to_owned(), compiled.clone());
        Ok(compiled)
    }

    fn past_budget(&self) -> String {
        format!(
            "regex too large: the regex tests of all handlers together may take {} MiB once compiled, and {} MiB is taken by the {} before it; write fewer or smaller patterns (a pattern written many times is compiled once; a repeated Unicode class such as \\w{{100}} is large, (?-u:\\w){{100}} or [a-zA-Z0-9_]{{100}} is a fraction of it)",
            self.budget >> 20,
            self.used.div_ceil(1 << 20),
            self.compiled.len(),
        )
    }
}

/// Why a pattern did not compile.
enum Refused {
    /// Past the size limit it was compiled with.
    TooLarge,
    /// A mistake in the pattern, worded as the regex crate words it.
    Invalid(String),
}

/// The pattern compiled as the regex crate's `Regex::new` compiles it, with an NFA size limit.
fn build(pattern: &str, limit: usize) -> Result<Regex, Refused> {
    let config = meta::Config::new()
        .nfa_size_limit(Some(limit))
        .hybrid_cache_capacity(2 << 20)
        .match_kind(MatchKind::LeftmostFirst)
        .utf8_empty(true);
    meta::Builder::new()
        .configure(config)
        .syntax(syntax::Config::new().utf8(true))
        .build(pattern)
        .map_err(|e| match e.syntax_error() {
            _ if e.size_limit().is_some() => Refused::TooLarge,
            Some(syntax) => Refused::Invalid(headline_first(&syntax.to_string())),
            None => Refused::Invalid(e.to_string()),
        })
}

/// A syntax error with what is wrong first and the pattern it points into after it, indented:
/// the regex crate ends its text with a line of its own starting `error:`, which read as a
/// second problem among the others of a load.
fn headline_first(text: &str) -> String {
    let Some(frame) = text.strip_prefix("regex parse error:\n") else {
        return text.to_owned();
    };
    let (frame, why) = match frame.rsplit_once('\n') {
        Some((frame, last)) => match last.strip_prefix("error: ") {
            Some(why) => (frame, why),
            None => return text.to_owned(),
        },
        None => return text.to_owned(),
    };
    let mut out = why.to_owned();
    for line in frame.lines() {
        out.push('\n');
        out.push_str(line);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_pattern_compiles_once() {
        let mut r = Regexes::default();
        let a = r.compile("^a+$").unwrap();
        let used = r.used();
        let b = r.compile("^a+$").unwrap();
        assert!(Arc::ptr_eq(&a.0, &b.0));
        assert_eq!(r.used(), used);
        assert!(a.is_match("aaa") && !a.is_match("ab"));
    }

    #[test]
    fn past_the_budget_is_refused() {
        let mut r = Regexes::with_budget(1 << 20);
        let refused = (0..20)
            .map(|i| r.compile(&format!(r"\w{{30}}N{i}")))
            .find_map(Result::err)
            .expect("a pattern past the budget");
        assert!(refused.starts_with("regex too large"), "{refused}");
        assert!(r.used() <= 1 << 20);
    }

    #[test]
    fn syntax_errors_past_the_budget_say_what_is_wrong_first_too() {
        let mut r = Regexes::with_budget(1 << 20);
        while !r.spent {
            let _ = r.compile(&format!(r"\w{{30}}N{}", r.used()));
        }
        let e = r.compile("ab(?=x)").unwrap_err();
        assert!(e.starts_with("invalid regex: look-around"), "{e}");
    }

    #[test]
    fn syntax_errors_say_what_is_wrong_first() {
        let e = Regexes::default().compile("ab(?=x)").unwrap_err();
        assert_eq!(
            e,
            "invalid regex: look-around, including look-ahead and look-behind, is not supported\n    ab(?=x)\n      ^^^"
        );
    }
}
