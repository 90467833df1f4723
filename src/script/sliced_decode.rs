//! A big request's conversion into Lua tables, paused at the end of its call's time slice.
//!
//! Why: a request becomes Lua tables in Rust ([`super::decode`]), before the script runs, where
//! no hook can pause it. Its work is charged as it goes ([`super::meter`]), so it stops at the
//! call's budget, but it ran in one go: a 4 MiB request of empty items of a repeated message
//! field kept its state's thread for the whole walk that costs it and the tables it made (tens
//! of milliseconds, up to the conversion's memory cap), and every other call on the state
//! waited that long, where a script is paused every couple of milliseconds.
//!
//! How: a request of at least [`PAUSE_FROM`] bytes is converted on a stack of its own (a
//! `corosensei` coroutine, as [`super::pausable`] runs long pattern operations), which the
//! call's task resumes (see `run_call`). Where the conversion charges its work to the call (its
//! meter, and every few thousand steps of the walk that costs it first) and finds the call's
//! time slice over, it suspends ([`give_way`]); the task then counts the call as paused, lets
//! calls that arrived meanwhile start, and yields to the executor, so every other call on the
//! state takes its turn before the conversion goes on with a fresh slice. A shorter request is
//! converted directly, as before: it ends within a slice or so, and pays nothing for this.
//!
//! A big message of a request stream is converted the same way, from the stream's iterator
//! (see [`super::requests`]): its reader sets the conversion up and says "nothing yet", and
//! the iterator's wait resumes it inside the call's coroutine, returning pending at the end of
//! each slice, so the call is paused there as the hook pauses a script. Such a conversion is
//! kept on the thread by call ([`keep`]), not in the reader Lua owns, and dropped when its call
//! ends ([`Forget`]).
//!
//! Memory stays bounded as for paused scripts: above the state's pause mark, a conversion does
//! not suspend while another call is paused (see [`slice::may_pause`]), so paused conversions
//! do not each hold tables up to the conversion's memory cap at once.
//!
//! A conversion holds the tables it made by mlua handles and its state's conversion data by an
//! app-data borrow while suspended: only the call's task on the state's own thread resumes or
//! drops it, and app data is only replaced while a state is built, never while calls run. A
//! conversion dropped while suspended (its call cancelled or past its deadline, its state
//! closing) has its stack unwound by `corosensei`, which drops those handles while the state
//! is alive (the call's task keeps it).

#![allow(unsafe_code)]

use std::cell::{Cell, RefCell};
use std::sync::Arc;

use corosensei::stack::DefaultStack;
use corosensei::{Coroutine, CoroutineResult, Yielder};
use mlua::{Lua, Value as LuaValue};

use super::hook::TIME_SLICE;
use super::pausable;
use super::plan::Plans;
use super::requests;
use super::slice::{self, Check};
use super::spare_stack;
use crate::codec::Incoming;

/// Requests of at least this many bytes are converted where they can pause; shorter ones end
/// within a time slice or so.
pub const PAUSE_FROM: usize = 16 * 1024;

/// A conversion's stack: as deep as a state thread's own, where conversions ran before.
const STACK_SIZE: usize = 2 << 20;

thread_local! {
    /// The running conversion's [`Pacer`], while it runs (null while it is suspended, and
    /// outside conversions).
    static PACER: Cell<*const ()> = const { Cell::new(std::ptr::null()) };
    /// The conversions of streamed messages in progress or done, by call (see [`keep`]).
    static KEPT: RefCell<Vec<(usize, Kept)>> = const { RefCell::new(Vec::new()) };
}

/// What a running conversion suspends with, on its own stack.
struct Pacer<'c> {
    yielder: &'c Yielder<(), ()>,
    lua: &'c Lua,
}

/// Makes `pacer` the running conversion's until dropped (also when its stack is unwound).
struct Installed(*const ());

impl Installed {
    fn new(pacer: &Pacer<'_>) -> Self {
        let previous = PACER.with(|p| p.replace(std::ptr::from_ref(pacer).cast()));
        Self(previous)
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = PACER.try_with(|p| p.set(self.0));
    }
}

/// Called where a conversion's call found its time slice over: suspends the running
/// conversion, if there is one and its state may keep another call paused. Elsewhere (a small
/// request, a stream's message) it does nothing and the work goes on.
pub fn give_way() {
    let pacer = PACER.with(|p| p.replace(std::ptr::null()));
    if pacer.is_null() {
        return;
    }
    // SAFETY: a non-null `PACER` points at the running conversion's `Pacer`, on its own stack
    // in the frame that installed it, which outlives every call made below it; it is null
    // while the conversion is suspended, so no other code reads it then.
    let p = unsafe { &*pacer.cast::<Pacer<'_>>() };
    if slice::may_pause(p.lua.used_memory().saturating_add(pausable::held())) {
        p.yielder.suspend(());
    }
    PACER.with(|c| c.set(pacer));
}

/// The pace of the walk that costs a request before it is converted: gives way when the call's
/// time slice is over (an abort is raised by the next charge of the conversion).
fn pace() {
    if matches!(slice::check(0, TIME_SLICE), Check::Yield) {
        give_way();
    }
}

type Body = Coroutine<(), (), mlua::Result<Vec<LuaValue>>, DefaultStack>;

/// A request being converted on a stack of its own, between two resumes.
pub struct Conversion {
    /// `None` once it has ended.
    body: Option<Body>,
}

/// What [`Conversion::resume`] comes back with.
pub enum Resumed {
    /// The builder's arguments after `ok` (see [`requests::decode_request`]), or why not.
    Done(mlua::Result<Vec<LuaValue>>),
    /// Its call's time slice ended.
    Suspended,
}

impl Conversion {
    /// Sets up the conversion of `msg` as layout `layout` of `plans` (not started yet); gives
    /// `msg` back when no stack can be had, to be converted directly.
    pub fn new(
        lua: &Lua,
        plans: Arc<Plans>,
        msg: Incoming,
        layout: usize,
    ) -> Result<Self, Incoming> {
        let stack = match spare_stack::take(STACK_SIZE) {
            Ok(stack) => stack,
            Err(e) => {
                tracing::warn!("no stack for a pausable request conversion: {e}");
                return Err(msg);
            }
        };
        let lua = lua.clone();
        let body = Coroutine::with_stack(stack, move |yielder: &Yielder<(), ()>, ()| {
            let pacer = Pacer { yielder, lua: &lua };
            let installed = Installed::new(&pacer);
            let mut out = Vec::with_capacity(plans.layouts[layout].slots);
            let converted =
                requests::decode_request(&lua, &plans, &msg, layout, &mut out, Some(pace));
            drop(installed);
            converted.map(|()| out)
        });
        Ok(Self { body: Some(body) })
    }

    /// Converts on until the conversion ends or its call's time slice does. Called with the
    /// call current (see [`slice::with_call`]), which gives it a fresh slice.
    pub fn resume(&mut self) -> Resumed {
        let Some(body) = self.body.as_mut() else {
            return Resumed::Done(Err(mlua::Error::runtime(
                "the request was converted before",
            )));
        };
        match body.resume(()) {
            CoroutineResult::Yield(()) => Resumed::Suspended,
            CoroutineResult::Return(converted) => {
                if let Some(body) = self.body.take() {
                    spare_stack::keep(body.into_stack());
                }
                Resumed::Done(converted)
            }
        }
    }
}

impl Drop for Conversion {
    fn drop(&mut self) {
        if let Some(mut body) = self.body.take() {
            // Unwinds a suspended conversion's frames, dropping the tables' handles and the
            // app-data borrow it holds, then keeps the stack for the next one.
            body.force_unwind();
            spare_stack::keep(body.into_stack());
        }
    }
}

/// A streamed message's conversion, kept for its call on the state's thread.
enum Kept {
    Converting(Conversion),
    /// Ended: the builder's arguments after `ok`, or why not.
    Done(mlua::Result<Vec<LuaValue>>),
    /// Being resumed (taken out meanwhile).
    Running,
}

/// What the request stream's reader finds kept for its call.
pub enum Found {
    Nothing,
    /// A message's conversion is under way: the iterator waits for it.
    Converting,
    /// A message's conversion ended (taken).
    Done(mlua::Result<Vec<LuaValue>>),
}

/// Keeps `conversion` (of the next message of call `call`'s request stream) on this thread
/// until the stream's wait drives it ([`resume_kept`]) and the stream's reader takes its
/// result ([`take_kept`]). Kept here rather than in the reader, which Lua owns: a conversion
/// holds its state, which it would keep from closing if Lua kept it; this keeps it only
/// until its call ends ([`Forget`]).
pub fn keep(call: usize, conversion: Conversion) {
    let displaced = KEPT.with(|k| {
        let mut kept = k.borrow_mut();
        let displaced = take_entry(&mut kept, call);
        kept.push((call, Kept::Converting(conversion)));
        displaced
    });
    drop(displaced);
}

/// Takes call `call`'s ended conversion, or says whether one is under way.
pub fn take_kept(call: usize) -> Found {
    KEPT.with(|k| {
        let mut kept = k.borrow_mut();
        let Some(i) = kept.iter().position(|(c, _)| *c == call) else {
            return Found::Nothing;
        };
        match &kept[i].1 {
            Kept::Done(_) => match kept.swap_remove(i).1 {
                Kept::Done(result) => Found::Done(result),
                _ => Found::Nothing,
            },
            Kept::Converting(_) | Kept::Running => Found::Converting,
        }
    })
}

/// Resumes call `call`'s kept conversion (the call current): `None` if none is under way,
/// `Some(true)` when it suspended at the end of the call's time slice, `Some(false)` when it
/// ended (its result kept for [`take_kept`]).
pub fn resume_kept(call: usize) -> Option<bool> {
    let mut conversion = KEPT.with(|k| {
        let mut kept = k.borrow_mut();
        let (_, entry) = kept.iter_mut().find(|(c, _)| *c == call)?;
        match std::mem::replace(entry, Kept::Running) {
            Kept::Converting(conversion) => Some(conversion),
            other => {
                *entry = other;
                None
            }
        }
    })?;
    let (entry, suspended) = match conversion.resume() {
        Resumed::Suspended => (Kept::Converting(conversion), true),
        Resumed::Done(result) => (Kept::Done(result), false),
    };
    let _ = KEPT.try_with(|k| {
        if let Some((_, e)) = k.borrow_mut().iter_mut().find(|(c, _)| *c == call) {
            *e = entry;
        }
    });
    Some(suspended)
}

/// Takes call `call`'s entry out of `kept`, to be dropped once the list is not borrowed (a
/// conversion unwinds as it is dropped).
fn take_entry(kept: &mut Vec<(usize, Kept)>, call: usize) -> Option<Kept> {
    let i = kept.iter().position(|(c, _)| *c == call)?;
    Some(kept.swap_remove(i).1)
}

/// Drops what is kept for a call when it ends (also when its task is dropped), while its
/// state is alive.
pub struct Forget(pub usize);

impl Drop for Forget {
    fn drop(&mut self) {
        let call = self.0;
        let entry = KEPT
            .try_with(|k| take_entry(&mut k.borrow_mut(), call))
            .ok()
            .flatten();
        drop(entry);
    }
}
