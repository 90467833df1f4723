//! Responses written as JSON in a handler file, with request fields interpolated.
//!
//! A template is compiled once at startup against the method's input and output descriptors:
//! every constant part is parsed (proto3 JSON mapping) and checked then, every `{{path}}` is
//! resolved to field descriptors then. At call time rendering only copies values.
//!
//! - `"Hello, {{name}}!"` interpolates fields into a string (or bytes) field ([`text`]);
//! - a string that is exactly one placeholder, `"{{location}}"`, copies the field's typed value
//!   (numbers widen, anything turns into text for a string field); `"{{.}}"` is the whole request
//!   ([`value`]);
//! - constant values are read with the proto3 JSON mapping ([`json`]).
//!
//! The handler kinds build on these: `reply` and `stream` in [`crate::handler::reply`], `error`
//! messages, rule conditions.

pub mod json;
pub mod text;
pub mod value;

pub use json::{parse_field_value, parse_message};
pub use text::{write_text, TextTemplate};
pub use value::{has_placeholder, leaves_unset, whole_placeholder, MessageTemplate, ValueTemplate};

pub use crate::error::{EntryError, EntryErrors};

pub(crate) type Result<T> = std::result::Result<T, EntryErrors>;

/// Why a template gave no value for one request.
#[derive(Debug)]
pub enum RenderError {
    /// A value that could not be built for this request.
    Bad(String),
    /// A number the request carries does not fit the reply field it is copied into (an
    /// `int64` copied into an `int32`, a fraction into an integer): the request is what the
    /// handler cannot answer, so the call fails with `INVALID_ARGUMENT`.
    Unfit(String),
    /// The rendered reply would pass `--max-message-size`: a template that copies a request
    /// field many times multiplies the request's size, so rendering stops at the limit instead
    /// of building the whole thing first.
    TooLarge,
}

impl From<String> for RenderError {
    fn from(message: String) -> Self {
        RenderError::Bad(message)
    }
}

/// The bytes a reply being rendered may still take; every copied or interpolated value is
/// counted before it is built.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    left: usize,
}

impl Budget {
    pub fn new(limit: usize) -> Self {
        Self { left: limit }
    }

    pub fn left(&self) -> usize {
        self.left
    }

    /// Counts `n` bytes, or fails when they do not fit.
    pub fn take(&mut self, n: usize) -> std::result::Result<(), RenderError> {
        self.left = self.left.checked_sub(n).ok_or(RenderError::TooLarge)?;
        Ok(())
    }
}

pub(crate) fn err<T>(path: &str, message: impl Into<String>) -> Result<T> {
    Err(EntryError {
        path: path.to_owned(),
        message: message.into(),
    }
    .into())
}
