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

#[path = "common/wire_gen.rs"]
mod wire_gen;

use proptest::prelude::*;
use prost_reflect::{DynamicMessage, Kind, MessageDescriptor, Value};
use protoserve::fieldpath::FieldPath;
use protoserve::template::TextTemplate;
use protoserve::wire;
use wire_gen::{message, messages, mutate, pool, put_len, Tape};

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
    // Checking in place with steps to spare gives the same verdict; with too few, it gives
    // none at all, never another one.
    let in_place = wire::validate_in_place(bytes, desc, usize::MAX / 2);
    if in_place != fast.clone().map(|()| true) {
        return Err(format!("validate {fast:?} but in place {in_place:?}"));
    }
    for steps in [0, 1, 3, bytes.len() / 4] {
        match wire::validate_in_place(bytes, desc, steps) {
            Ok(false) => {}
            other if other == fast.clone().map(|()| true) => {}
            other => {
                return Err(format!(
                    "validate {fast:?} but in place with {steps} steps {other:?}"
                ))
            }
        }
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
        r.template
            .render_wire_into(bytes, &mut wire_text, usize::MAX);
        let decoded_text = r.template.render(&msg, usize::MAX).unwrap_or_default();
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
