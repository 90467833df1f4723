//! Where values sit in a JSON text, found by their paths (`reply.tags[2]`, `rules[0].when`).
//!
//! Handler files are parsed into `serde_json` values, which keep no positions; a problem found
//! while compiling an entry knows only its path inside the entry. This scans the file's text
//! once for the paths of all its problems, building each value's path as the compiler writes
//! it, so keys that contain dots (`"address.city"`, header names) need no guessing, and each
//! problem is reported at its own line and column, not at the method's.

use std::collections::{HashMap, HashSet};

/// Where the values at some paths sit in one JSON text, found in one pass over it (a file may
/// hold a hundred thousand problems; looking each up from the top would take hours).
pub struct Positions {
    /// The 1-based line and column (in characters) of each path found.
    found: HashMap<String, (usize, usize)>,
}

impl Positions {
    /// Finds every path of `paths` (from the top of `text`, in the form `a.b[2].c`) and every
    /// shorter path leading to one.
    pub fn find<'p>(text: &str, paths: impl IntoIterator<Item = &'p str>) -> Self {
        let mut wanted = HashSet::new();
        for path in paths {
            wanted.insert(path.to_owned());
            for (i, c) in path.char_indices() {
                if c == '.' || c == '[' {
                    wanted.insert(path[..i].to_owned());
                }
            }
        }
        let mut found = HashMap::new();
        let mut scan = Scan {
            bytes: text.as_bytes(),
            at: 0,
        };
        walk(&mut scan, "", &wanted, &mut found);
        Self {
            found: lines_and_columns(text, found),
        }
    }

    /// The 1-based line and column (in characters) of the value at `path`, or of the deepest value on the way
    /// to it when the text has no such value: an object member is located at its key, an
    /// array item at its first character.
    pub fn of(&self, path: &str) -> Option<(usize, usize)> {
        let mut path = path;
        loop {
            if let Some(&at) = self.found.get(path) {
                return Some(at);
            }
            path = &path[..path.rfind(['.', '['])?];
        }
    }
}

/// The byte offsets of `found` as lines and columns, counted in one pass over `text` (in
/// order of offset), so a minified file, one line, costs no more than one spread over many.
/// Columns count characters, as [`crate::input::column`] does.
fn lines_and_columns(text: &str, found: HashMap<String, usize>) -> HashMap<String, (usize, usize)> {
    let mut spots: Vec<(usize, String)> = found.into_iter().map(|(p, at)| (at, p)).collect();
    spots.sort_unstable_by_key(|spot| spot.0);
    let bytes = text.as_bytes();
    let (mut line, mut col, mut counted) = (1, 1, 0);
    let mut out = HashMap::with_capacity(spots.len());
    for (at, path) in spots {
        let at = at.min(bytes.len());
        for &b in &bytes[counted..at] {
            if b == b'\n' {
                (line, col) = (line + 1, 1);
            } else if b & 0xC0 != 0x80 {
                // Not a continuation byte: a character starts.
                col += 1;
            }
        }
        counted = at;
        out.insert(path, (line, col));
    }
    out
}

/// Records in `found` where each wanted path inside the value at `scan` starts (`path` is the
/// value's own path).
fn walk(
    scan: &mut Scan<'_>,
    path: &str,
    wanted: &HashSet<String>,
    found: &mut HashMap<String, usize>,
) {
    let child = |step: &str, index: bool| {
        if index || path.is_empty() {
            format!("{path}{step}")
        } else {
            format!("{path}.{step}")
        }
    };
    scan.space();
    match scan.peek() {
        Some(b'{') => {
            let Some(members) = scan.members() else {
                return;
            };
            for m in members {
                let p = child(&m.key, false);
                if wanted.contains(&p) {
                    found.insert(p.clone(), m.key_at);
                    scan.at = m.value_at;
                    walk(scan, &p, wanted, found);
                }
            }
        }
        Some(b'[') => {
            let Some(items) = scan.items() else { return };
            for (i, at) in items.into_iter().enumerate() {
                let p = child(&format!("[{i}]"), true);
                if wanted.contains(&p) {
                    found.insert(p.clone(), at);
                    scan.at = at;
                    walk(scan, &p, wanted, found);
                }
            }
        }
        _ => {}
    }
}

struct Member {
    key: String,
    key_at: usize,
    value_at: usize,
}

struct Scan<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Scan<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn space(&mut self) {
        while self.peek().is_some_and(|b| b.is_ascii_whitespace()) {
            self.at += 1;
        }
    }

    fn eat(&mut self, byte: u8) -> Option<()> {
        self.space();
        (self.peek()? == byte).then(|| self.at += 1)
    }

    /// The members of the object here (keys decoded), leaving the scan after it.
    fn members(&mut self) -> Option<Vec<Member>> {
        self.eat(b'{')?;
        let mut out = Vec::new();
        self.space();
        if self.peek()? == b'}' {
            self.at += 1;
            return Some(out);
        }
        loop {
            self.space();
            let key_at = self.at;
            let raw = self.string()?;
            let key = serde_json::from_str::<String>(raw).ok()?;
            self.eat(b':')?;
            self.space();
            let value_at = self.at;
            self.value()?;
            out.push(Member {
                key,
                key_at,
                value_at,
            });
            self.space();
            match self.peek()? {
                b',' => self.at += 1,
                b'}' => {
                    self.at += 1;
                    return Some(out);
                }
                _ => return None,
            }
        }
    }

    /// Where each item of the array here starts, leaving the scan after it.
    fn items(&mut self) -> Option<Vec<usize>> {
        self.eat(b'[')?;
        let mut out = Vec::new();
        self.space();
        if self.peek()? == b']' {
            self.at += 1;
            return Some(out);
        }
        loop {
            self.space();
            out.push(self.at);
            self.value()?;
            self.space();
            match self.peek()? {
                b',' => self.at += 1,
                b']' => {
                    self.at += 1;
                    return Some(out);
                }
                _ => return None,
            }
        }
    }

    /// The string here, quotes included, leaving the scan after it.
    fn string(&mut self) -> Option<&str> {
        let start = self.at;
        (self.peek()? == b'"').then_some(())?;
        self.at += 1;
        loop {
            match self.peek()? {
                b'"' => break,
                b'\\' => self.at += 2,
                _ => self.at += 1,
            }
        }
        self.at += 1;
        std::str::from_utf8(self.bytes.get(start..self.at)?).ok()
    }

    /// Skips the value here.
    fn value(&mut self) -> Option<()> {
        self.space();
        match self.peek()? {
            b'"' => self.string().map(drop),
            b'{' => self.members().map(drop),
            b'[' => self.items().map(drop),
            _ => {
                let start = self.at;
                while self
                    .peek()
                    .is_some_and(|b| !matches!(b, b',' | b'}' | b']') && !b.is_ascii_whitespace())
                {
                    self.at += 1;
                }
                (self.at > start).then_some(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Positions;

    const TEXT: &str = r#"{
  "service": "s",
  "methods": {
    "A": { "reply": { "attrs": { "B": 1 } } },
    "B": { "rules": [
      { "when": { "request": { "inner.label": "x", "id": "1" } }, "reply": { "id": "a\"b" } },
      { "reply": { "tags": ["a", "b"] }, "headers": { "x.y": "1" } }
    ] }
  }
}"#;

    fn at(path: &str) -> Option<(usize, usize)> {
        Positions::find(TEXT, [path]).of(path)
    }

    #[test]
    fn finds_keys_items_and_dotted_keys() {
        assert_eq!(at("methods.B"), Some((5, 5)));
        assert_eq!(
            at("methods.B.rules[0].when.request.inner.label"),
            Some((6, 32))
        );
        assert_eq!(at("methods.B.rules[0].when.request.id"), Some((6, 52)));
        assert_eq!(at("methods.B.rules[1].reply.tags[1]"), Some((7, 34)));
        assert_eq!(at("methods.B.rules[1].headers.x.y"), Some((7, 55)));
        // A method name that is also a key inside an earlier entry is found as the method.
        assert_eq!(at("methods.B"), Some((5, 5)));
    }

    #[test]
    fn a_path_that_leaves_the_text_stops_at_the_deepest_value() {
        assert_eq!(at("methods.B.rules[1].reply.nothing"), Some((7, 9)));
        assert_eq!(at("methods.B.rules[9]"), Some((5, 12)));
        assert_eq!(at("methods.C"), Some((3, 3)));
    }

    #[test]
    fn columns_count_characters() {
        let text = "{\"a\": \"é日本\",\t\"b\": [1, \"ü\", 3],\n \"c\": 1}";
        let positions = Positions::find(text, ["b[2]", "c"]);
        assert_eq!(positions.of("a"), None);
        assert_eq!(positions.of("b"), Some((1, 14)));
        assert_eq!(positions.of("b[2]"), Some((1, 28)));
        assert_eq!(positions.of("c"), Some((2, 2)));
    }

    #[test]
    fn a_minified_file_is_located_in_one_pass() {
        let items: Vec<String> = (0..20_000).map(|i| format!("{{\"k\": {i}}}")).collect();
        let text = format!("{{\"a\": [{}]}}", items.join(","));
        let paths: Vec<String> = (0..20_000).map(|i| format!("a[{i}].k")).collect();
        let positions = Positions::find(&text, paths.iter().map(String::as_str));
        assert_eq!(positions.of("a[0].k"), Some((1, 9)));
        let last = text.rfind("{\"k\"").unwrap() + 2;
        assert_eq!(positions.of("a[19999].k"), Some((1, last)));
    }

    #[test]
    fn many_paths_are_found_in_one_pass() {
        let items: Vec<String> = (0..20_000).map(|i| format!("{{\"k\": {i}}}")).collect();
        let text = format!("{{\"a\": [\n{}\n]}}", items.join(",\n"));
        let paths: Vec<String> = (0..20_000).map(|i| format!("a[{i}].k")).collect();
        let positions = Positions::find(&text, paths.iter().map(String::as_str));
        assert_eq!(positions.of("a[0].k"), Some((2, 2)));
        assert_eq!(positions.of("a[19999].k"), Some((20_001, 2)));
    }
}
