//! Requests as scripts receive them: one message as a table, a stream as an iterator.
//!
//! Either way the bytes go straight into the request type's builder slots ([`super::decode`])
//! and the builder, a small Lua function, makes the tables; it runs on the call's own thread,
//! under the call's budget like any script code.
//!
//! `for msg in stream do … end` takes first what has already arrived, synchronously: a plain
//! function call that reads the next message out of the transport's buffer, with no future, no
//! task switch and no wake-up per message. Only when nothing is buffered does it wait, as an
//! async function whose single wake-up, when data arrives, brings in however many messages
//! arrived meanwhile. The wait only keeps what it polled for the plain call to take: an async
//! function returning more than two values would pack them into a table on every return.
//!
//! When the request's layout is flat (numbers, booleans, presence flags and strings; no
//! table, see [`decode::Layout::flat`]), a message is read into cells that name its strings
//! by their place in its bytes, the same field walk as the Lua value path (same verdict, same
//! errors), and pushed straight onto the Lua stack by a Lua C function, each string copied
//! from the message bytes: no mlua value, no registry reference, no argument list, nothing
//! allocated in Rust per message.
//!
//! A big message of a layout with tables is converted in time slices (see
//! [`super::sliced_decode`]): `try_next` sets its conversion up and answers "nothing yet", and
//! the iterator's wait drives it, the call paused between two slices as the hook pauses a
//! script, until `try_next` can hand over its slots.
//!
//! For a stream that function is [`take_message`]. Anything it does not take (nothing
//! buffered, the end, an error, a message that does not decode, a spent budget) it leaves for
//! the plain call, which reports it as before. A unary request is read before the call runs
//! and kept with the call ([`FlatRequest`]); the runner's first act is to call
//! [`take_request`].
//!
//! The stream's reader lives as long as Lua keeps the iterator; the stream itself is closed
//! when its call ends ([`StreamCloser`]), so unread messages do not keep the connection's
//! flow-control window until the state collects garbage.
//!
//! Copying a string into Lua may raise a memory error, which unwinds by `longjmp`: while
//! strings are pushed, only raw pointers live in the pushing frames (the message and its cells
//! stay where the call or the stream's reader keeps them), so no Rust value is skipped.

use std::ffi::{c_int, c_void};
use std::future::poll_fn;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};

use futures_util::Stream;
use mlua::{ffi, AnyUserData, Function, Lua, UserData, Value as LuaValue, Variadic};
use tonic::{Status, Streaming};

use super::context::{lock, CallShared};
use super::convert::Conv;
use super::decode::{self, Cell, Cells, DecodeError, Decoder};
use super::plan::Plans;
use super::slice::{self, Waiting};
use super::sliced_decode::{self, Conversion, Found};
use super::status::IncomingError;
use crate::codec::Incoming;
use crate::wire::Invalid;

/// Bytes decoded or encoded per instruction of budget charged.
pub const BYTES_PER_UNIT: u64 = 16;

/// The builder's arguments after `ok` for one request message of layout `layout` (of
/// `plans`), appended to `out`. Its bytes are charged to the call's budget up front without
/// reading the clock (see [`slice::charge_untimed`]); the tables it makes are charged as they
/// are made, with the call's time checked meanwhile (see [`super::meter`]), so a request of
/// many small items stops at the call's time budget like a script past it. `pace`, when
/// given, is called every few thousand steps of the walk that costs the request first (see
/// [`super::sliced_decode`]).
pub fn decode_request(
    lua: &Lua,
    plans: &Plans,
    msg: &Incoming,
    layout: usize,
    out: &mut Vec<LuaValue>,
    pace: Option<fn()>,
) -> mlua::Result<()> {
    msg.check_cost_pacing(pace)
        .map_err(|e| mlua::Error::external(IncomingError(e.into())))?;
    slice::charge_untimed(1 + msg.bytes().len() as u64 / BYTES_PER_UNIT)?;
    Decoder::new(lua, plans)
        .slots(msg.bytes(), &plans.layouts[layout], out)
        .map_err(|e| decode_error(msg, e))
}

/// Checks what decoding `msg` may allocate and charges its reading to the call's budget.
fn charge(msg: &Incoming) -> mlua::Result<()> {
    msg.check_cost()
        .map_err(|e| mlua::Error::external(IncomingError(e.into())))?;
    slice::charge_untimed(1 + msg.bytes().len() as u64 / BYTES_PER_UNIT)
}

/// Why `msg` could not be read, as the call's error.
fn decode_error(msg: &Incoming, e: DecodeError) -> mlua::Error {
    match e {
        DecodeError::Invalid(Invalid::Malformed(m)) => {
            mlua::Error::external(IncomingError(msg.bad_request(m).into()))
        }
        DecodeError::Invalid(other) => mlua::Error::external(IncomingError(
            Status::invalid_argument(format!("{other:?}")),
        )),
        DecodeError::Lua(e) => e,
    }
}

/// A unary call's request of a flat layout (see [`decode::Layout::flat`]), read into its
/// builder's slots as cells, kept with the call until the runner takes it with
/// [`take_request`], which pushes the slots straight onto the Lua stack.
pub struct FlatRequest {
    msg: Incoming,
    cells: Cells,
}

impl FlatRequest {
    /// `msg` read as layout `layout` of `plans`, charged and refused exactly as
    /// [`decode_request`] would.
    pub fn read(plans: &Plans, msg: Incoming, layout: usize) -> mlua::Result<FlatRequest> {
        charge(&msg)?;
        let mut cells = Cells::new();
        decode::read_cells(plans, msg.bytes(), &plans.layouts[layout], &mut cells)
            .map_err(|e| decode_error(&msg, e))?;
        Ok(FlatRequest { msg, cells })
    }
}

/// The runner's way to a unary call's request of a flat layout: `true` and the slots of the
/// current call's [`FlatRequest`], which is then dropped (the strings are copies in Lua now,
/// and its bytes pin tonic's whole read buffer, which no limit counts while the call runs).
/// Strings are copied into Lua straight from the request bytes; making one may raise a memory
/// error, which unwinds no Rust value (only a pointer lives in this frame while Lua is called;
/// the request stays with the call and goes with it). No request, or no stack room for it,
/// is a Lua error, never a request of defaults.
///
/// # Safety
///
/// Lua calls it, as a C function, with its running state.
#[allow(unsafe_code)]
pub(crate) unsafe extern "C-unwind" fn take_request(l: *mut ffi::lua_State) -> c_int {
    // The request stays in place in the call until it is taken below, and only this function takes it;
    // the call outlives this function (the current call entry keeps it while its thread runs).
    // Only a raw pointer is left in this frame (a panic's payload is dropped here), so a Lua
    // error raised below unwinds nothing that needs dropping.
    let found = std::panic::catch_unwind(|| {
        slice::with_running_call(|c| {
            c.and_then(|c| lock(&c.request).as_ref().map(std::ptr::from_ref))
        })
    })
    .ok()
    .flatten();
    let request: *const FlatRequest = match found {
        Some(request) => request,
        _ => {
            // SAFETY: `l` is the running state; the message is a static C string and nothing
            // in this frame needs dropping.
            unsafe {
                ffi::lua_pushstring(l, c"the call's request is gone".as_ptr());
                ffi::lua_error(l)
            }
        }
    };
    // SAFETY: see above.
    let request: &FlatRequest = unsafe { &*request };
    let bytes: &[u8] = request.msg.bytes();
    let count = request.cells.len() as c_int + 1;
    // SAFETY: `l` is the running state; making room may fail but raises no error.
    if unsafe { ffi::lua_checkstack(l, count) } == 0 {
        // SAFETY: as above.
        unsafe {
            ffi::lua_pushstring(l, c"no stack room for the call's request".as_ptr());
            ffi::lua_error(l)
        }
    }
    // SAFETY: there is room for `true` and the slots, and only pointers live in this frame.
    unsafe { push_cells(l, bytes, &request.cells) };
    // Nothing Lua does follows: the request can go (dropped inside the guard, so a panic in a
    // destructor cannot cross into Lua).
    let _ = std::panic::catch_unwind(|| {
        slice::with_running_call(|c| c.map(|c| lock(&c.request).take()));
    });
    count
}

/// Pushes `true` and `cells` onto `l`'s stack, each string copied from `bytes`.
///
/// # Safety
///
/// `l` is the running state with room for `cells.len() + 1` values. Copying a string may
/// raise a memory error, which unwinds every frame up to Lua's by `longjmp`: no value that
/// needs dropping may live in the caller's frames.
#[allow(unsafe_code)]
unsafe fn push_cells(l: *mut ffi::lua_State, bytes: &[u8], cells: &[Cell]) {
    // SAFETY: as the caller promises.
    unsafe {
        ffi::lua_pushboolean(l, 1);
        for cell in cells {
            match *cell {
                Cell::Nil => ffi::lua_pushnil(l),
                Cell::Bool(b) => ffi::lua_pushboolean(l, c_int::from(b)),
                Cell::Int(i) => ffi::lua_pushinteger(l, i),
                Cell::Float(x) => ffi::lua_pushnumber(l, x),
                Cell::Str { start, end } => {
                    let s = bytes.get(start..end).unwrap_or_default();
                    ffi::lua_pushlstring(l, s.as_ptr().cast(), s.len());
                }
            }
        }
    }
}

/// The request plans of `lua`'s scripts.
pub fn plans_of(lua: &Lua) -> mlua::Result<Arc<Plans>> {
    match lua.app_data_ref::<Conv>() {
        Some(conv) => Ok(conv.plans().clone()),
        None => Err(mlua::Error::runtime("scripts are not ready")),
    }
}

/// A streaming call's requests, as the iterator's handle.
pub struct RequestStream(Arc<Reader>);

struct Reader {
    shared: Arc<CallShared>,
    /// Taken once per message: one lock for both.
    inner: Mutex<Inner>,
    /// Taken once per call rather than from the state's app data per message.
    plans: Arc<Plans>,
    layout: usize,
}

struct Inner {
    /// `None` once the call ended (see [`StreamCloser`]).
    stream: Option<Streaming<Incoming>>,
    /// What `wait_next` polled once something arrived (or what [`take_message`] left), for
    /// `try_next` to take.
    waited: Option<Polled>,
    /// The slots [`take_message`] reads a message into, for a flat layout.
    cells: Cells,
    /// The message [`take_message`] is pushing, kept in place while its strings are copied
    /// (and dropped once they are, or at the next message).
    current: Option<Incoming>,
}

impl UserData for RequestStream {}

impl RequestStream {
    /// A call's request stream as what the state's iterator factory takes after the builder:
    /// the call's own `try_next` (a plain function over this stream, so taking a message that
    /// has arrived costs one call and no handle look-up), the handle `wait_next` takes, and
    /// for a flat layout the C function [`take_message`] (else `false`).
    pub fn iterator_args(
        lua: &Lua,
        shared: Arc<CallShared>,
        stream: Streaming<Incoming>,
        layout: usize,
    ) -> mlua::Result<[LuaValue; 3]> {
        let plans = plans_of(lua)?;
        let flat = plans.layouts[layout].flat;
        let reader = Arc::new(Reader {
            shared,
            inner: Mutex::new(Inner {
                stream: Some(stream),
                waited: None,
                cells: Cells::new(),
                current: None,
            }),
            plans,
            layout,
        });
        *lock(&reader.shared.request_stream) = Some(StreamCloser(Arc::downgrade(&reader)));
        let r = reader.clone();
        let try_next = lua.create_function(move |lua, ()| {
            r.check()?;
            match sliced_decode::take_kept(r.call()) {
                Found::Nothing => {}
                Found::Converting => return Ok(Variadic::from_iter([LuaValue::Boolean(false)])),
                Found::Done(slots) => {
                    let mut out = Variadic::from_iter([LuaValue::Boolean(true)]);
                    out.extend(slots?);
                    return Ok(out);
                }
            }
            let polled = r.take_next();
            r.step(lua, polled)
        })?;
        let handle = lua.create_userdata(RequestStream(reader.clone()))?;
        let fast = if flat {
            LuaValue::Function(take_function(lua, &reader, &handle)?)
        } else {
            LuaValue::Boolean(false)
        };
        Ok([
            LuaValue::Function(try_next),
            LuaValue::UserData(handle),
            fast,
        ])
    }
}

/// [`take_message`] as a Lua closure over `reader`: its first upvalue points to the reader,
/// its second is `handle`, which owns a reference to it.
#[allow(unsafe_code)]
fn take_function(lua: &Lua, reader: &Arc<Reader>, handle: &AnyUserData) -> mlua::Result<Function> {
    let ptr = Arc::as_ptr(reader) as *mut c_void;
    // SAFETY: `exec_raw` runs this protected, with `handle` on the stack; it leaves only the
    // closure there. The closure's second upvalue keeps `handle` and with it the reader alive
    // for as long as the closure can be called, so the first upvalue never dangles.
    unsafe {
        lua.exec_raw(handle, |l| {
            ffi::lua_pushlightuserdata(l, ptr);
            ffi::lua_pushvalue(l, -2);
            ffi::lua_pushcclosure(l, take_message, 2);
            ffi::lua_remove(l, -2);
        })
    }
}

/// The iterator's `try_next` for a flat layout: `true` and the slots of the next message if
/// one has arrived and decodes; nothing (zero results) otherwise, leaving what it polled for
/// the plain `try_next`, which reports it.
#[allow(unsafe_code)]
unsafe extern "C-unwind" fn take_message(l: *mut ffi::lua_State) -> c_int {
    // SAFETY: upvalue 1 is the pointer `take_function` made from the reader that upvalue 2
    // keeps alive (see there).
    let reader = unsafe { &*(ffi::lua_touserdata(l, ffi::lua_upvalueindex(1)) as *const Reader) };
    let slots = reader.plans.layouts[reader.layout].slots;
    // SAFETY: `l` is the running state; making room may fail (then nothing is taken) but
    // raises no error.
    if unsafe { ffi::lua_checkstack(l, slots as c_int + 1) } == 0 {
        return 0;
    }
    // A panic must not unwind into Lua's C frames: the plain `try_next` runs instead, under
    // mlua's own guard.
    let read = std::panic::catch_unwind(AssertUnwindSafe(|| reader.read_next()))
        .ok()
        .flatten();
    let Some((bytes, cells)) = read else {
        return 0;
    };
    // SAFETY: both point into what the reader keeps (the message's bytes and the cells), which
    // nothing touches until this function returns: the call's Lua thread is the only one that
    // reads its stream, and it is here. Only pointers live in this frame while strings are
    // copied, and there is room for `true` and the slots.
    unsafe {
        let cells = &*cells;
        push_cells(l, &*bytes, cells);
    }
    // The strings are copies in Lua now; the message can go (inside the guard, so a panic in
    // a destructor cannot cross into Lua).
    let _ = std::panic::catch_unwind(AssertUnwindSafe(|| reader.lock().current = None));
    slots as c_int + 1
}

type Polled = Poll<Option<Result<Incoming, Status>>>;

impl Inner {
    /// The stream's next message, end or error; its end once the stream was closed.
    fn poll(&mut self, cx: &mut Context<'_>) -> Polled {
        match self.stream.as_mut() {
            Some(stream) => Pin::new(stream).poll_next(cx),
            None => Poll::Ready(None),
        }
    }
}

/// Closes a streaming call's request stream when the call ends (see
/// `CallShared::close_request_stream`). The reader lives as long as Lua keeps the call's
/// iterator, which may be until the state's next garbage collection; the stream must not: an
/// open stream the server no longer reads keeps the messages the client already sent, and with
/// them the connection's flow-control window, so every other call on the connection would wait
/// for that window. Closing drops the transport's end, which resets the stream and gives the
/// window back.
pub struct StreamCloser(Weak<Reader>);

impl StreamCloser {
    pub fn close(self) {
        let Some(reader) = self.0.upgrade() else {
            return;
        };
        let stream = reader.lock().stream.take();
        drop(reader);
        drop(stream);
    }
}

impl Reader {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What the last wait polled, if `try_next` has not taken it yet, else what the stream
    /// has buffered (pending if nothing).
    fn take_next(&self) -> Polled {
        let mut inner = self.lock();
        match inner.waited.take() {
            Some(polled) => polled,
            None => inner.poll(&mut Context::from_waker(std::task::Waker::noop())),
        }
    }

    /// The key of the reader's call for what [`sliced_decode`] keeps.
    fn call(&self) -> usize {
        Arc::as_ptr(&self.shared) as usize
    }

    /// Converts the message whose conversion `try_next` started, a time slice at a time (the
    /// call is paused in between, as the hook pauses a script), and keeps the result for it;
    /// or, with no conversion under way, waits until the stream has something and keeps it
    /// for the next `take_next`.
    async fn wait(&self) {
        let call = self.call();
        let polled = poll_fn(|cx| {
            match sliced_decode::resume_kept(call) {
                Some(true) => {
                    self.shared
                        .paused
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                Some(false) => return Poll::Ready(None),
                None => {}
            }
            match self.lock().poll(cx) {
                Poll::Pending => Poll::Pending,
                ready => Poll::Ready(Some(ready)),
            }
        })
        .await;
        if let Some(polled) = polled {
            self.lock().waited = Some(polled);
        }
    }

    /// Takes the next message if it has arrived and decodes as the reader's flat layout, keeps
    /// it and its cells, and gives where they are (the message's bytes, its slots); nothing,
    /// with what was polled kept for `try_next`, otherwise.
    fn read_next(&self) -> Option<(*const [u8], *const [Cell])> {
        if self.check().is_err() {
            return None;
        }
        let mut inner = self.lock();
        inner.current = None;
        let polled = match inner.waited.take() {
            Some(polled) => polled,
            None => inner.poll(&mut Context::from_waker(std::task::Waker::noop())),
        };
        let Poll::Ready(Some(Ok(msg))) = polled else {
            inner.waited = Some(polled);
            return None;
        };
        let layout = &self.plans.layouts[self.layout];
        let read = charge(&msg).is_ok()
            && decode::read_cells(&self.plans, msg.bytes(), layout, &mut inner.cells).is_ok();
        if !read {
            inner.waited = Some(Poll::Ready(Some(Ok(msg))));
            return None;
        }
        // The bytes live in the message's buffer, which stays put as the message moves.
        let bytes: *const [u8] = &msg.bytes()[..];
        inner.current = Some(msg);
        Some((bytes, inner.cells.as_slice()))
    }

    fn check(&self) -> mlua::Result<()> {
        if self.shared.ended.load(std::sync::atomic::Ordering::Acquire) {
            return Err(mlua::Error::runtime(
                "the request stream was used after its call ended",
            ));
        }
        Ok(())
    }

    /// What the iterator hands its builder: `true` and the slots, `false` when nothing has
    /// arrived yet, `nil` at the end of the stream.
    fn step(&self, lua: &Lua, polled: Polled) -> mlua::Result<Variadic<LuaValue>> {
        let one = |v: LuaValue| Ok(Variadic::from_iter([v]));
        match polled {
            Poll::Pending => one(LuaValue::Boolean(false)),
            Poll::Ready(None) => one(LuaValue::Nil),
            Poll::Ready(Some(Err(status))) => Err(mlua::Error::external(IncomingError(status))),
            Poll::Ready(Some(Ok(mut msg))) => {
                if msg.bytes().len() >= sliced_decode::PAUSE_FROM
                    && !self.plans.layouts[self.layout].flat
                {
                    // Converted in time slices by the iterator's wait (see `wait`).
                    match Conversion::new(lua, self.plans.clone(), msg, self.layout) {
                        Ok(conversion) => {
                            sliced_decode::keep(self.call(), conversion);
                            return one(LuaValue::Boolean(false));
                        }
                        Err(m) => msg = m,
                    }
                }
                let mut out = Variadic::with_capacity(1 + self.plans.layouts[self.layout].slots);
                out.push(LuaValue::Boolean(true));
                decode_request(lua, &self.plans, &msg, self.layout, &mut out, None)?;
                Ok(out)
            }
        }
    }
}

fn reader(h: &AnyUserData) -> mlua::Result<Arc<Reader>> {
    Ok(h.borrow::<RequestStream>()?.0.clone())
}

const ITERATOR: &str = r#"
local wait_next = ...
return function(build, try_next, h, take)
  if take then
    return function()
      local r = build(take())
      if r == nil then
        r = build(try_next())
        while r == false do
          wait_next(h)
          r = build(take())
          if r == nil then r = build(try_next()) end
        end
      end
      return r
    end
  end
  return function()
    local r = build(try_next())
    while r == false do
      wait_next(h)
      r = build(try_next())
    end
    return r
  end
end
"#;

/// `(builder, try_next, handle, take)` (see [`RequestStream::iterator_args`]) → the
/// call's iterator; one per state.
pub fn iterator_factory(lua: &Lua) -> mlua::Result<Function> {
    // Waits until the stream has something (a message, its end or an error) and keeps it for
    // the next `try_next`; returns nothing.
    let wait_next = lua.create_async_function(|_, h: AnyUserData| async move {
        let r = reader(&h)?;
        r.check()?;
        Waiting::new(r.wait()).await;
        r.check()?;
        Ok(())
    })?;
    lua.load(ITERATOR)
        .set_name("=protoserve requests")
        .call(wait_next)
}
