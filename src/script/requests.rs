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

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures_util::Stream;
use mlua::{AnyUserData, Function, Lua, UserData, Value as LuaValue, Variadic};
use tonic::{Status, Streaming};

use super::context::CallShared;
use super::convert::Conv;
use super::decode::{DecodeError, Decoder};
use super::plan::Plans;
use super::slice::{self, Waiting};
use super::status::IncomingError;
use crate::codec::Incoming;
use crate::wire::Invalid;

/// Bytes decoded or encoded per instruction of budget charged.
pub const BYTES_PER_UNIT: u64 = 16;

/// The builder's arguments after `ok` for one request message of layout `layout` (of
/// `plans`), appended to `out`. The decoding is charged to the call's instruction budget
/// without reading the clock (see [`slice::charge_untimed`]).
pub fn decode_request(
    lua: &Lua,
    plans: &Plans,
    msg: &Incoming,
    layout: usize,
    out: &mut Vec<LuaValue>,
) -> mlua::Result<()> {
    msg.check_cost()
        .map_err(|e| mlua::Error::external(IncomingError(e.into())))?;
    slice::charge_untimed(1 + msg.bytes().len() as u64 / BYTES_PER_UNIT)?;
    Decoder::new(lua, plans)
        .slots(msg.bytes(), &plans.layouts[layout], out)
        .map_err(|e| match e {
            DecodeError::Invalid(Invalid::Malformed(m)) => {
                mlua::Error::external(IncomingError(msg.bad_request(m).into()))
            }
            DecodeError::Invalid(other) => mlua::Error::external(IncomingError(
                Status::invalid_argument(format!("{other:?}")),
            )),
            DecodeError::Lua(e) => e,
        })
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
    stream: Streaming<Incoming>,
    /// What `wait_next` polled once something arrived, for `try_next` to take.
    waited: Option<Polled>,
}

impl UserData for RequestStream {}

impl RequestStream {
    /// A call's request stream as what the state's iterator factory takes with the builder:
    /// the call's own `try_next` (a plain function over this stream, so taking a message that
    /// has arrived costs one call and no handle look-up) and the handle `wait_next` takes.
    pub fn iterator_args(
        lua: &Lua,
        shared: Arc<CallShared>,
        stream: Streaming<Incoming>,
        layout: usize,
    ) -> mlua::Result<[LuaValue; 2]> {
        let reader = Arc::new(Reader {
            shared,
            inner: Mutex::new(Inner {
                stream,
                waited: None,
            }),
            plans: plans_of(lua)?,
            layout,
        });
        let r = reader.clone();
        let try_next = lua.create_function(move |lua, ()| {
            r.check()?;
            let polled = r.take_next();
            r.step(lua, polled)
        })?;
        Ok([
            LuaValue::Function(try_next),
            LuaValue::UserData(lua.create_userdata(RequestStream(reader))?),
        ])
    }
}

type Polled = Poll<Option<Result<Incoming, Status>>>;

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
            None => Pin::new(&mut inner.stream)
                .poll_next(&mut Context::from_waker(std::task::Waker::noop())),
        }
    }

    /// Waits until the stream has something and keeps it for the next `take_next`.
    async fn wait(&self) {
        let polled = poll_fn(|cx| match Pin::new(&mut self.lock().stream).poll_next(cx) {
            Poll::Pending => Poll::Pending,
            ready => Poll::Ready(ready),
        })
        .await;
        self.lock().waited = Some(polled);
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
            Poll::Ready(Some(Ok(msg))) => {
                let mut out = Variadic::with_capacity(1 + self.plans.layouts[self.layout].slots);
                out.push(LuaValue::Boolean(true));
                decode_request(lua, &self.plans, &msg, self.layout, &mut out)?;
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
return function(try_next, h, build)
  return function()
    local r = build(try_next())
    if r == false then
      wait_next(h)
      r = build(try_next())
    end
    return r
  end
end
"#;

/// `(try_next, handle, builder)` (see [`RequestStream::iterator_args`]) → the call's
/// iterator; one per state.
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
