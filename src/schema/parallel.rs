//! A parallel map on scoped threads, one per core: the loading work is CPU-bound and made of
//! many independent files, so a shared counter hands out the next item to whichever thread is
//! free.
//!
//! Loading runs on threads of its own with a stack of [`STACK_BYTES`], the calling thread
//! included ([`on_loading_stack`]): interpreting an option value recurses once per level of the
//! value (up to [`super::nesting::MAX_NESTING`]), about 20 KiB a level in a debug build, and the
//! threads that ask for a build (a Tokio blocking thread on reload: 2 MiB) leave no room to
//! spare for that.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// The stack of every loading thread: many times what the deepest file accepted needs.
pub const STACK_BYTES: usize = 16 * 1024 * 1024;

/// How many threads loading uses: every core the process may run on.
pub fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// `f` run on a thread with a stack of [`STACK_BYTES`] (on this one if no thread can be
/// started); a panic in `f` goes on in the caller.
pub fn on_loading_stack<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    let work = Mutex::new(Some(f));
    let take = || work.lock().ok().and_then(|mut w| w.take());
    let ran = std::thread::scope(|s| {
        let spawned = loading_thread().spawn_scoped(s, || take().map(|f| f()));
        match spawned {
            Ok(handle) => match handle.join() {
                Ok(r) => r,
                Err(panic) => std::panic::resume_unwind(panic),
            },
            Err(_) => None,
        }
    });
    match ran {
        Some(r) => r,
        None => take().expect("the work was not taken by a thread that did not start")(),
    }
}

fn loading_thread() -> std::thread::Builder {
    std::thread::Builder::new()
        .name("protoserve-load".into())
        .stack_size(STACK_BYTES)
}

/// `items` mapped by `f` on up to `threads()` threads; the results keep the items' order.
pub fn map<T: Send, R: Send>(items: Vec<T>, f: impl Fn(T) -> R + Sync) -> Vec<R> {
    let n = items.len();
    let workers = threads().min(n);
    if workers <= 1 {
        return on_loading_stack(|| items.into_iter().map(&f).collect());
    }
    let slots: Vec<Mutex<Option<T>>> = items.into_iter().map(|t| Mutex::new(Some(t))).collect();
    let results: Vec<Mutex<Option<R>>> = (0..n).map(|_| Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    let work = || loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= n {
            break;
        }
        let item = slots[i].lock().ok().and_then(|mut s| s.take());
        if let Some(item) = item {
            let r = f(item);
            if let Ok(mut slot) = results[i].lock() {
                *slot = Some(r);
            }
        }
    };
    let started = std::thread::scope(|s| {
        (0..workers)
            .filter(|_| loading_thread().spawn_scoped(s, work).is_ok())
            .count()
    });
    if started == 0 {
        // No thread could be started: the caller's thread does the work.
        on_loading_stack(work);
    }
    results
        .into_iter()
        .map(|m| {
            m.into_inner()
                .ok()
                .flatten()
                .expect("every item was mapped (a panic in a worker propagates from scope)")
        })
        .collect()
}
