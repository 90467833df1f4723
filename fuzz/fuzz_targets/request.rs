//! Arbitrary request bytes through everything that reads them.
//!
//! The first byte picks a message type, the rest is the request. For each input:
//! - the codec's decoder (`Incoming::decode`, with a small budget so the cost walk runs) must
//!   answer without panicking;
//! - the wire reader must accept exactly what `DynamicMessage::decode` accepts, and read the
//!   same value of every field a template can name;
//! - decoding must allocate no more than the wire reader's estimate (a counting allocator
//!   measures the peak), or the memory bound of `--max-message-size` would not hold;
//! - reply templates must render the same response from the wire as from the decoded message;
//! - the decoded message converted to Lua and back must be the same message (unknown fields
//!   and proto2 extensions aside, which scripts never see).

#![no_main]

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use prost_reflect::{DynamicMessage, Kind, MessageDescriptor, Value};
use protoserve::codec::{Incoming, Outgoing};
use protoserve::fieldpath::FieldPath;
use protoserve::script::convert::{message_to_lua, outgoing_from_lua};
use protoserve::template::{ReplyTemplate, TextTemplate};
use protoserve::wire;
use serde_json::json;

/// Counts live heap bytes and their peak, to hold decoding to its estimate.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(size: usize) {
    let live = LIVE.fetch_add(size, Ordering::Relaxed) + size;
    PEAK.fetch_max(live, Ordering::Relaxed);
}

// SAFETY: every call is passed straight to the system allocator; only counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        grew(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        grew(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // Counted as a move: the new block is live before the old one is freed.
        grew(new_size);
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Heap the decoder may use beyond the estimate: the shared handle of the request buffer.
const SLACK: usize = 256;

struct Reader {
    text: String,
    field: FieldPath,
    path: wire::Path,
    kind: Kind,
    template: TextTemplate,
}

struct Subject {
    desc: MessageDescriptor,
    readers: Vec<Reader>,
    replies: Vec<ReplyTemplate>,
}

fn leaf_paths(desc: &MessageDescriptor, prefix: &str, depth: u32, out: &mut Vec<String>) {
    for f in desc.fields() {
        if f.is_list() || f.is_map() {
            continue;
        }
        let name = format!("{prefix}{}", f.name());
        match f.kind() {
            Kind::Message(m) if depth < 3 => leaf_paths(&m, &format!("{name}."), depth + 1, out),
            Kind::Message(_) => {}
            _ => out.push(name),
        }
    }
}

fn subjects() -> &'static [Subject] {
    static S: OnceLock<Vec<Subject>> = OnceLock::new();
    S.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures");
        let pool = protoserve::schema::compile(&protoserve::schema::SchemaInputs::protos(&[
            root.join("wire/protos"),
            root.join("protos"),
        ]))
        .expect("fixture protos compile")
        .pool;
        let msg = |n: &str| pool.get_message_by_name(n).expect(n);
        let reply = |input: &str, output: &str, json: serde_json::Value| {
            ReplyTemplate::compile(&json, &msg(input), &msg(output), "fuzz").expect("template")
        };
        let all_text = "{{a}}|{{n}}|{{m.x}}|{{m.next.label}}|{{inner.label}}|{{inner.z}}|{{inner.raw}}|{{s}}|{{by}}|{{i32}}|{{i64}}|{{u32}}|{{u64}}|{{s32}}|{{s64}}|{{f32}}|{{f64}}|{{sf32}}|{{sf64}}|{{fl}}|{{db}}|{{b}}|{{color}}|{{opt}}";
        let mut subjects = vec![
            (
                "wire3.All",
                vec![
                    reply("wire3.All", "wire3.Out", json!({ "text": all_text, "count": 3 })),
                    reply("wire3.All", "wire3.Out", json!({ "text": "{{s}}", "count": "{{i64}}" })),
                    reply("wire3.All", "wire3.All", json!("{{.}}")),
                    reply("wire3.All", "wire3.Inner", json!("{{m}}")),
                    reply(
                        "wire3.All",
                        "wire3.All",
                        json!({ "inner": "{{m}}", "names": ["{{a}}", "{{names}}"], "counts": "{{counts}}",
                                "packed_i32": "{{packed_i32}}", "by_id": "{{by_id}}", "fl": "{{db}}", "i32": "{{u64}}" }),
                    ),
                ],
            ),
            ("wire3.Inner", vec![]),
            (
                "wire2.Legacy",
                vec![reply(
                    "wire2.Legacy",
                    "wire2.Legacy",
                    json!({ "name": "{{result.url}}|{{result.rank}}|{{id}}|{{name}}|{{color}}|{{child.child.id}}" }),
                )],
            ),
            (
                "kitchen.Query",
                vec![reply(
                    "kitchen.Query",
                    "kitchen.Item",
                    json!({ "id": "item-{{id}}", "count": "{{limit}}", "color": "{{color}}",
                            "tags": ["fixed", "{{name}}", "{{tags}}"], "attrs": { "limit": "{{limit}}", "one": 1 },
                            "inner": "{{inner}}", "inners": [{ "x": 7, "label": "{{inner.label}}" }],
                            "a": "{{inner.x}} of {{name}}" }),
                )],
            ),
            ("kitchen.Item", vec![]),
        ];
        subjects
            .drain(..)
            .map(|(name, replies)| {
                let desc = msg(name);
                let mut names = Vec::new();
                leaf_paths(&desc, "", 0, &mut names);
                let readers = names
                    .into_iter()
                    .map(|text| {
                        let field = FieldPath::resolve(&desc, &text).unwrap();
                        let path = wire::Path::from_numbers(&desc, field.numbers()).unwrap();
                        let kind = field.last().unwrap().kind();
                        let template =
                            TextTemplate::compile(&format!("{{{{{text}}}}}"), &desc, "t").unwrap();
                        Reader {
                            text,
                            field,
                            path,
                            kind,
                            template,
                        }
                    })
                    .collect();
                Subject {
                    desc,
                    readers,
                    replies,
                }
            })
            .collect()
    })
}

fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::F32(x), Value::F32(y)) => x.to_bits() == y.to_bits(),
        (Value::F64(x), Value::F64(y)) => x.to_bits() == y.to_bits(),
        _ => a == b,
    }
}

fn encoded(o: Outgoing) -> Bytes {
    match o {
        Outgoing::Encoded(b) => b,
        Outgoing::Message(m) => Bytes::from(prost::Message::encode_to_vec(&m)),
    }
}

/// `json` without extension fields (`"[package.name]"` keys): scripts see declared fields only.
fn without_extensions(json: serde_json::Value) -> serde_json::Value {
    match json {
        serde_json::Value::Object(o) => o
            .into_iter()
            .filter(|(k, _)| !k.starts_with('['))
            .map(|(k, v)| (k, without_extensions(v)))
            .collect(),
        serde_json::Value::Array(a) => a.into_iter().map(without_extensions).collect(),
        other => other,
    }
}

thread_local! {
    static LUA: mlua::Lua = mlua::Lua::new();
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, bytes)) = data.split_first() else {
        return;
    };
    let subjects = subjects();
    let s = &subjects[usize::from(which) % subjects.len()];
    let buf = Bytes::copy_from_slice(bytes);

    // The codec's decoder, with a budget small enough that the cost walk runs and refuses.
    let _ = Incoming::new(buf.clone(), s.desc.clone())
        .with_budget(16 * 1024)
        .decode();

    // Reads of unvalidated bytes must not panic either.
    for r in &s.readers {
        let _ = wire::find(bytes, &r.path);
    }

    let fast = wire::validate(bytes, &s.desc);
    let mut cost = wire::Cost::new(usize::MAX);
    let checked = wire::check(bytes, &s.desc, &mut cost);
    assert_eq!(fast.is_ok(), checked.is_ok(), "validate and check disagree");

    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let decoded = DynamicMessage::decode(s.desc.clone(), buf.clone());
    let used = PEAK.load(Ordering::Relaxed) - base;
    let msg = match (&fast, decoded) {
        (Ok(()), Ok(m)) => m,
        (Err(_), Err(_)) => return,
        (fast, decoded) => panic!(
            "{}: wire reader says {fast:?}, decoder says {:?}",
            s.desc.full_name(),
            decoded.map(|_| ())
        ),
    };
    assert!(
        used <= cost.spent() + SLACK,
        "decoding {} bytes took {used} bytes of heap, estimated {}",
        bytes.len(),
        cost.spent()
    );

    for r in &s.readers {
        let expected = r.field.read(&msg);
        match wire::read(bytes, &r.path, &r.kind) {
            Some(v) if same(&v, &expected) => {}
            None if same(&expected, &Value::default_value_for_field(r.field.last().unwrap())) => {}
            got => panic!("{}: wire reads {got:?}, decoder {expected:?}", r.text),
        }
        let mut wire_text = String::new();
        r.template.render_wire_into(bytes, &mut wire_text, usize::MAX);
        assert_eq!(
            Some(wire_text),
            r.template.render(&msg, usize::MAX),
            "{}",
            r.text
        );
    }

    for t in &s.replies {
        let rendered = t.render(&msg, usize::MAX);
        if t.reads_wire() {
            let from_wire = encoded(t.render_wire(bytes, usize::MAX).expect("renders"));
            let rendered = encoded(rendered.expect("a text reply renders"));
            assert_eq!(from_wire, rendered, "reply from the wire differs");
        }
    }

    LUA.with(|lua| {
        let table = message_to_lua(lua, &msg).expect("message to Lua");
        let back = outgoing_from_lua(&mlua::Value::Table(table), &s.desc)
            .unwrap_or_else(|e| panic!("a decoded message does not convert back: {e}"));
        let back = DynamicMessage::decode(s.desc.clone(), encoded(back)).expect("re-decodes");
        assert_eq!(
            serde_json::to_value(&back).ok(),
            serde_json::to_value(&msg).ok().map(without_extensions),
            "Lua round trip changed the message"
        );
    });
});
