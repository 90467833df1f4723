//! The `when` part of a rule: tests on request fields and request metadata, compiled at startup.
//!
//! ```json
//! "when": {
//!   "request":  { "id": "42", "name": { "prefix": "A" }, "age": { "gte": 18, "lt": 65 },
//!                 "location": { "latitude": 0 } },
//!   "metadata": { "authorization": { "regex": "^Bearer " } }
//! }
//! ```
//! A bare value means equality (parsed as the field's type, so enums match by name); an object of
//! operators (`equals`, `in`, `prefix`, `suffix`, `contains`, `regex`, `gt`, `gte`, `lt`, `lte`,
//! `present`) tests the field; any other object descends into a message field (an empty one is
//! refused: it tests nothing, so it held whether the field was set or not). Every test must hold
//! for the rule to match. Values are compared as written, so a `{{field}}` of the request in one
//! is refused rather than compared literally.

use prost_reflect::{DynamicMessage, Kind, MessageDescriptor, Value};
use serde_json::{Map, Value as Json};
use tonic::metadata::MetadataMap;

use crate::fieldpath::{kind_name, type_name, FieldPath};
use crate::regexes::{Pattern, Regexes};
use crate::template::{parse_field_value, EntryError, EntryErrors};

type Result<T> = std::result::Result<T, EntryErrors>;

fn err<T>(path: &str, message: impl Into<String>) -> Result<T> {
    Err(EntryError {
        path: path.to_owned(),
        message: message.into(),
    }
    .into())
}

const OPERATORS: &[&str] = &[
    "equals", "in", "prefix", "suffix", "contains", "regex", "gt", "gte", "lt", "lte", "present",
];

/// All the tests of one `when`.
#[derive(Debug, Clone, Default)]
pub struct Condition {
    fields: Vec<(FieldPath, Test)>,
    metadata: Vec<(String, MetadataTest)>,
}

/// A test on one metadata key. A `-bin` key's value is bytes: the values a test compares it
/// with are written in base64, as a `-bin` header's value is in a handler file, and compared
/// with the bytes the client sent.
#[derive(Debug, Clone)]
enum MetadataTest {
    Text(Test),
    Bytes(BytesTest),
}

#[derive(Debug, Clone)]
enum BytesTest {
    Equals(Vec<u8>),
    In(Vec<Vec<u8>>),
    Prefix(Vec<u8>),
    Suffix(Vec<u8>),
    Contains(Vec<u8>),
    /// A pattern, not a value: it reads the bytes as UTF-8 (bad bytes as U+FFFD).
    Regex(Pattern),
    Present(bool),
}

#[derive(Debug, Clone)]
enum Test {
    Equals(Value),
    In(Vec<Value>),
    Prefix(String),
    Suffix(String),
    Contains(String),
    Regex(Pattern),
    Range {
        lower: Option<(Num, bool)>,
        upper: Option<(Num, bool)>,
    },
    Present(bool),
}

impl Condition {
    /// Compiles a `when` object for requests of type `input`; its `regex` tests go into (and
    /// count against) `regexes`, shared by every condition of one load.
    pub fn compile(
        when: &Json,
        input: &MessageDescriptor,
        path: &str,
        regexes: &mut Regexes,
    ) -> Result<Self> {
        let Json::Object(obj) = when else {
            return err(
                path,
                "\"when\" must be an object with \"request\" and/or \"metadata\"",
            );
        };
        let mut problems = EntryErrors::default();
        let mut cond = Condition::default();
        for (key, value) in obj {
            let p = format!("{path}.{key}");
            match key.as_str() {
                "request" => {
                    let Json::Object(fields) = value else {
                        problems.push(p, "\"request\" must be an object of field tests");
                        continue;
                    };
                    compile_fields(
                        fields,
                        input,
                        "",
                        &p,
                        &mut cond.fields,
                        &mut problems,
                        regexes,
                    );
                }
                "metadata" => {
                    let Json::Object(keys) = value else {
                        problems.push(p, "\"metadata\" must be an object of header tests");
                        continue;
                    };
                    for (name, test) in keys {
                        let tp = format!("{p}.{name}");
                        let name = name.to_ascii_lowercase();
                        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                            problems.push(tp, format!("{name:?} is not a valid metadata key"));
                            continue;
                        }
                        if let Some(found) = placeholder(test, input) {
                            problems.push(tp, found);
                            continue;
                        }
                        let binary = name.ends_with("-bin");
                        for t in compile_metadata_test(test, binary, &tp, &mut problems, regexes) {
                            cond.metadata.push((name.clone(), t));
                        }
                    }
                }
                other => problems.push(
                    p,
                    format!("unknown key {other:?} in \"when\"; use \"request\" or \"metadata\""),
                ),
            }
        }
        problems.or(cond)
    }

    /// True when every test holds for this request.
    pub fn matches(&self, req: &DynamicMessage, metadata: &MetadataMap) -> bool {
        self.fields_match(req) && self.metadata_matches(metadata)
    }

    /// True when the condition tests request fields, not only metadata.
    pub fn tests_fields(&self) -> bool {
        !self.fields.is_empty()
    }

    /// True when every request-field test holds for `req`.
    pub fn fields_match(&self, req: &DynamicMessage) -> bool {
        self.fields
            .iter()
            .all(|(path, test)| test.check_field(path, req))
    }

    /// True when every metadata test holds.
    pub fn metadata_matches(&self, metadata: &MetadataMap) -> bool {
        self.metadata
            .iter()
            .all(|(key, test)| test.check(metadata, key))
    }

    /// How many request-field tests fail for `req`: as many as [`Condition::explain_fields`]
    /// explains, without the cost of saying them.
    pub fn failed_fields(&self, req: &DynamicMessage) -> usize {
        self.fields
            .iter()
            .filter(|(path, test)| !test.check_field(path, req))
            .count()
    }

    /// How many metadata tests fail: as many as [`Condition::explain_metadata`] explains.
    pub fn failed_metadata(&self, metadata: &MetadataMap) -> usize {
        self.metadata
            .iter()
            .filter(|(key, test)| !test.check(metadata, key))
            .count()
    }

    /// Each request-field test that fails for `req`, said for a person:
    /// `request.name: wanted "bob", got "alice"`. Empty when they all hold. Runs the same
    /// checks as [`Condition::matches`], which stays free of any explaining.
    pub fn explain_fields(&self, req: &DynamicMessage) -> Vec<String> {
        self.fields
            .iter()
            .filter_map(|(path, test)| {
                if test.check_field(path, req) {
                    return None;
                }
                let value = path.read(req);
                let field = path.last();
                Some(format!(
                    "request.{}: wanted {}, got {}",
                    path.text(),
                    test.describe(field),
                    show_value(&value, field)
                ))
            })
            .collect()
    }

    /// Each metadata test that fails, said for a person:
    /// `metadata x-user: wanted "alice", got missing`.
    pub fn explain_metadata(&self, metadata: &MetadataMap) -> Vec<String> {
        self.metadata
            .iter()
            .filter(|(key, test)| !test.check(metadata, key))
            .map(|(key, test)| {
                format!(
                    "metadata {key}: wanted {}, got {}",
                    test.describe(),
                    test.show_sent(metadata, key)
                        .unwrap_or_else(|| "missing".to_owned())
                )
            })
            .collect()
    }
}

impl MetadataTest {
    /// Whether the test holds for the value of `key` (the first, if sent more than once).
    fn check(&self, metadata: &MetadataMap, key: &str) -> bool {
        match self {
            MetadataTest::Text(test) => {
                let value = metadata
                    .get(key)
                    .map(|v| String::from_utf8_lossy(v.as_bytes()));
                test.check_text(value.as_deref())
            }
            MetadataTest::Bytes(test) => {
                // Tonic keeps the two kinds apart: a `-bin` key is read as binary only.
                let Some(sent) = metadata.get_bin(key) else {
                    return test.check(None);
                };
                match sent.to_bytes() {
                    Ok(bytes) => test.check(Some(&bytes)),
                    // Sent, but not base64: present, and equal to no bytes.
                    Err(_) => matches!(test, BytesTest::Present(true)),
                }
            }
        }
    }

    /// What the test wants, for explanations; bytes in base64, as they are written.
    fn describe(&self) -> String {
        let b64 = |b: &[u8]| quote(&crate::metadata::encode_bin(b));
        match self {
            MetadataTest::Text(test) => test.describe(None),
            MetadataTest::Bytes(test) => match test {
                BytesTest::Equals(b) => b64(b),
                BytesTest::In(bs) => one_of(bs.iter().map(|b| b64(b)), bs.len()),
                BytesTest::Prefix(b) => format!("prefix {}", b64(b)),
                BytesTest::Suffix(b) => format!("suffix {}", b64(b)),
                BytesTest::Contains(b) => format!("contains {}", b64(b)),
                BytesTest::Regex(r) => format!("regex {}", quote(r.as_str())),
                BytesTest::Present(true) => "present".into(),
                BytesTest::Present(false) => "absent".into(),
            },
        }
    }

    /// The value sent for `key`, quoted as the test's values are written.
    fn show_sent(&self, metadata: &MetadataMap, key: &str) -> Option<String> {
        Some(match self {
            MetadataTest::Text(_) => quote(&String::from_utf8_lossy(metadata.get(key)?.as_bytes())),
            MetadataTest::Bytes(_) => {
                let sent = metadata.get_bin(key)?;
                match sent.to_bytes() {
                    Ok(bytes) => quote(&crate::metadata::encode_bin(&bytes)),
                    Err(_) => format!(
                        "{} (not valid base64)",
                        quote(&String::from_utf8_lossy(sent.as_encoded_bytes()))
                    ),
                }
            }
        })
    }
}

impl BytesTest {
    fn check(&self, value: Option<&[u8]>) -> bool {
        let Some(v) = value else {
            return matches!(self, BytesTest::Present(false));
        };
        match self {
            BytesTest::Equals(b) => v == b.as_slice(),
            BytesTest::In(bs) => bs.iter().any(|b| v == b.as_slice()),
            BytesTest::Prefix(b) => v.starts_with(b),
            BytesTest::Suffix(b) => v.ends_with(b),
            BytesTest::Contains(b) => memchr::memmem::find(v, b).is_some(),
            BytesTest::Regex(r) => r.is_match(&String::from_utf8_lossy(v)),
            BytesTest::Present(want) => *want,
        }
    }
}

/// Longest text shown of a value in an explanation.
const SHOWN_CHARS: usize = 80;

/// Values of an `in` list an explanation shows: a verify explains every call it did not match,
/// and a list of a hundred thousand values written out for each made each explanation as large
/// as the list (gigabytes for a journal of a few thousand calls).
const SHOWN_VALUES: usize = 10;

/// An `in` test as an explanation says it: `one of ["a", "b"]`, or for a long list its first
/// values and how many there are.
fn one_of(shown: impl Iterator<Item = String>, len: usize) -> String {
    let mut values: Vec<String> = shown.take(SHOWN_VALUES).collect();
    if len > SHOWN_VALUES {
        values.push(format!("… {} more", len - SHOWN_VALUES));
    }
    format!("one of [{}]", values.join(", "))
}

fn quote(text: &str) -> String {
    if text.chars().count() > SHOWN_CHARS {
        let cut: String = text.chars().take(SHOWN_CHARS).collect();
        format!("{:?}…", cut)
    } else {
        format!("{text:?}")
    }
}

/// A field value as a person reads it: strings quoted, enums by name, messages as JSON.
fn show_value(value: &Value, field: Option<&prost_reflect::FieldDescriptor>) -> String {
    match value {
        Value::String(s) => quote(s),
        Value::Bytes(b) => format!("{} bytes", b.len()),
        Value::EnumNumber(n) => match field.map(|f| f.kind()) {
            Some(Kind::Enum(e)) => e
                .get_value(*n)
                .map_or_else(|| n.to_string(), |v| v.name().to_owned()),
            _ => n.to_string(),
        },
        Value::Message(m) => serde_json::to_string(m)
            .map(|j| {
                if j.chars().count() > SHOWN_CHARS {
                    format!("{}…", j.chars().take(SHOWN_CHARS).collect::<String>())
                } else {
                    j
                }
            })
            .unwrap_or_else(|_| "a message".into()),
        Value::List(l) => format!("a list of {}", l.len()),
        Value::Map(m) => format!("a map of {}", m.len()),
        Value::Bool(b) => b.to_string(),
        Value::I32(n) => n.to_string(),
        Value::I64(n) => n.to_string(),
        Value::U32(n) => n.to_string(),
        Value::U64(n) => n.to_string(),
        Value::F32(n) => n.to_string(),
        Value::F64(n) => n.to_string(),
    }
}

/// The tests of a `request` object (or of a message inside it) into `out`; problems into
/// `problems`, every field checked.
fn compile_fields(
    fields: &Map<String, Json>,
    root: &MessageDescriptor,
    prefix: &str,
    path: &str,
    out: &mut Vec<(FieldPath, Test)>,
    problems: &mut EntryErrors,
    regexes: &mut Regexes,
) {
    for (key, value) in fields {
        let p = format!("{path}.{key}");
        let full = format!("{prefix}{key}");
        let fp = match FieldPath::resolve(root, &full) {
            Ok(fp) => fp,
            Err(message) => {
                problems.push(p, message);
                continue;
            }
        };
        let Some(field) = fp.last().cloned() else {
            problems.push(p, "name a field");
            continue;
        };
        let parent = field.parent_message().clone();
        match value {
            _ if !descends(value, &field) && placeholder(value, root).is_some() => {
                problems.push(p, placeholder(value, root).unwrap_or_default());
            }
            Json::Object(obj)
                if !obj.is_empty() && obj.keys().all(|k| OPERATORS.contains(&k.as_str())) =>
            {
                for (op, arg) in obj {
                    let t =
                        compile_operator(op, arg, &parent, &field, &format!("{p}.{op}"), regexes);
                    if let Some(t) = problems.keep(t) {
                        out.push((fp.clone(), t));
                    }
                }
            }
            Json::Object(obj) => {
                if let Some(bad) = obj.keys().find(|k| OPERATORS.contains(&k.as_str())) {
                    problems.push(p, format!("{bad:?} is an operator; don't mix operators and field names in one object"));
                    continue;
                }
                match field.kind() {
                    Kind::Message(_) if !field.is_list() && !field.is_map() && obj.is_empty() => {
                        problems.push(p, empty_descent(&full));
                    }
                    Kind::Message(_) if !field.is_list() && !field.is_map() => {
                        compile_fields(obj, root, &format!("{full}."), &p, out, problems, regexes);
                    }
                    _ => {
                        let equals = parse_field_value(&parent, &field, value.clone(), &p);
                        if let Some(equals) = problems.keep(equals) {
                            out.push((fp, Test::Equals(equals)));
                        }
                    }
                }
            }
            _ => {
                let equals = parse_field_value(&parent, &field, value.clone(), &p);
                if let Some(equals) = problems.keep(equals) {
                    out.push((fp, Test::Equals(equals)));
                }
            }
        }
    }
}

/// True when `value` is an object of field names on a singular message `field`, which
/// [`compile_fields`] descends into (its own keys are checked there).
fn descends(value: &Json, field: &prost_reflect::FieldDescriptor) -> bool {
    let Json::Object(obj) = value else {
        return false;
    };
    !obj.keys().any(|k| OPERATORS.contains(&k.as_str()))
        && matches!(field.kind(), Kind::Message(_))
        && !field.is_list()
        && !field.is_map()
}

/// A `{{field}}` of the request in a value a rule compares with, said as a problem: rules
/// compare with values as written, so it would have been compared literally (and never held),
/// where a reply or an error message next to it fills placeholders in. Text with `{{` that
/// names no request field is a value like any other.
fn placeholder(value: &Json, input: &MessageDescriptor) -> Option<String> {
    let named = match value {
        Json::String(text) => {
            let mut rest = text.as_str();
            let mut found = None;
            while let Some(start) = rest.find("{{") {
                let after = &rest[start + 2..];
                let Some(end) = after.find("}}") else { break };
                let name = after[..end].trim();
                if FieldPath::resolve(input, name).is_ok() {
                    found = Some(name.to_owned());
                    break;
                }
                rest = &after[end + 2..];
            }
            found?
        }
        Json::Array(items) => return items.iter().find_map(|v| placeholder(v, input)),
        Json::Object(obj) => return obj.values().find_map(|v| placeholder(v, input)),
        _ => return None,
    };
    Some(format!(
        "{{{{{named}}}}} is not filled in in a rule: rules compare with values as written \
         (a reply's fields and an error's message fill in request fields); compare with a \
         constant, or compare two request fields in a script"
    ))
}

/// `"child": {}` descends into `child` with no tests, so it held for every request, with or
/// without `child`; it is refused with the tests that say what it most likely means.
fn empty_descent(field: &str) -> String {
    format!(
        "{{}} tests nothing in \"{field}\" (an object of field names descends into the message, \
         and an empty one held for every request, with or without it); write {{\"present\": true}} \
         for \"{field} is set\", {{\"present\": false}} for unset, or {{\"equals\": {{}}}} for set \
         and empty"
    )
}

fn compile_operator(
    op: &str,
    arg: &Json,
    parent: &MessageDescriptor,
    field: &prost_reflect::FieldDescriptor,
    path: &str,
    regexes: &mut Regexes,
) -> Result<Test> {
    let kind = field.kind();
    let is_text = matches!(kind, Kind::String) && !field.is_list() && !field.is_map();
    let is_number = !field.is_list()
        && !field.is_map()
        && matches!(
            kind,
            Kind::Int32
                | Kind::Int64
                | Kind::Uint32
                | Kind::Uint64
                | Kind::Sint32
                | Kind::Sint64
                | Kind::Fixed32
                | Kind::Fixed64
                | Kind::Sfixed32
                | Kind::Sfixed64
                | Kind::Float
                | Kind::Double
        );
    let text_arg = || {
        if !is_text {
            return err(
                path,
                format!(
                    "\"{op}\" works on string fields; \"{}\" is {}",
                    field.name(),
                    type_name(field)
                ),
            );
        }
        arg.as_str().map(str::to_owned).ok_or_else(|| {
            EntryError {
                path: path.to_owned(),
                message: format!("\"{op}\" takes a string"),
            }
            .into()
        })
    };
    let bound = |inclusive: bool| -> Result<Test> {
        if !is_number {
            return err(
                path,
                format!(
                    "\"{op}\" works on number fields; \"{}\" is {}",
                    field.name(),
                    kind_name(&kind)
                ),
            );
        }
        let n = Num::from_json(arg).ok_or_else(|| EntryError {
            path: path.to_owned(),
            message: format!("\"{op}\" takes a number"),
        })?;
        Ok(if op.starts_with('g') {
            Test::Range {
                lower: Some((n, inclusive)),
                upper: None,
            }
        } else {
            Test::Range {
                lower: None,
                upper: Some((n, inclusive)),
            }
        })
    };
    Ok(match op {
        "equals" => Test::Equals(parse_field_value(parent, field, arg.clone(), path)?),
        "in" => {
            let Json::Array(items) = arg else {
                return err(path, "\"in\" takes an array of values");
            };
            let mut problems = EntryErrors::default();
            let mut values = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                let value = parse_field_value(parent, field, item.clone(), &format!("{path}[{i}]"));
                values.extend(problems.keep(value));
            }
            return problems.or(Test::In(values));
        }
        "prefix" => Test::Prefix(text_arg()?),
        "suffix" => Test::Suffix(text_arg()?),
        "contains" => Test::Contains(text_arg()?),
        "regex" => Test::Regex(compile_regex(&text_arg()?, path, regexes)?),
        "gt" => bound(false)?,
        "gte" => bound(true)?,
        "lt" => bound(false)?,
        "lte" => bound(true)?,
        "present" => Test::Present(arg.as_bool().ok_or_else(|| EntryError {
            path: path.to_owned(),
            message: "\"present\" takes true or false".into(),
        })?),
        _ => return err(path, format!("unknown operator {op:?}")),
    })
}

/// The tests of one metadata key (`binary`: a `-bin` key); problems into `problems`, every
/// operator checked.
fn compile_metadata_test(
    test: &Json,
    binary: bool,
    path: &str,
    problems: &mut EntryErrors,
    regexes: &mut Regexes,
) -> Vec<MetadataTest> {
    match test {
        Json::String(_) => problems
            .keep(compile_metadata_operator(
                "equals", test, binary, path, regexes,
            ))
            .into_iter()
            .collect(),
        Json::Object(ops) => {
            let mut out = Vec::new();
            for (op, arg) in ops {
                let p = format!("{path}.{op}");
                let t = compile_metadata_operator(op, arg, binary, &p, regexes);
                out.extend(problems.keep(t));
            }
            out
        }
        _ => {
            problems.push(
                path,
                "a metadata test is a string or an object of operators",
            );
            Vec::new()
        }
    }
}

fn compile_metadata_operator(
    op: &str,
    arg: &Json,
    binary: bool,
    p: &str,
    regexes: &mut Regexes,
) -> Result<MetadataTest> {
    let text_of = |arg: &Json, what: &str| {
        arg.as_str().map(str::to_owned).ok_or_else(|| EntryError {
            path: p.to_owned(),
            message: what.to_owned(),
        })
    };
    let text = || text_of(arg, &format!("\"{op}\" takes a string"));
    // A `-bin` key's value to compare with, written in base64 (at `at`: an item of "in" is
    // located at itself).
    let bytes_at = |text: String, at: &str| {
        crate::metadata::decode_bin(&text).map_err(|message| EntryError {
            path: at.to_owned(),
            message,
        })
    };
    let bytes = |text: String| bytes_at(text, p);
    let list = || -> Result<Vec<String>> {
        let items = arg.as_array().ok_or_else(|| EntryError {
            path: p.to_owned(),
            message: "\"in\" takes an array of strings".into(),
        })?;
        Ok(items
            .iter()
            .map(|item| text_of(item, "\"in\" takes an array of strings"))
            .collect::<std::result::Result<_, _>>()?)
    };
    let present = || {
        arg.as_bool().ok_or_else(|| EntryError {
            path: p.to_owned(),
            message: "\"present\" takes true or false".into(),
        })
    };
    if binary {
        return Ok(MetadataTest::Bytes(match op {
            "equals" => BytesTest::Equals(bytes(text()?)?),
            "prefix" => BytesTest::Prefix(bytes(text()?)?),
            "suffix" => BytesTest::Suffix(bytes(text()?)?),
            "contains" => BytesTest::Contains(bytes(text()?)?),
            "regex" => BytesTest::Regex(compile_regex(&text()?, p, regexes)?),
            "present" => BytesTest::Present(present()?),
            "in" => BytesTest::In(
                list()?
                    .into_iter()
                    .enumerate()
                    .map(|(i, text)| bytes_at(text, &format!("{p}[{i}]")))
                    .collect::<std::result::Result<_, _>>()?,
            ),
            other => return unknown_metadata_operator(other, p),
        }));
    }
    Ok(MetadataTest::Text(match op {
        "equals" => Test::Equals(Value::String(text()?)),
        "prefix" => Test::Prefix(text()?),
        "suffix" => Test::Suffix(text()?),
        "contains" => Test::Contains(text()?),
        "regex" => Test::Regex(compile_regex(&text()?, p, regexes)?),
        "present" => Test::Present(present()?),
        "in" => Test::In(list()?.into_iter().map(Value::String).collect()),
        other => return unknown_metadata_operator(other, p),
    }))
}

fn unknown_metadata_operator<T>(op: &str, p: &str) -> Result<T> {
    err(
        p,
        format!(
            "unknown metadata operator {op:?}; use equals, in, prefix, suffix, contains, regex or present"
        ),
    )
}

fn compile_regex(pattern: &str, path: &str, regexes: &mut Regexes) -> Result<Pattern> {
    regexes.compile(pattern).map_err(|message| {
        EntryError {
            path: path.to_owned(),
            message,
        }
        .into()
    })
}

impl Test {
    /// The test on the request's value at `path`. `present` asks whether the field is set:
    /// for a field that tracks presence (a message, a proto2 or `optional` field, a oneof
    /// member) that is whether the request carries it, since reading it unset gives its
    /// default (a proto2 `[default = 7]`, a closed enum's first value), which may be anything.
    fn check_field(&self, path: &FieldPath, req: &DynamicMessage) -> bool {
        match self {
            Test::Present(want) => {
                let present = match path.last() {
                    Some(f) if f.supports_presence() => path.is_set(req),
                    _ => is_present(&path.read(req)),
                };
                present == *want
            }
            // A message the request does not carry is null in its JSON, not the message a
            // value is parsed to: `"page_size": 0` on an Int32Value holds for an explicit
            // zero only, not for every request without the field.
            Test::Equals(_) | Test::In(_) if unset_message(path, req) => false,
            _ => self.check_value(&path.read(req)),
        }
    }

    fn check_value(&self, value: &Value) -> bool {
        match self {
            Test::Equals(v) => value == v,
            Test::In(vs) => vs.iter().any(|v| v == value),
            Test::Prefix(p) => value.as_str().is_some_and(|s| s.starts_with(p.as_str())),
            Test::Suffix(p) => value.as_str().is_some_and(|s| s.ends_with(p.as_str())),
            Test::Contains(p) => value.as_str().is_some_and(|s| s.contains(p.as_str())),
            Test::Regex(r) => value.as_str().is_some_and(|s| r.is_match(s)),
            Test::Range { lower, upper } => {
                Num::of(value).is_some_and(|n| in_range(n, *lower, *upper))
            }
            Test::Present(want) => is_present(value) == *want,
        }
    }

    fn check_text(&self, value: Option<&str>) -> bool {
        match (self, value) {
            (Test::Present(want), v) => v.is_some() == *want,
            (_, None) => false,
            (Test::Equals(Value::String(s)), Some(v)) => v == s,
            (Test::In(vs), Some(v)) => vs.iter().any(|s| s.as_str() == Some(v)),
            (Test::Prefix(p), Some(v)) => v.starts_with(p.as_str()),
            (Test::Suffix(p), Some(v)) => v.ends_with(p.as_str()),
            (Test::Contains(p), Some(v)) => v.contains(p.as_str()),
            (Test::Regex(r), Some(v)) => r.is_match(v),
            _ => false,
        }
    }
}

impl Test {
    /// What the test wants, for explanations: `"bob"`, `prefix "A"`, `gte 18 and lt 65`.
    fn describe(&self, field: Option<&prost_reflect::FieldDescriptor>) -> String {
        match self {
            Test::Equals(v) => show_value(v, field),
            Test::In(vs) => one_of(vs.iter().map(|v| show_value(v, field)), vs.len()),
            Test::Prefix(p) => format!("prefix {}", quote(p)),
            Test::Suffix(p) => format!("suffix {}", quote(p)),
            Test::Contains(p) => format!("contains {}", quote(p)),
            Test::Regex(r) => format!("regex {}", quote(r.as_str())),
            Test::Range { lower, upper } => {
                let lower = lower
                    .map(|(n, inclusive)| format!("{} {n}", if inclusive { "gte" } else { "gt" }));
                let upper = upper
                    .map(|(n, inclusive)| format!("{} {n}", if inclusive { "lte" } else { "lt" }));
                lower
                    .into_iter()
                    .chain(upper)
                    .collect::<Vec<_>>()
                    .join(" and ")
            }
            Test::Present(true) => "present".into(),
            Test::Present(false) => "absent".into(),
        }
    }
}

/// A number in a range test: integers compared exactly (64-bit fields hold values past 2^53,
/// where `f64` no longer tells neighbours apart), anything with a float as `f64`.
#[derive(Debug, Clone, Copy)]
enum Num {
    Int(i128),
    Float(f64),
}

impl Num {
    /// A bound as written: a JSON number, or a number in a string (as 64-bit integers are
    /// written in the proto3 JSON mapping).
    fn from_json(arg: &Json) -> Option<Num> {
        if let Some(n) = arg.as_i64() {
            return Some(Num::Int(i128::from(n)));
        }
        if let Some(n) = arg.as_u64() {
            return Some(Num::Int(i128::from(n)));
        }
        if let Some(n) = arg.as_f64() {
            return Some(Num::Float(n));
        }
        let text = arg.as_str()?.trim();
        text.parse::<i128>().map(Num::Int).ok().or_else(|| {
            // A NaN bound would hold for nothing.
            let n = text.parse::<f64>().ok().filter(|n| !n.is_nan())?;
            Some(Num::Float(n))
        })
    }

    fn of(value: &Value) -> Option<Num> {
        Some(match value {
            Value::I32(n) => Num::Int(i128::from(*n)),
            Value::I64(n) => Num::Int(i128::from(*n)),
            Value::U32(n) => Num::Int(i128::from(*n)),
            Value::U64(n) => Num::Int(i128::from(*n)),
            Value::F32(n) => Num::Float(f64::from(*n)),
            Value::F64(n) => Num::Float(*n),
            _ => return None,
        })
    }

    fn compare(self, other: Num) -> Option<std::cmp::Ordering> {
        match (self, other) {
            (Num::Int(a), Num::Int(b)) => Some(a.cmp(&b)),
            (a, b) => a.float().partial_cmp(&b.float()),
        }
    }

    #[allow(clippy::cast_precision_loss)]
    fn float(self) -> f64 {
        match self {
            Num::Int(n) => n as f64,
            Num::Float(n) => n,
        }
    }
}

impl std::fmt::Display for Num {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Num::Int(n) => write!(f, "{n}"),
            Num::Float(n) => write!(f, "{n}"),
        }
    }
}

fn in_range(n: Num, lower: Option<(Num, bool)>, upper: Option<(Num, bool)>) -> bool {
    use std::cmp::Ordering::{Equal, Greater, Less};
    let above = lower.is_none_or(|(b, inclusive)| match n.compare(b) {
        Some(Greater) => true,
        Some(Equal) => inclusive,
        Some(Less) | None => false,
    });
    let below = upper.is_none_or(|(b, inclusive)| match n.compare(b) {
        Some(Less) => true,
        Some(Equal) => inclusive,
        Some(Greater) | None => false,
    });
    above && below
}

/// True when `path` names a singular message field the request does not carry.
fn unset_message(path: &FieldPath, req: &DynamicMessage) -> bool {
    path.last()
        .is_some_and(|f| !f.is_list() && !f.is_map() && matches!(f.kind(), Kind::Message(_)))
        && !path.is_set(req)
}

fn is_present(value: &Value) -> bool {
    match value {
        Value::Bool(b) => *b,
        Value::I32(n) => *n != 0,
        Value::I64(n) => *n != 0,
        Value::U32(n) => *n != 0,
        Value::U64(n) => *n != 0,
        Value::F32(n) => *n != 0.0,
        Value::F64(n) => *n != 0.0,
        Value::String(s) => !s.is_empty(),
        Value::Bytes(b) => !b.is_empty(),
        Value::EnumNumber(n) => *n != 0,
        Value::Message(m) => m.fields().next().is_some(),
        Value::List(l) => !l.is_empty(),
        Value::Map(m) => !m.is_empty(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn person() -> MessageDescriptor {
        let file = prost_types::FileDescriptorProto {
            name: Some("t.proto".into()),
            package: Some("t".into()),
            syntax: Some("proto3".into()),
            message_type: vec![prost_types::DescriptorProto {
                name: Some("Person".into()),
                field: vec![
                    field("name", 1, prost_types::field_descriptor_proto::Type::String),
                    field("age", 2, prost_types::field_descriptor_proto::Type::Int32),
                ],
                ..Default::default()
            }],
            ..Default::default()
        };
        let pool = prost_reflect::DescriptorPool::from_file_descriptor_set(
            prost_types::FileDescriptorSet { file: vec![file] },
        )
        .unwrap();
        pool.get_message_by_name("t.Person").unwrap()
    }

    fn field(
        name: &str,
        number: i32,
        ty: prost_types::field_descriptor_proto::Type,
    ) -> prost_types::FieldDescriptorProto {
        prost_types::FieldDescriptorProto {
            name: Some(name.into()),
            number: Some(number),
            r#type: Some(ty as i32),
            json_name: Some(name.into()),
            ..Default::default()
        }
    }

    #[test]
    fn explains_each_failing_test_and_nothing_when_it_matches() {
        let desc = person();
        let cond = Condition::compile(
            &serde_json::json!({
                "request": {"name": {"prefix": "A"}, "age": {"gte": 18, "lt": 65}},
                "metadata": {"x-user": "alice"}
            }),
            &desc,
            "when",
            &mut Regexes::default(),
        )
        .unwrap();
        let msg = DynamicMessage::deserialize(
            desc.clone(),
            serde_json::json!({"name": "bob", "age": 70}),
        )
        .unwrap();
        let md = MetadataMap::new();
        assert!(!cond.matches(&msg, &md));
        assert_eq!(
            cond.explain_fields(&msg),
            vec![
                "request.name: wanted prefix \"A\", got \"bob\"".to_owned(),
                "request.age: wanted lt 65, got 70".to_owned(),
            ]
        );
        assert_eq!(
            cond.explain_metadata(&md),
            vec!["metadata x-user: wanted \"alice\", got missing".to_owned()]
        );
        let msg = DynamicMessage::deserialize(desc, serde_json::json!({"name": "Ann", "age": 30}))
            .unwrap();
        let mut md = MetadataMap::new();
        md.insert("x-user", "alice".parse().unwrap());
        assert!(cond.matches(&msg, &md));
        assert!(cond.explain_fields(&msg).is_empty());
        assert!(cond.explain_metadata(&md).is_empty());
    }
}
