//! Random protobuf messages for property tests: generated from descriptors, driven by a tape
//! of random numbers (so proptest shrinks a failure by shrinking the tape), and mutated.
//!
//! Shared by the tests that hold a reader of wire bytes to `DynamicMessage`'s decoder
//! (`wire_agrees_with_decoder.rs`, `script_conversion_agrees.rs`).
#![allow(dead_code)]

use std::path::PathBuf;

use prost_reflect::{DescriptorPool, Kind, MessageDescriptor};

pub fn pool() -> DescriptorPool {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/wire/protos");
    protoserve::schema::compile(&protoserve::schema::SchemaInputs::protos(&[dir]))
        .expect("compile wire fixtures")
        .pool
}

pub fn messages(pool: &DescriptorPool) -> Vec<MessageDescriptor> {
    ["wire3.All", "wire3.Inner", "wire2.Legacy"]
        .iter()
        .map(|n| pool.get_message_by_name(n).expect(n))
        .collect()
}

/// Random choices, read from the front; an exhausted tape reads zeros.
pub struct Tape<'a> {
    pub t: &'a [u64],
    pub i: usize,
}

impl Tape<'_> {
    pub fn next(&mut self) -> u64 {
        let v = self.t.get(self.i).copied().unwrap_or(0);
        self.i += 1;
        v
    }
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

pub fn put_varint(out: &mut Vec<u8>, v: u64) {
    prost::encoding::encode_varint(v, out);
}

pub fn put_key(out: &mut Vec<u8>, number: u32, wire_type: u8) {
    put_varint(out, (u64::from(number) << 3) | u64::from(wire_type));
}

pub fn put_len(out: &mut Vec<u8>, body: &[u8]) {
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
pub fn message(desc: &MessageDescriptor, t: &mut Tape, depth: u32) -> Vec<u8> {
    let mut out = Vec::new();
    let fields = known_fields(desc);
    let count = if depth > 3 { t.below(2) } else { t.below(7) };
    for _ in 0..count {
        if fields.is_empty() || t.chance(12) {
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

pub fn mutate(mut bytes: Vec<u8>, t: &mut Tape) -> Vec<u8> {
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
