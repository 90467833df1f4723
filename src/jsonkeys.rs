//! Keys given twice in one JSON object: refused in every JSON text the user writes (handler
//! files, runtime handler bodies, data sets), each at `file:line:col` of the second.
//!
//! `serde_json` keeps one of them without a word: into a map (an entry's methods, a reply, a
//! data set's table) the last value wins, and a user who wrote `"SayHello"` twice, or
//! `"reply"` twice, lost the first one and was never told. JSON leaves duplicate names to the
//! reader (RFC 8259 §4), and which one a reader keeps differs between tools, so the only answer
//! that cannot surprise is to refuse them.
//!
//! Two readers share what is here. Handler files and admin bodies, small and parsed into trees
//! anyway, are scanned once by [`duplicates`], which knows where each key is. Data sets, which
//! may be megabytes, are checked while they are read ([`crate::data::Checked`] keeps a
//! [`KeySet`] per object, so the check costs one set insertion per key, never a comparison
//! with every other key); only a file found to hold a duplicate is scanned again, to say where
//! both are.

use std::borrow::Cow;
use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::Path;

use serde::de::{Deserialize, Deserializer, Visitor};
use smallvec::SmallVec;

use crate::error::{Location, StartupError};

/// How the error of [`KeySet::insert`] starts.
const PREFIX: &str = "duplicate key ";

/// One key given a second time in an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Duplicate {
    /// The key, decoded (`"\u0061"` is `a`).
    pub key: String,
    /// The path of the object holding it (`methods.SayHello`, `[3].tags`); empty at the top.
    pub object: String,
    /// The 1-based line and column (in characters) of its first occurrence.
    pub first: (usize, usize),
    /// The 1-based line and column (in characters) of this, its second (or later) occurrence.
    pub again: (usize, usize),
}

impl Duplicate {
    /// What is wrong, naming the key, the object and the line of the first occurrence.
    pub fn message(&self) -> String {
        let within = if self.object.is_empty() {
            String::new()
        } else {
            format!(" in {}", self.object)
        };
        format!(
            "{PREFIX}{:?}{within}: the first is at line {}, column {}; an object holds each key once, so one of the two would be lost",
            self.key, self.first.0, self.first.1
        )
    }

    /// What to do about it.
    pub fn hint(&self) -> String {
        format!(
            "keep one {:?} in this object: remove one of the two, or merge them into one",
            self.key
        )
    }

    /// As a problem of the handler file (or runtime handler) `source`, at the repeat.
    pub fn handler_error(&self, source: &Path) -> StartupError {
        StartupError::Handler {
            location: Location::at(source, self.again.0, self.again.1),
            entry: String::new(),
            message: self.message(),
            hint: Some(self.hint()),
        }
    }

    /// As a problem of the data file `source`, at the repeat.
    pub fn data_error(&self, source: &Path) -> StartupError {
        StartupError::Data {
            location: Location::at(source, self.again.0, self.again.1),
            message: self.message(),
            hint: Some(self.hint()),
        }
    }
}

/// How many keys an object's [`KeySet`] compares one by one before it hashes them.
const FEW: usize = 8;

/// The keys of one object as a streaming reader meets them. Past [`FEW`] keys they go into a
/// hash set, so a key costs one insertion whatever the size of its object; most objects of a
/// data set have a few keys, which a short list holds without allocating.
#[derive(Default)]
pub struct KeySet<'de> {
    few: SmallVec<[Cow<'de, str>; FEW]>,
    many: HashSet<Cow<'de, str>>,
}

impl<'de> KeySet<'de> {
    /// Adds `key`; an error [`is_duplicate`] recognizes when the object had it already (the
    /// reader's caller then calls [`duplicates`] to say where both are).
    pub fn insert<E: serde::de::Error>(&mut self, key: Key<'de>) -> Result<(), E> {
        let key = key.0;
        let known = if self.many.is_empty() {
            self.few.contains(&key)
        } else {
            self.many.contains(&key)
        };
        if known {
            return Err(E::custom(format_args!("{PREFIX}{key:?}")));
        }
        if !self.many.is_empty() {
            self.many.insert(key);
        } else if self.few.len() < FEW {
            self.few.push(key);
        } else {
            self.many.extend(self.few.drain(..));
            self.many.insert(key);
        }
        Ok(())
    }
}

/// An object key, borrowed from the text when it has no escapes.
pub struct Key<'de>(pub Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object key")
            }

            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(s)))
            }

            fn visit_str<E>(self, s: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s.to_owned())))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

/// Whether `e` is the error of [`KeySet::insert`].
pub fn is_duplicate(e: &serde_json::Error) -> bool {
    e.is_data() && e.to_string().starts_with(PREFIX)
}

/// Every key of `text` given again in its object, in the order of the repeats. The scan stops
/// where `text` stops being JSON (what comes after is reported by the parser); it nests
/// without recursion, so any depth is safe.
pub fn duplicates(text: &str) -> Vec<Duplicate> {
    let mut scan = Scan {
        bytes: text.as_bytes(),
        text,
        at: 0,
    };
    // (key, object path, first offset, repeat offset)
    let mut found: Vec<(String, String, usize, usize)> = Vec::new();
    let mut stack: Vec<Frame<'_>> = Vec::new();
    // The path of the container being read, each frame's own path a prefix of it.
    let mut trail = String::new();
    // Whether a value is expected next (at the top, after `:`, or after `[`/`,` in an array).
    let mut want_value = true;
    loop {
        scan.space();
        if want_value {
            match scan.peek() {
                Some(b'{') => {
                    scan.at += 1;
                    let base = step_into(&stack, &mut trail);
                    stack.push(Frame {
                        base,
                        kind: Kind::Object {
                            keys: HashMap::new(),
                            current: None,
                        },
                    });
                    scan.space();
                    if scan.peek() == Some(b'}') {
                        scan.at += 1;
                        stack.pop();
                        want_value = false;
                        continue;
                    }
                    match object_key(&mut scan, &mut stack, &trail, &mut found) {
                        Some(()) => continue,
                        None => break,
                    }
                }
                Some(b'[') => {
                    scan.at += 1;
                    let base = step_into(&stack, &mut trail);
                    stack.push(Frame {
                        base,
                        kind: Kind::Array { index: 0 },
                    });
                    scan.space();
                    if scan.peek() == Some(b']') {
                        scan.at += 1;
                        stack.pop();
                        want_value = false;
                    }
                    continue;
                }
                Some(b'"') => {
                    if scan.string().is_none() {
                        break;
                    }
                }
                Some(_) => {
                    if !scan.literal() {
                        break;
                    }
                }
                None => break,
            }
            want_value = false;
            continue;
        }
        // After a value: a comma, or the end of its container.
        let Some(top) = stack.last_mut() else { break };
        match (scan.peek(), &mut top.kind) {
            (Some(b','), Kind::Array { index }) => {
                scan.at += 1;
                *index += 1;
                want_value = true;
            }
            (Some(b','), Kind::Object { .. }) => {
                scan.at += 1;
                if object_key(&mut scan, &mut stack, &trail, &mut found).is_none() {
                    break;
                }
                want_value = true;
            }
            (Some(b']'), Kind::Array { .. }) | (Some(b'}'), Kind::Object { .. }) => {
                scan.at += 1;
                stack.pop();
            }
            _ => break,
        }
    }
    located(text, found)
}

/// An object or array being scanned.
struct Frame<'a> {
    /// The length of the prefix of the trail that is this container's path.
    base: usize,
    kind: Kind<'a>,
}

enum Kind<'a> {
    /// Each key met with the offset of its first occurrence, and the key whose value is read.
    Object {
        keys: HashMap<Cow<'a, str>, usize>,
        current: Option<Cow<'a, str>>,
    },
    /// The index of the item being read.
    Array { index: usize },
}

/// Makes `trail` the path of a container starting as the value being read in the frame on top
/// of `stack` (the top level when there is none), as handler problems are named:
/// `methods.SayHello`, `rules[0].when`, `[3]`; returns its length. The trail is cut back to
/// the parent's path and one step added, so a path costs its last step, not its depth: a
/// repeat in each of a hundred thousand nested objects must not spell a hundred thousand paths
/// in full.
fn step_into(stack: &[Frame<'_>], trail: &mut String) -> usize {
    let Some(parent) = stack.last() else {
        trail.clear();
        return 0;
    };
    trail.truncate(parent.base);
    match &parent.kind {
        Kind::Object {
            current: Some(key), ..
        } => {
            if !trail.is_empty() {
                trail.push('.');
            }
            // Written as the key is in the message ({:?} without its quotes): a control
            // or invisible character (an escape sequence, a right-to-left override) cannot
            // drive or garble the user's terminal.
            for c in key.chars() {
                match c {
                    '\'' => trail.push(c),
                    _ => trail.extend(c.escape_debug()),
                }
            }
        }
        Kind::Object { current: None, .. } => {}
        Kind::Array { index } => {
            use std::fmt::Write;
            let _ = write!(trail, "[{index}]");
        }
    }
    trail.len()
}

/// Reads the key and colon of the object on top of `stack` (a repeat goes to `found`, named
/// by the object's path, a prefix of `trail`), leaving the scan at its value; `None` where the
/// text is no JSON.
fn object_key<'a>(
    scan: &mut Scan<'a>,
    stack: &mut [Frame<'a>],
    trail: &str,
    found: &mut Vec<(String, String, usize, usize)>,
) -> Option<()> {
    scan.space();
    let at = scan.at;
    let raw = scan.string()?;
    let key: Cow<'a, str> = if raw.contains('\\') {
        Cow::Owned(serde_json::from_str::<String>(raw).ok()?)
    } else {
        Cow::Borrowed(&raw[1..raw.len() - 1])
    };
    scan.space();
    (scan.peek()? == b':').then_some(())?;
    scan.at += 1;
    let top = stack.last_mut()?;
    let base = top.base;
    let Kind::Object { keys, current } = &mut top.kind else {
        return None;
    };
    match keys.entry(key.clone()) {
        Entry::Occupied(first) => {
            found.push((key.to_string(), shortened(&trail[..base]), *first.get(), at));
        }
        Entry::Vacant(slot) => {
            slot.insert(at);
        }
    }
    *current = Some(key);
    Some(())
}

/// The most bytes of an object's path a message spells out; a longer one keeps its start and
/// its end around an ellipsis. Each repeat names its object, and a repeat in each of many
/// deeply nested objects (or under one long key) must not cost the square of the text.
const PATH_SHOWN: usize = 120;

/// `path`, at most about [`PATH_SHOWN`] bytes of it, cut between steps where it can be.
fn shortened(path: &str) -> String {
    if path.len() <= PATH_SHOWN {
        return path.to_owned();
    }
    let mut head = PATH_SHOWN / 3;
    while !path.is_char_boundary(head) {
        head -= 1;
    }
    if let Some(step) = path[..head].rfind(['.', '[']).filter(|&i| i > 0) {
        head = step;
    }
    let mut tail = path.len() - (PATH_SHOWN - PATH_SHOWN / 3);
    while !path.is_char_boundary(tail) {
        tail += 1;
    }
    if let Some(step) = path[tail..].find(['.', '[']) {
        tail += step;
    }
    format!("{}…{}", &path[..head], &path[tail..])
}

/// The repeats found, their offsets as lines and columns, counted in one pass over `text` (in
/// order of offset): a minified file with many repeats costs no more than one spread over
/// many lines. Columns count characters, as [`crate::input::column`] does.
fn located(text: &str, found: Vec<(String, String, usize, usize)>) -> Vec<Duplicate> {
    let mut offsets: Vec<(usize, usize)> = Vec::with_capacity(found.len() * 2);
    for (i, (_, _, first, again)) in found.iter().enumerate() {
        offsets.push((*first, 2 * i));
        offsets.push((*again, 2 * i + 1));
    }
    offsets.sort_unstable();
    let mut spots = vec![(0, 0); offsets.len()];
    let bytes = text.as_bytes();
    let (mut line, mut col, mut counted) = (1, 1, 0);
    for (at, slot) in offsets {
        for &b in &bytes[counted..at] {
            if b == b'\n' {
                (line, col) = (line + 1, 1);
            } else if b & 0xC0 != 0x80 {
                // Not a continuation byte: a character starts.
                col += 1;
            }
        }
        counted = at;
        spots[slot] = (line, col);
    }
    found
        .into_iter()
        .enumerate()
        .map(|(i, (key, object, _, _))| Duplicate {
            key,
            object,
            first: spots[2 * i],
            again: spots[2 * i + 1],
        })
        .collect()
}

struct Scan<'a> {
    text: &'a str,
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Scan<'a> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn space(&mut self) {
        while self.peek().is_some_and(|b| b.is_ascii_whitespace()) {
            self.at += 1;
        }
    }

    /// The string here, quotes included, leaving the scan after it.
    fn string(&mut self) -> Option<&'a str> {
        let start = self.at;
        (self.peek()? == b'"').then_some(())?;
        self.at += 1;
        loop {
            let rest = self.bytes.get(self.at..)?;
            let i = memchr::memchr2(b'"', b'\\', rest)?;
            self.at += i;
            if self.bytes[self.at] == b'"' {
                break;
            }
            self.at += 2;
        }
        self.at += 1;
        // Both ends are ASCII quotes, so on character boundaries.
        self.text.get(start..self.at)
    }

    /// Skips a number, `true`, `false` or `null`; false when nothing is here.
    fn literal(&mut self) -> bool {
        let start = self.at;
        while self.peek().is_some_and(|b| {
            !matches!(b, b',' | b'}' | b']' | b':' | b'"' | b'{' | b'[') && !b.is_ascii_whitespace()
        }) {
            self.at += 1;
        }
        self.at > start
    }
}

#[cfg(test)]
mod tests {
    use super::{duplicates, Duplicate};

    fn dup(key: &str, object: &str, first: (usize, usize), again: (usize, usize)) -> Duplicate {
        Duplicate {
            key: key.into(),
            object: object.into(),
            first,
            again,
        }
    }

    /// A key set finds a repeat among its first keys and among many.
    #[test]
    fn a_key_set_finds_repeats_in_small_and_large_objects() {
        use super::{is_duplicate, Key, KeySet};
        use std::borrow::Cow;
        for size in [1, 2, super::FEW, super::FEW + 1, 1000] {
            for repeat in [0, size / 2, size - 1] {
                let mut keys = KeySet::default();
                for i in 0..size {
                    let key = Key(Cow::Owned(format!("k{i}")));
                    keys.insert::<serde_json::Error>(key).unwrap();
                }
                let again = Key(Cow::Owned(format!("k{repeat}")));
                let e = keys.insert::<serde_json::Error>(again).unwrap_err();
                assert!(is_duplicate(&e), "{e}");
                assert_eq!(e.to_string(), format!("duplicate key \"k{repeat}\""));
                let new = Key(Cow::Borrowed("new"));
                keys.insert::<serde_json::Error>(new).unwrap();
            }
        }
    }

    #[test]
    fn finds_each_repeat_with_both_places_and_its_object() {
        let text = r#"{
  "service": "s",
  "methods": {
    "A": { "reply": { "x": 1 }, "reply": { "x": 2 } },
    "B": { "rules": [ {}, { "when": { "request": { "id": "1", "id": "2" } } } ] },
    "A": {}
  }
}"#;
        assert_eq!(
            duplicates(text),
            vec![
                dup("reply", "methods.A", (4, 12), (4, 33)),
                dup("id", "methods.B.rules[1].when.request", (5, 52), (5, 63)),
                dup("A", "methods", (4, 5), (6, 5)),
            ]
        );
    }

    #[test]
    fn keys_are_compared_decoded_and_only_within_one_object() {
        assert_eq!(
            duplicates(r#"{"a": 1, "\u0061": 2}"#),
            vec![dup("a", "", (1, 2), (1, 10))]
        );
        assert!(duplicates(r#"{"a": {"a": 1}, "b": [{"a": 1}, {"a": 2}], "A": 1}"#).is_empty());
        assert!(duplicates(r#"["a", "a", {"x": "a", "y": "a"}]"#).is_empty());
        assert!(duplicates(r#"{"a\"b": 1, "a\\b": 2, "a\"": {"b": 1}}"#).is_empty());
    }

    #[test]
    fn columns_count_characters_and_the_scan_stops_at_broken_json() {
        let text = "{\"é日本\": 1,\n\t\"k\": 1, \"é日本\": [1, 2]}";
        assert_eq!(duplicates(text), vec![dup("é日本", "", (1, 2), (2, 10))]);
        assert!(duplicates(r#"{"a": 1, "a" 2}"#).is_empty());
        assert_eq!(duplicates(r#"{"a": 1, "a": 2, }"#).len(), 1);
        assert!(duplicates("").is_empty());
        assert!(duplicates("{\"a\": \"unterminated").is_empty());
    }

    /// A key holding a control character (`"\u001b[2J"`, which clears a terminal) was put
    /// into the path raw, so printing the problem drove the user's terminal.
    #[test]
    fn control_characters_in_a_path_are_escaped() {
        let found = duplicates(r#"{"a\u001b[2J": {"k": 1, "k": 2}}"#);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].object, "a\\u{1b}[2J");
        assert!(!found[0].message().contains('\u{1b}'));
        let found = duplicates("{\"don't\u{202e}\": {\"k\": 1, \"k\": 2}}");
        assert_eq!(found[0].object, "don't\\u{202e}");
    }

    #[test]
    fn nesting_is_not_recursion() {
        let deep = format!(
            "{}{{\"k\": 1, \"k\": 2}}{}",
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        let found = duplicates(&deep);
        assert_eq!(found.len(), 1);
        assert_eq!(
            found[0].object,
            format!("{}…{}", "[0]".repeat(13), "[0]".repeat(26))
        );
    }

    /// A repeat in each of many nested objects, or in many objects under one long key, names
    /// each object in a few bytes: spelling each path in full cost the square of the text.
    #[test]
    fn long_paths_are_shortened_in_the_middle() {
        let depth = 100_000;
        let text = format!("{}0{}", r#"{"k":0,"k":"#.repeat(depth), "}".repeat(depth));
        let found = duplicates(&text);
        assert_eq!(found.len(), depth);
        assert_eq!(found[0].object, "");
        assert_eq!(found[3].object, "k.k.k");
        let last = &found[depth - 1];
        assert_eq!(
            last.object,
            format!("{}k…{}", "k.".repeat(19), ".k".repeat(40))
        );
        assert_eq!(last.again, (1, 11 * depth - 3));
        let total: usize = found.iter().map(|d| d.object.len()).sum();
        assert!(total < 200 * depth, "{total} bytes of paths");

        let long = "é".repeat(1000);
        let text = format!(
            "{{\"{long}\": [{}]}}",
            r#"{"a": 1, "a": 2}"#.repeat(3).replace("}{", "},{")
        );
        let found = duplicates(&text);
        assert_eq!(found.len(), 3);
        assert_eq!(found[2].object, format!("{}…[2]", "é".repeat(20)));
    }

    #[test]
    fn many_keys_and_many_repeats_take_one_pass() {
        let keys: Vec<String> = (0..200_000).map(|i| format!("\"k{i}\": {i}")).collect();
        let text = format!("{{{}, {}}}", keys.join(", "), keys.join(", "));
        let found = duplicates(&text);
        assert_eq!(found.len(), 200_000);
        assert_eq!(found[0].key, "k0");
        assert_eq!(found[0].first, (1, 2));
    }
}
