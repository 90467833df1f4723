//! Reading a request's protobuf bytes directly, as far as a handler needs them.
//!
//! A `reply` that only interpolates a few scalar fields, or an `echo`, has no use for a fully
//! built `DynamicMessage`: [`validate`] checks the bytes are a well-formed message of the input
//! type (so bad requests still get INVALID_ARGUMENT) without allocating, and [`find`] picks one
//! field's value out along a [`Path`] resolved at startup.
//!
//! Every handler kind must treat the same bytes the same way, and the handlers that need the
//! whole message decode it with `prost_reflect::DynamicMessage::decode`. So this reader follows
//! that decoder rule for rule rather than the letter of the protobuf spec where the two differ:
//! the same keys are valid (numbers 1 to 2^29-1), groups (wire types 3 and 4) are skipped when
//! unknown and read when the field is a proto2 group, extensions are known fields, packed and
//! unpacked encodings are both accepted for packable lists, nesting counts against the same
//! limit of 100, a map field's entry is length-prefixed whatever wire type its key says, and a
//! member of a oneof clears the other members set before it. The property tests in
//! `tests/wire_agrees_with_decoder.rs` hold the two to that.
//!
//! [`check`] is the same walk, also adding up what decoding the message would allocate, so a
//! small request cannot make a large `DynamicMessage` (see [`Cost`]).

use prost::encoding::decode_varint;
use prost_reflect::{
    ExtensionDescriptor, FieldDescriptor, Kind, MapKey, MessageDescriptor, UnknownField, Value,
};

/// Nesting the decoder accepts (prost's recursion limit).
pub const RECURSION_LIMIT: u32 = 100;

/// Wire types.
const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const START_GROUP: u8 = 3;
const END_GROUP: u8 = 4;
const FIXED32: u8 = 5;

/// One field's raw value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Raw<'a> {
    Varint(u64),
    Fixed64(u64),
    Fixed32(u32),
    Len(&'a [u8]),
    /// The fields between a start-group key and its end-group key.
    Group(&'a [u8]),
}

/// Why bytes were refused.
#[derive(Debug, Clone, PartialEq)]
pub enum Invalid {
    /// Not a well-formed message of the type (INVALID_ARGUMENT).
    Malformed(String),
    /// Well-formed, but decoding it would take more memory than allowed (RESOURCE_EXHAUSTED).
    TooCostly {
        /// The field whose elements pushed the estimate over the budget.
        field: String,
        /// Estimated bytes of the decoded message when the budget was crossed.
        cost: usize,
        budget: usize,
    },
}

impl From<String> for Invalid {
    fn from(message: String) -> Self {
        Invalid::Malformed(message)
    }
}

impl From<&str> for Invalid {
    fn from(message: &str) -> Self {
        Invalid::Malformed(message.to_owned())
    }
}

type Result<T> = std::result::Result<T, Invalid>;

/// Reads a field key as prost does: the whole key must fit 32 bits, the number must not be 0.
#[inline(always)]
pub fn key(buf: &mut &[u8]) -> Result<(u32, u8)> {
    let key = varint(buf)?;
    let key = u32::try_from(key).map_err(|_| format!("invalid field key {key}"))?;
    let number = key >> 3;
    if number == 0 {
        return Err("field number 0".into());
    }
    let wire_type = (key & 7) as u8;
    if wire_type > FIXED32 {
        return Err(format!("field {number} has invalid wire type {wire_type}").into());
    }
    Ok((number, wire_type))
}

/// A varint; one byte long (field keys, small numbers, short lengths), it is read here
/// rather than through prost's `Buf`-generic decoder.
#[inline(always)]
pub fn varint(buf: &mut &[u8]) -> Result<u64> {
    if let Some((&byte, rest)) = buf.split_first() {
        if byte < 0x80 {
            *buf = rest;
            return Ok(u64::from(byte));
        }
    }
    decode_varint(buf).map_err(|_| Invalid::Malformed("invalid varint".into()))
}

#[inline(always)]
fn take<'a>(buf: &mut &'a [u8], n: usize) -> Result<&'a [u8]> {
    if buf.len() < n {
        return Err("the message is truncated".into());
    }
    let (head, rest) = buf.split_at(n);
    *buf = rest;
    Ok(head)
}

#[inline(always)]
pub fn len_prefixed<'a>(buf: &mut &'a [u8]) -> Result<&'a [u8]> {
    let len = varint(buf)?;
    match usize::try_from(len) {
        Ok(len) => take(buf, len),
        Err(_) => Err("the message is truncated".into()),
    }
}

#[inline(always)]
pub fn fixed32(buf: &mut &[u8]) -> Result<u32> {
    let b = take(buf, 4)?;
    Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

#[inline(always)]
pub fn fixed64(buf: &mut &[u8]) -> Result<u64> {
    let b = take(buf, 8)?;
    Ok(u64::from_le_bytes([
        b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7],
    ]))
}

/// Reads the value of a field with `wire_type` off the front of `buf`. A group is read up to
/// its end-group key, which must carry the same `number`; its body's nesting is not limited
/// here (callers that need the limit walk the body themselves).
#[inline(always)]
fn value<'a>(buf: &mut &'a [u8], number: u32, wire_type: u8) -> Result<Raw<'a>> {
    Ok(match wire_type {
        VARINT => Raw::Varint(varint(buf)?),
        FIXED64 => Raw::Fixed64(fixed64(buf)?),
        FIXED32 => Raw::Fixed32(fixed32(buf)?),
        LEN => Raw::Len(len_prefixed(buf)?),
        START_GROUP => {
            let start = *buf;
            skip_group_body(buf, number, RECURSION_LIMIT)?;
            // The body is what was consumed, less the end-group key.
            let consumed = start.len() - buf.len();
            let end_key_len = prost::encoding::key_len(number);
            Raw::Group(&start[..consumed - end_key_len])
        }
        _ => return Err(format!("field {number} ends a group that was not started").into()),
    })
}

/// Skips fields up to and including the end-group key of `number`.
fn skip_group_body(buf: &mut &[u8], number: u32, ctx: u32) -> Result<()> {
    loop {
        let (inner, wire_type) = key(buf)?;
        if wire_type == END_GROUP {
            if inner != number {
                return Err(format!("group {number} ended by the end of group {inner}").into());
            }
            return Ok(());
        }
        if wire_type == START_GROUP {
            if ctx == 0 {
                return Err(too_deep());
            }
            skip_group_body(buf, inner, ctx.saturating_sub(1))?;
        } else {
            value(buf, inner, wire_type)?;
        }
    }
}

pub fn too_deep() -> Invalid {
    Invalid::Malformed("the message is nested too deeply".into())
}

/// What decoding a message allocates, estimated from its wire form as it is walked.
///
/// `DynamicMessage` holds every value as a `Value` (tens of bytes, whatever the field's type),
/// every list element and map entry separately, every message's fields in a B-tree, every
/// string copied and every unknown field as its own record. A packed list of one-byte varints
/// thus grows over fifty-fold when decoded, a list of one-field messages two-hundred-fold. The
/// charges below are upper bounds (containers counted at their worst while they grow), so a
/// message within the budget decodes within it; the fuzz target checks that with a counting
/// allocator.
#[derive(Debug)]
pub struct Cost {
    spent: usize,
    budget: usize,
    /// Fields (and every eighth packed element) the walk may still read; unlimited but for
    /// [`validate_in_place`].
    steps: usize,
    /// The walk stopped because `steps` ran out, not because the message was refused.
    out_of_steps: bool,
    /// Called every [`PACE_STEPS`] steps, when set (see [`Cost::pacing`]).
    pace: Option<fn()>,
}

/// Steps between two calls of a walk's pace function.
const PACE_STEPS: usize = 4096;

const VALUE: usize = std::mem::size_of::<Value>();
/// A list element: a `Value` in a `Vec` that doubles when full, the old buffer still live
/// while the new one fills (three times the elements at worst).
const LIST_ITEM: usize = 3 * VALUE;
/// A node of a message's field B-tree: up to 11 field numbers and values, child pointers.
/// The first field allocates a whole node; nodes other than the root are at least half full.
const NODE: usize = 12 * (VALUE + 8) + 96;
/// Fields (entries) per node at least, below the root.
const FIELDS_PER_NODE: usize = 5;
/// A map entry: key and value in a hash table of at least 4 slots, at most 7/8 full, the
/// old table still live while a doubled one fills.
const MAP_ENTRY: usize = 4 * (std::mem::size_of::<MapKey>() + VALUE + 8);
/// An unknown field: a record in a list (4 records allocated first, then doubling).
const UNKNOWN_FIELD: usize = 4 * std::mem::size_of::<UnknownField>();

const fn max(a: usize, b: usize) -> usize {
    if a > b {
        a
    } else {
        b
    }
}

/// The most the charges add up to per byte of a message, over the cheapest encodings: a
/// packed varint (one byte), a field (a key and a value, two bytes, and its share of a node),
/// a one-field nested message in a list (four bytes and a node).
const MAX_COST_PER_BYTE: usize = max(
    max(LIST_ITEM, (LIST_ITEM + NODE / FIELDS_PER_NODE) / 2),
    max(
        (NODE + LIST_ITEM) / 4,
        max(MAP_ENTRY, UNKNOWN_FIELD) / 2 + NODE / FIELDS_PER_NODE,
    ),
) + 1;

/// True when a message of `len` bytes might cost more than `budget` to decode; shorter ones
/// need not be walked first.
pub fn may_exceed(len: usize, budget: usize) -> bool {
    len.saturating_mul(MAX_COST_PER_BYTE).saturating_add(NODE) > budget
}

impl Cost {
    pub fn new(budget: usize) -> Self {
        Self {
            spent: 0,
            budget,
            steps: usize::MAX,
            out_of_steps: false,
            pace: None,
        }
    }

    /// A cost that calls `pace` every few thousand steps of its walk: a long walk on a thread
    /// that others share can give way there (see `script::sliced_decode`).
    pub fn pacing(budget: usize, pace: fn()) -> Self {
        Self {
            steps: PACE_STEPS,
            pace: Some(pace),
            ..Self::new(budget)
        }
    }

    /// Counts one step of the walk; an error once the steps allowed ran out.
    #[inline(always)]
    fn step(&mut self) -> Result<()> {
        if self.steps == 0 {
            if let Some(pace) = self.pace {
                pace();
                self.steps = PACE_STEPS - 1;
                return Ok(());
            }
            self.out_of_steps = true;
            return Err(Invalid::Malformed(String::new()));
        }
        self.steps -= 1;
        Ok(())
    }

    /// Bytes charged so far.
    pub fn spent(&self) -> usize {
        self.spent
    }

    fn charge(&mut self, bytes: usize, field: impl FnOnce() -> String) -> Result<()> {
        self.spent = self.spent.saturating_add(bytes);
        if self.spent > self.budget {
            return Err(Invalid::TooCostly {
                field: field(),
                cost: self.spent,
                budget: self.budget,
            });
        }
        Ok(())
    }
}

/// Checks `buf` is a well-formed message of type `desc`: structure, wire types of known
/// fields, UTF-8 of strings, nested messages, groups and map entries, as the decoder does.
pub fn validate(buf: &[u8], desc: &MessageDescriptor) -> std::result::Result<(), String> {
    let mut cost = Cost::new(usize::MAX);
    match check(buf, desc, &mut cost) {
        Ok(()) => Ok(()),
        Err(Invalid::Malformed(m)) => Err(m),
        Err(Invalid::TooCostly { .. }) => Ok(()),
    }
}

/// [`validate`] as long as it takes at most `steps` steps (a step a field, nested ones
/// included, and one per eight elements of a packed list): `Ok(false)` when it would take more,
/// and the message is neither accepted nor refused. A field costs at most a few hundred
/// instructions to check (looking it up, walking into it), so the steps bound the time.
pub fn validate_in_place(
    buf: &[u8],
    desc: &MessageDescriptor,
    steps: usize,
) -> std::result::Result<bool, String> {
    let mut cost = Cost::new(usize::MAX);
    cost.steps = steps;
    match check(buf, desc, &mut cost) {
        Ok(()) => Ok(true),
        Err(_) if cost.out_of_steps => Ok(false),
        Err(Invalid::Malformed(m)) => Err(m),
        Err(Invalid::TooCostly { .. }) => Ok(true),
    }
}

/// [`validate`], also charging `cost` for what decoding would allocate.
pub fn check(buf: &[u8], desc: &MessageDescriptor, cost: &mut Cost) -> Result<()> {
    let mut b = buf;
    let mut walker = Walker { cost };
    walker.message(&mut b, desc, RECURSION_LIMIT, None)
}

/// Skips an unknown field of `desc` (groups and all) the way the decoder reads it; `ctx` is the
/// nesting still allowed below the message.
pub fn skip_unknown(
    buf: &mut &[u8],
    desc: &MessageDescriptor,
    number: u32,
    wire_type: u8,
    ctx: u32,
) -> Result<()> {
    let mut cost = Cost::new(usize::MAX);
    Walker { cost: &mut cost }.unknown(buf, desc, number, wire_type, ctx)
}

/// Checks one value of extension `ext` the way the decoder reads it (extensions are known
/// fields to the decoder, so their values must be well-formed).
pub fn check_extension(
    buf: &mut &[u8],
    ext: &ExtensionDescriptor,
    number: u32,
    wire_type: u8,
    ctx: u32,
) -> Result<()> {
    let mut cost = Cost::new(usize::MAX);
    Walker { cost: &mut cost }.known(buf, &Known::Extension(ext.clone()), number, wire_type, ctx)
}

/// Skips a field of a map entry other than its key and value, as the decoder does.
pub fn skip_in_map_entry(
    buf: &mut &[u8],
    number: u32,
    wire_type: u8,
    ctx: u32,
    map_field: &str,
) -> Result<()> {
    skip_strict(buf, number, wire_type, ctx, &mut Cost::new(usize::MAX)).map_err(|e| match e {
        Invalid::Malformed(m) => Invalid::Malformed(format!("in an entry of {map_field}: {m}")),
        other => other,
    })
}

/// A field known to the decoder: a declared field or an extension.
enum Known {
    Field(FieldDescriptor),
    Extension(ExtensionDescriptor),
}

impl Known {
    /// The field or extension `number` of `desc`; `extended` says whether `desc` has
    /// extensions at all (looking one up walks them all, so it is skipped when there are none).
    fn find(desc: &MessageDescriptor, number: u32, extended: bool) -> Option<Known> {
        if let Some(f) = desc.get_field(number) {
            return Some(Known::Field(f));
        }
        if !extended {
            return None;
        }
        desc.get_extension(number).map(Known::Extension)
    }

    fn kind(&self) -> Kind {
        match self {
            Known::Field(f) => f.kind(),
            Known::Extension(e) => e.kind(),
        }
    }

    fn is_list(&self) -> bool {
        match self {
            Known::Field(f) => f.is_list(),
            Known::Extension(e) => e.is_list(),
        }
    }

    fn is_map(&self) -> bool {
        match self {
            Known::Field(f) => f.is_map(),
            Known::Extension(_) => false,
        }
    }

    fn is_group(&self) -> bool {
        match self {
            Known::Field(f) => f.is_group(),
            Known::Extension(e) => e.is_group(),
        }
    }

    fn name(&self) -> String {
        match self {
            Known::Field(f) => f.full_name().to_owned(),
            Known::Extension(e) => e.full_name().to_owned(),
        }
    }
}

struct Walker<'c> {
    cost: &'c mut Cost,
}

impl Walker<'_> {
    /// Walks a message body: all of `buf`, or up to the end-group key of `group` (which is
    /// consumed). `ctx` is the nesting still allowed below this message.
    fn message(
        &mut self,
        buf: &mut &[u8],
        desc: &MessageDescriptor,
        ctx: u32,
        group: Option<u32>,
    ) -> Result<()> {
        let (mut known, mut unknown) = (0usize, 0usize);
        let extended = desc.extensions().len() > 0;
        loop {
            if group.is_none() && buf.is_empty() {
                break;
            }
            self.cost.step()?;
            let (number, wire_type) = key(buf)?;
            if wire_type == END_GROUP {
                if let Some(g) = group {
                    if g != number {
                        return Err(format!("group {g} ended by the end of group {number}").into());
                    }
                    break;
                }
            }
            match Known::find(desc, number, extended) {
                Some(field) => {
                    known += 1;
                    self.known(buf, &field, number, wire_type, ctx)?
                }
                None => {
                    unknown += 1;
                    self.unknown(buf, desc, number, wire_type, ctx)?
                }
            }
        }
        let entries = known.min(desc.fields().len() + desc.extensions().len()) + unknown;
        if entries > 0 {
            // One entry per distinct known field at most: a field repeated adds no entry.
            let nodes = 1 + entries / FIELDS_PER_NODE;
            self.cost
                .charge(nodes.saturating_mul(NODE), || desc.full_name().to_owned())?;
        }
        Ok(())
    }

    /// An unknown field: kept by the decoder, groups and all.
    fn unknown(
        &mut self,
        buf: &mut &[u8],
        desc: &MessageDescriptor,
        number: u32,
        wire_type: u8,
        ctx: u32,
    ) -> Result<()> {
        self.cost.charge(UNKNOWN_FIELD, || {
            format!("{} (unknown field {number})", desc.full_name())
        })?;
        match wire_type {
            START_GROUP => {
                if ctx == 0 {
                    return Err(too_deep());
                }
                self.unknown_group(buf, desc, number, ctx - 1)
            }
            END_GROUP => Err(format!("field {number} ends a group that was not started").into()),
            _ => value(buf, number, wire_type).map(|_| ()),
        }
    }

    /// The body of an unknown group, whose fields are all unknown too.
    fn unknown_group(
        &mut self,
        buf: &mut &[u8],
        desc: &MessageDescriptor,
        number: u32,
        ctx: u32,
    ) -> Result<()> {
        loop {
            self.cost.step()?;
            let (inner, wire_type) = key(buf)?;
            if wire_type == END_GROUP {
                if inner != number {
                    return Err(format!("group {number} ended by the end of group {inner}").into());
                }
                return Ok(());
            }
            self.unknown(buf, desc, inner, wire_type, ctx)?;
        }
    }

    /// A declared field or extension with the wire type found.
    fn known(
        &mut self,
        buf: &mut &[u8],
        field: &Known,
        number: u32,
        wire_type: u8,
        ctx: u32,
    ) -> Result<()> {
        let kind = field.kind();
        if field.is_map() {
            // The decoder reads a map entry as length-prefixed without looking at the key's
            // wire type.
            let entry = len_prefixed(buf)?;
            self.cost.charge(MAP_ENTRY, || field.name())?;
            let Kind::Message(entry_desc) = kind else {
                return Err("a map field without an entry type".into());
            };
            return self.map_entry(entry, &entry_desc, field, ctx);
        }
        if field.is_list() {
            if wire_type == LEN && is_packable(&kind) {
                let mut packed = len_prefixed(buf)?;
                let mut count = 0usize;
                while !packed.is_empty() {
                    if count.is_multiple_of(8) {
                        self.cost.step()?;
                    }
                    scalar_value(&mut packed, &kind, wire_type_of(&kind), || field.name())?;
                    count += 1;
                }
                return self
                    .cost
                    .charge(count.saturating_mul(LIST_ITEM), || field.name());
            }
            self.cost.charge(LIST_ITEM, || field.name())?;
        }
        self.single(buf, field, &kind, number, wire_type, ctx)
    }

    /// One value of `kind`, the way the decoder merges it into a field.
    fn single(
        &mut self,
        buf: &mut &[u8],
        field: &Known,
        kind: &Kind,
        number: u32,
        wire_type: u8,
        ctx: u32,
    ) -> Result<()> {
        match kind {
            Kind::Message(m) if field.is_group() => {
                if wire_type != START_GROUP {
                    return Err(wrong_wire_type(&field.name(), wire_type));
                }
                if ctx == 0 {
                    return Err(too_deep());
                }
                self.message(buf, m, ctx - 1, Some(number))
            }
            Kind::Message(m) => {
                if wire_type != LEN {
                    return Err(wrong_wire_type(&field.name(), wire_type));
                }
                if ctx == 0 {
                    return Err(too_deep());
                }
                let mut body = len_prefixed(buf)?;
                self.message(&mut body, m, ctx - 1, None)
            }
            Kind::String => {
                if wire_type != LEN {
                    return Err(wrong_wire_type(&field.name(), wire_type));
                }
                let s = len_prefixed(buf)?;
                if std::str::from_utf8(s).is_err() {
                    return Err(format!("field {} is not valid UTF-8", field.name()).into());
                }
                self.cost.charge(s.len(), || field.name())
            }
            _ => scalar_value(buf, kind, wire_type, || field.name()),
        }
    }

    /// A map entry, read as the decoder does: key (1) and value (2) in any order, last one
    /// wins, other fields skipped; the entry itself does not count as a level of nesting.
    fn map_entry(
        &mut self,
        mut buf: &[u8],
        entry: &MessageDescriptor,
        field: &Known,
        ctx: u32,
    ) -> Result<()> {
        let key_field = entry.map_entry_key_field();
        let value_field = entry.map_entry_value_field();
        while !buf.is_empty() {
            self.cost.step()?;
            let (number, wire_type) = key(&mut buf)?;
            match number {
                1 => self.single(
                    &mut buf,
                    &Known::Field(key_field.clone()),
                    &key_field.kind(),
                    number,
                    wire_type,
                    ctx,
                )?,
                2 => self.single(
                    &mut buf,
                    &Known::Field(value_field.clone()),
                    &value_field.kind(),
                    number,
                    wire_type,
                    ctx,
                )?,
                _ => skip_strict(&mut buf, number, wire_type, ctx, self.cost).map_err(
                    |e| match e {
                        Invalid::Malformed(m) => {
                            Invalid::Malformed(format!("in an entry of {}: {m}", field.name()))
                        }
                        other => other,
                    },
                )?,
            }
        }
        Ok(())
    }
}

/// Skips a field the way prost's `skip_field` does (used inside map entries): every level,
/// even a plain varint, needs nesting to spare. Each field of a group is a step of `cost`.
fn skip_strict(
    buf: &mut &[u8],
    number: u32,
    wire_type: u8,
    ctx: u32,
    cost: &mut Cost,
) -> Result<()> {
    if ctx == 0 {
        return Err(too_deep());
    }
    match wire_type {
        START_GROUP => loop {
            cost.step()?;
            let (inner, inner_type) = key(buf)?;
            if inner_type == END_GROUP {
                if inner != number {
                    return Err(format!("group {number} ended by the end of group {inner}").into());
                }
                return Ok(());
            }
            skip_strict(buf, inner, inner_type, ctx - 1, cost)?;
        },
        END_GROUP => Err(format!("field {number} ends a group that was not started").into()),
        _ => value(buf, number, wire_type).map(|_| ()),
    }
}

pub fn wrong_wire_type(field: &str, wire_type: u8) -> Invalid {
    Invalid::Malformed(format!(
        "field {field} has the wrong wire type ({wire_type})"
    ))
}

/// Reads one scalar of `kind` (not a string or message) sent with `wire_type`.
fn scalar_value(
    buf: &mut &[u8],
    kind: &Kind,
    wire_type: u8,
    name: impl Fn() -> String,
) -> Result<()> {
    let expected = wire_type_of(kind);
    if wire_type != expected {
        return Err(wrong_wire_type(&name(), wire_type));
    }
    match expected {
        VARINT => varint(buf).map(|_| ()),
        FIXED32 => fixed32(buf).map(|_| ()),
        FIXED64 => fixed64(buf).map(|_| ()),
        _ => len_prefixed(buf).map(|_| ()),
    }
}

/// The wire type a value of `kind` is sent with.
fn wire_type_of(kind: &Kind) -> u8 {
    match kind {
        Kind::Int32
        | Kind::Int64
        | Kind::Uint32
        | Kind::Uint64
        | Kind::Sint32
        | Kind::Sint64
        | Kind::Bool
        | Kind::Enum(_) => VARINT,
        Kind::Fixed64 | Kind::Sfixed64 | Kind::Double => FIXED64,
        Kind::Fixed32 | Kind::Sfixed32 | Kind::Float => FIXED32,
        Kind::String | Kind::Bytes | Kind::Message(_) => LEN,
    }
}

/// Numbers and enums: what a packed list may hold.
fn is_packable(kind: &Kind) -> bool {
    !matches!(kind, Kind::String | Kind::Bytes | Kind::Message(_))
}

/// One step of a [`Path`].
#[derive(Debug, Clone)]
struct Step {
    number: u32,
    /// The other members of the field's oneof: setting one of them clears this field.
    rivals: Box<[u32]>,
    /// Map fields of the message this step is in: the decoder reads their entries as
    /// length-prefixed whatever the wire type.
    maps: Box<[u32]>,
    /// Group fields (and group extensions) of that message: their bodies end where the
    /// decoder says, which needs their descriptors.
    groups: Box<[(u32, MessageDescriptor)]>,
}

/// A path to a singular field through singular message fields, resolved at startup.
#[derive(Debug, Clone)]
pub struct Path {
    steps: Box<[Step]>,
}

impl Path {
    /// The path along `fields`, outermost first.
    pub fn new<'f>(fields: impl IntoIterator<Item = &'f FieldDescriptor>) -> Self {
        let steps = fields.into_iter().map(Step::new).collect();
        Self { steps }
    }

    /// The path through `desc` along field `numbers` (`None` if one of them is not a field,
    /// or a field before the last is not a message).
    pub fn from_numbers(
        desc: &MessageDescriptor,
        numbers: impl IntoIterator<Item = u32>,
    ) -> Option<Self> {
        let mut fields = Vec::new();
        let mut current = Some(desc.clone());
        for n in numbers {
            let field = current?.get_field(n)?;
            current = field.kind().as_message().cloned();
            fields.push(field);
        }
        Some(Self::new(&fields))
    }
}

impl Step {
    fn new(f: &FieldDescriptor) -> Self {
        let parent = f.parent_message();
        let rivals = f
            .containing_oneof()
            .map(|o| {
                o.fields()
                    .map(|m| m.number())
                    .filter(|&n| n != f.number())
                    .collect()
            })
            .unwrap_or_default();
        let maps = parent
            .fields()
            .filter(|m| m.is_map())
            .map(|m| m.number())
            .collect();
        let group_fields = parent
            .fields()
            .filter(|g| g.is_group())
            .filter_map(|g| Some((g.number(), g.kind().as_message()?.clone())));
        let group_extensions = parent
            .extensions()
            .filter(|g| g.is_group())
            .filter_map(|g| Some((g.number(), g.kind().as_message()?.clone())));
        Self {
            number: f.number(),
            rivals,
            maps,
            groups: group_fields.chain(group_extensions).collect(),
        }
    }

    /// The next field of the message this step is in, read as the decoder reads it.
    fn next_field<'a>(&self, buf: &mut &'a [u8]) -> Result<(u32, Raw<'a>)> {
        let (number, wire_type) = key(buf)?;
        if self.maps.contains(&number) {
            return Ok((number, Raw::Len(len_prefixed(buf)?)));
        }
        if wire_type == START_GROUP {
            if let Some((_, desc)) = self.groups.iter().find(|(n, _)| *n == number) {
                let start = *buf;
                let mut cost = Cost::new(usize::MAX);
                Walker { cost: &mut cost }.message(buf, desc, RECURSION_LIMIT, Some(number))?;
                let consumed = start.len() - buf.len();
                let end_key_len = prost::encoding::key_len(number);
                return Ok((number, Raw::Group(&start[..consumed - end_key_len])));
            }
        }
        Ok((number, value(buf, number, wire_type)?))
    }
}

/// The value at `path` as the decoder would leave it: the last occurrence wins, occurrences of
/// a message field merge, and a later member of the same oneof clears the field. `buf` must
/// have passed [`validate`].
pub fn find<'a>(buf: &'a [u8], path: &Path) -> Option<Raw<'a>> {
    let mut found = None;
    find_in(buf, &path.steps, &mut found);
    found
}

fn find_in<'a>(mut buf: &'a [u8], steps: &[Step], found: &mut Option<Raw<'a>>) {
    let Some((step, rest)) = steps.split_first() else {
        return;
    };
    while !buf.is_empty() {
        let Ok((number, raw)) = step.next_field(&mut buf) else {
            return;
        };
        if number == step.number {
            if rest.is_empty() {
                *found = Some(raw);
            } else if let Raw::Len(inner) | Raw::Group(inner) = raw {
                // Occurrences of a message merge: a later one adds to the earlier ones.
                find_in(inner, rest, found);
            }
        } else if step.rivals.contains(&number) {
            // Another member of the oneof: this field (and all found inside it) is cleared.
            *found = None;
        }
    }
}

/// A raw scalar as a typed value of `kind` (not for strings, bytes or messages).
pub fn scalar(raw: Raw<'_>, kind: &Kind) -> Option<Value> {
    Some(match (raw, kind) {
        (Raw::Varint(v), Kind::Int32) => Value::I32(v as i32),
        (Raw::Varint(v), Kind::Int64) => Value::I64(v as i64),
        (Raw::Varint(v), Kind::Uint32) => Value::U32(v as u32),
        (Raw::Varint(v), Kind::Uint64) => Value::U64(v),
        (Raw::Varint(v), Kind::Sint32) => {
            let v = v as u32;
            Value::I32(((v >> 1) as i32) ^ -((v & 1) as i32))
        }
        (Raw::Varint(v), Kind::Sint64) => Value::I64(((v >> 1) as i64) ^ -((v & 1) as i64)),
        (Raw::Varint(v), Kind::Bool) => Value::Bool(v != 0),
        (Raw::Varint(v), Kind::Enum(_)) => Value::EnumNumber(v as i32),
        (Raw::Fixed64(v), Kind::Fixed64) => Value::U64(v),
        (Raw::Fixed64(v), Kind::Sfixed64) => Value::I64(v as i64),
        (Raw::Fixed64(v), Kind::Double) => Value::F64(f64::from_bits(v)),
        (Raw::Fixed32(v), Kind::Fixed32) => Value::U32(v),
        (Raw::Fixed32(v), Kind::Sfixed32) => Value::I32(v as i32),
        (Raw::Fixed32(v), Kind::Float) => Value::F32(f32::from_bits(v)),
        _ => return None,
    })
}

/// The value of the field at `path` as a typed value, `None` when unset (reads the default).
/// Strings that are not UTF-8 cannot occur in validated bytes and read as unset.
pub fn read(buf: &[u8], path: &Path, kind: &Kind) -> Option<Value> {
    match (find(buf, path)?, kind) {
        (Raw::Len(b), Kind::String) => std::str::from_utf8(b).ok().map(|s| Value::String(s.into())),
        (Raw::Len(b), Kind::Bytes) => Some(Value::Bytes(bytes::Bytes::copy_from_slice(b))),
        (raw, _) => scalar(raw, kind),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads one field (key and value) off the front of `buf`.
    fn next_field<'a>(buf: &mut &'a [u8]) -> Result<(u32, Raw<'a>)> {
        let (number, wire_type) = key(buf)?;
        Ok((number, value(buf, number, wire_type)?))
    }

    fn path(numbers: &[u32]) -> Path {
        Path {
            steps: numbers
                .iter()
                .map(|&number| Step {
                    number,
                    rivals: Box::new([]),
                    maps: Box::new([]),
                    groups: Box::new([]),
                })
                .collect(),
        }
    }

    #[test]
    fn finds_the_last_occurrence_through_nested_messages() {
        // field 1 = "a", field 2 = {field 1 = 5}, field 1 = "b", field 2 = {field 1 = 7}
        let buf = [
            0x0a, 1, b'a', 0x12, 2, 0x08, 5, 0x0a, 1, b'b', 0x12, 2, 0x08, 7,
        ];
        assert!(matches!(find(&buf, &path(&[1])), Some(Raw::Len(b"b"))));
        assert!(matches!(find(&buf, &path(&[2, 1])), Some(Raw::Varint(7))));
        assert!(find(&buf, &path(&[3])).is_none());
    }

    #[test]
    fn a_rival_oneof_member_clears_the_field() {
        // field 1 = "x", field 2 = 5, with 1 and 2 in one oneof.
        let buf = [0x0a, 1, b'x', 0x10, 5];
        let p = Path {
            steps: Box::new([Step {
                number: 1,
                rivals: Box::new([2]),
                maps: Box::new([]),
                groups: Box::new([]),
            }]),
        };
        assert_eq!(find(&buf, &p), None);
        assert_eq!(find(&buf[..3], &p), Some(Raw::Len(b"x")));
    }

    #[test]
    fn groups_are_read_to_their_end_key() {
        // group 3 { field 1 = 7 }, then field 2 = 1
        let buf = [0x1b, 0x08, 7, 0x1c, 0x10, 1];
        assert_eq!(find(&buf, &path(&[3])), Some(Raw::Group(&[0x08, 7])));
        assert_eq!(find(&buf, &path(&[3, 1])), Some(Raw::Varint(7)));
        assert_eq!(find(&buf, &path(&[2])), Some(Raw::Varint(1)));
        // A mismatched end key is an error, as is an end key without a start.
        let mut b: &[u8] = &[0x1b, 0x24];
        assert!(next_field(&mut b).is_err());
        let mut b: &[u8] = &[0x1c];
        assert!(next_field(&mut b).is_err());
    }

    #[test]
    fn keys_over_32_bits_and_bad_wire_types_are_refused() {
        let mut b: &[u8] = &[0x80, 0x80, 0x80, 0x80, 0x10, 0];
        assert!(key(&mut b).is_err());
        let mut b: &[u8] = &[0x0e];
        assert!(key(&mut b).is_err());
        let mut b: &[u8] = &[0x07];
        assert!(key(&mut b).is_err());
    }

    #[test]
    fn zigzag_and_fixed_scalars() {
        assert_eq!(scalar(Raw::Varint(3), &Kind::Sint32), Some(Value::I32(-2)));
        assert_eq!(scalar(Raw::Varint(4), &Kind::Sint64), Some(Value::I64(2)));
        assert_eq!(
            scalar(Raw::Varint(u64::MAX), &Kind::Int32),
            Some(Value::I32(-1))
        );
        assert_eq!(
            scalar(Raw::Fixed32(1.5f32.to_bits()), &Kind::Float),
            Some(Value::F32(1.5))
        );
    }

    fn list_value() -> MessageDescriptor {
        prost_reflect::DescriptorPool::global()
            .get_message_by_name("google.protobuf.ListValue")
            .unwrap()
    }

    #[test]
    fn checking_in_place_stops_once_its_steps_run_out() {
        // ListValue.values (1): 100 empty Values, a step each; 50 unknown fields (2 = 0) more.
        let desc = list_value();
        let mut buf = [0x0a, 0].repeat(100);
        assert_eq!(validate_in_place(&buf, &desc, 100), Ok(true));
        assert_eq!(validate_in_place(&buf, &desc, 99), Ok(false));
        buf.extend([0x10, 0].repeat(50));
        assert_eq!(validate_in_place(&buf, &desc, 150), Ok(true));
        assert_eq!(validate_in_place(&buf, &desc, 149), Ok(false));
        // Fields inside nested messages count: a Value holding a list of 10 empty Values.
        let inner = [0x32, 20].into_iter().chain([0x0a, 0].repeat(10));
        let nested: Vec<u8> = [0x0a, 22].into_iter().chain(inner).collect();
        assert_eq!(validate_in_place(&nested, &desc, 12), Ok(true));
        assert_eq!(validate_in_place(&nested, &desc, 11), Ok(false));
        // Fields skipped inside a map entry count too, groups and all: Struct.fields (1), an
        // entry with key "a" and an unknown group (3) of 50 fields.
        let desc = prost_reflect::DescriptorPool::global()
            .get_message_by_name("google.protobuf.Struct")
            .unwrap();
        let mut entry = vec![0x0a, 1, b'a', 0x1b];
        entry.extend([0x08, 0].repeat(50));
        entry.push(0x1c);
        let mut msg = vec![0x0a, entry.len() as u8];
        msg.extend(entry);
        assert_eq!(validate_in_place(&msg, &desc, 40), Ok(false));
        assert_eq!(validate_in_place(&msg, &desc, 1000), Ok(true));
        // An empty message takes no step.
        assert_eq!(validate_in_place(&[], &desc, 0), Ok(true));
    }

    #[test]
    fn checking_in_place_agrees_with_checking_when_it_finishes() {
        let desc = list_value();
        let cases: [&[u8]; 5] = [
            &[0x0a, 0x00, 0x0a, 0x02, 0x08, 0x00],
            // A string value that is not UTF-8.
            &[0x0a, 0x03, 0x1a, 0x01, 0xff],
            // Truncated.
            &[0x0a, 0x05, 0x00],
            // An end-group key without a start.
            &[0x0c],
            // An unknown group, closed.
            &[0x13, 0x08, 0x01, 0x14],
        ];
        for buf in cases {
            let full = validate(buf, &desc);
            assert_eq!(
                validate_in_place(buf, &desc, 1000).map_err(|_| ()),
                full.map(|()| true).map_err(|_| ()),
                "{buf:02x?}"
            );
            if let Err(m) = validate(buf, &desc) {
                assert_eq!(validate_in_place(buf, &desc, 1000), Err(m));
            }
        }
    }
}
