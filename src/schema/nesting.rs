//! A bound on how deep a `.proto` file nests, checked before it is parsed.
//!
//! protox-parse bounds nested message declarations (31 levels, as protoc does) but keeps an
//! option's aggregate value (`option (x) = {a: {a: {…}}}`) as text, and the text-format parser
//! that interprets it later recurses once per level with no limit of its own: a value a few
//! hundred levels deep overflowed the stack and aborted `check`, startup and a live reload
//! alike. Counting the open braces, brackets and angle brackets outside strings and comments
//! bounds every such construct at once, and reports the place with `file:line:col`.
//!
//! A descriptor set may carry such a value too, as an uninterpreted option's aggregate text;
//! [`too_deep_option`] finds one before the set reaches the parser.

use prost::Message as _;
use prost_types::UninterpretedOption;

use super::raw;

/// How deep `{`, `[` and `<` may nest in a `.proto` file, all kinds counted together (message
/// bodies, option values, lists and `map<…>` included). Real schemas stay under ten; an option
/// value much deeper would not decode anyway once encoded (protobuf decoders stop at 100 levels).
pub const MAX_NESTING: usize = 64;

/// Where a file first nests deeper than [`MAX_NESTING`]: the byte offset of the bracket that
/// opens level `MAX_NESTING + 1`.
pub fn too_deep(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'/' if bytes.get(i + 1) == Some(&b'/') => i = line_end(bytes, i),
            // Text-format values (option aggregates) may hold `#` comments.
            b'#' => i = line_end(bytes, i),
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                i = match text[i + 2..].find("*/") {
                    Some(end) => i + 2 + end + 2,
                    None => bytes.len(),
                };
            }
            quote @ (b'"' | b'\'') => i = string_end(bytes, i, quote),
            b'{' | b'[' | b'<' => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Some(i);
                }
                i += 1;
            }
            b'}' | b']' | b'>' => {
                depth = depth.saturating_sub(1);
                i += 1;
            }
            _ => i += 1,
        }
    }
    None
}

/// The uninterpreted options of an encoded `*Options` message (field 999 in every one).
#[derive(Clone, PartialEq, prost::Message)]
struct Uninterpreted {
    #[prost(message, repeated, tag = "999")]
    option: Vec<UninterpretedOption>,
}

/// The name of the first uninterpreted option in `file` whose aggregate value nests deeper than
/// [`MAX_NESTING`] (as written in `.proto` source: `(pkg.ext).field`).
pub fn too_deep_option(file: &raw::File) -> Option<String> {
    let mut options: Vec<&[u8]> = Vec::new();
    options.extend(file.options.as_deref());
    options.extend(file.extension.iter().filter_map(|f| f.options.as_deref()));
    for e in &file.enum_type {
        enum_options(e, &mut options);
    }
    for s in &file.service {
        options.extend(s.options.as_deref());
        options.extend(s.method.iter().filter_map(|m| m.options.as_deref()));
    }
    for m in &file.message_type {
        message_options(m, &mut options);
    }
    options.into_iter().find_map(|bytes| {
        let decoded = Uninterpreted::decode(bytes).ok()?;
        let deep = decoded.option.into_iter().find(|o| {
            o.aggregate_value
                .as_deref()
                .is_some_and(|v| too_deep(v).is_some())
        })?;
        Some(option_name(&deep))
    })
}

fn enum_options<'a>(e: &'a raw::Enum, out: &mut Vec<&'a [u8]>) {
    out.extend(e.options.as_deref());
    out.extend(e.value.iter().filter_map(|v| v.options.as_deref()));
}

/// A message's options and those of what it declares; the decoder's recursion limit bounds how
/// deep messages nest.
fn message_options<'a>(m: &'a raw::Message, out: &mut Vec<&'a [u8]>) {
    out.extend(m.options.as_deref());
    out.extend(m.field.iter().filter_map(|f| f.options.as_deref()));
    out.extend(m.extension.iter().filter_map(|f| f.options.as_deref()));
    out.extend(m.oneof_decl.iter().filter_map(|o| o.options.as_deref()));
    out.extend(
        m.extension_range
            .iter()
            .filter_map(|r| r.options.as_deref()),
    );
    for e in &m.enum_type {
        enum_options(e, out);
    }
    for nested in &m.nested_type {
        message_options(nested, out);
    }
}

fn option_name(option: &UninterpretedOption) -> String {
    option
        .name
        .iter()
        .map(|part| {
            if part.is_extension {
                format!("({})", part.name_part)
            } else {
                part.name_part.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// The offset of the newline ending the line at `i` (or the end of the text).
fn line_end(bytes: &[u8], i: usize) -> usize {
    bytes[i..]
        .iter()
        .position(|b| *b == b'\n')
        .map_or(bytes.len(), |n| i + n)
}

/// The offset just past the string literal opened by `quote` at `i`; a string that a newline or
/// the end of the text cuts short ends there (the parser reports it).
fn string_end(bytes: &[u8], i: usize, quote: u8) -> usize {
    let mut j = i + 1;
    while j < bytes.len() {
        match bytes[j] {
            b'\\' => j += 2,
            b'\n' => return j,
            b if b == quote => return j + 1,
            _ => j += 1,
        }
    }
    bytes.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(open: &str, close: &str, n: usize) -> String {
        format!("{}{}", open.repeat(n), close.repeat(n))
    }

    #[test]
    fn counts_every_kind_of_bracket_together() {
        assert_eq!(too_deep(&nested("{", "}", MAX_NESTING)), None);
        assert_eq!(
            too_deep(&nested("{", "}", MAX_NESTING + 1)),
            Some(MAX_NESTING)
        );
        assert_eq!(too_deep(&nested("{[<", ">]}", 22)), Some(MAX_NESTING));
        assert_eq!(too_deep(&nested("[", "]", 1000)), Some(MAX_NESTING));
    }

    #[test]
    fn skips_strings_and_comments() {
        let deep = "{".repeat(MAX_NESTING + 1);
        for text in [
            format!("// {deep}\nmessage A {{}}"),
            format!("/* {deep} */ message A {{}}"),
            format!("# {deep}\n"),
            format!("option (a) = {{s: \"{deep}\\\" {deep}\"}};"),
            format!("option (a) = {{s: '{deep}'}};"),
        ] {
            assert_eq!(too_deep(&text), None, "{text}");
        }
    }

    #[test]
    fn closing_brackets_free_their_level() {
        let text = "{}".repeat(1000) + &nested("<", ">", MAX_NESTING);
        assert_eq!(too_deep(&text), None);
        assert_eq!(too_deep(&"}".repeat(10)), None);
    }
}
