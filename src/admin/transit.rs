//! Admin answers on their way to clients: bounded in bytes and in time.
//!
//! An admin answer is built whole before it is sent (a journal page is up to some 50 MB of
//! JSON), and then waits in its connection until the client takes it. Journal reads are built
//! one at a time, but nothing bounded what their answers held afterwards: a client that does
//! not read (an HTTP/1.1 client that never reads its socket, an HTTP/2 stream whose window
//! stays 0) kept every answer it asked for, and 32 journal reads on one HTTP/2 connection held
//! 1.5 GB, of the listener's 64 connections.
//!
//! So each answer is counted, by its size, against [`IN_TRANSIT`] bytes for all the answers
//! of the listener not yet taken ([`Transit::admit`]); one that would pass it is dropped and
//! its request refused at once (HTTP 503, gRPC UNAVAILABLE), rather than made to wait, so a
//! client that does not read cannot hold up the others' reads either. And an answer must be
//! taken within [`SEND_TIMEOUT`]: a connection holding one longer is closed
//! ([`Pending::overdue`]), which drops whatever it held. Closing the connection is the only
//! way to let go: hyper does not poll a body whose stream has no window, so the body itself
//! never learns that its time is up.
//!
//! An answer is handed to hyper in pieces of [`PIECE`] bytes, and counted until its last
//! piece has been taken: given whole, hyper (HTTP/1.1) or h2 (HTTP/2) would take it into its
//! own buffers at once, and the count would end while the bytes still waited there.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::AdminError;

/// Bytes all answers not yet taken by their clients may hold: two of the largest journal
/// pages.
pub const IN_TRANSIT: usize = 128 * 1024 * 1024;

/// The unit answers are counted in (a semaphore counts in `u32`).
const UNIT: usize = 1024;

/// How long a client has to take an answer, from when it is ready: a 64 MiB page at 2 MB/s.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// The most bytes handed to hyper at once.
const PIECE: usize = 64 * 1024;

/// How often a connection looks for an answer past [`SEND_TIMEOUT`].
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// The listener's count of bytes in answers not yet taken.
#[derive(Clone)]
pub struct Transit {
    units: Arc<Semaphore>,
    limit: usize,
}

impl Default for Transit {
    fn default() -> Self {
        Self::new(IN_TRANSIT)
    }
}

impl Transit {
    pub fn new(limit: usize) -> Self {
        Self {
            units: Arc::new(Semaphore::new(limit / UNIT)),
            limit,
        }
    }

    /// `data` (and `trailers`) as a body counted until taken, in `pending`'s connection; an
    /// error when the answers not yet taken would pass the limit.
    pub fn admit(
        &self,
        data: Bytes,
        trailers: Option<HeaderMap>,
        pending: &Pending,
    ) -> Result<Held, AdminError> {
        let units = data.len().div_ceil(UNIT).max(1);
        let permit = u32::try_from(units)
            .ok()
            .and_then(|n| self.units.clone().try_acquire_many_owned(n).ok())
            .ok_or_else(|| AdminError::Busy {
                answer: data.len(),
                held: self
                    .limit
                    .saturating_sub(self.units.available_permits() * UNIT),
                limit: self.limit,
                within: SEND_TIMEOUT,
            })?;
        Ok(Held {
            data,
            trailers,
            _permit: permit,
            _waiting: pending.add(),
        })
    }
}

/// The answers of one connection not yet taken, each with when it was ready.
#[derive(Clone, Default)]
pub struct Pending {
    inner: Arc<PendingInner>,
}

#[derive(Default)]
struct PendingInner {
    next: AtomicU64,
    since: Mutex<Vec<(u64, Instant)>>,
}

impl Pending {
    fn add(&self) -> Waiting {
        let id = self.inner.next.fetch_add(1, Ordering::Relaxed);
        self.since().push((id, Instant::now()));
        Waiting {
            id,
            pending: self.inner.clone(),
        }
    }

    fn since(&self) -> std::sync::MutexGuard<'_, Vec<(u64, Instant)>> {
        self.inner.since.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Resolves once an answer of this connection has waited longer than [`SEND_TIMEOUT`].
    pub async fn overdue(&self) {
        loop {
            tokio::time::sleep(CHECK_EVERY).await;
            let oldest = self.since().iter().map(|(_, t)| *t).min();
            if oldest.is_some_and(|t| t.elapsed() >= SEND_TIMEOUT) {
                return;
            }
        }
    }
}

/// Takes an answer off its connection's list when it is dropped.
struct Waiting {
    id: u64,
    pending: Arc<PendingInner>,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        let mut since = self.pending.since.lock().unwrap_or_else(|e| e.into_inner());
        since.retain(|(id, _)| *id != self.id);
    }
}

/// An answer counted until its last piece is taken (or it is dropped).
pub struct Held {
    data: Bytes,
    trailers: Option<HeaderMap>,
    _permit: OwnedSemaphorePermit,
    _waiting: Waiting,
}

impl Body for Held {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if !self.data.is_empty() {
            let n = self.data.len().min(PIECE);
            let piece = self.data.split_to(n);
            return Poll::Ready(Some(Ok(Frame::data(piece))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    // Never "ended" before its last poll: hyper drops a body it sees ended, and the count with
    // it, while the last piece may still wait in its buffers.
    fn is_end_stream(&self) -> bool {
        false
    }

    fn size_hint(&self) -> SizeHint {
        if self.trailers.is_some() {
            // Lengths go with plain answers; a gRPC answer's trailers follow its data.
            return SizeHint::default();
        }
        SizeHint::with_exact(self.data.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn answers_are_counted_until_taken_and_refused_past_the_limit() {
        let transit = Transit::new(4 * UNIT);
        let pending = Pending::default();
        let first = transit
            .admit(Bytes::from(vec![1u8; 3 * UNIT]), None, &pending)
            .unwrap();
        let refused = transit.admit(Bytes::from(vec![2u8; 2 * UNIT]), None, &pending);
        assert!(
            matches!(refused, Err(AdminError::Busy { answer, .. }) if answer == 2 * UNIT),
            "{:?}",
            refused.err()
        );
        assert_eq!(pending.since().len(), 1);
        let taken = first.collect().await.unwrap().to_bytes();
        assert_eq!(taken.len(), 3 * UNIT);
        assert!(pending.since().is_empty());
        let second = transit.admit(Bytes::from(vec![2u8; 4 * UNIT]), None, &pending);
        assert!(second.is_ok());
    }

    #[tokio::test]
    async fn an_answer_comes_in_pieces_then_its_trailers() {
        let transit = Transit::new(IN_TRANSIT);
        let pending = Pending::default();
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        let mut held = transit
            .admit(
                Bytes::from(vec![7u8; PIECE * 2 + 5]),
                Some(trailers),
                &pending,
            )
            .unwrap();
        let mut sizes = Vec::new();
        while let Some(frame) = held.frame().await {
            let frame = frame.unwrap();
            match frame.into_data() {
                Ok(d) => sizes.push(d.len()),
                Err(f) => {
                    assert!(f.is_trailers());
                    sizes.push(0);
                }
            }
        }
        assert_eq!(sizes, vec![PIECE, PIECE, 5, 0]);
    }
}
