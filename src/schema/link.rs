//! Linking: parsed files → descriptors with every name resolved and every option interpreted.
//!
//! protox links one file at a time through a full prost-reflect pool, which for a tree the size of
//! googleapis costs seconds and over a gigabyte. Serving needs much less: fully qualified type
//! names, field kinds, json names, and options encoded as their messages. This linker does that
//! with one symbol table over all files and then links the files in parallel on every core,
//! each file turned straight into its encoded form.
//!
//! It resolves names by the protobuf scoping rules and interprets options the way protoc does,
//! but it does not repeat every check protoc makes: on any problem it stops, and the caller
//! re-runs protox on the offending file for a diagnostic with `file:line:col`. The files that
//! serving decodes into a prost-reflect pool are checked in full there.

use std::collections::HashMap;

use bytes::Bytes;

use prost::Message as _;
use prost_reflect::{
    Cardinality, DescriptorPool, DynamicMessage, ExtensionDescriptor, MessageDescriptor,
    ReflectMessage, Value,
};
use prost_types::uninterpreted_option::NamePart;
use prost_types::{
    DescriptorProto, EnumDescriptorProto, FieldDescriptorProto, FileDescriptorProto,
    ServiceDescriptorProto, UninterpretedOption,
};

use super::{parallel, raw};

/// A file to link, encoded: kept as bytes between parsing and linking, a tree of thousands of
/// files costs its encoded size (tens of megabytes) instead of ten times that in structs.
pub struct Input {
    pub name: String,
    pub dependencies: Vec<String>,
    /// Parsed from source (names relative, options uninterpreted), or already linked (from a
    /// descriptor set or the bundled well-known types).
    pub linked: bool,
    pub encoded: Bytes,
}

impl Input {
    /// A parsed file, without its source info.
    pub fn source(mut file: FileDescriptorProto) -> Self {
        file.source_code_info = None;
        Self {
            name: file.name().to_owned(),
            dependencies: file.dependency.clone(),
            linked: false,
            encoded: Bytes::from(file.encode_to_vec()),
        }
    }

    /// An encoded, linked file.
    pub fn linked(encoded: Bytes) -> Result<Self, prost::DecodeError> {
        let head = raw::FileHead::decode(encoded.as_ref())?;
        Ok(Self {
            name: raw::name(&head.name).to_owned(),
            dependencies: head.dependency,
            linked: true,
            encoded,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn dependencies(&self) -> &[String] {
        &self.dependencies
    }
}

/// Why a file could not be linked; the caller turns it into a located diagnostic.
#[derive(Debug, Clone)]
pub struct LinkError {
    pub file: String,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Package,
    Message,
    Enum,
    Service,
    Extension,
}

type Symbols = HashMap<Box<str>, Kind>;

/// Links `files` (in dependency order) on every core; returns each file linked and encoded, in
/// the same order.
pub fn link(files: Vec<Input>) -> Result<Vec<Bytes>, LinkError> {
    let started = std::time::Instant::now();
    let symbols = collect_symbols(&files)?;
    let options = OptionsPool::new(&files)?;
    tracing::debug!(
        "{} symbols and the options pool in {:?}",
        symbols.len(),
        started.elapsed()
    );
    parallel::map(files, |input| {
        if input.linked {
            return Ok(input.encoded);
        }
        let file = FileDescriptorProto::decode(input.encoded.as_ref()).map_err(|e| LinkError {
            file: input.name.clone(),
            message: format!("cannot re-read the parsed file: {e}"),
        })?;
        Linker {
            symbols: &symbols,
            options: &options,
            file: &input.name,
        }
        .file(&file)
        .map(|linked| Bytes::from(linked.encode_to_vec()))
    })
    .into_iter()
    .collect()
}

fn collect_symbols(files: &[Input]) -> Result<Symbols, LinkError> {
    let mut symbols = Symbols::with_capacity(files.len() * 16);
    for file in files {
        let f = raw::FileNames::decode(file.encoded.as_ref()).map_err(|e| LinkError {
            file: file.name.clone(),
            message: format!("cannot re-read the parsed file: {e}"),
        })?;
        let package = raw::name(&f.package);
        add_package(&mut symbols, package);
        for m in &f.message_type {
            add_message(&mut symbols, package, m);
        }
        for e in &f.enum_type {
            symbols.insert(join(package, raw::name(&e.name)).into(), Kind::Enum);
        }
        for s in &f.service {
            symbols.insert(join(package, raw::name(&s.name)).into(), Kind::Service);
        }
        for x in &f.extension {
            symbols.insert(join(package, raw::name(&x.name)).into(), Kind::Extension);
        }
    }
    Ok(symbols)
}

fn add_package(symbols: &mut Symbols, package: &str) {
    if package.is_empty() {
        return;
    }
    for (i, _) in package.match_indices('.') {
        symbols.entry(package[..i].into()).or_insert(Kind::Package);
    }
    symbols.entry(package.into()).or_insert(Kind::Package);
}

fn add_message(symbols: &mut Symbols, scope: &str, m: &raw::MessageNames) {
    let name = join(scope, raw::name(&m.name));
    for n in &m.nested_type {
        add_message(symbols, &name, n);
    }
    for e in &m.enum_type {
        symbols.insert(join(&name, raw::name(&e.name)).into(), Kind::Enum);
    }
    for x in &m.extension {
        symbols.insert(join(&name, raw::name(&x.name)).into(), Kind::Extension);
    }
    symbols.insert(name.into(), Kind::Message);
}

pub fn join(scope: &str, name: &str) -> String {
    if scope.is_empty() {
        name.to_owned()
    } else {
        let mut s = String::with_capacity(scope.len() + 1 + name.len());
        s.push_str(scope);
        s.push('.');
        s.push_str(name);
        s
    }
}

#[derive(Clone, Copy)]
enum Want {
    Message,
    Type,
    Extension,
}

impl Want {
    fn accepts(self, kind: Kind) -> bool {
        matches!(
            (self, kind),
            (Want::Message, Kind::Message)
                | (Want::Type, Kind::Message | Kind::Enum)
                | (Want::Extension, Kind::Extension)
        )
    }

    fn what(self) -> &'static str {
        match self {
            Want::Message => "a message type",
            Want::Type => "a message or enum type",
            Want::Extension => "an extension",
        }
    }
}

/// Resolves `name` from `scope` by protobuf's rules: innermost scope first; a dotted name commits
/// to the first scope where its first component is found.
fn resolve(symbols: &Symbols, scope: &str, name: &str, want: Want) -> Option<(String, Kind)> {
    if let Some(full) = name.strip_prefix('.') {
        return symbols
            .get(full)
            .filter(|k| want.accepts(**k))
            .map(|k| (full.to_owned(), *k));
    }
    let first = name.split('.').next().unwrap_or_default();
    let simple = first.len() == name.len();
    let mut parent = Some(scope);
    while let Some(p) = parent {
        let candidate = join(p, first);
        if simple {
            if let Some(k) = symbols.get(candidate.as_str()) {
                if want.accepts(*k) {
                    return Some((candidate, *k));
                }
            }
        } else if let Some(Kind::Package | Kind::Message) = symbols.get(candidate.as_str()) {
            let full = join(p, name);
            return symbols
                .get(full.as_str())
                .filter(|k| want.accepts(**k))
                .map(|k| (full, *k));
        }
        parent = if p.is_empty() {
            None
        } else {
            Some(p.rfind('.').map_or("", |i| &p[..i]))
        };
    }
    None
}

/// The extensions of `google.protobuf.*Options` the linked files declare, in a prost-reflect
/// pool with their types, so option values can be interpreted against real descriptors.
struct OptionsPool {
    pool: DescriptorPool,
}

impl OptionsPool {
    fn new(files: &[Input]) -> Result<Self, LinkError> {
        let declares = |f: &Input| {
            raw::FileExtendees::decode(f.encoded.as_ref()).is_ok_and(|x| {
                x.extension
                    .iter()
                    .any(|e| ends_options(raw::name(&e.extendee)))
                    || x.message_type.iter().any(message_extends_options)
            })
        };
        let declaring: Vec<usize> = (0..files.len()).filter(|&i| declares(&files[i])).collect();
        if declaring.is_empty() {
            return Ok(Self {
                pool: DescriptorPool::global(),
            });
        }
        // The declaring files and everything they import, in the (dependency) order given.
        let by_name: HashMap<&str, usize> = files
            .iter()
            .enumerate()
            .map(|(i, f)| (f.name(), i))
            .collect();
        let mut wanted = vec![false; files.len()];
        let mut stack = declaring;
        while let Some(i) = stack.pop() {
            if std::mem::replace(&mut wanted[i], true) {
                continue;
            }
            for d in files[i].dependencies() {
                if let Some(&j) = by_name.get(d.as_str()) {
                    stack.push(j);
                }
            }
        }
        let mut protos = Vec::new();
        for (i, f) in files.iter().enumerate().filter(|(i, _)| wanted[*i]) {
            let unreadable = |e: String| LinkError {
                file: files[i].name().to_owned(),
                message: format!("cannot read the file: {e}"),
            };
            let mut proto = FileDescriptorProto::decode(f.encoded.as_ref())
                .map_err(|e| unreadable(e.to_string()))?;
            if proto.syntax() == "editions" {
                let as_proto3 = super::editions::to_proto3(&f.encoded).map_err(unreadable)?;
                proto = FileDescriptorProto::decode(as_proto3.as_slice())
                    .map_err(|e| unreadable(e.to_string()))?;
            }
            protos.push(proto);
        }
        // prost-reflect panics on some invalid files while describing the error.
        let built = std::panic::catch_unwind(move || {
            let mut pool = DescriptorPool::new();
            pool.add_file_descriptor_protos(protos).map(|()| pool)
        });
        match built {
            Ok(Ok(pool)) => Ok(Self { pool }),
            Ok(Err(e)) => Err(LinkError {
                file: e.file().unwrap_or_default().to_owned(),
                message: e.to_string(),
            }),
            Err(_) => Err(LinkError {
                file: String::new(),
                message: "the files that declare custom options are not valid descriptors".into(),
            }),
        }
    }

    fn options_message(&self, name: &str) -> Option<MessageDescriptor> {
        self.pool
            .get_message_by_name(name)
            .or_else(|| DescriptorPool::global().get_message_by_name(name))
    }
}

/// Reserved ranges of a message or an enum (two descriptor types with the same fields).
fn ranges(r: impl Iterator<Item = (Option<i32>, Option<i32>)>) -> Vec<raw::Range> {
    r.map(|(start, end)| raw::Range { start, end }).collect()
}

/// An options message of `descriptor.proto`: its full name and its uninterpreted options, the
/// part linking turns into fields and extensions.
trait OptionsMessage: prost::Message + Clone {
    const TYPE_NAME: &'static str;
    fn uninterpreted(&self) -> &[UninterpretedOption];
    fn clear_uninterpreted(&mut self);
}

macro_rules! options_message {
    ($($t:ident),*) => {$(
        impl OptionsMessage for prost_types::$t {
            const TYPE_NAME: &'static str = concat!("google.protobuf.", stringify!($t));
            fn uninterpreted(&self) -> &[UninterpretedOption] {
                &self.uninterpreted_option
            }
            fn clear_uninterpreted(&mut self) {
                self.uninterpreted_option.clear()
            }
        }
    )*};
}

options_message!(
    FileOptions,
    MessageOptions,
    FieldOptions,
    OneofOptions,
    EnumOptions,
    EnumValueOptions,
    ServiceOptions,
    MethodOptions,
    ExtensionRangeOptions
);

fn ends_options(extendee: &str) -> bool {
    extendee.ends_with("Options")
}

fn message_extends_options(m: &raw::MessageExtendees) -> bool {
    m.extension
        .iter()
        .any(|e| ends_options(raw::name(&e.extendee)))
        || m.nested_type.iter().any(message_extends_options)
}

struct Linker<'a> {
    symbols: &'a Symbols,
    options: &'a OptionsPool,
    file: &'a str,
}

impl Linker<'_> {
    fn error(&self, message: String) -> LinkError {
        LinkError {
            file: self.file.to_owned(),
            message,
        }
    }

    fn file(&self, f: &FileDescriptorProto) -> Result<raw::File, LinkError> {
        let package = f.package();
        Ok(raw::File {
            name: f.name.clone(),
            package: f.package.clone(),
            dependency: f.dependency.clone(),
            public_dependency: f.public_dependency.clone(),
            weak_dependency: f.weak_dependency.clone(),
            message_type: f
                .message_type
                .iter()
                .map(|m| self.message(package, m))
                .collect::<Result<_, _>>()?,
            enum_type: f
                .enum_type
                .iter()
                .map(|e| self.enumeration(package, e))
                .collect::<Result<_, _>>()?,
            service: f
                .service
                .iter()
                .map(|s| self.service(package, s))
                .collect::<Result<_, _>>()?,
            extension: f
                .extension
                .iter()
                .map(|x| self.field(package, x))
                .collect::<Result<_, _>>()?,
            options: self.options(f.options.as_ref(), package)?,
            source_code_info: None,
            syntax: f.syntax.clone(),
            edition: None,
        })
    }

    fn message(&self, scope: &str, m: &DescriptorProto) -> Result<raw::Message, LinkError> {
        let name = join(scope, m.name());
        Ok(raw::Message {
            name: m.name.clone(),
            field: m
                .field
                .iter()
                .map(|x| self.field(&name, x))
                .collect::<Result<_, _>>()?,
            extension: m
                .extension
                .iter()
                .map(|x| self.field(&name, x))
                .collect::<Result<_, _>>()?,
            nested_type: m
                .nested_type
                .iter()
                .map(|n| self.message(&name, n))
                .collect::<Result<_, _>>()?,
            enum_type: m
                .enum_type
                .iter()
                .map(|e| self.enumeration(&name, e))
                .collect::<Result<_, _>>()?,
            extension_range: m
                .extension_range
                .iter()
                .map(|r| {
                    Ok(raw::ExtensionRange {
                        start: r.start,
                        end: r.end,
                        options: self.options(r.options.as_ref(), &name)?,
                    })
                })
                .collect::<Result<_, _>>()?,
            oneof_decl: m
                .oneof_decl
                .iter()
                .map(|o| {
                    Ok(raw::Oneof {
                        name: o.name.clone(),
                        options: self.options(o.options.as_ref(), &name)?,
                    })
                })
                .collect::<Result<_, _>>()?,
            options: self.options(m.options.as_ref(), &name)?,
            reserved_range: ranges(m.reserved_range.iter().map(|r| (r.start, r.end))),
            reserved_name: m.reserved_name.clone(),
        })
    }

    fn field(&self, scope: &str, x: &FieldDescriptorProto) -> Result<raw::Field, LinkError> {
        let mut r#type = x.r#type;
        let type_name = match x.type_name.as_deref() {
            None => None,
            Some(t) => {
                let (full, kind) =
                    resolve(self.symbols, scope, t, Want::Type).ok_or_else(|| {
                        self.error(format!(
                            "field {}: \"{t}\" is not defined (as {})",
                            join(scope, x.name()),
                            Want::Type.what()
                        ))
                    })?;
                let group = prost_types::field_descriptor_proto::Type::Group as i32;
                if r#type != Some(group) {
                    r#type = Some(match kind {
                        Kind::Enum => prost_types::field_descriptor_proto::Type::Enum as i32,
                        _ => prost_types::field_descriptor_proto::Type::Message as i32,
                    });
                }
                Some(format!(".{full}"))
            }
        };
        let extendee = match x.extendee.as_deref() {
            None => None,
            Some(t) => {
                let (full, _) =
                    resolve(self.symbols, scope, t, Want::Message).ok_or_else(|| {
                        self.error(format!(
                            "extension {}: \"{t}\" is not defined (as {})",
                            join(scope, x.name()),
                            Want::Message.what()
                        ))
                    })?;
                Some(format!(".{full}"))
            }
        };
        // protoc writes every field's JSON name, extensions' too.
        let json_name = Some(x.json_name.clone().unwrap_or_else(|| json_name(x.name())));
        Ok(raw::Field {
            name: x.name.clone(),
            number: x.number,
            label: x.label,
            r#type,
            type_name,
            extendee,
            default_value: x.default_value.clone(),
            oneof_index: x.oneof_index,
            json_name,
            options: self.options(x.options.as_ref(), scope)?,
            proto3_optional: x.proto3_optional,
        })
    }

    fn enumeration(&self, scope: &str, e: &EnumDescriptorProto) -> Result<raw::Enum, LinkError> {
        let name = join(scope, e.name());
        Ok(raw::Enum {
            name: e.name.clone(),
            value: e
                .value
                .iter()
                .map(|v| {
                    Ok(raw::EnumValue {
                        name: v.name.clone(),
                        number: v.number,
                        options: self.options(v.options.as_ref(), &name)?,
                    })
                })
                .collect::<Result<_, _>>()?,
            options: self.options(e.options.as_ref(), &name)?,
            reserved_range: ranges(e.reserved_range.iter().map(|r| (r.start, r.end))),
            reserved_name: e.reserved_name.clone(),
        })
    }

    fn service(&self, scope: &str, s: &ServiceDescriptorProto) -> Result<raw::Service, LinkError> {
        let name = join(scope, s.name());
        let message = |t: &Option<String>, method: &str| -> Result<Option<String>, LinkError> {
            let Some(t) = t.as_deref() else {
                return Ok(None);
            };
            let (full, _) = resolve(self.symbols, &name, t, Want::Message).ok_or_else(|| {
                self.error(format!(
                    "method {name}.{method}: \"{t}\" is not defined (as {})",
                    Want::Message.what()
                ))
            })?;
            Ok(Some(format!(".{full}")))
        };
        Ok(raw::Service {
            name: s.name.clone(),
            method: s
                .method
                .iter()
                .map(|m| {
                    Ok(raw::Method {
                        name: m.name.clone(),
                        input_type: message(&m.input_type, m.name())?,
                        output_type: message(&m.output_type, m.name())?,
                        options: self.options(m.options.as_ref(), &name)?,
                        client_streaming: m.client_streaming,
                        server_streaming: m.server_streaming,
                    })
                })
                .collect::<Result<_, _>>()?,
            options: self.options(s.options.as_ref(), &name)?,
        })
    }

    /// The options message encoded, with its uninterpreted options interpreted.
    fn options<T: OptionsMessage>(
        &self,
        options: Option<&T>,
        scope: &str,
    ) -> Result<Option<Vec<u8>>, LinkError> {
        let Some(options) = options else {
            return Ok(None);
        };
        let pending = options.uninterpreted();
        if pending.is_empty() {
            return Ok(Some(options.encode_to_vec()));
        }
        let type_name = T::TYPE_NAME;
        let mut set = options.clone();
        set.clear_uninterpreted();
        let desc = self.options.options_message(type_name).ok_or_else(|| {
            self.error(format!("{type_name} is unknown to the options interpreter"))
        })?;
        let mut message = DynamicMessage::decode(desc, set.encode_to_vec().as_slice())
            .map_err(|e| self.error(format!("{type_name}: {e}")))?;
        for option in pending {
            self.set_option(&mut message, option, scope)?;
        }
        Ok(Some(message.encode_to_vec()))
    }

    fn set_option(
        &self,
        mut message: &mut DynamicMessage,
        option: &UninterpretedOption,
        scope: &str,
    ) -> Result<(), LinkError> {
        let shown = option_name(&option.name);
        let last = option.name.len().saturating_sub(1);
        for (i, part) in option.name.iter().enumerate() {
            let desc = message.descriptor();
            if part.is_extension {
                let ext = self.extension(scope, &part.name_part, &desc, &shown)?;
                if i == last {
                    if ext.cardinality() != Cardinality::Repeated && message.has_extension(&ext) {
                        return Err(self.error(format!("option {shown} is set twice")));
                    }
                    let kind = ext.kind();
                    let list = ext.is_list();
                    set_value(message.get_extension_mut(&ext), &kind, list, option)
                        .map_err(|e| self.error(format!("option {shown}: {e}")))?;
                    return Ok(());
                }
                match message.get_extension_mut(&ext) {
                    Value::Message(sub) => message = sub,
                    _ => {
                        return Err(self.error(format!(
                            "option {shown}: ({}) is not a message",
                            part.name_part
                        )))
                    }
                }
            } else {
                let field = desc.get_field_by_name(&part.name_part).ok_or_else(|| {
                    self.error(format!(
                        "option {shown}: {} has no field \"{}\"",
                        desc.full_name(),
                        part.name_part
                    ))
                })?;
                if i == last {
                    if field.cardinality() != Cardinality::Repeated && message.has_field(&field) {
                        return Err(self.error(format!("option {shown} is set twice")));
                    }
                    let kind = field.kind();
                    let list = field.is_list();
                    set_value(message.get_field_mut(&field), &kind, list, option)
                        .map_err(|e| self.error(format!("option {shown}: {e}")))?;
                    return Ok(());
                }
                match message.get_field_mut(&field) {
                    Value::Message(sub) => message = sub,
                    _ => {
                        return Err(self.error(format!(
                            "option {shown}: {} is not a message",
                            part.name_part
                        )))
                    }
                }
            }
        }
        Ok(())
    }

    fn extension(
        &self,
        scope: &str,
        name: &str,
        extendee: &MessageDescriptor,
        shown: &str,
    ) -> Result<ExtensionDescriptor, LinkError> {
        let (full, _) = resolve(self.symbols, scope, name, Want::Extension)
            .ok_or_else(|| self.error(format!("option {shown}: ({name}) is not defined")))?;
        let ext = self
            .options
            .pool
            .get_extension_by_name(&full)
            .ok_or_else(|| {
                self.error(format!(
                    "option {shown}: {full} does not extend {}",
                    extendee.full_name()
                ))
            })?;
        if ext.containing_message() != *extendee {
            return Err(self.error(format!(
                "option {shown}: {full} extends {}, not {}",
                ext.containing_message().full_name(),
                extendee.full_name()
            )));
        }
        Ok(ext)
    }
}

/// Sets an option's value on `slot`, which has the field's type (`list`: append one element).
fn set_value(
    slot: &mut Value,
    kind: &prost_reflect::Kind,
    list: bool,
    option: &UninterpretedOption,
) -> Result<(), String> {
    if let Value::List(items) = slot {
        if list {
            let mut item = Value::default_value(kind);
            set_value(&mut item, kind, false, option)?;
            items.push(item);
            return Ok(());
        }
    }
    let wrong = || format!("value {} does not fit {kind:?}", shown_value(option));
    let int = |neg_ok: bool| -> Result<i128, String> {
        match (option.positive_int_value, option.negative_int_value) {
            (Some(p), _) => Ok(i128::from(p)),
            (None, Some(n)) if neg_ok => Ok(i128::from(n)),
            _ => Err(wrong()),
        }
    };
    *slot = match slot {
        Value::Bool(_) => match option.identifier_value.as_deref() {
            Some("true") => Value::Bool(true),
            Some("false") => Value::Bool(false),
            _ => return Err(wrong()),
        },
        Value::I32(_) => Value::I32(i32::try_from(int(true)?).map_err(|_| wrong())?),
        Value::I64(_) => Value::I64(i64::try_from(int(true)?).map_err(|_| wrong())?),
        Value::U32(_) => Value::U32(u32::try_from(int(false)?).map_err(|_| wrong())?),
        Value::U64(_) => Value::U64(u64::try_from(int(false)?).map_err(|_| wrong())?),
        Value::F32(_) | Value::F64(_) => {
            let f = if let Some(d) = option.double_value {
                d
            } else if let Some(p) = option.positive_int_value {
                p as f64
            } else if let Some(n) = option.negative_int_value {
                n as f64
            } else {
                match option.identifier_value.as_deref() {
                    Some("inf") => f64::INFINITY,
                    Some("nan") => f64::NAN,
                    _ => return Err(wrong()),
                }
            };
            if matches!(slot, Value::F32(_)) {
                Value::F32(f as f32)
            } else {
                Value::F64(f)
            }
        }
        Value::String(_) => {
            let bytes = option.string_value.clone().ok_or_else(wrong)?;
            Value::String(String::from_utf8(bytes).map_err(|_| wrong())?)
        }
        Value::Bytes(_) => Value::Bytes(option.string_value.clone().ok_or_else(wrong)?.into()),
        Value::EnumNumber(_) => {
            let e = kind.as_enum().ok_or_else(wrong)?;
            let ident = option.identifier_value.as_deref().ok_or_else(wrong)?;
            Value::EnumNumber(e.get_value_by_name(ident).ok_or_else(wrong)?.number())
        }
        Value::Message(_) | Value::Map(_) => {
            let desc = kind.as_message().ok_or_else(wrong)?;
            let text = option.aggregate_value.as_deref().ok_or_else(wrong)?;
            let parsed = DynamicMessage::parse_text_format(desc.clone(), text)
                .map_err(|e| format!("{e}"))?;
            if let Value::Map(map) = slot {
                let key = parsed
                    .get_field_by_number(1)
                    .and_then(|k| k.into_owned().into_map_key())
                    .ok_or_else(wrong)?;
                let value = parsed
                    .get_field_by_number(2)
                    .ok_or_else(wrong)?
                    .into_owned();
                map.insert(key, value);
                return Ok(());
            }
            Value::Message(parsed)
        }
        Value::List(_) => return Err(wrong()),
    };
    Ok(())
}

fn option_name(parts: &[NamePart]) -> String {
    let mut s = String::new();
    for p in parts {
        if !s.is_empty() {
            s.push('.');
        }
        if p.is_extension {
            s.push('(');
            s.push_str(&p.name_part);
            s.push(')');
        } else {
            s.push_str(&p.name_part);
        }
    }
    s
}

fn shown_value(o: &UninterpretedOption) -> String {
    if let Some(v) = &o.identifier_value {
        v.clone()
    } else if let Some(v) = o.positive_int_value {
        v.to_string()
    } else if let Some(v) = o.negative_int_value {
        v.to_string()
    } else if let Some(v) = o.double_value {
        v.to_string()
    } else if let Some(v) = &o.string_value {
        format!("{:?}", String::from_utf8_lossy(v))
    } else {
        o.aggregate_value.clone().unwrap_or_default()
    }
}

/// protoc's default JSON name: `foo_bar_baz` → `fooBarBaz`.
pub fn json_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = false;
    for c in name.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.push(c.to_ascii_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{resolve, Kind, Symbols, Want};

    fn symbols() -> Symbols {
        [
            ("a", Kind::Package),
            ("a.b", Kind::Package),
            ("a.b.M", Kind::Message),
            ("a.b.M.Inner", Kind::Message),
            ("a.b.E", Kind::Enum),
            ("a.M", Kind::Message),
            ("M", Kind::Message),
            ("a.b.ext", Kind::Extension),
            ("x", Kind::Package),
            ("x.M", Kind::Message),
        ]
        .into_iter()
        .map(|(n, k)| (n.into(), k))
        .collect()
    }

    fn found(scope: &str, name: &str, want: Want) -> Option<String> {
        resolve(&symbols(), scope, name, want).map(|(n, _)| n)
    }

    #[test]
    fn names_resolve_from_the_innermost_scope_out() {
        assert_eq!(
            found("a.b.M", "Inner", Want::Type).as_deref(),
            Some("a.b.M.Inner")
        );
        assert_eq!(found("a.b.M", "M", Want::Type).as_deref(), Some("a.b.M"));
        assert_eq!(found("a", "M", Want::Type).as_deref(), Some("a.M"));
        assert_eq!(found("", "M", Want::Type).as_deref(), Some("M"));
        assert_eq!(found("a.b", ".M", Want::Type).as_deref(), Some("M"));
        assert_eq!(found("a.b", "E", Want::Type).as_deref(), Some("a.b.E"));
        assert_eq!(found("a.b", "E", Want::Message), None);
        assert_eq!(
            found("a.b.M", "ext", Want::Extension).as_deref(),
            Some("a.b.ext")
        );
        // A dotted name commits to the scope where its first part is found.
        assert_eq!(
            found("a.b", "M.Inner", Want::Type).as_deref(),
            Some("a.b.M.Inner")
        );
        assert_eq!(found("x.y", "M", Want::Type).as_deref(), Some("x.M"));
        assert_eq!(found("a.b", "b.M", Want::Type).as_deref(), Some("a.b.M"));
        assert_eq!(found("a.b", "x.M", Want::Type).as_deref(), Some("x.M"));
        assert_eq!(found("a.b.M", "M.Nope", Want::Type), None);
        assert_eq!(found("a.b", "Nope", Want::Type), None);
    }
}
