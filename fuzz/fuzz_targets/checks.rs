//! What the fuzz target `request` checks on one input, in one place for two users: the target
//! itself (`fuzz/fuzz_targets/request.rs`) and `tests/fuzz_checks.rs`, which runs the same
//! checks over a seeded set of inputs on every `cargo test`. The fuzz crate is outside the
//! server's workspace, so without that test nothing would build this code against the current
//! API, and it would stop compiling unnoticed.
//!
//! The first byte of an input picks a message type, the rest is the request. For each input:
//! - the codec's decoder (`Incoming::decode`, with a small budget so the cost walk runs) must
//!   answer without panicking, and so must every wire read of the unvalidated bytes;
//! - the wire reader (`wire::validate`, `wire::check`) must accept exactly what
//!   `DynamicMessage::decode` accepts, and read the same value of every field a template can
//!   name;
//! - decoding must allocate no more than the wire reader's estimate (a counting allocator
//!   measures the peak), or the memory bound of `--max-message-size` would not hold;
//! - text templates and reply templates must render the same from the wire as from the decoded
//!   message;
//! - the script decoder (bytes straight into Lua tables, `script::decode`) must accept exactly
//!   what `DynamicMessage::decode` accepts, and its tables, sent back as a reply
//!   (`outgoing_from_lua`), must encode the message that was decoded (unknown fields and
//!   proto2 extensions aside, which scripts never see).
//!
//! Including this file installs a counting global allocator in the including crate.

use std::alloc::{GlobalAlloc, Layout as AllocLayout, System};
use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use mlua::{Function, Lua, Value as LuaValue};
use prost_reflect::{DynamicMessage, Kind, MessageDescriptor, ReflectMessage, Value};
use protoserve::codec::{Incoming, Outgoing};
use protoserve::fieldpath::FieldPath;
use protoserve::handler::reply::ReplyTemplate;
use protoserve::script::convert::{outgoing_from_lua, Conv};
use protoserve::script::decode::{Decoder, Layout};
use protoserve::script::plan::{MsgId, Plans};
use protoserve::template::TextTemplate;
use protoserve::wire;
use serde_json::json;

/// Heap bytes live and their peak, counted on one thread while [`measured`] runs.
#[derive(Clone, Copy)]
struct Count {
    live: isize,
    peak: isize,
}

thread_local! {
    /// `None` when not measuring. Per thread, so allocations of other threads (the test
    /// harness, say) do not count.
    static COUNT: Cell<Option<Count>> = const { Cell::new(None) };
}

fn counted(delta: isize) {
    let _ = COUNT.try_with(|c| {
        if let Some(mut n) = c.get() {
            n.live += delta;
            n.peak = n.peak.max(n.live);
            c.set(Some(n));
        }
    });
}

/// The peak of heap bytes `f` held at once (beyond what was live before), with its result.
fn measured<T>(f: impl FnOnce() -> T) -> (T, usize) {
    COUNT.with(|c| c.set(Some(Count { live: 0, peak: 0 })));
    let out = f();
    let peak = COUNT.with(|c| c.replace(None)).map_or(0, |n| n.peak);
    (out, usize::try_from(peak).unwrap_or(0))
}

/// Passes every call to the system allocator and counts the sizes.
struct Counting;

// SAFETY: every call is passed straight to the system allocator; only counters are added, in a
// thread-local that needs no allocation.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: AllocLayout) -> *mut u8 {
        counted(layout.size() as isize);
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: AllocLayout) -> *mut u8 {
        counted(layout.size() as isize);
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: AllocLayout) {
        counted(-(layout.size() as isize));
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: AllocLayout, new_size: usize) -> *mut u8 {
        // Counted as a move: the new block is live before the old one is freed.
        counted(new_size as isize);
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        counted(-(layout.size() as isize));
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Heap the decoder may use beyond the estimate: the shared handle of the request buffer.
const SLACK: usize = 256;

/// The reply size limit of the Lua state (a script's reply larger than this is refused).
const SCRIPT_REPLY_LIMIT: usize = 64 << 20;

/// One field a text template can name, read every way there is.
struct Reader {
    text: String,
    field: FieldPath,
    path: wire::Path,
    kind: Kind,
    template: TextTemplate,
}

/// A request type and what reads it.
pub struct Subject {
    pub desc: MessageDescriptor,
    readers: Vec<Reader>,
    replies: Vec<ReplyTemplate>,
}

/// What became of an input that passed every check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A well-formed request: every check ran.
    Accepted,
    /// Refused alike by every reader; the checks that need a message had none.
    Refused,
    /// No first byte, so no message type.
    Empty,
}

/// Every field a text template can name: singular scalars reached through singular messages.
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

/// `tests/fixtures` of the repository, from the manifest of whichever crate includes this.
fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .map(|dir| dir.join("tests/fixtures"))
        .find(|dir| dir.join("wire/protos").is_dir())
        .expect("tests/fixtures of the repository")
}

/// The request types inputs choose from, by their first byte.
pub fn subjects() -> &'static [Subject] {
    static S: OnceLock<Vec<Subject>> = OnceLock::new();
    S.get_or_init(|| {
        let root = fixtures();
        let pool = protoserve::schema::compile(&protoserve::schema::SchemaInputs::protos(&[
            root.join("wire/protos"),
            root.join("protos"),
        ]))
        .expect("fixture protos compile")
        .pool;
        let msg = |n: &str| pool.get_message_by_name(n).expect(n);
        let reply = |input: &str, output: &str, json: serde_json::Value| {
            ReplyTemplate::compile(&json, &msg(input), &msg(output), "fuzz")
                .unwrap_or_else(|e| panic!("template {json}: {e:?}"))
        };
        let all_text = "{{a}}|{{n}}|{{m.x}}|{{m.next.label}}|{{inner.label}}|{{inner.z}}|{{inner.raw}}|{{s}}|{{by}}|{{i32}}|{{i64}}|{{u32}}|{{u64}}|{{s32}}|{{s64}}|{{f32}}|{{f64}}|{{sf32}}|{{sf64}}|{{fl}}|{{db}}|{{b}}|{{color}}|{{opt}}";
        let subjects = vec![
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
            .into_iter()
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

/// A Lua state set up as a script worker's is: the subjects' plans as its app data, and per
/// subject the request layouts with their builders.
struct Scripts {
    lua: Lua,
    plans: Arc<Plans>,
    ids: Vec<MsgId>,
    /// Per subject: (what the layout is, the layout, its builder).
    layouts: Vec<Vec<(&'static str, Layout, Function)>>,
}

impl Scripts {
    fn new(subjects: &[Subject]) -> Self {
        let lua = Lua::new();
        let mut plans = Plans::default();
        let ids: Vec<MsgId> = subjects.iter().map(|s| plans.add(&s.desc)).collect();
        let layouts: Vec<Vec<(&'static str, Layout)>> = ids
            .iter()
            .map(|&id| {
                vec![
                    // The one the server uses.
                    ("default layout", Layout::new(&plans, id)),
                    // Every table built in Rust, the path for very wide or deep messages.
                    ("all built in Rust", Layout::with_limits(&plans, id, 0, 0)),
                ]
            })
            .collect();
        let plans = Arc::new(plans);
        lua.set_app_data(Conv::new(plans.clone(), SCRIPT_REPLY_LIMIT));
        let layouts = layouts
            .into_iter()
            .map(|v| {
                v.into_iter()
                    .map(|(what, layout)| {
                        let builder = layout.compile(&lua, &plans).expect("builder compiles");
                        (what, layout, builder)
                    })
                    .collect()
            })
            .collect();
        Self {
            lua,
            plans,
            ids,
            layouts,
        }
    }

    /// `bytes` as a script receives them: the layout's slots, then its builder's table.
    fn request(
        &self,
        layout: &Layout,
        builder: &Function,
        bytes: &[u8],
    ) -> Result<LuaValue, String> {
        let decoder = Decoder::new(&self.lua, &self.plans);
        let mut args = vec![LuaValue::Boolean(true)];
        decoder
            .slots(bytes, layout, &mut args)
            .map_err(|e| format!("{e:?}"))?;
        drop(decoder);
        builder
            .call::<LuaValue>(mlua::MultiValue::from_vec(args))
            .map_err(|e| format!("the builder failed: {e}"))
    }
}

thread_local! {
    static SCRIPTS: Scripts = Scripts::new(subjects());
}

fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::F32(x), Value::F32(y)) => x.to_bits() == y.to_bits(),
        (Value::F64(x), Value::F64(y)) => x.to_bits() == y.to_bits(),
        _ => a == b,
    }
}

/// `back` holds the declared fields of `sent` (unknown fields and extensions are not
/// compared), floats bit for bit. Lua numbers are doubles, so a float's signalling NaN comes
/// back quiet, as any f32 → f64 → f32 conversion makes it.
fn same_declared(sent: &Value, back: &Value) -> bool {
    match (sent, back) {
        (Value::F32(x), Value::F32(y)) => (f64::from(*x) as f32).to_bits() == y.to_bits(),
        (Value::F64(x), Value::F64(y)) => x.to_bits() == y.to_bits(),
        (Value::Message(x), Value::Message(y)) => same_declared_message(x, y),
        (Value::List(x), Value::List(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same_declared(a, b))
        }
        (Value::Map(x), Value::Map(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_declared(v, w)))
        }
        _ => sent == back,
    }
}

fn same_declared_message(sent: &DynamicMessage, back: &DynamicMessage) -> bool {
    sent.descriptor().fields().all(|f| {
        let set = sent.has_field(&f);
        set == back.has_field(&f)
            && (!set || same_declared(&sent.get_field(&f), &back.get_field(&f)))
    })
}

fn encoded(o: Outgoing) -> Bytes {
    match o {
        Outgoing::Encoded(b) => b,
        Outgoing::Message(m) => Bytes::from(prost::Message::encode_to_vec(&m)),
    }
}

/// Every check on one input (see the module documentation); `Err` says which failed. A bug
/// may also panic, which the caller treats as a failure too.
pub fn check(data: &[u8]) -> Result<Verdict, String> {
    let Some((&which, bytes)) = data.split_first() else {
        return Ok(Verdict::Empty);
    };
    let subject = usize::from(which) % subjects().len();
    let s = &subjects()[subject];
    let name = s.desc.full_name();
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
    if fast.is_ok() != checked.is_ok() {
        return Err(format!(
            "{name}: validate says {fast:?}, check says {checked:?}"
        ));
    }

    let (decoded, used) = measured(|| DynamicMessage::decode(s.desc.clone(), buf.clone()));
    if fast.is_ok() != decoded.is_ok() {
        return Err(format!(
            "{name}: the wire reader says {fast:?}, the decoder says {:?}",
            decoded.map(|_| ())
        ));
    }
    lua_round_trip(subject, bytes, decoded.as_ref().ok())?;
    let Ok(msg) = decoded else {
        return Ok(Verdict::Refused);
    };
    if used > cost.spent() + SLACK {
        return Err(format!(
            "{name}: decoding {} bytes took {used} bytes of heap, estimated {}",
            bytes.len(),
            cost.spent()
        ));
    }

    for r in &s.readers {
        let expected = r.field.read(&msg);
        match wire::read(bytes, &r.path, &r.kind) {
            Some(v) if same(&v, &expected) => {}
            None if same(
                &expected,
                &Value::default_value_for_field(r.field.last().unwrap()),
            ) => {}
            got => {
                return Err(format!(
                    "{name}.{}: the wire reads {got:?}, the decoder {expected:?}",
                    r.text
                ))
            }
        }
        let mut from_wire = String::new();
        let fits = r
            .template
            .render_wire_into(bytes, &mut from_wire, usize::MAX);
        let from_message = r.template.render(&msg, usize::MAX);
        if !fits || Some(&from_wire) != from_message.as_ref() {
            return Err(format!(
                "{name}.{}: the template renders {from_wire:?} from the wire (fits: {fits}), {from_message:?} from the message",
                r.text
            ));
        }
    }

    for (i, t) in s.replies.iter().enumerate() {
        let rendered = t.render(&msg, usize::MAX);
        if t.reads_wire() {
            let from_wire = t
                .render_wire(bytes, usize::MAX)
                .map_err(|e| format!("{name}: reply {i} does not render from the wire: {e:?}"))?;
            let rendered =
                rendered.map_err(|e| format!("{name}: text reply {i} does not render: {e:?}"))?;
            let (from_wire, rendered) = (encoded(from_wire), encoded(rendered));
            if from_wire != rendered {
                return Err(format!(
                    "{name}: reply {i} renders {from_wire:02x?} from the wire, {rendered:02x?} from the message"
                ));
            }
        }
    }
    Ok(Verdict::Accepted)
}

/// The script decoder must accept what the decoder accepted (`decoded`) and refuse the rest;
/// an accepted request, sent back as a reply, must encode `decoded`.
fn lua_round_trip(
    subject: usize,
    bytes: &[u8],
    decoded: Option<&DynamicMessage>,
) -> Result<(), String> {
    let desc = &subjects()[subject].desc;
    let name = desc.full_name();
    SCRIPTS.with(|scripts| {
        for (what, layout, builder) in &scripts.layouts[subject] {
            let table = scripts.request(layout, builder, bytes);
            let (table, msg) = match (table, decoded) {
                (Ok(t), Some(m)) => (t, m),
                (Err(_), None) => continue,
                (table, _) => {
                    return Err(format!(
                        "{name} ({what}): the script decoder says {:?}, the decoder says {}",
                        table.map(|_| ()),
                        if decoded.is_some() { "Ok" } else { "Err" }
                    ))
                }
            };
            let reply = outgoing_from_lua(&scripts.lua, &table, scripts.ids[subject]).map_err(
                |e| format!("{name} ({what}): a decoded request does not convert back: {e}"),
            )?;
            let reply = encoded(reply);
            let back = DynamicMessage::decode(desc.clone(), reply.clone()).map_err(|e| {
                format!("{name} ({what}): the reply {reply:02x?} does not decode: {e}")
            })?;
            if !same_declared_message(msg, &back) {
                // Bytes, not `{:?}` of the messages: a deep message's debug text overflows the
                // stack.
                return Err(format!(
                    "{name} ({what}): the Lua round trip changed the message: sent back as {:02x?}, decoded {:02x?}",
                    reply.as_ref(),
                    prost::Message::encode_to_vec(msg)
                ));
            }
        }
        Ok(())
    })
}
