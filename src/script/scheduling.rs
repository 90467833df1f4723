//! State threads ask the kernel not to preempt the network threads when they wake.
//!
//! Every script call hops from a network thread to its state's thread and back. Woken by a new
//! call, an ordinary thread preempts the network thread that woke it, runs that one call, and
//! sleeps again; when both share a core (a container with one CPU, a pinned server) each call
//! costs two context switches. Under the `SCHED_BATCH` policy a woken state thread waits for
//! its turn instead: the network thread goes on reading and handing over calls until it has
//! nothing left, and the state thread then runs them all in one go. On one core that took the
//! switches from about one per three unary calls to about one per hundred, and cut the CPU per
//! call or message of the script benchmarks by about 4 to 15 % in side-by-side runs. The policy changes only wake-up preemption: the
//! thread keeps its niceness and its fair share of the CPU, and a network thread woken by an
//! answer still preempts the state thread, so answers go out at once. The price: when every
//! core is busy, a woken state thread waits for the running thread's scheduler slice to end (a
//! few milliseconds at most) instead of preempting it; with a core idle it starts at once, as
//! before.
//!
//! The `thread-priority` crate sets a policy only together with a niceness it computes, so the
//! one system call is made here. Linux only; elsewhere, or when the kernel refuses, threads keep
//! the default policy.

#![allow(unsafe_code)]

/// Puts the calling thread under `SCHED_BATCH`; false if that is not possible here.
pub fn run_as_batch() -> bool {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: pid 0 is the calling thread; `param` is a valid `sched_param` for the call.
        unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) == 0 }
    }
    #[cfg(not(target_os = "linux"))]
    {
        false
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn a_thread_runs_as_batch_and_others_keep_their_policy() {
        // SAFETY (here and below): asks for the calling thread's policy.
        let before = unsafe { libc::sched_getscheduler(0) };
        let (set, after) =
            std::thread::spawn(|| (run_as_batch(), unsafe { libc::sched_getscheduler(0) }))
                .join()
                .unwrap();
        if before == libc::SCHED_OTHER {
            assert!(set, "SCHED_OTHER to SCHED_BATCH needs no privilege");
        }
        if set {
            assert_eq!(after, libc::SCHED_BATCH);
        }
        assert_eq!(unsafe { libc::sched_getscheduler(0) }, before);
    }
}
