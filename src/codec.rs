//! The server's tonic [`Codec`], for message types known only at run time.
//!
//! tonic has already done the framing, compression and size limits, so a decoder sees exactly
//! one message. [`RequestCodec`] does not decode at all: it hands the handler an [`Incoming`],
//! the message's bytes, which the handler decodes only as far as it needs. It encodes an
//! [`Outgoing`]: a message, or bytes encoded ahead of time (a constant reply is encoded once at
//! startup and then only copied to the wire). Clients that need a [`DynamicMessage`] decode an
//! [`Incoming`] of their own ([`Incoming::decode`]).
//!
//! Decoding is bounded in memory as well as in size: a request within `--max-message-size` can
//! still decode into something fifty times larger (a packed list of one-byte numbers becomes a
//! list of `Value`s), so [`Incoming::decode`] first estimates the decoded size from the wire
//! bytes ([`wire::check`]) and refuses what would exceed [`DECODED_PER_ENCODED`] times the limit.

use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes};
use prost::Message;
use prost_reflect::{DynamicMessage, MessageDescriptor};
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::Status;

use crate::error::CallError;
use crate::wire;

/// A response message on its way to the wire.
#[derive(Debug, Clone)]
pub enum Outgoing {
    /// Already protobuf-encoded bytes of the method's output type.
    Encoded(Bytes),
    /// A message of the method's output type.
    Message(DynamicMessage),
}

/// How many times `--max-message-size` a decoded request may take in memory.
pub const DECODED_PER_ENCODED: usize = 8;

/// The default `--max-message-size`, for codecs not told the server's.
const DEFAULT_MESSAGE_LIMIT: usize = 4 * 1024 * 1024;

/// The buffers tonic starts each call with, to receive requests and to encode responses;
/// larger messages grow them. tonic's own default (8 KiB) is a large allocation for the
/// allocator: every call paid for it in both directions, and each one made glibc's malloc
/// sweep its free lists, for messages that are mostly tens of bytes. Below 1 KiB the buffers
/// come from the allocator's per-thread cache.
fn call_buffers() -> BufferSettings {
    /// tonic's default: a response stream hands on what it encoded once it holds this much.
    const YIELD_THRESHOLD: usize = 32 * 1024;
    BufferSettings::new(512, YIELD_THRESHOLD)
}

/// The server's codec for one method: requests stay bytes until a handler needs them;
/// responses are [`Outgoing`].
#[derive(Debug, Clone)]
pub struct RequestCodec {
    input: MessageDescriptor,
    decode_budget: usize,
    /// For a method that takes exactly one request message: its name (see
    /// [`RequestCodec::one_message`]).
    one_message: Option<Arc<str>>,
}

impl RequestCodec {
    pub fn new(input: MessageDescriptor) -> Self {
        Self {
            input,
            decode_budget: DEFAULT_MESSAGE_LIMIT * DECODED_PER_ENCODED,
            one_message: None,
        }
    }

    /// Refuses a second request message, as a request cardinality violation of `method`
    /// (UNIMPLEMENTED): tonic's unary entry points read past extra messages as if they were
    /// not there, and every request is read to its end, so the check costs a flag per message.
    pub fn one_message(mut self, method: Arc<str>) -> Self {
        self.one_message = Some(method);
        self
    }

    /// Sets the largest message accepted (`--max-message-size`), which bounds what decoding one
    /// may allocate to [`DECODED_PER_ENCODED`] times as much.
    pub fn message_limit(mut self, max_message_size: usize) -> Self {
        self.decode_budget = max_message_size.saturating_mul(DECODED_PER_ENCODED);
        self
    }
}

impl Codec for RequestCodec {
    type Encode = Outgoing;
    type Decode = Incoming;
    type Encoder = OutgoingEncoder;
    type Decoder = IncomingDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        OutgoingEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        IncomingDecoder {
            desc: self.input.clone(),
            budget: self.decode_budget,
            one_message: self.one_message.clone(),
            decoded: false,
        }
    }
}

/// Encodes an [`Outgoing`] (also for clients of the server that send messages built at run
/// time, such as the tests).
#[derive(Debug)]
pub struct OutgoingEncoder;

impl Encoder for OutgoingEncoder {
    type Item = Outgoing;
    type Error = Status;

    fn buffer_settings(&self) -> BufferSettings {
        call_buffers()
    }

    fn encode(&mut self, item: Outgoing, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        match item {
            Outgoing::Encoded(bytes) => {
                dst.put_slice(&bytes);
                Ok(())
            }
            Outgoing::Message(msg) => msg.encode(dst).map_err(|e| {
                CallError::Encode {
                    message: e.to_string(),
                }
                .into()
            }),
        }
    }
}

/// A request message as it arrived, decoded only when a handler needs the message.
#[derive(Debug, Clone)]
pub struct Incoming {
    bytes: Bytes,
    desc: MessageDescriptor,
    /// The most decoding may allocate, in bytes.
    budget: usize,
}

impl Incoming {
    /// A message with the default decoding budget (that of a 4 MiB `--max-message-size`).
    pub fn new(bytes: Bytes, desc: MessageDescriptor) -> Self {
        Self {
            bytes,
            desc,
            budget: DEFAULT_MESSAGE_LIMIT * DECODED_PER_ENCODED,
        }
    }

    /// Sets the most decoding may allocate, in bytes.
    pub fn with_budget(mut self, budget: usize) -> Self {
        self.budget = budget;
        self
    }

    /// The encoded message.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// The whole message; INVALID_ARGUMENT when the bytes are not one of the input type,
    /// RESOURCE_EXHAUSTED when decoding them would take more memory than the budget.
    pub fn decode(&self) -> Result<DynamicMessage, CallError> {
        self.check_cost()?;
        DynamicMessage::decode(self.desc.clone(), self.bytes.clone()).map_err(|e| {
            // The decoder's words name no field ("invalid string value"); the walk that checks
            // the bytes names it, as for the handlers that never decode the request.
            self.bad(
                wire::validate(&self.bytes, &self.desc)
                    .err()
                    .unwrap_or_else(|| e.to_string()),
            )
        })
    }

    /// RESOURCE_EXHAUSTED when decoding the bytes would take more memory than the budget
    /// (INVALID_ARGUMENT if the walk finds them malformed). Small messages cannot cross the
    /// budget and pass without a walk; larger ones are costed before anything is allocated.
    pub fn check_cost(&self) -> Result<(), CallError> {
        self.check_cost_pacing(None)
    }

    /// [`check_cost`](Self::check_cost), calling `pace` every few thousand steps of the walk
    /// when given (see [`wire::Cost::pacing`]).
    pub fn check_cost_pacing(&self, pace: Option<fn()>) -> Result<(), CallError> {
        if wire::may_exceed(self.bytes.len(), self.budget) {
            let mut cost = match pace {
                Some(pace) => wire::Cost::pacing(self.budget, pace),
                None => wire::Cost::new(self.budget),
            };
            wire::check(&self.bytes, &self.desc, &mut cost).map_err(|e| self.refused(e))?;
        }
        Ok(())
    }

    /// The error for bytes that are not a message of the input type.
    pub fn bad_request(&self, message: String) -> CallError {
        self.bad(message)
    }

    /// Checks the bytes are a well-formed message of the input type, without decoding it.
    pub fn validate(&self) -> Result<(), CallError> {
        wire::validate(&self.bytes, &self.desc).map_err(|e| self.bad(e))
    }

    /// [`validate`](Self::validate) if it takes at most `steps` steps
    /// ([`wire::validate_in_place`]); `Ok(false)` when it would take more.
    pub fn validate_in_place(&self, steps: usize) -> Result<bool, CallError> {
        wire::validate_in_place(&self.bytes, &self.desc, steps).map_err(|e| self.bad(e))
    }

    fn refused(&self, e: wire::Invalid) -> CallError {
        match e {
            wire::Invalid::Malformed(message) => self.bad(message),
            wire::Invalid::TooCostly {
                field,
                cost,
                budget,
            } => CallError::RequestTooCostly {
                expected: self.desc.full_name().to_owned(),
                field,
                cost,
                budget,
                per_limit: DECODED_PER_ENCODED,
            },
        }
    }

    fn bad(&self, message: String) -> CallError {
        CallError::BadRequest {
            expected: self.desc.full_name().to_owned(),
            message,
        }
    }
}

/// Hands each request message on as an [`Incoming`], with the call's decoding budget.
#[derive(Debug)]
pub struct IncomingDecoder {
    desc: MessageDescriptor,
    budget: usize,
    one_message: Option<Arc<str>>,
    decoded: bool,
}

impl Decoder for IncomingDecoder {
    type Item = Incoming;
    type Error = Status;

    fn buffer_settings(&self) -> BufferSettings {
        call_buffers()
    }

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Incoming>, Status> {
        if let Some(method) = &self.one_message {
            if self.decoded {
                return Err(CallError::RequestCount {
                    method: method.clone(),
                    sent: "more than one",
                }
                .into());
            }
            self.decoded = true;
        }
        let bytes = src.copy_to_bytes(src.remaining());
        Ok(Some(
            Incoming::new(bytes, self.desc.clone()).with_budget(self.budget),
        ))
    }
}
