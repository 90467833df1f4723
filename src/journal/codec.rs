//! Records every message of a call where it crosses the codec: requests as the handler reads
//! them, responses as they are encoded for the wire. This is the one place every shape's
//! messages pass one at a time, so a stream is journaled frame by frame while it runs.
//!
//! A response built as a message is encoded here once and the journal keeps those very bytes;
//! bytes that may be a slice of a larger buffer (an echoed request) are copied.

use bytes::Bytes;
use prost::Message;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::Status;

use super::Tap;
use crate::codec::{Incoming, Outgoing};

/// A server codec that also records the messages of one call, when it has a [`Tap`].
pub struct Journaling<C> {
    inner: C,
    tap: Option<Tap>,
}

impl<C> Journaling<C> {
    pub fn new(inner: C, tap: Option<Tap>) -> Self {
        Self { inner, tap }
    }
}

impl<C> Codec for Journaling<C>
where
    C: Codec<Encode = Outgoing, Decode = Incoming>,
{
    type Encode = Outgoing;
    type Decode = Incoming;
    type Encoder = JournalEncoder<C::Encoder>;
    type Decoder = JournalDecoder<C::Decoder>;

    fn encoder(&mut self) -> Self::Encoder {
        JournalEncoder {
            inner: self.inner.encoder(),
            tap: self.tap.clone(),
        }
    }

    fn decoder(&mut self) -> Self::Decoder {
        JournalDecoder {
            inner: self.inner.decoder(),
            tap: self.tap.clone(),
        }
    }
}

pub struct JournalEncoder<E> {
    inner: E,
    tap: Option<Tap>,
}

impl<E> Encoder for JournalEncoder<E>
where
    E: Encoder<Item = Outgoing, Error = Status>,
{
    type Item = Outgoing;
    type Error = Status;

    fn encode(&mut self, item: Outgoing, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        let Some(tap) = &self.tap else {
            return self.inner.encode(item, dst);
        };
        let bytes = match item {
            Outgoing::Encoded(bytes) => {
                tap.response_shared(&bytes);
                bytes
            }
            Outgoing::Message(msg) => {
                let bytes = Bytes::from(msg.encode_to_vec());
                tap.response(bytes.clone());
                bytes
            }
        };
        self.inner.encode(Outgoing::Encoded(bytes), dst)
    }

    fn buffer_settings(&self) -> tonic::codec::BufferSettings {
        self.inner.buffer_settings()
    }
}

pub struct JournalDecoder<D> {
    inner: D,
    tap: Option<Tap>,
}

impl<D> Decoder for JournalDecoder<D>
where
    D: Decoder<Item = Incoming, Error = Status>,
{
    type Item = Incoming;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Incoming>, Status> {
        let item = self.inner.decode(src)?;
        if let (Some(tap), Some(incoming)) = (&self.tap, &item) {
            tap.request(incoming.bytes());
        }
        Ok(item)
    }

    fn buffer_settings(&self) -> tonic::codec::BufferSettings {
        self.inner.buffer_settings()
    }
}
