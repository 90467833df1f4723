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
//!
//! A descriptor set whose messages nest (`nested_type`) past the protobuf decoder's recursion
//! limit does not decode at all, and the decoder says only that the limit was reached, after a
//! line of kilobytes naming every field on the way down. [`too_deep_messages`] walks the set's
//! bytes for the file and the chain of messages that goes that deep, so the refusal can name
//! them.

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

/// A chain of nested messages deeper than a descriptor set may hold: the file that declares
/// it, and the full names of the messages from the top-level one down to the first too deep.
#[derive(Debug, PartialEq, Eq)]
pub struct DeepMessages {
    pub file: String,
    pub chain: Vec<String>,
}

/// The first chain of nested messages in the encoded FileDescriptorSet `set` that holds more
/// than `max_messages` messages, if any (and if the bytes can be walked at all). The walk
/// stops at that depth, so it recurses at most `max_messages + 1` times whatever the input.
pub fn too_deep_messages(set: &[u8], max_messages: usize) -> Option<DeepMessages> {
    for file in fields(set, 1) {
        let mut name = String::new();
        let mut package = String::new();
        for (number, value) in all_fields(file) {
            match number {
                1 => name = String::from_utf8_lossy(value).into_owned(),
                2 => package = String::from_utf8_lossy(value).into_owned(),
                _ => {}
            }
        }
        for message in fields(file, 4) {
            let mut chain = Vec::new();
            if deepest(message, &package, &mut chain, max_messages) {
                return Some(DeepMessages { file: name, chain });
            }
        }
    }
    None
}

/// Whether `message` (encoded DescriptorProto) holds a chain of messages reaching past
/// `max_messages` in `chain` (the names so far); on true, `chain` is that chain.
fn deepest(message: &[u8], scope: &str, chain: &mut Vec<String>, max_messages: usize) -> bool {
    let name = fields(message, 1)
        .last()
        .map(|n| String::from_utf8_lossy(n).into_owned())
        .unwrap_or_default();
    let full = if scope.is_empty() {
        name
    } else {
        format!("{scope}.{name}")
    };
    chain.push(full);
    if chain.len() > max_messages {
        return true;
    }
    let scope = chain.last().cloned().unwrap_or_default();
    for nested in fields(message, 3) {
        if deepest(nested, &scope, chain, max_messages) {
            return true;
        }
    }
    chain.pop();
    false
}

/// The length-delimited values of field `number` in the encoded message `bytes`, in order
/// (none past a point the bytes cannot be read at).
fn fields(bytes: &[u8], number: u32) -> impl Iterator<Item = &[u8]> {
    all_fields(bytes).filter_map(move |(n, v)| (n == number).then_some(v))
}

/// The length-delimited fields of the encoded message `bytes` (number, value); fields of other
/// wire types are skipped, and the walk stops where the bytes cannot be read.
fn all_fields(mut bytes: &[u8]) -> impl Iterator<Item = (u32, &[u8])> {
    use crate::wire;
    std::iter::from_fn(move || loop {
        if bytes.is_empty() {
            return None;
        }
        let (number, wire_type) = wire::key(&mut bytes).ok()?;
        match wire_type {
            0 => {
                wire::varint(&mut bytes).ok()?;
            }
            1 => {
                wire::fixed64(&mut bytes).ok()?;
            }
            2 => return Some((number, wire::len_prefixed(&mut bytes).ok()?)),
            5 => {
                wire::fixed32(&mut bytes).ok()?;
            }
            // Groups: no descriptor field is one; stop rather than walk them.
            _ => return None,
        }
    })
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

    /// A set of one file whose message `L0` nests `messages` messages in all, each but the
    /// innermost holding a field of the next.
    fn set_nesting(messages: usize) -> Vec<u8> {
        use prost_types::{DescriptorProto, FieldDescriptorProto, FileDescriptorProto};
        let mut inner: Option<DescriptorProto> = None;
        for level in (0..messages).rev() {
            let mut message = DescriptorProto {
                name: Some(format!("L{level}")),
                ..Default::default()
            };
            if let Some(next) = inner.take() {
                message.field.push(FieldDescriptorProto {
                    name: Some("next".into()),
                    number: Some(1),
                    ..Default::default()
                });
                message.nested_type.push(next);
            }
            inner = Some(message);
        }
        prost_types::FileDescriptorSet {
            file: vec![FileDescriptorProto {
                name: Some("deep.proto".into()),
                package: Some("p".into()),
                message_type: vec![inner.unwrap()],
                ..Default::default()
            }],
        }
        .encode_to_vec()
    }

    /// The walk names the chain exactly where the decoder gives up: a set nesting
    /// `MAX_SET_MESSAGES` messages decodes, one nesting two more does not, and the walk finds
    /// its chain down to the first message past the limit.
    #[test]
    fn deep_message_chains_are_found_where_the_decoder_stops() {
        let max = super::super::sources::MAX_SET_MESSAGES;
        let fits = set_nesting(max);
        assert!(raw::FileSet::decode(fits.as_slice()).is_ok());
        assert_eq!(too_deep_messages(&fits, max), None);
        let deep = set_nesting(max + 2);
        assert!(raw::FileSet::decode(deep.as_slice()).is_err());
        let found = too_deep_messages(&deep, max).unwrap();
        assert_eq!(found.file, "deep.proto");
        assert_eq!(found.chain.len(), max + 1);
        assert_eq!(found.chain[0], "p.L0");
        assert_eq!(found.chain[2], "p.L0.L1.L2");
        assert!(found.chain[max].ends_with(&format!(".L{}.L{max}", max - 1)));
        // Far deeper input is walked no deeper than the limit.
        let found = too_deep_messages(&set_nesting(1000), max).unwrap();
        assert_eq!(found.chain.len(), max + 1);
    }

    #[test]
    fn closing_brackets_free_their_level() {
        let text = "{}".repeat(1000) + &nested("<", ">", MAX_NESTING);
        assert_eq!(too_deep(&text), None);
        assert_eq!(too_deep(&"}".repeat(10)), None);
    }
}
