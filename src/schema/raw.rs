//! Descriptor messages with every `options` field kept as encoded bytes.
//!
//! `prost_types` decodes options into structs that drop extensions, so a custom option such as
//! `(google.api.http)` would be lost on the way through. These mirror `descriptor.proto` field
//! for field (same numbers, same wire format) but hold each options message as the bytes the
//! linker produced or a descriptor set carried, so what reflection serves is what was compiled.

/// `google.protobuf.FileDescriptorSet`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct FileSet {
    #[prost(message, repeated, tag = "1")]
    pub file: Vec<File>,
}

/// `google.protobuf.FileDescriptorProto`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct File {
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    #[prost(string, optional, tag = "2")]
    pub package: Option<String>,
    #[prost(string, repeated, tag = "3")]
    pub dependency: Vec<String>,
    #[prost(int32, repeated, packed = "false", tag = "10")]
    pub public_dependency: Vec<i32>,
    #[prost(int32, repeated, packed = "false", tag = "11")]
    pub weak_dependency: Vec<i32>,
    #[prost(message, repeated, tag = "4")]
    pub message_type: Vec<Message>,
    #[prost(message, repeated, tag = "5")]
    pub enum_type: Vec<Enum>,
    #[prost(message, repeated, tag = "6")]
    pub service: Vec<Service>,
    #[prost(message, repeated, tag = "7")]
    pub extension: Vec<Field>,
    #[prost(bytes = "vec", optional, tag = "8")]
    pub options: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "9")]
    pub source_code_info: Option<Vec<u8>>,
    #[prost(string, optional, tag = "12")]
    pub syntax: Option<String>,
    #[prost(int32, optional, tag = "14")]
    pub edition: Option<i32>,
}

/// `google.protobuf.DescriptorProto`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Message {
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    #[prost(message, repeated, tag = "2")]
    pub field: Vec<Field>,
    #[prost(message, repeated, tag = "6")]
    pub extension: Vec<Field>,
    #[prost(message, repeated, tag = "3")]
    pub nested_type: Vec<Message>,
    #[prost(message, repeated, tag = "4")]
    pub enum_type: Vec<Enum>,
    #[prost(message, repeated, tag = "5")]
    pub extension_range: Vec<ExtensionRange>,
    #[prost(message, repeated, tag = "8")]
    pub oneof_decl: Vec<Oneof>,
    #[prost(bytes = "vec", optional, tag = "7")]
    pub options: Option<Vec<u8>>,
    #[prost(message, repeated, tag = "9")]
    pub reserved_range: Vec<Range>,
    #[prost(string, repeated, tag = "10")]
    pub reserved_name: Vec<String>,
}

/// `DescriptorProto.ExtensionRange`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ExtensionRange {
    #[prost(int32, optional, tag = "1")]
    pub start: Option<i32>,
    #[prost(int32, optional, tag = "2")]
    pub end: Option<i32>,
    #[prost(bytes = "vec", optional, tag = "3")]
    pub options: Option<Vec<u8>>,
}

/// `DescriptorProto.ReservedRange` and `EnumDescriptorProto.EnumReservedRange`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Range {
    #[prost(int32, optional, tag = "1")]
    pub start: Option<i32>,
    #[prost(int32, optional, tag = "2")]
    pub end: Option<i32>,
}

/// `google.protobuf.FieldDescriptorProto`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Field {
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    #[prost(int32, optional, tag = "3")]
    pub number: Option<i32>,
    #[prost(int32, optional, tag = "4")]
    pub label: Option<i32>,
    #[prost(int32, optional, tag = "5")]
    pub r#type: Option<i32>,
    #[prost(string, optional, tag = "6")]
    pub type_name: Option<String>,
    #[prost(string, optional, tag = "2")]
    pub extendee: Option<String>,
    #[prost(string, optional, tag = "7")]
    pub default_value: Option<String>,
    #[prost(int32, optional, tag = "9")]
    pub oneof_index: Option<i32>,
    #[prost(string, optional, tag = "10")]
    pub json_name: Option<String>,
    #[prost(bytes = "vec", optional, tag = "8")]
    pub options: Option<Vec<u8>>,
    #[prost(bool, optional, tag = "17")]
    pub proto3_optional: Option<bool>,
}

/// `google.protobuf.OneofDescriptorProto`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Oneof {
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    #[prost(bytes = "vec", optional, tag = "2")]
    pub options: Option<Vec<u8>>,
}

/// `google.protobuf.EnumDescriptorProto`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Enum {
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    #[prost(message, repeated, tag = "2")]
    pub value: Vec<EnumValue>,
    #[prost(bytes = "vec", optional, tag = "3")]
    pub options: Option<Vec<u8>>,
    #[prost(message, repeated, tag = "4")]
    pub reserved_range: Vec<Range>,
    #[prost(string, repeated, tag = "5")]
    pub reserved_name: Vec<String>,
}

/// `google.protobuf.EnumValueDescriptorProto`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EnumValue {
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    #[prost(int32, optional, tag = "2")]
    pub number: Option<i32>,
    #[prost(bytes = "vec", optional, tag = "3")]
    pub options: Option<Vec<u8>>,
}

/// `google.protobuf.ServiceDescriptorProto`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Service {
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    #[prost(message, repeated, tag = "2")]
    pub method: Vec<Method>,
    #[prost(bytes = "vec", optional, tag = "3")]
    pub options: Option<Vec<u8>>,
}

/// `google.protobuf.MethodDescriptorProto`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Method {
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    #[prost(string, optional, tag = "2")]
    pub input_type: Option<String>,
    #[prost(string, optional, tag = "3")]
    pub output_type: Option<String>,
    #[prost(bytes = "vec", optional, tag = "4")]
    pub options: Option<Vec<u8>>,
    #[prost(bool, optional, tag = "5")]
    pub client_streaming: Option<bool>,
    #[prost(bool, optional, tag = "6")]
    pub server_streaming: Option<bool>,
}

/// A name, or "" when absent.
pub fn name(n: &Option<String>) -> &str {
    n.as_deref().unwrap_or("")
}

/// What indexing reads of a `FileDescriptorProto`: names only (prost skips the other fields
/// without allocating for them).
#[derive(Clone, PartialEq, prost::Message)]
pub struct FileNames {
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    #[prost(string, optional, tag = "2")]
    pub package: Option<String>,
    #[prost(string, repeated, tag = "3")]
    pub dependency: Vec<String>,
    #[prost(message, repeated, tag = "4")]
    pub message_type: Vec<MessageNames>,
    #[prost(message, repeated, tag = "5")]
    pub enum_type: Vec<Named>,
    #[prost(message, repeated, tag = "6")]
    pub service: Vec<ServiceNames>,
    #[prost(message, repeated, tag = "7")]
    pub extension: Vec<ExtensionNames>,
    #[prost(string, optional, tag = "12")]
    pub syntax: Option<String>,
}

/// A message's name and the names declared inside it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct MessageNames {
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    #[prost(message, repeated, tag = "6")]
    pub extension: Vec<ExtensionNames>,
    #[prost(message, repeated, tag = "3")]
    pub nested_type: Vec<MessageNames>,
    #[prost(message, repeated, tag = "4")]
    pub enum_type: Vec<Named>,
}

/// An extension's name, the message it extends and its field number (for reflection's
/// extension requests).
#[derive(Clone, PartialEq, prost::Message)]
pub struct ExtensionNames {
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    #[prost(string, optional, tag = "2")]
    pub extendee: Option<String>,
    #[prost(int32, optional, tag = "3")]
    pub number: Option<i32>,
}

/// Anything whose name is field 1.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Named {
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
}

/// A service's name and its methods (without options).
#[derive(Clone, PartialEq, prost::Message)]
pub struct ServiceNames {
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    #[prost(message, repeated, tag = "2")]
    pub method: Vec<MethodNames>,
}

/// A method without its options.
#[derive(Clone, PartialEq, prost::Message)]
pub struct MethodNames {
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    #[prost(string, optional, tag = "2")]
    pub input_type: Option<String>,
    #[prost(string, optional, tag = "3")]
    pub output_type: Option<String>,
    #[prost(bool, optional, tag = "5")]
    pub client_streaming: Option<bool>,
    #[prost(bool, optional, tag = "6")]
    pub server_streaming: Option<bool>,
}

/// A file's name and imports.
#[derive(Clone, PartialEq, prost::Message)]
pub struct FileHead {
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    #[prost(string, repeated, tag = "3")]
    pub dependency: Vec<String>,
}

/// The extensions a file declares, with what they extend.
#[derive(Clone, PartialEq, prost::Message)]
pub struct FileExtendees {
    #[prost(message, repeated, tag = "4")]
    pub message_type: Vec<MessageExtendees>,
    #[prost(message, repeated, tag = "7")]
    pub extension: Vec<Extendee>,
}

/// The extensions a message (and the messages in it) declare.
#[derive(Clone, PartialEq, prost::Message)]
pub struct MessageExtendees {
    #[prost(message, repeated, tag = "6")]
    pub extension: Vec<Extendee>,
    #[prost(message, repeated, tag = "3")]
    pub nested_type: Vec<MessageExtendees>,
}

/// What an extension extends.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Extendee {
    #[prost(string, optional, tag = "2")]
    pub extendee: Option<String>,
}
