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
use std::time::{Duration, Instant};

use super::context::CallShared;
use super::status::Abort;

thread_local! {
    /// The call whose coroutine this thread is running, since when, and whether the hook has
    /// yielded it for using up its slice.
    static CURRENT: RefCell<Option<Current>> = const { RefCell::new(None) };
}

struct Current {
    shared: Arc<CallShared>,
    since: Instant,
    sliced: bool,
}

/// The call this thread is running, if any.
pub fn running_call() -> Option<Arc<CallShared>> {
    CURRENT.with(|c| c.try_borrow().ok()?.as_ref().map(|c| c.shared.clone()))
}

/// What the instruction hook should do with the running script.
pub enum Check {
    Continue,
    Yield,
    Abort(Abort),
}

/// Asked by the instruction hook every `step` instructions.
pub fn check(step: u64, slice: Duration) -> Check {
    CURRENT.with(|c| {
        match c
            .try_borrow_mut()
            .ok()
            .as_deref_mut()
            .and_then(Option::as_mut)
        {
            None => Check::Continue,
            Some(current) => match current.shared.should_abort(step) {
                Some(a) => Check::Abort(a),
                None if current.since.elapsed() >= slice => {
                    current.sliced = true;
                    Check::Yield
                }
                None => Check::Continue,
            },
        }
    })
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

/// A script coroutine, polled with its call marked current. Calls that finish within their
/// first slice (nearly all) never need the wake interception, so it is set up only once the
/// hook has yielded the script.
pub struct CurrentCall<F> {
    shared: Arc<CallShared>,
    inner: F,
    waker: Option<Arc<SliceWaker>>,
    yielding: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
}

impl<F> CurrentCall<F> {
    pub fn new(shared: Arc<CallShared>, inner: F) -> Self {
        Self {
            shared,
            inner,
            waker: None,
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
        let entry = Current {
            shared: this.shared.clone(),
            since: Instant::now(),
            sliced: false,
        };
        let previous = CURRENT.with(|c| c.replace(Some(entry)));
        let result = match &this.waker {
            None => Pin::new(&mut this.inner).poll(cx),
            Some(slice_waker) => {
                {
                    let mut task = slice_waker.task.lock().unwrap_or_else(|e| e.into_inner());
                    if !task.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                        *task = Some(cx.waker().clone());
                    }
                }
                let waker = Waker::from(slice_waker.clone());
                let mut inner_cx = Context::from_waker(&waker);
                slice_waker.polling.store(true, Ordering::Release);
                let result = Pin::new(&mut this.inner).poll(&mut inner_cx);
                slice_waker.polling.store(false, Ordering::Release);
                result
            }
        };
        let sliced = CURRENT
            .with(|c| c.replace(previous))
            .is_some_and(|c| c.sliced);
        if result.is_pending() {
            match &this.waker {
                None if sliced => {
                    // From now on, catch the coroutine's self-wake (see the module docs).
                    this.waker = Some(Arc::new(SliceWaker {
                        task: Mutex::new(Some(cx.waker().clone())),
                        polling: AtomicBool::new(false),
                        woken_while_polling: AtomicBool::new(false),
                    }));
                }
                Some(w) if w.woken_while_polling.swap(false, Ordering::AcqRel) => {
                    let mut y: Pin<Box<dyn Future<Output = ()> + Send>> =
                        Box::pin(tokio::task::yield_now());
                    if y.as_mut().poll(cx).is_pending() {
                        this.yielding = Some(y);
                    } else {
                        cx.waker().wake_by_ref();
                    }
                }
                _ => {}
            }
        }
        result
    }
}

/// Charges `units` instructions of C-level work to the running call's budget.
pub fn charge(units: u64) -> mlua::Result<()> {
    CURRENT.with(|c| {
        let guard = c.try_borrow();
        match guard.as_ref().ok().and_then(|g| g.as_ref()) {
            Some(cur) => match cur.shared.should_abort(units) {
                Some(a) => Err(mlua::Error::external(a)),
                None => Ok(()),
            },
            None => Ok(()),
        }
    })
}
