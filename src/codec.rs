//! `DynamicCodec`: a tonic [`Codec`] whose message types are known only at run time.
//!
//! The decoder is built with the method's input descriptor and yields a [`DynamicMessage`]; tonic
//! has already done the framing, compression and size limits, so it sees exactly one message.
//! The encoder takes an [`Outgoing`]: either a message to encode, or bytes that were encoded ahead
//! of time (a constant reply is encoded once at startup and then only copied to the wire).

use bytes::{BufMut, Bytes};
use prost::Message;
use prost_reflect::{DynamicMessage, MessageDescriptor};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::Status;

use crate::error::CallError;

/// A response message on its way to the wire.
#[derive(Debug, Clone)]
pub enum Outgoing {
    /// Already protobuf-encoded bytes of the method's output type.
    Encoded(Bytes),
    /// A message of the method's output type.
    Message(DynamicMessage),
}

/// The codec for one method: decodes its input type, encodes its output.
#[derive(Debug, Clone)]
pub struct DynamicCodec {
    input: MessageDescriptor,
}

impl DynamicCodec {
    pub fn new(input: MessageDescriptor) -> Self {
        Self { input }
    }
}

impl Codec for DynamicCodec {
    type Encode = Outgoing;
    type Decode = DynamicMessage;
    type Encoder = OutgoingEncoder;
    type Decoder = DynamicDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        OutgoingEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        DynamicDecoder {
            desc: self.input.clone(),
        }
    }
}

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

impl Decoder for DynamicDecoder {
    type Item = DynamicMessage;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<DynamicMessage>, Status> {
        let mut msg = DynamicMessage::new(self.desc.clone());
        msg.merge(src).map_err(|e| CallError::BadRequest {
            expected: self.desc.full_name().to_owned(),
            message: e.to_string(),
        })?;
        Ok(Some(msg))
    }
}
