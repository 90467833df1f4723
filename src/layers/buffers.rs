//! Bytes of messages the server holds for its clients, bounded per connection and for the
//! whole server.
//!
//! HTTP/2 flow control bounds what one *stream* can make the server hold, not what a
//! connection can: 256 streams that each upload most of a 4 MiB request and stop, or that each
//! ask for a 4 MiB response while advertising a zero window (or never reading the socket), made
//! one connection hold a gigabyte, for as long as it stayed open. So three kinds of bytes are
//! counted against two budgets, the connection's (`--max-buffered-per-connection`) and the
//! server's (`--max-buffered`):
//!
//! - a request message still arriving (from its first byte until it is complete),
//! - a script's stream responses waiting in its outbox for the transport,
//! - a declarative reply (or echo) waiting out its `delay_ms` (`handler::hold_while_waiting`),
//! - response bytes handed to HTTP/2 and not yet written to the socket (a chunk is counted until
//!   the HTTP/2 layer drops it, which it does once the last byte is written or the stream ends).
//!
//! A message that does not fit ends its call with RESOURCE_EXHAUSTED at once, which frees what
//! the call held. Nothing waits for room: the room is shared by the streams of a connection,
//! and a stream waiting for bytes that another stream holds could deadlock a client that reads
//! its streams in some order of its own. A message always fits when its connection (and the
//! server) holds nothing, so one message up to `--max-message-size` always goes.
//!
//! Per stream, HTTP/2 takes a response's next chunk only while less than its send buffer
//! (64 KiB) is unwritten, so a stream whose client reads nothing holds about two messages in
//! transit (one in HTTP/2, one waiting for it), both counted; what the handler produces after
//! that waits upstream (in a script's outbox, counted too) or is not produced at all (replies
//! rendered one at a time). Chunks and messages under [`SMALL`] are not counted: per stream,
//! HTTP/2 and the outbox bound them already.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tonic::Status;

use crate::error::CallError;
use crate::handler::heavy::Lane;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Bytes held against one limit.
#[derive(Debug)]
pub struct Budget {
    held: AtomicUsize,
    limit: usize,
    flag: &'static str,
}

impl Budget {
    pub fn new(limit: usize, flag: &'static str) -> Arc<Self> {
        Arc::new(Self {
            held: AtomicUsize::new(0),
            limit,
            flag,
        })
    }

    /// Adds `n` to the `own` bytes the caller already holds, unless that passes the limit
    /// while anything else is held.
    fn take(&self, n: usize, own: usize) -> Result<(), CallError> {
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                (held <= own || held.saturating_add(n) <= self.limit).then_some(held + n)
            })
            .map(|_| ())
            .map_err(|held| CallError::BufferFull {
                held,
                limit: self.limit,
                flag: self.flag,
            })
    }

    fn give(&self, n: usize) {
        self.held.fetch_sub(n, Ordering::AcqRel);
    }

    /// Bytes held now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }
}

/// One connection's view of the budgets: its own and the server's (one reference count to
/// clone, as every call and counted message takes one). It also carries the connection's
/// [`Lane`] for the turns of big requests: every call path that may take one already holds
/// its connection's buffers.
#[derive(Clone, Debug)]
pub struct Buffers(Arc<Budgets>);

#[derive(Debug)]
struct Budgets {
    connection: Budget,
    server: Arc<Budget>,
    lane: Lane,
}

impl Buffers {
    /// The budgets of a new connection, sharing `server`.
    pub fn new(per_connection: usize, server: Arc<Budget>) -> Self {
        Self(Arc::new(Budgets {
            connection: Budget {
                held: AtomicUsize::new(0),
                limit: per_connection,
                flag: "--max-buffered-per-connection",
            },
            server,
            lane: Lane::new(),
        }))
    }

    /// The connection's line for the turns of big requests.
    pub fn lane(&self) -> &Lane {
        &self.0.lane
    }

    /// Room for `n` bytes, held until the [`Held`] is dropped.
    pub fn take(&self, n: usize) -> Result<Held, CallError> {
        let mut held = Held {
            buffers: self.clone(),
            n: 0,
        };
        held.grow(n)?;
        Ok(held)
    }
}

/// Bytes held against a connection's and the server's budgets; given back when dropped.
#[derive(Debug)]
pub struct Held {
    buffers: Buffers,
    n: usize,
}

impl Held {
    /// Holds `extra` more bytes, or fails holding what it held.
    pub fn grow(&mut self, extra: usize) -> Result<(), CallError> {
        if extra == 0 {
            return Ok(());
        }
        let budgets = &self.buffers.0;
        budgets.connection.take(extra, self.n)?;
        if let Err(e) = budgets.server.take(extra, self.n) {
            budgets.connection.give(extra);
            return Err(e);
        }
        self.n += extra;
        Ok(())
    }

    /// Gives back everything held (the [`Held`] stays usable).
    pub fn clear(&mut self) {
        if self.n > 0 {
            self.buffers.0.connection.give(self.n);
            self.buffers.0.server.give(self.n);
            self.n = 0;
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.clear();
    }
}

/// Response chunks and queued messages smaller than this are not counted: HTTP/2 takes small
/// chunks only while less than its send buffer (64 KiB) of the stream is unwritten, and a
/// script's outbox holds at most its room, so what a stream holds of them is bounded already
/// (about 150 KiB), and counting them would cost an allocation and shared atomics per message.
pub const SMALL: usize = 16 * 1024;

/// A response chunk, with the room it holds until HTTP/2 drops it.
struct InFlight {
    data: Bytes,
    _held: Held,
}

impl AsRef<[u8]> for InFlight {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

/// `data` as a chunk that holds its room in `buffers` until every copy of it is dropped.
pub fn held_chunk(data: Bytes, buffers: &Buffers) -> Result<Bytes, CallError> {
    let held = buffers.take(data.len())?;
    Ok(Bytes::from_owner(InFlight { data, _held: held }))
}

/// The gRPC length-prefixed framing, followed across the chunks of a request body.
#[derive(Debug, Default)]
pub(crate) struct Framing {
    /// Messages begun so far (their first byte seen).
    pub(crate) begun: u64,
    /// Bytes of the 5-byte prefix seen so far (0 between messages).
    prefix_seen: u8,
    prefix: [u8; 5],
    /// Bytes of the current message's payload still to come.
    remaining: u64,
    /// Bytes of the current (incomplete) message seen so far, prefix included.
    partial: usize,
}

impl Framing {
    /// Advances over `chunk`; afterwards `partial` is what the chunk leaves incomplete.
    pub(crate) fn advance(&mut self, mut chunk: &[u8]) {
        while !chunk.is_empty() {
            if self.remaining == 0 && self.prefix_seen < 5 {
                if self.prefix_seen == 0 {
                    self.begun += 1;
                }
                let take = (5 - self.prefix_seen as usize).min(chunk.len());
                let start = self.prefix_seen as usize;
                self.prefix[start..start + take].copy_from_slice(&chunk[..take]);
                self.prefix_seen += take as u8;
                self.partial += take;
                chunk = &chunk[take..];
                if self.prefix_seen == 5 {
                    let p = self.prefix;
                    self.remaining = u64::from(u32::from_be_bytes([p[1], p[2], p[3], p[4]]));
                    if self.remaining == 0 {
                        self.complete();
                    }
                }
            } else {
                let take = usize::try_from(self.remaining)
                    .unwrap_or(usize::MAX)
                    .min(chunk.len());
                self.remaining -= take as u64;
                self.partial += take;
                chunk = &chunk[take..];
                if self.remaining == 0 {
                    self.complete();
                }
            }
        }
    }

    fn complete(&mut self) {
        self.prefix_seen = 0;
        self.partial = 0;
    }
}

pin_project_lite::pin_project! {
    /// A request body whose incomplete message holds room: a message's bytes are counted as
    /// they arrive and given back once it is complete (the decoder takes it then) or the body is
    /// dropped. A message that does not fit fails the body with RESOURCE_EXHAUSTED.
    pub struct MeteredRequest<B> {
        #[pin]
        inner: B,
        framing: Framing,
        held: Option<Held>,
        buffers: Buffers,
        failed: bool,
    }
}

impl<B> MeteredRequest<B> {
    pub fn new(inner: B, buffers: Buffers) -> Self {
        Self {
            inner,
            framing: Framing::default(),
            held: None,
            buffers,
            failed: false,
        }
    }
}

impl<B> Body for MeteredRequest<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.project();
        if *this.failed {
            return Poll::Ready(None);
        }
        let frame = match std::task::ready!(this.inner.poll_frame(cx)) {
            Some(Ok(frame)) => frame,
            Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
            None => return Poll::Ready(None),
        };
        let Some(data) = frame.data_ref() else {
            return Poll::Ready(Some(Ok(frame)));
        };
        this.framing.advance(data);
        let want = this.framing.partial;
        let holding = match this.held.as_mut() {
            Some(held) => held,
            None if want == 0 => return Poll::Ready(Some(Ok(frame))),
            None => this.held.insert(match this.buffers.take(0) {
                Ok(held) => held,
                Err(e) => return Poll::Ready(Some(Err(Status::from(e).into()))),
            }),
        };
        // What the connection holds for this body: the incomplete message at the chunk's end.
        if want < holding.n {
            holding.clear();
        }
        if let Err(e) = holding.grow(want - holding.n) {
            *this.failed = true;
            holding.clear();
            return Poll::Ready(Some(Err(Status::from(e).into())));
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.failed || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(payload: &[u8]) -> Vec<u8> {
        let mut out = vec![0];
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn framing_counts_only_the_incomplete_message() {
        let mut f = Framing::default();
        let mut bytes = framed(b"hello");
        bytes.extend(framed(&[7; 100]));
        f.advance(&bytes[..3]);
        assert_eq!(f.partial, 3);
        f.advance(&bytes[3..12]);
        assert_eq!(
            f.partial, 2,
            "first message complete, 2 bytes of the next prefix"
        );
        f.advance(&bytes[12..50]);
        assert_eq!(f.partial, 40);
        f.advance(&bytes[50..]);
        assert_eq!(f.partial, 0);
        f.advance(&framed(b""));
        assert_eq!(f.partial, 0, "an empty message is complete with its prefix");
    }

    #[test]
    fn budgets_refuse_only_when_something_else_is_held() {
        let server = Budget::new(100, "--max-buffered");
        let a = Buffers::new(10, server.clone());
        let big = a
            .take(50)
            .expect("a connection holding nothing takes any message");
        assert!(a.take(1).is_err(), "over the connection's limit");
        let b = Buffers::new(1000, server.clone());
        let fifty = b.take(50).unwrap();
        assert!(b.take(1).is_err(), "over the server's limit");
        drop(big);
        drop(fifty);
        assert_eq!(server.held(), 0);

        let mut alone = b.take(0).unwrap();
        alone.grow(60).unwrap();
        alone
            .grow(60)
            .expect("one message alone may pass the limit");
        assert!(matches!(b.take(1), Err(CallError::BufferFull { .. })));
        drop(alone);
        assert_eq!(server.held(), 0);

        let mut growing = b.take(0).unwrap();
        let _other = b.take(1).unwrap();
        growing.grow(60).unwrap();
        assert!(
            growing.grow(60).is_err(),
            "past the limit while another holds room"
        );
        assert_eq!(server.held(), 61, "a failed grow keeps what was held");
    }
}
