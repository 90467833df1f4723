//! Streams a client gives no room to are ended at their deadline all the same.
//!
//! Why: a call's deadline ends its response from inside the response body, with a trailers
//! frame ([`super::cutoff`]). hyper polls that body only while the client's flow-control window
//! has room for data, so a client that never reads (a window of zero) kept its calls, their
//! slots under `--max-calls` and their journal entries open past their deadline, for as long
//! as it kept the connection. Every stream's task is spawned through [`StreamExecutor`], which
//! watches from outside the body the deadline the call noted ([`note_deadline`]): once that
//! deadline is [`GRACE`] behind and the stream still runs, the task drops the stream, and HTTP/2
//! resets it (RST_STREAM with CANCEL), which needs no window. The grace leaves a client that
//! reads slowly the time to take what was sent before the deadline and the trailers after it.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

/// How long a stream may go on past its deadline, waiting for the client's window, before it
/// is reset.
pub const GRACE: Duration = Duration::from_secs(1);

thread_local! {
    /// The deadline noted by the stream whose task this thread is polling (a stream's code runs
    /// inside its task's poll, on the polling thread, so nothing needs allocating to carry it).
    static NOTED: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Notes `at` as the deadline of the stream being served by the task this thread polls.
pub fn note_deadline(at: Instant) {
    NOTED.with(|n| n.set(Some(at)));
}

/// Spawns hyper's stream tasks on tokio, each watched for its deadline.
#[derive(Clone, Copy, Debug, Default)]
pub struct StreamExecutor;

impl<F> hyper::rt::Executor<F> for StreamExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        tokio::spawn(Watched {
            inner: Some(fut),
            sleep: None,
        });
    }
}

pin_project! {
    /// A stream's task, dropped once its noted deadline is [`GRACE`] behind.
    struct Watched<F> {
        #[pin]
        inner: Option<F>,
        #[pin]
        sleep: Option<Sleep>,
    }
}

impl<F: Future> Future for Watched<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        let Some(inner) = this.inner.as_mut().as_pin_mut() else {
            return Poll::Ready(());
        };
        NOTED.with(|n| n.set(None));
        let polled = inner.poll(cx);
        let noted = NOTED.with(Cell::take);
        if polled.is_ready() {
            this.inner.set(None);
            return Poll::Ready(());
        }
        if let (Some(at), None) = (noted, this.sleep.as_ref().as_pin_ref()) {
            let reset_at = at.checked_add(GRACE).unwrap_or(at);
            this.sleep.set(Some(tokio::time::sleep_until(reset_at)));
        }
        if let Some(sleep) = this.sleep.as_mut().as_pin_mut() {
            if sleep.poll(cx).is_ready() {
                tracing::debug!(
                    "a stream outlived its deadline waiting for the client's window: reset"
                );
                this.inner.set(None);
                return Poll::Ready(());
            }
        }
        Poll::Pending
    }
}
