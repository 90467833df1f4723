//! Tonic [`Codec`]s whose message types are known only at run time.
//!
//! tonic has already done the framing, compression and size limits, so a decoder sees exactly
//! one message. The server's [`RequestCodec`] does not decode at all: it hands the handler an
//! [`Incoming`], the message's bytes, which the handler decodes only as far as it needs.
//! [`DynamicCodec`] decodes into a [`DynamicMessage`] (for clients of the server, such as the
//! tests). Both encode an [`Outgoing`]: a message, or bytes encoded ahead of time (a constant
//! reply is encoded once at startup and then only copied to the wire).

use std::marker::PhantomData;

use bytes::{Buf, BufMut, Bytes};
use prost::Message;
use prost_reflect::{DynamicMessage, MessageDescriptor};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
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

/// The codec for one method: encodes [`Outgoing`], decodes the input type with `D`.
#[derive(Debug, Clone)]
pub struct DescriptorCodec<D> {
    input: MessageDescriptor,
    decoder: PhantomData<fn() -> D>,
}

impl<D> DescriptorCodec<D> {
    pub fn new(input: MessageDescriptor) -> Self {
        Self {
            input,
            decoder: PhantomData,
        }
    }
}

impl<D> Codec for DescriptorCodec<D>
where
    D: Decoder<Error = Status> + From<MessageDescriptor> + Send + 'static,
    D::Item: Send + 'static,
{
    type Encode = Outgoing;
    type Decode = D::Item;
    type Encoder = OutgoingEncoder;
    type Decoder = D;

    fn encoder(&mut self) -> Self::Encoder {
        OutgoingEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        D::from(self.input.clone())
    }
}

/// Decodes each message into a [`DynamicMessage`] (for clients of the server, such as tests).
pub type DynamicCodec = DescriptorCodec<DynamicDecoder>;

/// The server's codec: requests stay bytes until a handler needs them.
pub type RequestCodec = DescriptorCodec<IncomingDecoder>;

#[derive(Debug)]
pub struct OutgoingEncoder;

impl Encoder for OutgoingEncoder {
    type Item = Outgoing;
    type Error = Status;

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

#[derive(Debug)]
pub struct DynamicDecoder {
    desc: MessageDescriptor,
}

impl From<MessageDescriptor> for DynamicDecoder {
    fn from(desc: MessageDescriptor) -> Self {
        Self { desc }
    }
}

impl Decoder for DynamicDecoder {
    type Item = DynamicMessage;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<DynamicMessage>, Status> {
        let bytes = src.copy_to_bytes(src.remaining());
        Ok(Some(Incoming::new(bytes, self.desc.clone()).decode()?))
    }
}

/// A request message as it arrived, decoded only when a handler needs the message.
#[derive(Debug, Clone)]
pub struct Incoming {
    bytes: Bytes,
    desc: MessageDescriptor,
}

impl Incoming {
    pub fn new(bytes: Bytes, desc: MessageDescriptor) -> Self {
        Self { bytes, desc }
    }

    /// The encoded message.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// The whole message; INVALID_ARGUMENT when the bytes are not one of the input type.
    pub fn decode(&self) -> Result<DynamicMessage, CallError> {
        DynamicMessage::decode(self.desc.clone(), self.bytes.clone())
            .map_err(|e| self.bad(e.to_string()))
    }

    /// Checks the bytes are a well-formed message of the input type, without decoding it.
    pub fn validate(&self) -> Result<(), CallError> {
        wire::validate(&self.bytes, &self.desc).map_err(|e| self.bad(e))
    }

    fn bad(&self, message: String) -> CallError {
        CallError::BadRequest {
            expected: self.desc.full_name().to_owned(),
            message,
        }
    }
}

#[derive(Debug)]
pub struct IncomingDecoder {
    desc: MessageDescriptor,
}

impl From<MessageDescriptor> for IncomingDecoder {
    fn from(desc: MessageDescriptor) -> Self {
        Self { desc }
    }
}

impl Decoder for IncomingDecoder {
    type Item = Incoming;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Incoming>, Status> {
        let bytes = src.copy_to_bytes(src.remaining());
        Ok(Some(Incoming::new(bytes, self.desc.clone())))
    }
}
