//! A streaming call's responses on their way to the client, bounded in bytes.
//!
//! A script can produce messages far faster than a slow (or stalled) client reads them. Counting
//! messages would let 64 messages of 4 MiB pile up per stream; here every message takes room
//! equal to its size (capped at the whole room, so one message larger than the room still goes
//! through alone), and `ctx:send` waits while the room is full. Whatever a stream buffers is at
//! most [`ROOM`] plus one message. The room is returned as the transport takes each message.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::Stream;
use prost::Message;
use tokio::sync::{mpsc, Semaphore};
use tonic::Status;

use super::wakes::RelayWaker;
use crate::codec::Outgoing;

/// Bytes of responses one stream may hold before `ctx:send` waits.
pub const ROOM: usize = 2 * 1024 * 1024;

type Item = (Result<Outgoing, Status>, u32);

/// The script's end.
#[derive(Clone)]
pub struct OutboxSender {
    tx: mpsc::UnboundedSender<Item>,
    room: Arc<Semaphore>,
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

/// A new bounded outbox.
pub fn outbox() -> (OutboxSender, OutboxStream) {
    let (tx, rx) = mpsc::unbounded_channel();
    let room = Arc::new(Semaphore::new(ROOM));
    (
        OutboxSender {
            tx,
            room: room.clone(),
        },
        OutboxStream {
            rx,
            room,
            relay: RelayWaker::default(),
        },
    )
}

/// The room an item takes: its encoded size, at most the whole room. Errors take none.
fn cost(item: &Result<Outgoing, Status>) -> u32 {
    let len = match item {
        Ok(Outgoing::Encoded(bytes)) => bytes.len(),
        Ok(Outgoing::Message(m)) => m.encoded_len(),
        Err(_) => 0,
    };
    // ROOM fits in u32.
    u32::try_from(len.min(ROOM)).unwrap_or(u32::MAX)
}

impl OutboxSender {
    pub fn try_send(&self, item: Result<Outgoing, Status>) -> Result<(), TrySendError> {
        if self.tx.is_closed() {
            return Err(TrySendError::Closed);
        }
        let n = cost(&item);
        match self.room.try_acquire_many(n) {
            Ok(permit) => permit.forget(),
            Err(tokio::sync::TryAcquireError::NoPermits) => return Err(TrySendError::Full(item)),
            Err(tokio::sync::TryAcquireError::Closed) => return Err(TrySendError::Closed),
        }
        self.tx.send((item, n)).map_err(|_| TrySendError::Closed)
    }

    /// Waits for room, then sends; Err when the client is gone.
    pub async fn send(&self, item: Result<Outgoing, Status>) -> Result<(), ()> {
        let n = cost(&item);
        self.room.acquire_many(n).await.map_err(|_| ())?.forget();
        self.tx.send((item, n)).map_err(|_| ())
    }

    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
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
            Poll::Ready(Some((item, n))) => {
                self.room.add_permits(n as usize);
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
