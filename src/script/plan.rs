//! Conversion plans: what converting between wire bytes and Lua tables needs to know about a
//! message type, worked out once when the scripts load instead of on every message.
//!
//! A call's request goes straight from its bytes to Lua tables ([`super::decode`]) and a
//! script's reply straight from its tables to bytes ([`super::encode`]), without a
//! `DynamicMessage` in between. Both walk a [`MessagePlan`]: its fields in number order with
//! their wire types, presence and oneofs resolved, a field found by number in one index and by
//! name (or JSON name) without touching the descriptor pool. Plans are shared by every Lua
//! state; what is made of Lua values (field-name strings, enum names) is kept per state.

use std::collections::HashMap;

use rustc_hash::FxHashMap;

use prost_reflect::{
    EnumDescriptor, ExtensionDescriptor, FieldDescriptor, Kind, MessageDescriptor,
};

use super::decode::Layout;

/// A message type's place in [`Plans::messages`].
pub type MsgId = u32;
/// An enum type's place in [`Plans::enums`].
pub type EnumId = u32;

/// A field's value type when it is not a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scalar {
    Double,
    Float,
    Int32,
    Int64,
    Uint32,
    Uint64,
    Sint32,
    Sint64,
    Fixed32,
    Fixed64,
    Sfixed32,
    Sfixed64,
    Bool,
    String,
    Bytes,
    Enum(EnumId),
}

/// Wire types.
pub const VARINT: u8 = 0;
pub const FIXED64: u8 = 1;
pub const LEN: u8 = 2;
pub const START_GROUP: u8 = 3;
pub const END_GROUP: u8 = 4;
pub const FIXED32: u8 = 5;

impl Scalar {
    /// The wire type one value is sent with.
    pub fn wire_type(self) -> u8 {
        match self {
            Scalar::Double | Scalar::Fixed64 | Scalar::Sfixed64 => FIXED64,
            Scalar::Float | Scalar::Fixed32 | Scalar::Sfixed32 => FIXED32,
            Scalar::String | Scalar::Bytes => LEN,
            _ => VARINT,
        }
    }

    /// Numbers and enums: what a packed list may hold.
    pub fn packable(self) -> bool {
        !matches!(self, Scalar::String | Scalar::Bytes)
    }
}

/// A field's value type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    Scalar(Scalar),
    Message(MsgId),
}

/// How many values a field holds.
#[derive(Debug, Clone, Copy)]
pub enum Shape {
    Single,
    List {
        /// Sent packed (the decoder accepts both either way).
        packed: bool,
    },
    Map {
        key: Scalar,
        value: Type,
        /// Whether the entry's key and value are written even when they are defaults.
        key_presence: bool,
        value_presence: bool,
    },
}

/// One declared field.
#[derive(Debug)]
pub struct FieldPlan {
    pub name: Box<str>,
    pub number: u32,
    /// The value type (of the elements, for a list; of the entry, for a map: see [`Shape`]).
    pub ty: Type,
    pub shape: Shape,
    /// Singular and set means present, even at its default (optional, oneof members, messages,
    /// proto2 fields); otherwise a default value is left out of the wire and read back.
    pub presence: bool,
    /// A proto2 group: its body sits between a start and an end key.
    pub group: bool,
    /// The field's oneof, as an index into [`MessagePlan::oneofs`].
    pub oneof: Option<u16>,
    pub desc: FieldDescriptor,
}

impl FieldPlan {
    pub fn is_single(&self) -> bool {
        matches!(self.shape, Shape::Single)
    }
}

/// Fields found by their number in one step: a dense index up to this number.
const DENSE_NUMBERS: u32 = 256;
const NONE: u16 = u16::MAX;

/// One message type.
#[derive(Debug)]
pub struct MessagePlan {
    pub desc: MessageDescriptor,
    /// Declared fields, in number order (the order they are written in).
    pub fields: Box<[FieldPlan]>,
    /// Per oneof, the indices of its members.
    pub oneofs: Box<[Box<[u16]>]>,
    /// Extensions by number: not shown to scripts, but their values must be well-formed.
    extensions: Box<[(u32, ExtensionDescriptor)]>,
    /// Field index by number, for numbers below [`DENSE_NUMBERS`].
    dense: Box<[u16]>,
    /// Names and JSON names of the fields, with their indices. Fx-hashed: every key of every
    /// table a script sends is looked up here when the message has many fields; what it holds
    /// comes from the schema, so no key a script makes up lengthens a lookup.
    names: FxHashMap<Box<[u8]>, u16>,
}

impl MessagePlan {
    /// The index of the field with this number, if declared.
    #[inline]
    pub fn by_number(&self, number: u32) -> Option<usize> {
        if number < DENSE_NUMBERS {
            let i = *self.dense.get(number as usize)?;
            (i != NONE).then_some(usize::from(i))
        } else {
            self.fields.binary_search_by_key(&number, |f| f.number).ok()
        }
    }

    /// The index of the field called `name` (or with that JSON name).
    #[inline]
    pub fn by_name(&self, name: &[u8]) -> Option<u16> {
        if self.fields.len() <= 8 {
            // A short scan beats hashing the name.
            if let Some(i) = self.fields.iter().position(|f| f.name.as_bytes() == name) {
                return Some(i as u16);
            }
        }
        self.names.get(name).copied()
    }

    /// The extension with this number, if the message has one.
    pub fn extension(&self, number: u32) -> Option<&ExtensionDescriptor> {
        self.extensions
            .binary_search_by_key(&number, |(n, _)| *n)
            .ok()
            .map(|i| &self.extensions[i].1)
    }

    pub fn full_name(&self) -> &str {
        self.desc.full_name()
    }
}

/// One enum type.
#[derive(Debug)]
pub struct EnumPlan {
    pub desc: EnumDescriptor,
    /// (number, name) of every value, in number order (as the descriptor lists them, which is
    /// not the order they are declared in).
    pub values: Box<[(i32, Box<str>)]>,
    /// The number of the first value declared: an unset field's value. Not the first of
    /// `values` when the enum has a negative value, or (proto2) lists a larger one first.
    pub default: i32,
    names: FxHashMap<Box<[u8]>, i32>,
    /// Number → index into `values` of the name a number reads as (the descriptor's choice
    /// among aliases).
    numbers: FxHashMap<i32, usize>,
}

impl EnumPlan {
    /// Where the name of value number `n` is in [`EnumPlan::values`], if `n` is declared.
    #[inline]
    pub fn index(&self, n: i32) -> Option<usize> {
        if self.values.len() <= 8 {
            // Small enums: a scan, unless aliases make the choice the map's.
            if self.numbers.len() == self.values.len() {
                return self.values.iter().position(|(v, _)| *v == n);
            }
        }
        self.numbers.get(&n).copied()
    }

    /// The number of the value called `name`.
    pub fn number(&self, name: &[u8]) -> Option<i32> {
        self.names.get(name).copied()
    }

    /// The name value number `n` reads as.
    pub fn name(&self, n: i32) -> Option<&str> {
        self.index(n).map(|i| &*self.values[i].1)
    }
}

/// Every plan the handlers need, built while scripts load and shared by every state.
#[derive(Debug, Default)]
pub struct Plans {
    pub messages: Vec<MessagePlan>,
    pub enums: Vec<EnumPlan>,
    /// Request types' slot layouts (see [`Layout`]).
    pub layouts: Vec<Layout>,
    message_ids: HashMap<String, MsgId>,
    enum_ids: HashMap<String, EnumId>,
    layout_ids: HashMap<MsgId, usize>,
}

impl Plans {
    /// The layout of request type `msg` (planned with [`Plans::add`]), made once.
    pub fn layout(&mut self, msg: MsgId) -> usize {
        if let Some(id) = self.layout_ids.get(&msg) {
            return *id;
        }
        let layout = Layout::new(self, msg);
        self.layouts.push(layout);
        self.layout_ids.insert(msg, self.layouts.len() - 1);
        self.layouts.len() - 1
    }

    /// The plan of the message type named `full_name`, if it was made.
    pub fn find(&self, full_name: &str) -> Option<MsgId> {
        self.message_ids.get(full_name).copied()
    }

    /// The request layout of `msg`, if it was made.
    pub fn find_layout(&self, msg: MsgId) -> Option<usize> {
        self.layout_ids.get(&msg).copied()
    }

    pub fn message(&self, id: MsgId) -> &MessagePlan {
        &self.messages[id as usize]
    }

    pub fn enumeration(&self, id: EnumId) -> &EnumPlan {
        &self.enums[id as usize]
    }

    /// The plan of `desc` (and of every type it reaches), made once.
    pub fn add(&mut self, desc: &MessageDescriptor) -> MsgId {
        if let Some(id) = self.message_ids.get(desc.full_name()) {
            return *id;
        }
        // Ids first, so recursive types refer to plans not built yet.
        let mut pending = Vec::new();
        let root = self.reserve(desc, &mut pending);
        while let Some((id, desc)) = pending.pop() {
            let plan = self.build(&desc, &mut pending);
            self.messages[id as usize] = plan;
        }
        root
    }

    fn reserve(
        &mut self,
        desc: &MessageDescriptor,
        pending: &mut Vec<(MsgId, MessageDescriptor)>,
    ) -> MsgId {
        if let Some(id) = self.message_ids.get(desc.full_name()) {
            return *id;
        }
        let id = self.messages.len() as MsgId;
        self.messages.push(MessagePlan {
            desc: desc.clone(),
            fields: Box::new([]),
            oneofs: Box::new([]),
            extensions: Box::new([]),
            dense: Box::new([]),
            names: FxHashMap::default(),
        });
        self.message_ids.insert(desc.full_name().to_owned(), id);
        pending.push((id, desc.clone()));
        id
    }

    fn enum_id(&mut self, desc: &EnumDescriptor) -> EnumId {
        if let Some(id) = self.enum_ids.get(desc.full_name()) {
            return *id;
        }
        let values: Box<[(i32, Box<str>)]> = desc
            .values()
            .map(|v| (v.number(), v.name().into()))
            .collect();
        let mut names = FxHashMap::default();
        let mut numbers = FxHashMap::default();
        for (n, name) in values.iter() {
            names.insert(Box::from(name.as_bytes()), *n);
            if let Some(chosen) = desc.get_value(*n) {
                if let Some(i) = values.iter().position(|(_, v)| **v == *chosen.name()) {
                    numbers.insert(*n, i);
                }
            }
        }
        let id = self.enums.len() as EnumId;
        self.enums.push(EnumPlan {
            desc: desc.clone(),
            default: desc.default_value().number(),
            values,
            names,
            numbers,
        });
        self.enum_ids.insert(desc.full_name().to_owned(), id);
        id
    }

    fn scalar(&mut self, kind: &Kind) -> Option<Scalar> {
        Some(match kind {
            Kind::Double => Scalar::Double,
            Kind::Float => Scalar::Float,
            Kind::Int32 => Scalar::Int32,
            Kind::Int64 => Scalar::Int64,
            Kind::Uint32 => Scalar::Uint32,
            Kind::Uint64 => Scalar::Uint64,
            Kind::Sint32 => Scalar::Sint32,
            Kind::Sint64 => Scalar::Sint64,
            Kind::Fixed32 => Scalar::Fixed32,
            Kind::Fixed64 => Scalar::Fixed64,
            Kind::Sfixed32 => Scalar::Sfixed32,
            Kind::Sfixed64 => Scalar::Sfixed64,
            Kind::Bool => Scalar::Bool,
            Kind::String => Scalar::String,
            Kind::Bytes => Scalar::Bytes,
            Kind::Enum(e) => Scalar::Enum(self.enum_id(e)),
            Kind::Message(_) => return None,
        })
    }

    fn value_type(&mut self, kind: &Kind, pending: &mut Vec<(MsgId, MessageDescriptor)>) -> Type {
        match kind {
            Kind::Message(m) => Type::Message(self.reserve(m, pending)),
            other => Type::Scalar(self.scalar(other).unwrap_or(Scalar::Bytes)),
        }
    }

    fn build(
        &mut self,
        desc: &MessageDescriptor,
        pending: &mut Vec<(MsgId, MessageDescriptor)>,
    ) -> MessagePlan {
        let mut declared: Vec<FieldDescriptor> = desc.fields().collect();
        declared.sort_by_key(FieldDescriptor::number);
        let oneof_names: Vec<String> = desc.oneofs().map(|o| o.full_name().to_owned()).collect();
        let mut fields = Vec::with_capacity(declared.len());
        for f in declared {
            let kind = f.kind();
            let (ty, shape) = if f.is_map() {
                let Kind::Message(entry) = &kind else {
                    unreachable!("a map field's kind is its entry message")
                };
                let k = entry.map_entry_key_field();
                let v = entry.map_entry_value_field();
                let key = self.scalar(&k.kind()).unwrap_or(Scalar::String);
                let value = self.value_type(&v.kind(), pending);
                (
                    value,
                    Shape::Map {
                        key,
                        value,
                        key_presence: k.supports_presence(),
                        value_presence: v.supports_presence(),
                    },
                )
            } else if f.is_list() {
                (
                    self.value_type(&kind, pending),
                    Shape::List {
                        packed: f.is_packed(),
                    },
                )
            } else {
                (self.value_type(&kind, pending), Shape::Single)
            };
            let oneof = f.containing_oneof().and_then(|o| {
                oneof_names
                    .iter()
                    .position(|n| n == o.full_name())
                    .map(|i| i as u16)
            });
            fields.push(FieldPlan {
                name: f.name().into(),
                number: f.number(),
                ty,
                shape,
                presence: f.supports_presence() || matches!(ty, Type::Message(_)),
                group: f.is_group(),
                oneof,
                desc: f,
            });
        }
        let mut oneofs: Vec<Vec<u16>> = vec![Vec::new(); oneof_names.len()];
        for (i, f) in fields.iter().enumerate() {
            if let Some(o) = f.oneof {
                oneofs[usize::from(o)].push(i as u16);
            }
        }
        let max_dense = fields
            .iter()
            .map(|f| f.number)
            .filter(|n| *n < DENSE_NUMBERS)
            .max()
            .map_or(0, |n| n as usize + 1);
        let mut dense = vec![NONE; max_dense];
        let mut names = FxHashMap::default();
        for (i, f) in fields.iter().enumerate() {
            if f.number < DENSE_NUMBERS {
                dense[f.number as usize] = i as u16;
            }
            names.insert(Box::from(f.name.as_bytes()), i as u16);
        }
        // JSON names are accepted too, where they differ and no field has them as its name.
        for (i, f) in fields.iter().enumerate() {
            names
                .entry(Box::from(f.desc.json_name().as_bytes()))
                .or_insert(i as u16);
        }
        let mut extensions: Vec<(u32, ExtensionDescriptor)> =
            desc.extensions().map(|e| (e.number(), e)).collect();
        extensions.sort_by_key(|(n, _)| *n);
        MessagePlan {
            desc: desc.clone(),
            fields: fields.into(),
            oneofs: oneofs.into_iter().map(Vec::into_boxed_slice).collect(),
            extensions: extensions.into(),
            dense: dense.into(),
            names,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recursive_types_get_one_plan_each() {
        let pool = prost_reflect::DescriptorPool::global();
        let value = pool.get_message_by_name("google.protobuf.Value").unwrap();
        let mut plans = Plans::default();
        let id = plans.add(&value);
        let again = plans.add(&value);
        assert_eq!(id, again);
        let names: Vec<&str> = plans.messages.iter().map(|m| m.full_name()).collect();
        assert!(names.contains(&"google.protobuf.Struct"), "{names:?}");
        assert!(names.contains(&"google.protobuf.ListValue"), "{names:?}");
        let v = plans.message(id);
        let list = v.by_name(b"list_value").unwrap();
        assert_eq!(v.fields[usize::from(list)].number, 6);
        assert_eq!(v.by_name(b"listValue"), Some(list));
        assert_eq!(v.by_number(6), Some(usize::from(list)));
        assert!(v.by_number(7).is_none() && v.by_number(1000).is_none());
        assert_eq!(v.oneofs.len(), 1);
        assert_eq!(v.oneofs[0].len(), 6);
    }
}
