//! A listener's connection slots, and room made in a full listener by closing the connection
//! idle the longest.
//!
//! The idle rule ([`crate::idle`]) frees a slot only after [`IDLE_LIMIT`](crate::idle::IDLE_LIMIT);
//! a client that reopens each connection as soon as it is closed keeps every slot full for as
//! long as it likes, and a client that connects meanwhile is refused. So a connection accepted
//! while all slots are taken is served, and the connection that has gone without a request in
//! flight the longest is closed instead (GOAWAY, as the idle rule closes one). A connection with
//! a request in flight is never chosen; when every one has, the new connection is refused.
//!
//! Choosing by longest idle matters: a client that opens connections faster than anyone else
//! only closes its own older ones, and a connection that sends its request as it connects is
//! busy (so safe) long before the others make it the oldest. What it cannot do is tell a slow
//! client from an idle one: a connection that has sent no request yet lasts until as many
//! connections as there are slots have come after it. A flood of more clients than slots, each
//! reopening at once, turns the slots over as fast as the server accepts (thousands a second
//! on loopback), so with few slots a client that waits a millisecond between connecting and
//! calling may lose its connection; the accept loops yield after each connection, so one whose
//! request came with its preface is busy before the next is accepted.
//!
//! Finding that connection costs O(1) amortized: connections join a queue in the order they
//! become idle (when accepted, and when their last request ends), so the front is the one idle
//! the longest. Entries of connections that have had a request since are stale and skipped
//! (each connection counts its turns to tell), and the queue is compacted once it holds more
//! than twice as many entries as there are connections, so it stays in proportion to them.
//!
//! An evicted connection gives up its slot at once, so the new one is served without waiting
//! for the old one to close; it then has [`CLOSE_GRACE`](crate::idle::CLOSE_GRACE) to close,
//! and calls its client begins after the GOAWAY do not make that longer (see [`crate::idle`]).
//! So that a flood of evictions cannot pile up connections waiting to close, at most as many
//! as there are slots wait at once; past that an evicted connection is dropped at once.

use std::collections::VecDeque;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use crate::idle::Activity;

/// The slots of one listener; clones share them.
#[derive(Clone)]
pub struct Roster(Arc<Shared>);

struct Shared {
    limit: usize,
    /// The listener and its limit, for the log: "admin API: 64 connections".
    name: String,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Connections holding a slot: admitted, not yet closed, not evicted.
    held: usize,
    /// Evicted connections not closed yet.
    closing: usize,
    /// Connections in the order they became idle; stale entries are skipped.
    idle: VecDeque<Entry>,
}

struct Entry {
    conn: Weak<Activity>,
    /// The connection's turn when it became idle; a request since has moved it on.
    turn: u64,
}

/// A new connection's slot: its [`Activity`] and the slot, given back when this is dropped.
pub struct Seat {
    pub activity: Arc<Activity>,
    roster: Roster,
}

/// All slots hold connections with a request in flight.
#[derive(Debug)]
pub struct Full;

impl Roster {
    /// `limit` slots; `name` says which listener and limit, for the log (see [`Shared::name`]).
    pub fn new(limit: usize, name: String) -> Self {
        Roster(Arc::new(Shared {
            limit: limit.max(1),
            name,
            state: Mutex::new(State::default()),
        }))
    }

    /// Connections holding a slot now.
    pub fn held(&self) -> usize {
        self.state().held
    }

    /// A slot for a connection just accepted: a free one, or that of the connection idle the
    /// longest, which is told to close.
    pub fn admit(&self) -> Result<Seat, Full> {
        let mut state = self.state();
        if state.held >= self.0.limit {
            let Some(victim) = state.longest_idle() else {
                return Err(Full);
            };
            let hurried = state.closing >= self.0.limit;
            state.held -= 1;
            state.closing += 1;
            victim.evict(hurried);
            self.report(&victim, hurried);
        }
        state.held += 1;
        let activity = Activity::listed(self.clone());
        state.idle.push_back(Entry {
            conn: Arc::downgrade(&activity),
            turn: activity.turn(),
        });
        Ok(Seat {
            activity,
            roster: self.clone(),
        })
    }

    /// Queues `conn`, whose last request in flight has just ended.
    pub(crate) fn became_idle(&self, conn: &Arc<Activity>) {
        let mut state = self.state();
        let turn = conn.next_turn();
        state.idle.push_back(Entry {
            conn: Arc::downgrade(conn),
            turn,
        });
        let alive = state.held + state.closing;
        if state.idle.len() > 2 * alive + 64 {
            state.idle.retain(|e| e.live().is_some());
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The state stays consistent between statements; a panic elsewhere leaves it usable.
        self.0.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Logs an eviction: once a second at most at warn level, so a flood does not flood the
    /// log; the rest at debug level.
    fn report(&self, victim: &Activity, hurried: bool) {
        static LAST: AtomicU64 = AtomicU64::new(0);
        let idle = victim
            .idle_for()
            .map_or_else(String::new, |d| format!(" (idle for {d:.1?})"));
        let how = match hurried {
            true => "dropping",
            false => "closing (GOAWAY)",
        };
        let name = &self.0.name;
        if crate::server::once_a_second(&LAST) {
            tracing::warn!("{name} are open: {how} the connection idle the longest{idle} to serve a new one (more such closings are logged at debug level)");
        } else {
            tracing::debug!(
                "{name} are open: {how} the connection idle the longest{idle} to serve a new one"
            );
        }
    }
}

impl State {
    /// Takes the connection idle the longest off the queue (with the stale entries before it).
    fn longest_idle(&mut self) -> Option<Arc<Activity>> {
        while let Some(entry) = self.idle.pop_front() {
            if let Some(conn) = entry.live() {
                return Some(conn);
            }
        }
        None
    }
}

impl Entry {
    /// The connection, if it is still idle since this entry was queued, and not evicted.
    fn live(&self) -> Option<Arc<Activity>> {
        let conn = self.conn.upgrade()?;
        conn.idle_in_turn(self.turn).then_some(conn)
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        let mut state = self.roster.state();
        if self.activity.is_evicted() {
            state.closing -= 1;
        } else {
            state.held -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn evicted(seats: &[&Seat]) -> Vec<bool> {
        seats.iter().map(|s| s.activity.is_evicted()).collect()
    }

    #[test]
    fn the_connection_idle_the_longest_makes_room_never_a_busy_one() {
        let roster = Roster::new(3, "test".into());
        let a = roster.admit().unwrap();
        let b = roster.admit().unwrap();
        let c = roster.admit().unwrap();
        let busy_a = a.activity.begin();
        // b is idle the longest now (a is busy): it goes, then c, then d.
        let d = roster.admit().unwrap();
        assert_eq!(evicted(&[&a, &b, &c, &d]), [false, true, false, false]);
        let e = roster.admit().unwrap();
        let f = roster.admit().unwrap();
        assert_eq!(
            evicted(&[&a, &c, &d, &e, &f]),
            [false, true, true, false, false]
        );
        // a's call ends: it is idle since now, after e and f.
        drop(busy_a);
        let g = roster.admit().unwrap();
        assert_eq!(evicted(&[&a, &e, &f, &g]), [false, true, false, false]);
        assert_eq!(roster.held(), 3);
        // Every connection busy: refused.
        let _busy = [a.activity.begin(), f.activity.begin(), g.activity.begin()];
        assert!(roster.admit().is_err());
        assert_eq!(roster.held(), 3);
        // Evicted seats give back nothing twice; a closed one frees its slot.
        drop((b, c, d, e));
        assert_eq!(roster.held(), 3);
        drop(g);
        assert_eq!(roster.held(), 2);
        assert!(roster.admit().is_ok());
    }

    #[test]
    fn the_queue_stays_in_proportion_to_the_connections() {
        let roster = Roster::new(4, "test".into());
        let seats: Vec<_> = (0..4).map(|_| roster.admit().unwrap()).collect();
        for _ in 0..10_000 {
            for seat in &seats {
                drop(seat.activity.begin());
            }
        }
        assert!(roster.state().idle.len() <= 2 * 4 + 64 + 1);
        // The order is still right: the first to become idle goes first.
        drop(seats[2].activity.begin());
        let _new = roster.admit().unwrap();
        assert_eq!(
            evicted(&seats.iter().collect::<Vec<_>>()),
            [true, false, false, false]
        );
    }
}
