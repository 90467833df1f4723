//! Batched wake-ups from the state threads to the network.
//!
//! A state thread hands results to tasks on the network threads: a call's answer, each message
//! of a response stream. Waking the network task at each one would, on a busy core, switch to
//! the network thread after every message and back, so a stream of sixty messages costs sixty
//! pairs of switches. Instead a state thread keeps the wake-ups a call causes while the call
//! runs and delivers them when that run ends ([`FlushAfter`], at the latest after a time
//! slice) and before the thread sleeps: the network thread then takes everything produced
//! meanwhile in one go. Only the call that caused them holds them, so a call stuck in a
//! library function cannot hold back another call's answer; a thread that is not a state
//! thread wakes at once as usual.
//!
//! The receiving side opts in by polling through [`Relayed`]: its waker is a relay that, when a
//! state thread wakes it, defers the real wake-up to that thread's batch.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

thread_local! {
    /// `Some` on state threads: the wake-ups to deliver at the end of the batch.
    static DEFERRED: RefCell<Option<Vec<Waker>>> = const { RefCell::new(None) };
}

/// Makes this thread defer the wake-ups it causes through relays, until [`flush`].
pub fn defer_on_this_thread() {
    DEFERRED.with(|d| {
        d.borrow_mut().get_or_insert_with(Vec::new);
    });
}

/// Delivers the deferred wake-ups; with `stop`, this thread wakes at once from now on.
pub fn flush_and(stop: bool) {
    let pending = DEFERRED.with(|d| {
        let mut d = d.borrow_mut();
        let pending = d.as_mut().map(std::mem::take);
        if stop {
            *d = None;
        }
        pending
    });
    for waker in pending.into_iter().flatten() {
        waker.wake();
    }
}

/// Delivers the deferred wake-ups.
pub fn flush() {
    flush_and(false);
}

/// Wakes `waker` now, or at the end of this state thread's batch.
fn wake(waker: &Waker) {
    let deferred = DEFERRED.with(|d| match d.try_borrow_mut() {
        Ok(mut d) => match d.as_mut() {
            Some(list) => {
                if !list.iter().any(|w| w.will_wake(waker)) {
                    list.push(waker.clone());
                }
                true
            }
            None => false,
        },
        Err(_) => false,
    });
    if !deferred {
        waker.wake_by_ref();
    }
}

/// The waker a [`Relayed`] future registers: it forwards to the task's own waker.
pub struct Relay {
    target: Mutex<Waker>,
}

impl Wake for Relay {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let target = self
            .target
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        wake(&target);
    }
}

/// A relay waker kept across polls (made on the first).
#[derive(Default)]
pub struct RelayWaker(Option<(Arc<Relay>, Waker)>);

impl RelayWaker {
    /// The relay waker for a poll with `cx`, pointed at `cx`'s waker.
    pub fn get(&mut self, cx: &Context<'_>) -> Waker {
        match &self.0 {
            Some((relay, waker)) => {
                let mut target = relay.target.lock().unwrap_or_else(|e| e.into_inner());
                if !target.will_wake(cx.waker()) {
                    *target = cx.waker().clone();
                }
                waker.clone()
            }
            None => {
                let relay = Arc::new(Relay {
                    target: Mutex::new(cx.waker().clone()),
                });
                let waker = Waker::from(relay.clone());
                self.0 = Some((relay, waker.clone()));
                waker
            }
        }
    }
}

/// Polls `F` with a relay waker, so wake-ups from state threads come in batches.
pub struct Relayed<F> {
    inner: F,
    relay: RelayWaker,
}

impl<F> Relayed<F> {
    pub fn new(inner: F) -> Self {
        Self {
            inner,
            relay: RelayWaker::default(),
        }
    }
}

impl<F: Future + Unpin> Future for Relayed<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        let waker = this.relay.get(cx);
        Pin::new(&mut this.inner).poll(&mut Context::from_waker(&waker))
    }
}

pin_project_lite::pin_project! {
    /// Delivers the wake-ups deferred while `F` was polled, after each poll: wrapped around
    /// every call's task on a state thread.
    pub struct FlushAfter<F> {
        #[pin]
        inner: F,
    }
}

impl<F> FlushAfter<F> {
    pub fn new(inner: F) -> Self {
        Self { inner }
    }
}

impl<F: Future> Future for FlushAfter<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let polled = self.project().inner.poll(cx);
        flush();
        polled
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_state_thread_delivers_wake_ups_in_one_batch() {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let task = Waker::from(count.clone());
        let relay = RelayWaker::default().get(&Context::from_waker(&task));
        std::thread::spawn(move || {
            defer_on_this_thread();
            relay.wake_by_ref();
            relay.wake_by_ref();
            assert_eq!(count.0.load(Ordering::SeqCst), 0, "deferred");
            flush();
            assert_eq!(count.0.load(Ordering::SeqCst), 1, "one wake-up for both");
            // A call's run delivers what it deferred when its poll ends.
            let r = relay.clone();
            let mut run = std::pin::pin!(FlushAfter::new(std::future::poll_fn(move |_| {
                r.wake_by_ref();
                Poll::<()>::Pending
            })));
            let noop = Context::from_waker(Waker::noop());
            let _ = run.as_mut().poll(&mut Context::from_waker(noop.waker()));
            assert_eq!(
                count.0.load(Ordering::SeqCst),
                2,
                "delivered after the poll"
            );
            flush_and(true);
            relay.wake_by_ref();
            assert_eq!(count.0.load(Ordering::SeqCst), 3, "at once after stop");
        })
        .join()
        .unwrap();
    }
}
