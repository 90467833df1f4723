//! Lua 5.4 patterns, matched in Rust so that every step is paid for.
//!
//! Lua's own matcher (lstrlib.c) backtracks inside one C call, where the instruction hook never
//! runs: `string.find(("a"):rep(30000), ("a-"):rep(50) .. "b")` would hold its thread for
//! hours. This matcher has the same semantics — classes, sets, quantifiers, anchors, captures,
//! back-references, `%b`, `%f`, the 200-deep recursion limit and Lua's error messages — and
//! counts its steps: every [`CHUNK`] steps it pays them to the [`Pace`] it was given, which
//! stops the match once the call is out of budget, and may pause it (or have it start again
//! where it can be paused) when the call's time slice is over (see [`super::pausable`]).

/// Most captures one pattern may have (`LUA_MAXCAPTURES`).
pub const MAX_CAPTURES: usize = 32;
/// Deepest recursion of the matcher (`MAXCCALLS` in lstrlib.c).
const MAX_DEPTH: u32 = 200;
/// Steps counted before they are charged.
pub const CHUNK: u64 = 4096;

const CAP_UNFINISHED: isize = -1;
const CAP_POSITION: isize = -2;

/// Why a match did not finish.
#[derive(Debug)]
pub enum MatchError {
    /// A malformed pattern or a bad capture, with Lua's message.
    Pattern(String),
    /// The charge function refused (out of budget, deadline, cancelled).
    Stopped(mlua::Error),
    /// The call's time slice ended where the operation cannot pause: run it again from the
    /// start where it can (nothing it did is visible yet).
    Overran,
}

pub type Result<T> = std::result::Result<T, MatchError>;

/// How a match pays for its steps, and what it does when its call's time slice ends.
pub trait Pace {
    /// Pays `units` steps: an error stops the operation ([`MatchError::Stopped`]) or sends it
    /// to start again where it can pause ([`MatchError::Overran`]); a pace that can pause the
    /// operation returns when it goes on.
    fn pay(&self, units: u64) -> Result<()>;
}

/// Paying with a charge function, never pausing (matches outside any call's time slice).
pub struct Charge(pub fn(u64) -> mlua::Result<()>);

impl Pace for Charge {
    fn pay(&self, units: u64) -> Result<()> {
        (self.0)(units).map_err(MatchError::Stopped)
    }
}

fn malformed<T>(message: &str) -> Result<T> {
    Err(MatchError::Pattern(message.to_owned()))
}

/// One capture's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capture {
    /// Bytes `start..end` of the subject.
    Span(usize, usize),
    /// A position capture `()`, 1-based.
    Position(usize),
}

/// The captures of a match, copied out of the matcher: their values are made afterwards.
#[derive(Debug, Clone)]
pub struct Captures {
    /// (start, length or a `CAP_*` marker) of each capture (no allocation when there are none).
    capture: Box<[(usize, isize)]>,
}

impl Captures {
    /// Number of captures; `whole` counts the whole match when there are none.
    pub fn count(&self, whole: bool) -> usize {
        if self.capture.is_empty() && whole {
            1
        } else {
            self.capture.len()
        }
    }

    /// Capture `i` of the match `s..e` (the whole match when `i == 0` and there are none).
    pub fn get(&self, i: usize, s: usize, e: usize) -> Result<Capture> {
        capture_at(&self.capture, i, s, e)
    }
}

/// Capture `i` of a match `s..e` with the captures recorded in `capture`.
fn capture_at(capture: &[(usize, isize)], i: usize, s: usize, e: usize) -> Result<Capture> {
    if i >= capture.len() {
        if i != 0 {
            return Err(MatchError::Pattern(format!(
                "invalid capture index %{}",
                i + 1
            )));
        }
        return Ok(Capture::Span(s, e));
    }
    let (init, len) = capture[i];
    match len {
        CAP_UNFINISHED => malformed("unfinished capture"),
        CAP_POSITION => Ok(Capture::Position(init + 1)),
        len => Ok(Capture::Span(init, init + len as usize)),
    }
}

/// Matches one pattern against one subject.
pub struct Matcher<'a> {
    src: &'a [u8],
    pat: &'a [u8],
    level: usize,
    capture: [(usize, isize); MAX_CAPTURES],
    depth: u32,
    steps: u64,
    chunk: u64,
    pace: &'a dyn Pace,
}

impl<'a> Matcher<'a> {
    /// `pat` without any leading `^` anchor (the callers strip it where Lua does); steps are
    /// paid to `pace` every `chunk` of them ([`CHUNK`] but in tests).
    pub fn new(src: &'a [u8], pat: &'a [u8], pace: &'a dyn Pace, chunk: u64) -> Self {
        Self {
            src,
            pat,
            level: 0,
            capture: [(0, 0); MAX_CAPTURES],
            depth: MAX_DEPTH,
            steps: 0,
            chunk: chunk.max(1),
            pace,
        }
    }

    /// Steps counted but not charged yet (the caller settles them when the operation ends).
    pub fn uncharged(&self) -> u64 {
        self.steps
    }

    /// Counts `units` of work done outside the matcher (copying results), charged with the rest.
    pub fn add_work(&mut self, units: u64) -> Result<()> {
        self.steps += units;
        self.settle()
    }

    #[inline]
    fn step(&mut self) -> Result<()> {
        self.steps += 1;
        self.settle()
    }

    #[inline]
    fn settle(&mut self) -> Result<()> {
        if self.steps >= self.chunk {
            let n = std::mem::take(&mut self.steps);
            self.pace.pay(n)?;
        }
        Ok(())
    }

    #[inline]
    fn p_at(&self, i: usize) -> u8 {
        // Lua's strings end with '\0', which lstrlib.c reads past the end.
        self.pat.get(i).copied().unwrap_or(0)
    }

    #[inline]
    fn s_at(&self, i: usize) -> u8 {
        self.src.get(i).copied().unwrap_or(0)
    }

    /// Tries the pattern at `s` only; the end of the match.
    pub fn match_here(&mut self, s: usize) -> Result<Option<usize>> {
        self.level = 0;
        self.do_match(s, 0)
    }

    /// The first match starting at `init` or later (only at `init` when `anchor`): its span.
    pub fn find(&mut self, init: usize, anchor: bool) -> Result<Option<(usize, usize)>> {
        let mut s1 = init;
        loop {
            if let Some(e) = self.match_here(s1)? {
                return Ok(Some((s1, e)));
            }
            if s1 >= self.src.len() || anchor {
                return Ok(None);
            }
            s1 += 1;
        }
    }

    /// The captures of the last match.
    pub fn captures(&self) -> Captures {
        Captures {
            capture: self.capture[..self.level].into(),
        }
    }

    /// Capture `i` of the last match `s..e` (the whole match when `i == 0` and there are none).
    pub fn capture(&self, i: usize, s: usize, e: usize) -> Result<Capture> {
        capture_at(&self.capture[..self.level], i, s, e)
    }

    fn do_match(&mut self, s: usize, p: usize) -> Result<Option<usize>> {
        if self.depth == 0 {
            return malformed("pattern too complex");
        }
        self.depth -= 1;
        let r = self.match_body(s, p);
        self.depth += 1;
        r
    }

    fn match_body(&mut self, mut s: usize, mut p: usize) -> Result<Option<usize>> {
        loop {
            self.step()?;
            if p == self.pat.len() {
                return Ok(Some(s));
            }
            match self.pat[p] {
                b'(' => {
                    return if self.p_at(p + 1) == b')' {
                        self.start_capture(s, p + 2, CAP_POSITION)
                    } else {
                        self.start_capture(s, p + 1, CAP_UNFINISHED)
                    };
                }
                b')' => return self.end_capture(s, p + 1),
                b'$' if p + 1 == self.pat.len() => {
                    return Ok((s == self.src.len()).then_some(s));
                }
                b'%' if self.p_at(p + 1) == b'b' => match self.match_balance(s, p + 2)? {
                    Some(next) => {
                        s = next;
                        p += 4;
                    }
                    None => return Ok(None),
                },
                b'%' if self.p_at(p + 1) == b'f' => {
                    p += 2;
                    if self.p_at(p) != b'[' {
                        return malformed("missing '[' after '%f' in pattern");
                    }
                    let ep = self.class_end(p)?;
                    let previous = if s == 0 { 0 } else { self.src[s - 1] };
                    if !self.bracket_class(previous, p, ep - 1)
                        && self.bracket_class(self.s_at(s), p, ep - 1)
                    {
                        p = ep;
                    } else {
                        return Ok(None);
                    }
                }
                b'%' if self.p_at(p + 1).is_ascii_digit() => {
                    match self.match_capture(s, self.p_at(p + 1))? {
                        Some(next) => {
                            s = next;
                            p += 2;
                        }
                        None => return Ok(None),
                    }
                }
                _ => {
                    let ep = self.class_end(p)?;
                    let suffix = self.p_at(ep);
                    if !self.single_match(s, p, ep) {
                        if matches!(suffix, b'*' | b'?' | b'-') {
                            p = ep + 1;
                            continue;
                        }
                        return Ok(None);
                    }
                    match suffix {
                        b'?' => {
                            if let Some(r) = self.do_match(s + 1, ep + 1)? {
                                return Ok(Some(r));
                            }
                            p = ep + 1;
                        }
                        b'+' => return self.max_expand(s + 1, p, ep),
                        b'*' => return self.max_expand(s, p, ep),
                        b'-' => return self.min_expand(s, p, ep),
                        _ => {
                            s += 1;
                            p = ep;
                        }
                    }
                }
            }
        }
    }

    fn max_expand(&mut self, s: usize, p: usize, ep: usize) -> Result<Option<usize>> {
        let mut i = 0;
        while self.single_match(s + i, p, ep) {
            i += 1;
            self.step()?;
        }
        loop {
            if let Some(r) = self.do_match(s + i, ep + 1)? {
                return Ok(Some(r));
            }
            if i == 0 {
                return Ok(None);
            }
            i -= 1;
        }
    }

    fn min_expand(&mut self, mut s: usize, p: usize, ep: usize) -> Result<Option<usize>> {
        loop {
            if let Some(r) = self.do_match(s, ep + 1)? {
                return Ok(Some(r));
            }
            if !self.single_match(s, p, ep) {
                return Ok(None);
            }
            s += 1;
        }
    }

    fn start_capture(&mut self, s: usize, p: usize, what: isize) -> Result<Option<usize>> {
        let level = self.level;
        if level >= MAX_CAPTURES {
            return malformed("too many captures");
        }
        self.capture[level] = (s, what);
        self.level = level + 1;
        let r = self.do_match(s, p)?;
        if r.is_none() {
            self.level -= 1;
        }
        Ok(r)
    }

    fn end_capture(&mut self, s: usize, p: usize) -> Result<Option<usize>> {
        let Some(l) = (0..self.level)
            .rev()
            .find(|&l| self.capture[l].1 == CAP_UNFINISHED)
        else {
            return malformed("invalid pattern capture");
        };
        self.capture[l].1 = (s - self.capture[l].0) as isize;
        let r = self.do_match(s, p)?;
        if r.is_none() {
            self.capture[l].1 = CAP_UNFINISHED;
        }
        Ok(r)
    }

    fn match_capture(&mut self, s: usize, digit: u8) -> Result<Option<usize>> {
        let l = digit as isize - b'1' as isize;
        if l < 0 || l as usize >= self.level || self.capture[l as usize].1 == CAP_UNFINISHED {
            return Err(MatchError::Pattern(format!(
                "invalid capture index %{}",
                l + 1
            )));
        }
        let (init, len) = self.capture[l as usize];
        // A position capture has no length: as in Lua, it never matches.
        if len < 0 {
            return Ok(None);
        }
        let len = len as usize;
        self.add_work(len as u64 / 8)?;
        if self.src.len() - s >= len && self.src[init..init + len] == self.src[s..s + len] {
            Ok(Some(s + len))
        } else {
            Ok(None)
        }
    }

    fn match_balance(&mut self, s: usize, p: usize) -> Result<Option<usize>> {
        if p + 1 >= self.pat.len() {
            return malformed("malformed pattern (missing arguments to '%b')");
        }
        let (open, close) = (self.pat[p], self.pat[p + 1]);
        if self.s_at(s) != open {
            return Ok(None);
        }
        let mut depth = 1u64;
        let mut i = s + 1;
        while i < self.src.len() {
            self.step()?;
            let c = self.src[i];
            if c == close {
                depth -= 1;
                if depth == 0 {
                    return Ok(Some(i + 1));
                }
            } else if c == open {
                depth += 1;
            }
            i += 1;
        }
        Ok(None)
    }

    /// The end of the single-character class starting at `p`.
    fn class_end(&self, p: usize) -> Result<usize> {
        let first = self.pat[p];
        let mut p = p + 1;
        match first {
            b'%' => {
                if p >= self.pat.len() {
                    return malformed("malformed pattern (ends with '%')");
                }
                Ok(p + 1)
            }
            b'[' => {
                if self.p_at(p) == b'^' {
                    p += 1;
                }
                loop {
                    if p >= self.pat.len() {
                        return malformed("malformed pattern (missing ']')");
                    }
                    let c = self.pat[p];
                    p += 1;
                    if c == b'%' && p < self.pat.len() {
                        p += 1;
                    }
                    if self.p_at(p) == b']' {
                        return Ok(p + 1);
                    }
                }
            }
            _ => Ok(p),
        }
    }

    #[inline]
    fn single_match(&self, s: usize, p: usize, ep: usize) -> bool {
        let Some(&c) = self.src.get(s) else {
            return false;
        };
        match self.pat[p] {
            b'.' => true,
            b'%' => class_matches(c, self.p_at(p + 1)),
            b'[' => self.bracket_class(c, p, ep - 1),
            literal => literal == c,
        }
    }

    /// Whether `c` is in the set `[...]` spanning `p` (the '[') to `end` (the ']').
    fn bracket_class(&self, c: u8, mut p: usize, end: usize) -> bool {
        let mut inside = true;
        if self.p_at(p + 1) == b'^' {
            inside = false;
            p += 1;
        }
        loop {
            p += 1;
            if p >= end {
                return !inside;
            }
            let pc = self.pat[p];
            if pc == b'%' {
                p += 1;
                if class_matches(c, self.p_at(p)) {
                    return inside;
                }
            } else if self.p_at(p + 1) == b'-' && p + 2 < end {
                p += 2;
                if self.pat[p - 2] <= c && c <= self.pat[p] {
                    return inside;
                }
            } else if pc == c {
                return inside;
            }
        }
    }
}

/// `%a`, `%d`, … (C locale); an upper-case class is the complement; other characters match
/// themselves.
#[inline]
fn class_matches(c: u8, class: u8) -> bool {
    let res = match class.to_ascii_lowercase() {
        b'a' => c.is_ascii_alphabetic(),
        b'c' => c.is_ascii_control(),
        b'd' => c.is_ascii_digit(),
        b'g' => c.is_ascii_graphic(),
        b'l' => c.is_ascii_lowercase(),
        b'p' => c.is_ascii_punctuation(),
        b's' => c == b' ' || (9..=13).contains(&c),
        b'u' => c.is_ascii_uppercase(),
        b'w' => c.is_ascii_alphanumeric(),
        b'x' => c.is_ascii_hexdigit(),
        b'z' => c == 0,
        _ => return class == c,
    };
    if class.is_ascii_lowercase() {
        res
    } else {
        !res
    }
}

/// Whether `pat` has none of Lua's special characters, so `find` may search it as plain text.
pub fn is_plain(pat: &[u8]) -> bool {
    !pat.iter().any(|c| b"^$*+?.([%-".contains(c))
}

/// Plain-text search for `needle` in `hay` from `init` (a linear-time search), paying one
/// unit per 8 bytes scanned as it goes, so a search that finds its needle early pays little.
pub fn find_plain(
    hay: &[u8],
    needle: &[u8],
    init: usize,
    pace: &dyn Pace,
) -> Result<Option<usize>> {
    let hay = &hay[init..];
    if needle.is_empty() {
        return Ok(Some(init));
    }
    if needle.len() > hay.len() {
        return Ok(None);
    }
    if hay.len() <= CHUNK as usize {
        return Ok(memchr::memmem::find(hay, needle).map(|i| init + i));
    }
    if needle.len() > super::long_needle::LONG_NEEDLE {
        return Ok(super::long_needle::find(hay, needle, pace)?.map(|i| init + i));
    }
    let finder = memchr::memmem::Finder::new(needle);
    let window = (4 * needle.len()).max(1 << 16);
    let mut start = 0;
    while start + needle.len() <= hay.len() {
        let end = (start + window + needle.len() - 1).min(hay.len());
        pace.pay((end - start) as u64 / 8)?;
        if let Some(i) = finder.find(&hay[start..end]) {
            return Ok(Some(init + start + i));
        }
        start += window;
    }
    Ok(None)
}
