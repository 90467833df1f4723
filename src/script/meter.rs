//! Work done in Rust for the running call, charged to it as it goes.
//!
//! Turning a request into Lua tables runs in Rust, between a script's instructions, where no
//! hook can stop it. Charging it by its bytes beforehand does not bound it: an empty item of a
//! repeated message field is three bytes on the wire and a table with a default per field (and
//! an empty table per list or map field) in Lua, so 300 KB of them kept a state's thread for
//! seconds past the call's time budget. So the work is counted as it is done, a unit per table
//! made and per entry set, as the reply encoders count what they read (see
//! [`super::encode::Encoder`]), and charged to the call now and then: every [`CHARGE_EVERY`]
//! units, and whenever this thread's clock signalled since the last charge (every millisecond
//! of CPU, see [`super::preempt::signals`]), which is when the call's time is checked. A call
//! past its budget, its deadline or cancelled stops there with its abort. A charge that finds
//! the call's time slice over is where a big request's conversion gives way to the other calls
//! on its state (see [`super::sliced_decode`]).

use std::cell::Cell;

use super::hook::TIME_SLICE;
use super::preempt;
use super::slice::{self, Check};
use super::sliced_decode;

/// Units charged to the call at once when the clock has not signalled meanwhile.
const CHARGE_EVERY: u64 = 4096;

/// Counts work and charges it to the call running on this thread (none running: nothing is
/// charged and nothing stops).
pub struct Meter {
    /// Units done since the call was last charged for them.
    work: Cell<u64>,
    /// This thread's clock signals when the call was last charged.
    signals: Cell<Option<u32>>,
}

impl Default for Meter {
    fn default() -> Self {
        Self::new()
    }
}

impl Meter {
    pub fn new() -> Self {
        Self {
            work: Cell::new(0),
            signals: Cell::new(preempt::signals()),
        }
    }

    /// Counts `units` of work; charges the call for what was counted, checking its time, when
    /// enough was counted or the clock signalled. Errors with the call's abort.
    pub fn spend(&self, units: u64) -> mlua::Result<()> {
        let work = self.work.get().saturating_add(units);
        if work < CHARGE_EVERY && !self.clock_moved() {
            self.work.set(work);
            return Ok(());
        }
        self.work.set(0);
        match slice::check(work, TIME_SLICE) {
            Check::Abort(a) => Err(mlua::Error::external(a)),
            // Inside a conversion that can pause, the call gives way here (see
            // [`super::sliced_decode`]); elsewhere it goes on.
            Check::Yield => {
                sliced_decode::give_way();
                Ok(())
            }
            Check::Continue => Ok(()),
        }
    }

    /// Charges what was counted since the last charge, without reading the clock (the hook
    /// checks the time as the script goes on; see [`slice::charge_untimed`]).
    pub fn settle(&self) -> mlua::Result<()> {
        match self.work.replace(0) {
            0 => Ok(()),
            work => slice::charge_untimed(work),
        }
    }

    /// Whether the call's time must be checked now: the thread's clock signalled since the
    /// last check, or no clock signals this thread.
    fn clock_moved(&self) -> bool {
        let now = preempt::signals();
        if now.is_some() && now == self.signals.get() {
            return false;
        }
        self.signals.set(now);
        true
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::script::context::CallShared;
    use crate::script::status::Abort;

    #[test]
    fn stops_a_call_over_its_budget() {
        let call = CallShared::for_test(10_000, Duration::from_secs(60));
        let meter = Meter::new();
        let spent = slice::with_call(&call, || (0..20_000).try_for_each(|_| meter.spend(1)));
        assert!(spent.is_err());
        assert!(matches!(call.aborted(), Some(Abort::Budget(_))));
    }

    #[test]
    fn stops_a_call_past_its_time() {
        let call = CallShared::for_test(u64::MAX, Duration::from_millis(20));
        let meter = Meter::new();
        let started = Instant::now();
        let spent: mlua::Result<()> = slice::with_call(&call, || loop {
            meter.spend(1)?;
            if started.elapsed() > Duration::from_secs(5) {
                return Ok(());
            }
        });
        assert!(
            spent.is_err(),
            "still running after {:?}",
            started.elapsed()
        );
        assert!(matches!(call.aborted(), Some(Abort::Time(_))));
    }

    #[test]
    fn settling_charges_the_rest() {
        let call = CallShared::for_test(u64::MAX, Duration::from_secs(60));
        let meter = Meter::new();
        slice::with_call(&call, || {
            for _ in 0..10 {
                meter.spend(3).unwrap();
            }
            meter.settle().unwrap();
        });
        assert_eq!(call.used.load(Ordering::Relaxed), 30);
    }
}
