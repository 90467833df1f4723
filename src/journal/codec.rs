//! Records every message of a call where it crosses the codec: requests as the handler reads
//! them, responses as they are encoded for the wire. This is the one place every shape's
//! messages pass one at a time, so a stream is journaled frame by frame while it runs.
//!
//! Each message is copied (or, for a response built as a message, encoded) into the call's
//! record, so the journal never holds on to a receive buffer or a reply shared between calls.

use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::Status;

use super::Tap;
use crate::codec::{Incoming, Outgoing};

/// A server codec that also records the messages of one call, when it has a [`Tap`].
pub struct Journaling<C> {
    inner: C,
    tap: Option<Tap>,
    /// The encoder or the decoder already has its copy: the other takes this one.
    handed: bool,
}

impl<C> Journaling<C> {
    pub fn new(inner: C, tap: Option<Tap>) -> Self {
        Self {
            inner,
            tap,
            handed: false,
        }
    }

    /// The record for the encoder or the decoder: a copy for the first asked, the codec's own
    /// for the second (tonic asks each once per call).
    fn hand(&mut self) -> Option<Tap> {
        if self.handed {
            self.tap.take()
        } else {
            self.handed = true;
            self.tap.clone()
        }
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
            tap: self.hand(),
        }
    }

    fn decoder(&mut self) -> Self::Decoder {
        JournalDecoder {
            inner: self.inner.decoder(),
            tap: self.hand(),
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
        if let Some(tap) = &self.tap {
            match &item {
                Outgoing::Encoded(bytes) => tap.response(bytes),
                Outgoing::Message(msg) => tap.response_message(msg),
            }
        }
        self.inner.encode(item, dst)
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
