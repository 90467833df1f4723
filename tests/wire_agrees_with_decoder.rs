//! The wire reader (`echo`, wire-read `reply` templates) and the decoder (`rules`, scripts,
//! typed copies) must treat the same bytes the same way: accept and reject the same messages,
//! and read the same value for every field a template can name.
//!
//! Messages are generated from the descriptors of `tests/fixtures/wire/protos` (every scalar
//! kind, strings and bytes, enums with unknown values, nested and recursive messages, maps,
//! oneofs, proto2 groups and extensions, repeated fields packed and unpacked, repeats of
//! singular fields, unknown fields of every wire type including groups), sometimes with a wrong
//! wire type, then often mutated (bytes flipped, cut, inserted, duplicated). Random bytes are
//! checked too. `prost_reflect::DynamicMessage::decode` is the reference.
//!
//! A generated message is driven by a tape of random numbers, so proptest shrinks a failure by
//! shrinking the tape.

use std::path::PathBuf;

use proptest::prelude::*;
use prost_reflect::{DescriptorPool, DynamicMessage, Kind, MessageDescriptor, Value};
use protoserve::fieldpath::FieldPath;
use protoserve::template::TextTemplate;
use protoserve::wire;

fn pool() -> DescriptorPool {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/wire/protos");
    protoserve::schema::compile(&protoserve::schema::SchemaInputs::protos(&[dir]))
        .expect("compile wire fixtures")
        .pool
}

fn messages(pool: &DescriptorPool) -> Vec<MessageDescriptor> {
    ["wire3.All", "wire3.Inner", "wire2.Legacy"]
        .iter()
        .map(|n| pool.get_message_by_name(n).expect(n))
        .collect()
}

/// Random choices, read from the front; an exhausted tape reads zeros.
struct Tape<'a> {
    t: &'a [u64],
    i: usize,
}

impl Tape<'_> {
    fn next(&mut self) -> u64 {
        let v = self.t.get(self.i).copied().unwrap_or(0);
        self.i += 1;
        v
    }
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

fn put_varint(out: &mut Vec<u8>, v: u64) {
    prost::encoding::encode_varint(v, out);
}

fn put_key(out: &mut Vec<u8>, number: u32, wire_type: u8) {
    put_varint(out, (u64::from(number) << 3) | u64::from(wire_type));
}

fn put_len(out: &mut Vec<u8>, body: &[u8]) {
    put_varint(out, body.len() as u64);
    out.extend_from_slice(body);
}

fn varint_value(t: &mut Tape) -> u64 {
    match t.below(5) {
        0 => t.below(128),
        1 => t.below(1 << 32),
        2 => t.next(),
        3 => (-(t.below(1000) as i64)) as u64,
        _ => t.below(3),
    }
}

fn text(t: &mut Tape) -> Vec<u8> {
    const ALPHABET: [&str; 6] = ["a", "Z", " ", "é", "日本", "{}"];
    let n = t.below(6);
    let mut s = Vec::new();
    for _ in 0..n {
        s.extend_from_slice(ALPHABET[t.below(6) as usize].as_bytes());
    }
    if t.chance(4) {
        // Not UTF-8: a string field must be refused, a bytes field not.
        s.push(0xff);
    }
    s
}

fn wire_type_of(kind: &Kind) -> u8 {
    match kind {
        Kind::Double | Kind::Fixed64 | Kind::Sfixed64 => 1,
        Kind::Float | Kind::Fixed32 | Kind::Sfixed32 => 5,
        Kind::String | Kind::Bytes | Kind::Message(_) => 2,
        _ => 0,
    }
}

/// One value of wire type `wire_type` (any content that type allows).
fn put_raw(out: &mut Vec<u8>, t: &mut Tape, number: u32, wire_type: u8, depth: u32) {
    match wire_type {
        0 => put_varint(out, varint_value(t)),
        1 => out.extend_from_slice(&t.next().to_le_bytes()),
        5 => out.extend_from_slice(&(t.next() as u32).to_le_bytes()),
        2 => {
            let body = if t.chance(50) {
                text(t)
            } else {
                unknown_fields(t, depth + 1)
            };
            put_len(out, &body);
        }
        _ => {
            let body = unknown_fields(t, depth + 1);
            out.extend_from_slice(&body);
            put_key(out, number, 4);
        }
    }
}

/// Fields no descriptor declares, of every wire type.
fn unknown_fields(t: &mut Tape, depth: u32) -> Vec<u8> {
    let mut out = Vec::new();
    if depth > 4 {
        return out;
    }
    for _ in 0..t.below(3) {
        let number = [90, 91, 200, 500, (1 << 29) - 1][t.below(5) as usize];
        let wire_type = [0, 1, 2, 3, 5][t.below(5) as usize];
        put_key(&mut out, number, wire_type);
        put_raw(&mut out, t, number, wire_type, depth);
    }
    out
}

/// A value of `kind` (not a message), as sent in a field of wire type `wire_type_of(kind)`.
fn put_scalar(out: &mut Vec<u8>, t: &mut Tape, kind: &Kind) {
    match kind {
        Kind::String | Kind::Bytes => {
            let s = text(t);
            put_len(out, &s);
        }
        Kind::Enum(_) => put_varint(out, (t.below(7) as i64 - 2) as u64),
        Kind::Bool => put_varint(out, t.below(3)),
        k => match wire_type_of(k) {
            1 => out.extend_from_slice(&t.next().to_le_bytes()),
            5 => out.extend_from_slice(&(t.next() as u32).to_le_bytes()),
            _ => put_varint(out, varint_value(t)),
        },
    }
}

struct FieldInfo {
    number: u32,
    kind: Kind,
    list: bool,
    map: bool,
    group: bool,
}

fn known_fields(desc: &MessageDescriptor) -> Vec<FieldInfo> {
    let mut v: Vec<FieldInfo> = desc
        .fields()
        .map(|f| FieldInfo {
            number: f.number(),
            kind: f.kind(),
            list: f.is_list(),
            map: f.is_map(),
            group: f.is_group(),
        })
        .collect();
    v.extend(desc.extensions().map(|e| FieldInfo {
        number: e.number(),
        kind: e.kind(),
        list: e.is_list(),
        map: false,
        group: e.is_group(),
    }));
    v
}

/// A message of type `desc`: known fields in any order (repeats included), unknown fields,
/// now and then a field with the wrong wire type.
fn message(desc: &MessageDescriptor, t: &mut Tape, depth: u32) -> Vec<u8> {
    let mut out = Vec::new();
    let fields = known_fields(desc);
    let count = if depth > 3 { t.below(2) } else { t.below(7) };
    for _ in 0..count {
        if t.chance(12) {
            out.extend(unknown_fields(t, depth));
            continue;
        }
        let f = &fields[t.below(fields.len() as u64) as usize];
        if t.chance(3) {
            // Any wire type, any content: usually refused by both.
            let wire_type = [0, 1, 2, 3, 4, 5][t.below(6) as usize];
            put_key(&mut out, f.number, wire_type);
            if wire_type != 4 {
                put_raw(&mut out, t, f.number, wire_type, depth);
            }
            continue;
        }
        field(&mut out, f, t, depth);
    }
    out
}

fn field(out: &mut Vec<u8>, f: &FieldInfo, t: &mut Tape, depth: u32) {
    match &f.kind {
        Kind::Message(entry) if f.map => {
            let mut body = Vec::new();
            for _ in 0..t.below(4) {
                let which = 1 + t.below(3) as u32;
                let kf = entry.get_field(which.min(2)).unwrap();
                if which == 3 {
                    // An extra field in the entry.
                    put_key(&mut body, 3, 0);
                    put_varint(&mut body, 1);
                    continue;
                }
                put_key(&mut body, which, wire_type_of(&kf.kind()));
                match kf.kind() {
                    Kind::Message(m) => put_len(&mut body, &message(&m, t, depth + 1)),
                    k => put_scalar(&mut body, t, &k),
                }
            }
            put_key(out, f.number, 2);
            put_len(out, &body);
        }
        Kind::Message(m) if f.group => {
            put_key(out, f.number, 3);
            out.extend(message(m, t, depth + 1));
            put_key(out, f.number, 4);
        }
        Kind::Message(m) => {
            put_key(out, f.number, 2);
            let body = message(m, t, depth + 1);
            put_len(out, &body);
        }
        k if f.list && !matches!(k, Kind::String | Kind::Bytes) && t.chance(50) => {
            let mut body = Vec::new();
            for _ in 0..t.below(5) {
                put_scalar(&mut body, t, k);
            }
            put_key(out, f.number, 2);
            put_len(out, &body);
        }
        k => {
            put_key(out, f.number, wire_type_of(k));
            put_scalar(out, t, k);
        }
    }
}

fn mutate(mut bytes: Vec<u8>, t: &mut Tape) -> Vec<u8> {
    for _ in 0..t.below(3) {
        if bytes.is_empty() {
            bytes.push(t.next() as u8);
            continue;
        }
        let at = t.below(bytes.len() as u64) as usize;
        match t.below(4) {
            0 => bytes[at] ^= 1 << t.below(8),
            1 => bytes.truncate(at),
            2 => bytes.insert(at, t.next() as u8),
            _ => {
                let end = (at + 1 + t.below(6) as usize).min(bytes.len());
                let copy = bytes[at..end].to_vec();
                bytes.splice(at..at, copy);
            }
        }
    }
    bytes
}

/// Every field a text template can name: singular scalars reached through singular messages.
fn leaf_paths(desc: &MessageDescriptor, prefix: &str, depth: u32, out: &mut Vec<String>) {
    for f in desc.fields() {
        if f.is_list() || f.is_map() {
            continue;
        }
        let name = format!("{prefix}{}", f.name());
        match f.kind() {
            Kind::Message(m) => {
                if depth < 3 {
                    leaf_paths(&m, &format!("{name}."), depth + 1, out);
                }
            }
            _ => out.push(name),
        }
    }
}

struct Reader {
    text: String,
    field: FieldPath,
    path: wire::Path,
    kind: Kind,
    template: TextTemplate,
}

fn readers(desc: &MessageDescriptor) -> Vec<Reader> {
    let mut names = Vec::new();
    leaf_paths(desc, "", 0, &mut names);
    names
        .into_iter()
        .map(|text| {
            let field = FieldPath::resolve(desc, &text).unwrap();
            let path = wire::Path::from_numbers(desc, field.numbers()).unwrap();
            let kind = field.last().unwrap().kind();
            let template = TextTemplate::compile(&format!("{{{{{text}}}}}"), desc, "t").unwrap();
            Reader {
                text,
                field,
                path,
                kind,
                template,
            }
        })
        .collect()
}

fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::F32(x), Value::F32(y)) => x.to_bits() == y.to_bits(),
        (Value::F64(x), Value::F64(y)) => x.to_bits() == y.to_bits(),
        _ => a == b,
    }
}

/// The property: same verdict, and when accepted the same value for every readable field.
fn agree(desc: &MessageDescriptor, readers: &[Reader], bytes: &[u8]) -> Result<(), String> {
    let fast = wire::validate(bytes, desc);
    let decoded = DynamicMessage::decode(desc.clone(), bytes);
    let mut cost = wire::Cost::new(usize::MAX);
    let checked = wire::check(bytes, desc, &mut cost);
    if fast.is_ok() != checked.is_ok() {
        return Err(format!("validate {fast:?} but check {checked:?}"));
    }
    let msg = match (&fast, decoded) {
        (Ok(()), Ok(m)) => m,
        (Err(_), Err(_)) => return Ok(()),
        (fast, decoded) => {
            return Err(format!(
                "{}: wire reader says {fast:?}, decoder says {:?} for {bytes:02x?}",
                desc.full_name(),
                decoded.map(|_| ())
            ))
        }
    };
    for r in readers {
        let expected = r.field.read(&msg);
        match wire::read(bytes, &r.path, &r.kind) {
            Some(v) if same(&v, &expected) => {}
            None if same(
                &expected,
                &Value::default_value_for_field(r.field.last().unwrap()),
            ) => {}
            got => {
                return Err(format!(
                    "{}.{}: wire reads {got:?}, decoder {expected:?} for {bytes:02x?}",
                    desc.full_name(),
                    r.text
                ))
            }
        }
        let mut wire_text = String::new();
        r.template.render_wire_into(bytes, &mut wire_text);
        let decoded_text = r.template.render(&msg);
        if wire_text != decoded_text {
            return Err(format!(
                "{}.{}: template renders {wire_text:?} from the wire, {decoded_text:?} decoded, for {bytes:02x?}",
                desc.full_name(),
                r.text
            ));
        }
    }
    Ok(())
}

struct Fixture {
    descs: Vec<MessageDescriptor>,
    readers: Vec<Vec<Reader>>,
}

fn fixture() -> &'static Fixture {
    static F: std::sync::OnceLock<Fixture> = std::sync::OnceLock::new();
    F.get_or_init(|| {
        let pool = pool();
        let descs = messages(&pool);
        let readers = descs.iter().map(readers).collect();
        Fixture { descs, readers }
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn generated_messages_read_the_same(which in 0usize..3, tape in prop::collection::vec(any::<u64>(), 0..300)) {
        let f = fixture();
        let mut t = Tape { t: &tape, i: 0 };
        let bytes = message(&f.descs[which], &mut t, 0);
        agree(&f.descs[which], &f.readers[which], &bytes).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn mutated_messages_get_the_same_verdict(which in 0usize..3, tape in prop::collection::vec(any::<u64>(), 0..300)) {
        let f = fixture();
        let mut t = Tape { t: &tape, i: 0 };
        let bytes = message(&f.descs[which], &mut t, 0);
        let bytes = mutate(bytes, &mut t);
        agree(&f.descs[which], &f.readers[which], &bytes).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn random_bytes_get_the_same_verdict(which in 0usize..3, bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        let f = fixture();
        agree(&f.descs[which], &f.readers[which], &bytes).map_err(TestCaseError::fail)?;
    }
}

/// Cases worth keeping whatever the generator does.
#[test]
fn known_edge_cases_read_the_same() {
    let f = fixture();
    let all = 0;
    let legacy = 2;
    let cases: &[(usize, &[u8])] = &[
        // a = "x", then n = 5: the oneof keeps n; a reads "".
        (all, &[0x9a, 0x01, 1, b'x', 0xa0, 0x01, 5]),
        // m = {x: 1}, n = 2, m = {label: "l"}: m was cleared, so m.x reads 0.
        (
            all,
            &[
                0xaa, 0x01, 2, 0x08, 1, 0xa0, 0x01, 2, 0xaa, 0x01, 3, 0x12, 1, b'l',
            ],
        ),
        // inner = {z: 3}, inner = {raw: ""}: the inner oneof keeps raw; inner.z reads 0.
        (all, &[0x8a, 0x01, 2, 0x20, 3, 0x8a, 0x01, 2, 0x2a, 0]),
        // An unknown group (field 90) with a nested unknown group inside.
        (
            all,
            &[
                0xd3, 0x05, 0xdb, 0x05, 0x08, 1, 0xdc, 0x05, 0xd4, 0x05, 0x08, 9,
            ],
        ),
        // An unknown group ended by another field's end key.
        (all, &[0xd3, 0x05, 0xdc, 0x05]),
        // A key over 32 bits.
        (all, &[0x80, 0x80, 0x80, 0x80, 0x10, 0]),
        // A map field sent with wire type 0: the decoder reads an entry anyway.
        (all, &[0xd8, 0x01, 2, 0x10, 7]),
        // Packed and unpacked occurrences of one repeated field.
        (all, &[0xb2, 0x01, 2, 1, 2, 0xb0, 0x01, 3]),
        // A proto2 group field, and its member read through it.
        (legacy, &[0x1b, 0x22, 1, b'u', 0x28, 4, 0x1c, 0x08, 3]),
        // An extension with the wrong wire type.
        (legacy, &[0xa5, 0x06, 1, 2, 3, 4]),
        // A closed enum with a value it does not declare.
        (legacy, &[0x50, 9]),
    ];
    for (which, bytes) in cases {
        agree(&f.descs[*which], &f.readers[*which], bytes).unwrap();
    }
}

/// Nesting right at the decoder's limit and one past it.
#[test]
fn nesting_limit_is_the_decoders() {
    let f = fixture();
    let inner = &f.descs[1];
    for depth in [99usize, 100, 101] {
        // next = {next = {... {x: 1}}}, `depth` levels below the top.
        let mut body = vec![0x08, 1];
        for _ in 0..depth {
            let mut outer = vec![0x1a];
            put_len(&mut outer, &body);
            body = outer;
        }
        agree(inner, &f.readers[1], &body).unwrap();
        // The same with an unknown group at the bottom instead of a field.
        let mut body = vec![0xd3, 0x05, 0xd4, 0x05];
        for _ in 0..depth {
            let mut outer = vec![0x1a];
            put_len(&mut outer, &body);
            body = outer;
        }
        agree(inner, &f.readers[1], &body).unwrap();
    }
}
