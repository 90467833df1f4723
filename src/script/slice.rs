//! Cooperative time slices for script coroutines on the server's worker threads.
//!
//! While a call's coroutine is polled, [`CurrentCall`] makes that call "current" for the
//! instruction hook (which reads it with [`with_current`]). When the hook yields a script whose
//! slice is used up, the coroutine wakes itself; left alone, tokio would put the task straight
//! back in this worker's LIFO slot, where no other worker can steal it, so two busy scripts that
//! met on one worker would share it instead of running on two. `CurrentCall` catches that
//! self-wake and yields through `tokio::task::yield_now`, which queues the task where idle
//! workers can take it.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Instant;

use super::context::CallShared;

thread_local! {
    /// The call whose coroutine this thread is running, and since when.
    static CURRENT: RefCell<Option<(Arc<CallShared>, Instant)>> = const { RefCell::new(None) };
}

/// Runs `f` with the call this thread is running, if any.
pub fn with_current<R>(f: impl FnOnce(Option<&(Arc<CallShared>, Instant)>) -> R) -> R {
    CURRENT.with(|c| f(c.borrow().as_ref()))
}

/// Forwards wakes to the task, except one that happens during the poll itself.
struct SliceWaker {
    task: Mutex<Option<Waker>>,
    polling: AtomicBool,
    woken_while_polling: AtomicBool,
}

impl Wake for SliceWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if self.polling.load(Ordering::Acquire) {
            self.woken_while_polling.store(true, Ordering::Release);
            return;
        }
        if let Some(w) = self.task.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            w.wake_by_ref();
        }
    }
}

/// A script coroutine, polled with its call marked current.
pub struct CurrentCall<F> {
    shared: Arc<CallShared>,
    inner: F,
    waker: Arc<SliceWaker>,
    yielding: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
}

impl<F> CurrentCall<F> {
    pub fn new(shared: Arc<CallShared>, inner: F) -> Self {
        let waker = Arc::new(SliceWaker {
            task: Mutex::new(None),
            polling: AtomicBool::new(false),
            woken_while_polling: AtomicBool::new(false),
        });
        Self {
            shared,
            inner,
            waker,
            yielding: None,
        }
    }
}

impl<F: Future + Unpin> Future for CurrentCall<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        if let Some(y) = this.yielding.as_mut() {
            if y.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            this.yielding = None;
        }
        {
            let mut task = this.waker.task.lock().unwrap_or_else(|e| e.into_inner());
            if !task.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *task = Some(cx.waker().clone());
            }
        }
        let waker = Waker::from(this.waker.clone());
        let mut inner_cx = Context::from_waker(&waker);
        this.waker.polling.store(true, Ordering::Release);
        let previous = CURRENT.with(|c| c.replace(Some((this.shared.clone(), Instant::now()))));
        let result = Pin::new(&mut this.inner).poll(&mut inner_cx);
        CURRENT.with(|c| *c.borrow_mut() = previous);
        this.waker.polling.store(false, Ordering::Release);
        if result.is_pending() && this.waker.woken_while_polling.swap(false, Ordering::AcqRel) {
            let mut y: Pin<Box<dyn Future<Output = ()> + Send>> =
                Box::pin(tokio::task::yield_now());
            if y.as_mut().poll(cx).is_pending() {
                this.yielding = Some(y);
            } else {
                cx.waker().wake_by_ref();
            }
        }
        result
    }
}
