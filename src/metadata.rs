//! Status codes and metadata as users write them, in handler files and from scripts.
//!
//! Both say `"NOT_FOUND"` or `5` for a code and set response headers and trailers by name, so
//! both go through the same rules here: the same names are accepted, the same keys are refused
//! (HTTP/2 forbids connection-specific fields, and gRPC owns `grpc-*` and `content-type`: a
//! handler setting them would break the stream or contradict the call's real status; the
//! body's own `content-length` and `content-encoding` would misstate the body the server sends,
//! and clients that check them reject the response as malformed), and the same messages explain
//! why.

/// Names of headers read on every call, made once: a look-up by `&str` parses and checks the
/// name before it hashes it, which cost more than the look-up itself.
pub mod names {
    use http::HeaderName;

    pub static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
    pub static GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
    pub static GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");
    pub static CHOSEN_STATUS: HeaderName = HeaderName::from_static(crate::error::CHOSEN_STATUS);
}

use std::collections::BTreeMap;

use tonic::metadata::{
    AsciiMetadataKey, AsciiMetadataValue, BinaryMetadataKey, BinaryMetadataValue, MetadataMap,
};
use tonic::Code;

use crate::template::EntryErrors;

const CODE_NAMES: &[&str] = &[
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// The canonical name of a gRPC status code (`NOT_FOUND`), or `"UNKNOWN"` for a number outside
/// 0-16.
pub fn code_name(code: i32) -> &'static str {
    usize::try_from(code)
        .ok()
        .and_then(|i| CODE_NAMES.get(i))
        .copied()
        .unwrap_or("UNKNOWN")
}

/// The number of a gRPC status code named in any case (`not_found`, `NOT_FOUND`), or given as
/// a number 0-16 (OK included: a journal query may ask for successful calls).
pub fn code_number(text: &str) -> Option<i32> {
    let text = text.trim();
    if let Ok(n) = text.parse::<i32>() {
        return (0..=16).contains(&n).then_some(n);
    }
    let wanted = text.to_ascii_uppercase().replace(['-', ' '], "_");
    CODE_NAMES
        .iter()
        .position(|n| *n == wanted)
        .and_then(|i| i32::try_from(i).ok())
}

/// A gRPC status code from its name (`NOT_FOUND`, any case) or number; never OK, since it is
/// the code of an error.
pub fn parse_code(json: &serde_json::Value) -> Result<Code, String> {
    use serde_json::Value as Json;
    let number = match json {
        Json::Number(n) => n.as_i64().filter(|n| (0..=16).contains(n)),
        Json::String(s) => {
            let wanted = s.trim().to_ascii_uppercase().replace(['-', ' '], "_");
            CODE_NAMES
                .iter()
                .position(|n| *n == wanted)
                .map(|i| i as i64)
        }
        _ => None,
    };
    let Some(number) = number else {
        let hint = json
            .as_str()
            .map(|s| {
                crate::suggest::did_you_mean(&s.to_ascii_uppercase(), CODE_NAMES.iter().copied())
            })
            .unwrap_or_default();
        return Err(format!("{json} is not a gRPC status code{hint}; use a name such as \"NOT_FOUND\" or a number 1-16"));
    };
    if number == 0 {
        return Err("an error needs a code other than OK".into());
    }
    Ok(Code::from_i32(number as i32))
}

/// Adds `key: value` to `map` (replacing an entry of that key), or says why not. Keys are
/// lowercased; a key ending in `-bin` takes any bytes, others printable ASCII.
pub fn insert(map: &mut MetadataMap, key: &str, value: &[u8]) -> Result<(), String> {
    let key = key.to_ascii_lowercase();
    if key.starts_with("grpc-")
        || matches!(
            key.as_str(),
            "content-type"
                | "content-length"
                | "content-encoding"
                | "te"
                | "connection"
                | "keep-alive"
                | "proxy-connection"
                | "transfer-encoding"
                | "upgrade"
                | "host"
        )
    {
        return Err(format!(
            "metadata {key:?} is reserved for gRPC and HTTP/2; use another key"
        ));
    }
    let invalid = || {
        format!("{key:?} is not a valid metadata key (lowercase letters, digits, '-', '_', '.')")
    };
    if key.ends_with("-bin") {
        let k = BinaryMetadataKey::from_bytes(key.as_bytes()).map_err(|_| invalid())?;
        map.insert_bin(k, BinaryMetadataValue::from_bytes(value));
    } else {
        let k = AsciiMetadataKey::from_bytes(key.as_bytes()).map_err(|_| invalid())?;
        // gRPC allows printable ASCII only; HTTP/2 would also pass bytes 0x80-0xFF along.
        let printable = value
            .iter()
            .all(|b| (0x20..0x7f).contains(b) || *b == b'\t');
        let v = AsciiMetadataValue::try_from(value)
            .ok()
            .filter(|_| printable)
            .ok_or_else(|| {
                format!("metadata {key:?}: values must be printable ASCII; use a key ending in -bin for binary")
            })?;
        // RFC 9113 8.2.1: clients reject such a field (python's h2) or drop it (nghttp2).
        if matches!(value.first(), Some(b' ' | b'\t')) || matches!(value.last(), Some(b' ' | b'\t'))
        {
            return Err(format!(
                "metadata {key:?}: a value may not start or end with a space or tab (HTTP/2 forbids it, and clients drop or reject such a header); trim it"
            ));
        }
        map.insert(k, v);
    }
    Ok(())
}

/// Base64 as gRPC writes binary metadata (grpcurl's and buf curl's `-H`, the spec's text form):
/// the standard alphabet, with or without padding.
const BIN: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

/// The most characters of a value a problem shows.
const SHOWN: usize = 40;

/// The bytes of a `-bin` value written in a handler file (in base64), or what to fix.
pub fn decode_bin(text: &str) -> Result<Vec<u8>, String> {
    use base64::Engine as _;
    let why = match base64_mistake(text) {
        Some(why) => why,
        None => match BIN.decode(text) {
            Ok(bytes) => return Ok(bytes),
            Err(base64::DecodeError::InvalidLastSymbol(..)) => {
                "its last character holds bits beyond the bytes it encodes".into()
            }
            Err(e) => e.to_string(),
        },
    };
    // A long value is named by its start.
    let shown = match text.char_indices().nth(SHOWN) {
        Some((cut, _)) => format!("{:?}…", &text[..cut]),
        None => format!("{text:?}"),
    };
    Err(format!(
        "{shown} is not base64: {why}; a value of a key ending in -bin is its bytes in base64 (standard alphabet, padding optional), such as \"aGk=\" for the bytes \"hi\""
    ))
}

/// What makes `text` something other than base64 (padded or not), told by where it goes
/// wrong: a character outside the alphabet, padding that does not end the value or does not
/// fit its length, or a length no bytes have. Characters count from 1.
fn base64_mistake(text: &str) -> Option<String> {
    let alphabet = |c: char| c.is_ascii_alphanumeric() || c == '+' || c == '/';
    if let Some((n, c)) = text
        .chars()
        .enumerate()
        .find(|(_, c)| !alphabet(*c) && *c != '=')
    {
        let url_safe = match c {
            '-' => " (base64url's '-' is '+' in base64)",
            '_' => " (base64url's '_' is '/' in base64)",
            _ => "",
        };
        return Some(format!(
            "{c:?} at character {} is not in the base64 alphabet (A-Z, a-z, 0-9, + and /){url_safe}",
            n + 1
        ));
    }
    // Every character is ASCII from here: lengths are counts of characters.
    let data = text.trim_end_matches('=');
    let padding = text.len() - data.len();
    if let Some(at) = data.find('=') {
        return Some(format!(
            "\"=\" at character {} is padding in the wrong place: padding only ends a value",
            at + 1
        ));
    }
    match (data.len() % 4, padding) {
        (1, _) => Some(format!(
            "its length cannot be base64: {} character{}{} is one more than a multiple of 4, and one character holds only 6 of a byte's 8 bits",
            data.len(),
            if data.len() == 1 { "" } else { "s" },
            if padding > 0 { " before the padding" } else { "" }
        )),
        (0, 1..) => Some(format!(
            "\"=\" at character {} is padding in the wrong place: {}",
            data.len() + 1,
            if data.is_empty() {
                "padding only ends a value, after two or three characters (\"aA==\", \"aGk=\")"
                    .to_owned()
            } else {
                format!("the {} characters before it are whole without it", data.len())
            }
        )),
        (2, 1) | (3, 2..) | (2, 3..) => Some(format!(
            "it ends in {padding} \"=\" where its {} characters take {}",
            data.len(),
            4 - data.len() % 4
        )),
        _ => None,
    }
}

/// Bytes as a `-bin` value is written in a handler file.
pub fn encode_bin(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A `{{…}}` in a metadata value: values are checked once, at startup, and sent as written (a
/// request value could make one no header may carry: a line break, a byte outside ASCII, a
/// `-bin` value that is not base64), so a placeholder would have reached clients literally.
fn placeholder_in_metadata(key: &str) -> String {
    format!(
        "metadata {key:?}: {{{{…}}}} is not filled in in metadata, which is sent as written \
         (request fields go into a reply's fields and an error's message); give a constant \
         value, or set it per call from a script with ctx:set_header or ctx:set_trailer"
    )
}

/// The largest header list (one HEADERS block: key and value bytes plus 32 per entry, as
/// HTTP/2 counts it) every client takes: grpc-java's default. Larger ones are refused with an
/// HTTP/2 error instead of the call's reply or status (hyper's past 16 KiB).
pub const MAX_HEADER_BLOCK: usize = 8192;

/// What the protocol's own entries may take in a block beside the metadata: `:status`,
/// `content-type`, `date`, `grpc-status`, `grpc-encoding`, `grpc-accept-encoding` (about 330
/// bytes), rounded up. A status message gets what is left after all of them (see
/// `error::status_message_room`).
pub const PROTOCOL_ENTRIES: usize = 512;

/// The most response metadata one block may hold, as HTTP/2 counts a header list: what a
/// handler file gives, and what a script sets, together when they go out together. What the
/// protocol adds is left room for, so a client that takes [`MAX_HEADER_BLOCK`] takes the
/// block; the header map itself holds at most 32 768 entries (it panics past them).
pub const MAX_SENT_METADATA: usize = MAX_HEADER_BLOCK - PROTOCOL_ENTRIES;

/// One entry's key and the bytes it takes as HTTP/2 counts a header list: key and value, plus
/// 32; a `-bin` value as it is sent, base64 without padding.
pub fn entry_size(kv: tonic::metadata::KeyAndValueRef<'_>) -> (&str, usize) {
    use tonic::metadata::KeyAndValueRef;
    match kv {
        KeyAndValueRef::Ascii(k, v) => (k.as_str(), k.as_str().len() + v.len() + 32),
        KeyAndValueRef::Binary(k, v) => (
            k.as_str(),
            k.as_str().len() + v.as_encoded_bytes().len() + 32,
        ),
    }
}

/// The bytes `map` takes as HTTP/2 counts a header list (see [`entry_size`]).
pub fn map_size(map: &tonic::metadata::MetadataMap) -> usize {
    map.iter()
        .fold(0usize, |n, kv| n.saturating_add(entry_size(kv).1))
}

/// The bytes a list of metadata from a handler file takes as HTTP/2 counts a header list: key
/// and value, plus 32 per entry; a `-bin` value as it is sent, base64 without padding.
pub fn sent_size(pairs: &BTreeMap<String, String>) -> usize {
    pairs.iter().fold(0usize, |n, (k, v)| {
        let value = if k.to_ascii_lowercase().ends_with("-bin") {
            v.trim_end_matches('=').len()
        } else {
            v.len()
        };
        n.saturating_add(k.len() + value + 32)
    })
}

/// Response metadata from a handler file (`"headers"`, an error's `"metadata"`), checked at
/// startup; `path` locates it in the entry. A `-bin` key's value is its bytes in base64.
pub fn parse_pairs(
    pairs: &BTreeMap<String, String>,
    path: &str,
) -> Result<MetadataMap, EntryErrors> {
    let mut problems = EntryErrors::default();
    // Counted as sent (a -bin value as the base64 given): a list past the limit is one
    // problem, found before any entry is made.
    let size = sent_size(pairs);
    if size > MAX_SENT_METADATA {
        problems.push(
            path.to_owned(),
            format!(
                "{} metadata entries of {size} bytes in all (keys, values and 32 per entry); \
                 at most {MAX_SENT_METADATA} bytes are sent, since clients refuse header lists \
                 past {MAX_HEADER_BLOCK} and the protocol's own entries take up to \
                 {PROTOCOL_ENTRIES} of them; send fewer or shorter entries",
                pairs.len()
            ),
        );
        return Err(problems);
    }
    let mut map = MetadataMap::new();
    let mut seen: BTreeMap<String, &str> = BTreeMap::new();
    for (k, v) in pairs {
        // Keys are lowercased, so `X-Id` and `x-id` would be one header, and one value lost.
        if let Some(other) = seen.insert(k.to_ascii_lowercase(), k) {
            problems.push(
                format!("{path}.{k}"),
                format!(
                    "{k:?} and {other:?} are the same metadata key (keys are lowercase); keep one"
                ),
            );
            continue;
        }
        if v.contains("{{") {
            problems.push(format!("{path}.{k}"), placeholder_in_metadata(k));
            continue;
        }
        let value = if k.to_ascii_lowercase().ends_with("-bin") {
            match decode_bin(v) {
                Ok(bytes) => std::borrow::Cow::Owned(bytes),
                Err(message) => {
                    problems.push(format!("{path}.{k}"), format!("metadata {k:?}: {message}"));
                    continue;
                }
            }
        } else {
            std::borrow::Cow::Borrowed(v.as_bytes())
        };
        if let Err(message) = insert(&mut map, k, &value) {
            problems.push(format!("{path}.{k}"), message);
        }
    }
    problems.or(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_by_name_or_number_but_never_ok() {
        assert_eq!(parse_code(&"not_found".into()), Ok(Code::NotFound));
        assert_eq!(
            parse_code(&"Resource-Exhausted".into()),
            Ok(Code::ResourceExhausted)
        );
        assert_eq!(parse_code(&16.into()), Ok(Code::Unauthenticated));
        assert!(parse_code(&0.into()).is_err());
        assert!(parse_code(&17.into()).is_err());
        let e = parse_code(&"NOT_FUOND".into()).unwrap_err();
        assert!(e.contains("NOT_FOUND"), "{e}");
    }

    #[test]
    fn reserved_and_invalid_keys_are_refused() {
        let mut map = MetadataMap::new();
        for bad in [
            "grpc-status",
            "Content-Type",
            "content-length",
            "Content-Encoding",
            "te",
            "connection",
            "a b",
        ] {
            assert!(insert(&mut map, bad, b"x").is_err(), "{bad}");
        }
        assert!(insert(&mut map, "x-ok", b"a\x01b").is_err());
        assert!(insert(&mut map, "x-ok", "é".as_bytes()).is_err());
        for padded in [&b" a"[..], b"a ", b"\ta", b"a\t", b" "] {
            assert!(insert(&mut map, "x-ok", padded).is_err(), "{padded:?}");
        }
        insert(&mut map, "x-inner", b"a b\tc").unwrap();
        insert(&mut map, "x-inner", b"").unwrap();
        insert(&mut map, "X-Trace", b"abc").unwrap();
        insert(&mut map, "blob-bin", b"\xff\x00").unwrap();
        assert_eq!(map.get("x-trace").unwrap(), "abc");
        assert_eq!(map.get("x-inner").unwrap(), "");
        assert_eq!(map.len(), 3);
    }

    #[test]
    fn binary_values_in_handler_files_are_base64_padded_or_not() {
        let pairs = |v: &str| BTreeMap::from([("Trace-Bin".to_owned(), v.to_owned())]);
        for written in ["/wBoaQ==", "/wBoaQ"] {
            let map = parse_pairs(&pairs(written), "headers").unwrap();
            let value = map.get_bin("trace-bin").unwrap().to_bytes().unwrap();
            assert_eq!(value.as_ref(), b"\xff\x00hi", "{written}");
        }
        for bad in ["raw!", "a", "-_8="] {
            let e = parse_pairs(&pairs(bad), "headers").unwrap_err();
            assert_eq!(e.0[0].path, "headers.Trace-Bin");
            assert!(e.0[0].message.contains("not base64"), "{}", e.0[0].message);
        }
        assert_eq!(
            decode_bin(&encode_bin(b"\x00\x01\xfe")).unwrap(),
            b"\x00\x01\xfe"
        );
        let e = decode_bin(&format!("AAAA{}", "é".repeat(10_000))).unwrap_err();
        assert!(
            e.starts_with("\"AAAAéé") && e.contains("\"… is not base64"),
            "{e}"
        );
        assert!(e.contains("'é' at character 5 "), "{e}");
    }

    #[test]
    fn base64_problems_say_what_is_wrong() {
        let why = |v: &str| decode_bin(v).unwrap_err();
        for (value, says) in [
            ("==", "\"=\" at character 1 is padding in the wrong place: padding only ends a value, after two or three characters"),
            ("aGk=x", "\"=\" at character 4 is padding in the wrong place: padding only ends a value"),
            ("aGk=aGk", "\"=\" at character 4 is padding in the wrong place"),
            ("aGlh=", "\"=\" at character 5 is padding in the wrong place: the 4 characters before it are whole without it"),
            ("aGk==", "it ends in 2 \"=\" where its 3 characters take 1"),
            ("aA=", "it ends in 1 \"=\" where its 2 characters take 2"),
            ("a", "its length cannot be base64: 1 character is one more than a multiple of 4"),
            ("aGlhY===", "its length cannot be base64: 5 characters before the padding is one more"),
            ("aGk!", "'!' at character 4 is not in the base64 alphabet"),
            ("a-_A", "'-' at character 2 is not in the base64 alphabet (A-Z, a-z, 0-9, + and /) (base64url's '-' is '+' in base64)"),
            ("aGl=", "its last character holds bits beyond the bytes it encodes"),
        ] {
            let e = why(value);
            assert!(e.contains(&format!("{value:?} is not base64: {says}")), "{value}: {e}");
        }
        for good in ["", "aA==", "aA", "aGk=", "aGk", "aGlh"] {
            assert!(decode_bin(good).is_ok(), "{good}");
        }
    }
}
