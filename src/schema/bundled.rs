//! Files that resolve with nothing on the import path: the well-known types (from
//! prost-reflect's built-in pool) and the common Google API files (`google/api`, `google/rpc`,
//! `google/type`), whose declarations ship in `bundled/`.
//!
//! These are the imports real service definitions use most, and the ones people otherwise
//! copy into their trees. A bundled file always wins over a copy on disk, so an outdated or
//! newer copy (a vendored `descriptor.proto` is the usual one) cannot break compilation.

use prost::Message as _;
use prost_reflect::DescriptorPool;
use prost_types::FileDescriptorProto;

use super::sources::Provider;

/// The well-known types, served from prost-reflect's compiled copies.
pub const WELL_KNOWN: &[&str] = &[
    "google/protobuf/any.proto",
    "google/protobuf/api.proto",
    "google/protobuf/descriptor.proto",
    "google/protobuf/duration.proto",
    "google/protobuf/empty.proto",
    "google/protobuf/field_mask.proto",
    "google/protobuf/source_context.proto",
    "google/protobuf/struct.proto",
    "google/protobuf/timestamp.proto",
    "google/protobuf/type.proto",
    "google/protobuf/wrappers.proto",
    "google/protobuf/compiler/plugin.proto",
];

/// The bundled Google API files: (import name, source).
pub const SOURCES: &[(&str, &str)] = &[
    (
        "google/api/annotations.proto",
        include_str!("bundled/google/api/annotations.proto"),
    ),
    (
        "google/api/client.proto",
        include_str!("bundled/google/api/client.proto"),
    ),
    (
        "google/api/field_behavior.proto",
        include_str!("bundled/google/api/field_behavior.proto"),
    ),
    (
        "google/api/field_info.proto",
        include_str!("bundled/google/api/field_info.proto"),
    ),
    (
        "google/api/http.proto",
        include_str!("bundled/google/api/http.proto"),
    ),
    (
        "google/api/httpbody.proto",
        include_str!("bundled/google/api/httpbody.proto"),
    ),
    (
        "google/api/launch_stage.proto",
        include_str!("bundled/google/api/launch_stage.proto"),
    ),
    (
        "google/api/resource.proto",
        include_str!("bundled/google/api/resource.proto"),
    ),
    (
        "google/api/routing.proto",
        include_str!("bundled/google/api/routing.proto"),
    ),
    (
        "google/api/visibility.proto",
        include_str!("bundled/google/api/visibility.proto"),
    ),
    (
        "google/rpc/code.proto",
        include_str!("bundled/google/rpc/code.proto"),
    ),
    (
        "google/rpc/error_details.proto",
        include_str!("bundled/google/rpc/error_details.proto"),
    ),
    (
        "google/rpc/http.proto",
        include_str!("bundled/google/rpc/http.proto"),
    ),
    (
        "google/rpc/status.proto",
        include_str!("bundled/google/rpc/status.proto"),
    ),
    (
        "google/type/calendar_period.proto",
        include_str!("bundled/google/type/calendar_period.proto"),
    ),
    (
        "google/type/color.proto",
        include_str!("bundled/google/type/color.proto"),
    ),
    (
        "google/type/date.proto",
        include_str!("bundled/google/type/date.proto"),
    ),
    (
        "google/type/datetime.proto",
        include_str!("bundled/google/type/datetime.proto"),
    ),
    (
        "google/type/dayofweek.proto",
        include_str!("bundled/google/type/dayofweek.proto"),
    ),
    (
        "google/type/decimal.proto",
        include_str!("bundled/google/type/decimal.proto"),
    ),
    (
        "google/type/expr.proto",
        include_str!("bundled/google/type/expr.proto"),
    ),
    (
        "google/type/fraction.proto",
        include_str!("bundled/google/type/fraction.proto"),
    ),
    (
        "google/type/interval.proto",
        include_str!("bundled/google/type/interval.proto"),
    ),
    (
        "google/type/latlng.proto",
        include_str!("bundled/google/type/latlng.proto"),
    ),
    (
        "google/type/localized_text.proto",
        include_str!("bundled/google/type/localized_text.proto"),
    ),
    (
        "google/type/money.proto",
        include_str!("bundled/google/type/money.proto"),
    ),
    (
        "google/type/month.proto",
        include_str!("bundled/google/type/month.proto"),
    ),
    (
        "google/type/phone_number.proto",
        include_str!("bundled/google/type/phone_number.proto"),
    ),
    (
        "google/type/postal_address.proto",
        include_str!("bundled/google/type/postal_address.proto"),
    ),
    (
        "google/type/quaternion.proto",
        include_str!("bundled/google/type/quaternion.proto"),
    ),
    (
        "google/type/timeofday.proto",
        include_str!("bundled/google/type/timeofday.proto"),
    ),
];

/// Whether `name` is a bundled file.
pub fn is_bundled(name: &str) -> bool {
    WELL_KNOWN.contains(&name) || source(name).is_some()
}

/// Where a bundled file comes from, if `name` is one.
pub fn find(name: &str) -> Option<Provider> {
    if WELL_KNOWN.contains(&name) {
        let file = DescriptorPool::global().get_file_by_name(name)?;
        return Some(Provider::Linked(file.encode_to_vec()));
    }
    source(name).map(Provider::Source)
}

/// The bundled source of `name`.
pub fn source(name: &str) -> Option<&'static str> {
    SOURCES.iter().find(|(n, _)| *n == name).map(|(_, s)| *s)
}

/// The bundled `name` as parsed (bundled sources) or compiled (well-known types), for comparing
/// a vendored copy with it.
pub fn proto(name: &str) -> Option<FileDescriptorProto> {
    if WELL_KNOWN.contains(&name) {
        let file = DescriptorPool::global().get_file_by_name(name)?;
        return FileDescriptorProto::decode(file.encode_to_vec().as_slice()).ok();
    }
    protox_parse::parse(name, source(name)?).ok()
}
