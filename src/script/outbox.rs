//! A streaming call's responses on their way to the client, bounded in bytes.
//!
//! A script can produce messages far faster than a slow (or stalled) client reads them. Counting
//! messages would let 64 messages of 4 MiB pile up per stream; here every message takes room
//! equal to its size (capped at the whole room, so one message larger than the room still goes
//! through alone), and `ctx:send` waits while the room is full. Whatever a stream buffers is at
//! most [`ROOM`] plus one message. The room is returned as the transport takes each message.
//!
//! A connection may have hundreds of streams, so each message (of [`SMALL`] bytes or more)
//! also holds its bytes in the connection's [`Buffers`] while it waits here; one that does not fit there ends the stream
//! with RESOURCE_EXHAUSTED (in its place, after the messages before it) and the outbox refuses
//! everything after it, so the script stops at its next `ctx:send`.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::Stream;
use prost::Message;
use tokio::sync::{mpsc, Semaphore};
use tonic::Status;

use super::wakes::RelayWaker;
use crate::codec::Outgoing;
use crate::layers::buffers::{Buffers, Held, SMALL};

/// Bytes of responses one stream may hold before `ctx:send` waits. A connection may have
/// hundreds of streams, so this is kept small: a script only gets this far ahead of its client.
pub const ROOM: usize = 64 * 1024;

type Item = (Result<Outgoing, Status>, u32, Option<Held>);

/// The script's end.
#[derive(Clone)]
pub struct OutboxSender {
    tx: mpsc::UnboundedSender<Item>,
    room: Arc<Semaphore>,
    buffers: Option<Buffers>,
    /// Set once a message did not fit in the connection's buffers: the stream is over.
    refused: Arc<AtomicBool>,
}

/// The transport's end: a stream of responses that frees room as it is read. A state thread's
/// sends wake it in batches (see `wakes`).
pub struct OutboxStream {
    rx: mpsc::UnboundedReceiver<Item>,
    room: Arc<Semaphore>,
    relay: RelayWaker,
}

pub enum TrySendError {
    /// No room now: the item comes back.
    Full(Result<Outgoing, Status>),
    /// The client is gone.
    Closed,
}

/// A new bounded outbox, whose messages also hold room in `buffers` (the connection's).
pub fn outbox(buffers: Option<Buffers>) -> (OutboxSender, OutboxStream) {
    let (tx, rx) = mpsc::unbounded_channel();
    let room = Arc::new(Semaphore::new(ROOM));
    (
        OutboxSender {
            tx,
            room: room.clone(),
            buffers,
            refused: Arc::new(AtomicBool::new(false)),
        },
        OutboxStream {
            rx,
            room,
            relay: RelayWaker::default(),
        },
    )
}

/// An item's encoded size. Errors take none.
fn size(item: &Result<Outgoing, Status>) -> usize {
    match item {
        Ok(Outgoing::Encoded(bytes)) => bytes.len(),
        Ok(Outgoing::Message(m)) => m.encoded_len(),
        Err(_) => 0,
    }
}

/// The room an item of `size` bytes takes: at most the whole room.
fn cost(size: usize) -> u32 {
    // ROOM fits in u32.
    u32::try_from(size.min(ROOM)).unwrap_or(u32::MAX)
}

impl OutboxSender {
    pub fn try_send(&self, item: Result<Outgoing, Status>) -> Result<(), TrySendError> {
        if self.is_closed() {
            return Err(TrySendError::Closed);
        }
        let size = size(&item);
        let n = cost(size);
        match self.room.try_acquire_many(n) {
            Ok(permit) => permit.forget(),
            Err(tokio::sync::TryAcquireError::NoPermits) => return Err(TrySendError::Full(item)),
            Err(tokio::sync::TryAcquireError::Closed) => return Err(TrySendError::Closed),
        }
        self.enqueue(item, size, n)
            .map_err(|()| TrySendError::Closed)
    }

    /// Waits for room, then sends; Err when the client is gone.
    pub async fn send(&self, item: Result<Outgoing, Status>) -> Result<(), ()> {
        if self.is_closed() {
            return Err(());
        }
        let size = size(&item);
        let n = cost(size);
        self.room.acquire_many(n).await.map_err(|_| ())?.forget();
        self.enqueue(item, size, n)
    }

    /// Queues `item`, which took `n` of the room, with its `size` held in the connection's
    /// buffers; if it does not fit there, the stream's status goes in its place and the outbox
    /// closes.
    fn enqueue(&self, item: Result<Outgoing, Status>, size: usize, n: u32) -> Result<(), ()> {
        let held = match &self.buffers {
            // Small messages are bounded by the room alone (see `layers::buffers::SMALL`).
            Some(buffers) if item.is_ok() && size >= SMALL => match buffers.take(size) {
                Ok(held) => Some(held),
                Err(full) => {
                    self.refused.store(true, Ordering::Release);
                    self.room.add_permits(n as usize);
                    let _ = self.tx.send((Err(full.into()), 0, None));
                    return Err(());
                }
            },
            _ => None,
        };
        self.tx.send((item, n, held)).map_err(|_| ())
    }

    pub fn is_closed(&self) -> bool {
        self.tx.is_closed() || self.refused.load(Ordering::Acquire)
    }

    /// Resolves when the client is gone.
    pub async fn closed(&self) {
        self.tx.closed().await
    }
}

impl Stream for OutboxStream {
    type Item = Result<Outgoing, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let waker = self.relay.get(cx);
        match self.rx.poll_recv(&mut Context::from_waker(&waker)) {
            Poll::Ready(Some((item, n, held))) => {
                self.room.add_permits(n as usize);
                // The transport holds the encoded bytes from here (see `layers::limit`).
                drop(held);
                Poll::Ready(Some(item))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for OutboxStream {
    fn drop(&mut self) {
        // Wakes a sender waiting for room: nobody will read any more.
        self.room.close();
        self.rx.close();
    }
}
