//! Where a value sits in a JSON text, found by its path (`reply.tags[2]`, `rules[0].when`).
//!
//! Handler files are parsed into `serde_json` values, which keep no positions; a problem found
//! while compiling an entry knows only its path inside the entry. This scans the file's text
//! along that path, so each problem is reported at its own line and column, not at the
//! method's. Keys may contain dots (`"address.city"`, header names): at each object the longest
//! key that starts the rest of the path is taken.

/// The 1-based line and column of the value at `keys` then `rest` in `text`: `keys` are exact
/// object keys from the top, `rest` a path in the form `a.b[2].c`. A path that leaves the text
/// stops at the deepest value found; `None` when not even `keys` are found. An object member
/// is located at its key, an array item at its first character.
pub fn locate(text: &str, keys: &[&str], rest: &str) -> Option<(usize, usize)> {
    let mut scan = Scan {
        bytes: text.as_bytes(),
        at: 0,
    };
    let mut found = None;
    for key in keys {
        let (key_at, value_at) = scan
            .members()?
            .into_iter()
            .find(|m| m.key == *key)
            .map(|m| (m.key_at, m.value_at))?;
        found = Some(key_at);
        scan.at = value_at;
    }
    let mut rest = rest;
    while !rest.is_empty() {
        scan.space();
        match scan.peek() {
            Some(b'{') => {
                let Some(members) = scan.members() else { break };
                let best = members
                    .into_iter()
                    .filter(|m| {
                        rest.strip_prefix(m.key.as_str())
                            .is_some_and(|after| after.is_empty() || after.starts_with(['.', '[']))
                    })
                    .max_by_key(|m| m.key.len());
                let Some(m) = best else { break };
                found = Some(m.key_at);
                scan.at = m.value_at;
                rest = &rest[m.key.len()..];
            }
            Some(b'[') => {
                let Some(index) = rest
                    .strip_prefix('[')
                    .and_then(|r| r.split_once(']'))
                    .and_then(|(n, after)| Some((n.parse::<usize>().ok()?, after)))
                else {
                    break;
                };
                let Some(item_at) = scan.item(index.0) else {
                    break;
                };
                found = Some(item_at);
                scan.at = item_at;
                rest = index.1;
            }
            _ => break,
        }
        rest = rest.strip_prefix('.').unwrap_or(rest);
    }
    found.map(|at| line_col(text, at))
}

/// The 1-based line and column (in bytes, as the JSON parser's errors count) of byte `at`.
fn line_col(text: &str, at: usize) -> (usize, usize) {
    let before = &text.as_bytes()[..at];
    let line = before.iter().filter(|b| **b == b'\n').count() + 1;
    let col = at
        - before
            .iter()
            .rposition(|b| *b == b'\n')
            .map_or(0, |i| i + 1)
        + 1;
    (line, col)
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

    /// Where item `index` of the array here starts.
    fn item(&mut self, index: usize) -> Option<usize> {
        self.eat(b'[')?;
        for i in 0.. {
            self.space();
            if self.peek()? == b']' {
                return None;
            }
            if i == index {
                return Some(self.at);
            }
            self.value()?;
            self.eat(b',')?;
        }
        None
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
            b'[' => {
                self.at += 1;
                self.space();
                if self.peek()? == b']' {
                    self.at += 1;
                    return Some(());
                }
                loop {
                    self.value()?;
                    self.space();
                    match self.peek()? {
                        b',' => self.at += 1,
                        b']' => {
                            self.at += 1;
                            return Some(());
                        }
                        _ => return None,
                    }
                }
            }
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
    use super::locate;

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

    #[test]
    fn finds_keys_items_and_dotted_keys() {
        assert_eq!(locate(TEXT, &["methods", "B"], ""), Some((5, 5)));
        assert_eq!(
            locate(TEXT, &["methods", "B"], "rules[0].when.request.inner.label"),
            Some((6, 32))
        );
        assert_eq!(
            locate(TEXT, &["methods", "B"], "rules[0].when.request.id"),
            Some((6, 52))
        );
        assert_eq!(
            locate(TEXT, &["methods", "B"], "rules[1].reply.tags[1]"),
            Some((7, 34))
        );
        assert_eq!(
            locate(TEXT, &["methods", "B"], "rules[1].headers.x.y"),
            Some((7, 55))
        );
    }

    #[test]
    fn a_path_that_leaves_the_text_stops_at_the_deepest_value() {
        assert_eq!(
            locate(TEXT, &["methods", "B"], "rules[1].reply.nothing"),
            Some((7, 9))
        );
        assert_eq!(locate(TEXT, &["methods", "B"], "rules[9]"), Some((5, 12)));
        // A method name that is also a key inside an earlier entry is found as the method.
        assert_eq!(locate(TEXT, &["methods", "B"], ""), Some((5, 5)));
        assert_eq!(locate(TEXT, &["methods", "C"], ""), None);
    }
}
