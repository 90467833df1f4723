//! Serving files of protobuf editions (from descriptor sets) with a pool that only knows proto2
//! and proto3.
//!
//! prost-reflect 0.16 refuses `syntax = "editions"`. For serving, an editions file is rewritten
//! as the proto3 file that encodes and decodes the same: each field's resolved features decide
//! its shape (explicit presence becomes a proto3 `optional`, expanded repeated fields lose
//! `packed`, and a closed enum carries `features.enum_type = CLOSED` in its own options, where
//! [`crate::kinds::is_closed`] finds it once the file reads as proto3). Reflection still serves
//! the file as it was written. Features proto3 cannot express
//! (required fields, delimited messages, closed enums that do not start at zero, default values)
//! are refused with a message naming the field.

use prost::Message as _;

use super::raw;

/// `google.protobuf.FeatureSet`, the features that change how messages are encoded.
#[derive(Clone, Copy, PartialEq, prost::Message)]
struct Features {
    #[prost(int32, optional, tag = "1")]
    field_presence: Option<i32>,
    #[prost(int32, optional, tag = "2")]
    enum_type: Option<i32>,
    #[prost(int32, optional, tag = "3")]
    repeated_field_encoding: Option<i32>,
    #[prost(int32, optional, tag = "5")]
    message_encoding: Option<i32>,
}

impl Features {
    fn merge(self, inner: Option<Features>) -> Features {
        let Some(inner) = inner else {
            return self;
        };
        Features {
            field_presence: inner.field_presence.or(self.field_presence),
            enum_type: inner.enum_type.or(self.enum_type),
            repeated_field_encoding: inner
                .repeated_field_encoding
                .or(self.repeated_field_encoding),
            message_encoding: inner.message_encoding.or(self.message_encoding),
        }
    }
}

/// The `features` field of an options message: its number differs per options type.
macro_rules! features_of {
    ($name:ident, $tag:literal) => {
        #[derive(Clone, PartialEq, prost::Message)]
        struct $name {
            #[prost(message, optional, tag = $tag)]
            features: Option<Features>,
        }
    };
}
features_of!(FileFeatures, "50");
features_of!(MessageFeatures, "12");
features_of!(FieldFeatures, "21");
features_of!(EnumFeatures, "7");

const EXPLICIT: i32 = 1;
const LEGACY_REQUIRED: i32 = 3;
const CLOSED: i32 = 2;
const EXPANDED: i32 = 2;
const DELIMITED: i32 = 2;
/// `edition = "2023"` and `"2024"`, the editions whose defaults are below.
const EDITIONS: [i32; 2] = [1000, 1001];

const LABEL_REPEATED: i32 = 3;
const TYPE_GROUP: i32 = 10;
const TYPE_MESSAGE: i32 = 11;

/// The defaults of editions 2023 and 2024 for the features above.
const DEFAULTS: Features = Features {
    field_presence: Some(EXPLICIT),
    enum_type: Some(1),
    repeated_field_encoding: Some(1),
    message_encoding: Some(1),
};

fn features<T: prost::Message + Default>(
    options: &Option<Vec<u8>>,
    get: fn(T) -> Option<Features>,
) -> Option<Features> {
    options
        .as_deref()
        .and_then(|o| T::decode(o).ok())
        .and_then(get)
}

/// Rewrites an editions file as proto3 (see the module docs).
pub fn to_proto3(bytes: &[u8]) -> Result<Vec<u8>, String> {
    let mut file = raw::File::decode(bytes).map_err(|e| e.to_string())?;
    let name = raw::name(&file.name).to_owned();
    if let Some(edition) = file.edition.filter(|e| !EDITIONS.contains(e)) {
        return Err(format!(
            "{name}: edition {edition} is newer than protoserve can serve (2023 and 2024)"
        ));
    }
    rewrite(&mut file).map_err(|e| format!("{name}: {e}"))?;
    file.syntax = Some("proto3".into());
    file.edition = None;
    Ok(file.encode_to_vec())
}

/// Every message, enum and extension of `file`. An error names the element, not the file: the
/// caller puts the file's name in front, which is where the error is reported.
fn rewrite(file: &mut raw::File) -> Result<(), String> {
    let base = DEFAULTS.merge(features(&file.options, |o: FileFeatures| o.features));
    let package = raw::name(&file.package).to_owned();
    for m in &mut file.message_type {
        message(m, &join(&package, raw::name(&m.name)), base)?;
    }
    for e in &mut file.enum_type {
        enumeration(e, &join(&package, raw::name(&e.name)), base)?;
    }
    for x in &mut file.extension {
        field(x, &join(&package, raw::name(&x.name)), base, None)?;
    }
    Ok(())
}

fn join(scope: &str, name: &str) -> String {
    super::link::join(scope, name)
}

fn message(m: &mut raw::Message, full: &str, outer: Features) -> Result<(), String> {
    let here = outer.merge(features(&m.options, |o: MessageFeatures| o.features));
    for n in &mut m.nested_type {
        let name = join(full, raw::name(&n.name));
        message(n, &name, here)?;
    }
    for e in &mut m.enum_type {
        enumeration(e, &join(full, raw::name(&e.name)), here)?;
    }
    // proto3 puts the synthetic oneofs of `optional` fields after the declared ones.
    let mut next = m.oneof_decl.len() as i32;
    let mut synthetic = Vec::new();
    for f in &mut m.field {
        let name = join(full, raw::name(&f.name));
        if field(f, &name, here, Some(next))? {
            synthetic.push(raw::Oneof {
                name: Some(format!("_{}", raw::name(&f.name))),
                options: None,
            });
            next += 1;
        }
    }
    m.oneof_decl.extend(synthetic);
    for x in &mut m.extension {
        field(x, &join(full, raw::name(&x.name)), here, None)?;
    }
    Ok(())
}

/// Rewrites one field; `true` when it became a proto3 `optional` whose synthetic oneof the
/// caller adds at `synthetic_index`.
fn field(
    f: &mut raw::Field,
    full: &str,
    outer: Features,
    synthetic_index: Option<i32>,
) -> Result<bool, String> {
    let here = outer.merge(features(&f.options, |o: FieldFeatures| o.features));
    let cannot = |what: &str| {
        Err(format!(
            "{full} uses {what}, which protoserve cannot serve from an editions file yet"
        ))
    };
    if here.field_presence == Some(LEGACY_REQUIRED) {
        return cannot("features.field_presence = LEGACY_REQUIRED");
    }
    if f.r#type == Some(TYPE_GROUP)
        || (f.r#type == Some(TYPE_MESSAGE) && here.message_encoding == Some(DELIMITED))
    {
        return cannot("features.message_encoding = DELIMITED");
    }
    if f.default_value.is_some() {
        return cannot("a default value");
    }
    if f.label == Some(LABEL_REPEATED) {
        if here.repeated_field_encoding == Some(EXPANDED) {
            // `packed = false` (FieldOptions field 2), after anything else: the last one wins.
            f.options
                .get_or_insert_with(Vec::new)
                .extend_from_slice(&[0x10, 0x00]);
        }
        return Ok(false);
    }
    let presence = here.field_presence == Some(EXPLICIT);
    if presence && f.r#type != Some(TYPE_MESSAGE) && f.oneof_index.is_none() && f.extendee.is_none()
    {
        if let Some(index) = synthetic_index {
            f.proto3_optional = Some(true);
            f.oneof_index = Some(index);
            return Ok(true);
        }
    }
    Ok(false)
}

/// Checks one enum and, when it is closed (by its own feature or one it inherits), writes that
/// on the enum itself: a proto3 file's enums are open, so the inherited feature would be lost.
fn enumeration(e: &mut raw::Enum, full: &str, outer: Features) -> Result<(), String> {
    let here = outer.merge(features(&e.options, |o: EnumFeatures| o.features));
    if here.enum_type != Some(CLOSED) {
        return Ok(());
    }
    if e.value.first().and_then(|v| v.number) != Some(0) {
        return Err(format!(
            "{full} is a closed enum whose first value is not 0, which protoserve cannot serve from an editions file yet"
        ));
    }
    // EnumOptions.features (7) = { enum_type (2): CLOSED }, after anything else: a message
    // given twice is merged, so the other features the enum sets stay.
    e.options
        .get_or_insert_with(Vec::new)
        .extend_from_slice(&[0x3a, 0x02, 0x10, CLOSED as u8]);
    Ok(())
}
