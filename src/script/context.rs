//! `ctx`, the second argument of every script function: what the call knows and can do.
//!
//! | member | meaning |
//! |---|---|
//! | `ctx.method` | `"package.Service/Method"` |
//! | `ctx.metadata` | request metadata, lowercase keys (a `-bin` value is its raw bytes) |
//! | `ctx.deadline` | the client's deadline as Unix time in seconds, or nil |
//! | `ctx:remaining()` | seconds until the deadline, or nil |
//! | `ctx:elapsed()` | seconds since the call started |
//! | `ctx:send(msg)` | send one response (server-streaming, bidi); waits while the client is slow |
//! | `ctx:sleep(ms)` | pause this call without blocking a thread |
//! | `ctx:set_header(k, v)` | response header (before the first message) |
//! | `ctx:set_trailer(k, v)` | response trailer |
//!
//! Every call gets its own ctx, and it works only while its own call runs: a closure that kept
//! it can never read another call's metadata. [`CallShared`] is also the call's meter (budget,
//! deadline, cancellation, sticky abort) that the instruction hook checks.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::metadata::entry_size;
use mlua::{Function, Table, Value as LuaValue};
use prost_reflect::MessageDescriptor;
use tokio::sync::oneshot;
use tonic::metadata::{KeyAndValueRef, MetadataMap};
use tonic::Status;

use super::convert::outgoing_from_lua;
use super::outbox::{OutboxSender, OutboxStream};
use super::plan::MsgId;
use super::status::Abort;
use crate::codec::Outgoing;
use crate::error::CallError;
use crate::handler::{Reply, Responses};

/// Where a call's answer goes: the handler future on the network side waits on it.
pub type ReplySender = oneshot::Sender<Result<Reply, CallError>>;

/// State shared by a call's ctx, its hook and its driver.
pub struct CallShared {
    pub method: Arc<str>,
    pub script: Arc<str>,
    pub function: Arc<str>,
    /// The method's output type (None for the meter of a script load).
    pub output: Option<Output>,
    pub metadata: MetadataMap,
    pub started: Instant,
    pub deadline: Option<Instant>,
    /// Lua instructions (and library work in the same units) the call may use; `u64::MAX`
    /// when instructions are not counted.
    pub budget: u64,
    pub used: AtomicU64,
    /// How long the call's script may run, over all its time slices.
    pub time_budget: Duration,
    /// Nanoseconds the call's script ran in the slices that ended.
    ran: AtomicU64,
    /// How deeply the call's `pcall`/`xpcall` are nested (see `guard`).
    pub protected_depth: AtomicU32,
    /// The sticky abort (0: none, see [`Abort::code`]).
    aborted: AtomicU8,
    /// Set when the call has ended: its handles (ctx, request iterator) stop working.
    pub ended: AtomicBool,
    /// Set when the client went away before the answer.
    cancelled: AtomicBool,
    /// Wakes the call's driver when the client goes away.
    pub cancel_notify: tokio::sync::Notify,
    pub headers: Mutex<MetadataMap>,
    pub trailers: Arc<Mutex<MetadataMap>>,
    /// The entry's own headers from its handler file, which go out with what the script sets
    /// (see [`insert_metadata`]).
    pub entry_headers: Arc<MetadataMap>,
    pub headers_sent: AtomicBool,
    pub streams_output: bool,
    /// The answer, until it is sent (at the end, or at the first message of a stream).
    pub reply: Mutex<Option<ReplySender>>,
    /// The response stream's receiving end, handed over with the reply.
    pub stream: Mutex<Option<OutboxStream>>,
    /// The response stream's sending end; taken when the script ends so the stream closes.
    pub sender: Mutex<Option<OutboxSender>>,
    /// A message `try_send` could not place yet; `wait_send` sends it.
    pub pending: Mutex<Option<Result<Outgoing, Status>>>,
    /// The reply `ctx:send`'s C function last gave up on in this call (see
    /// [`super::convert::outgoing_at`]): kept with the call, so that nothing a call leaves
    /// (stopped between that function and the `try_send` after it) reaches the next one.
    pub missed: Mutex<Option<super::convert::Missed>>,
    /// The call's own thread (a pointer), driven by the executor: never yielded by the hook.
    main_thread: std::sync::atomic::AtomicUsize,
    /// The call's ctx table (a pointer; 0 before it is made): ctx methods work for this one.
    pub ctx: std::sync::atomic::AtomicUsize,
    /// Coroutines (pointers) of this call that the hook yielded for a time slice and whose
    /// resumer has not seen it yet (see `guard`).
    sliced: Mutex<Vec<usize>>,
    /// The slice ran out while the hook was where Lua cannot yield: the next resume that
    /// comes back pauses instead (see `guard`).
    pause_owed: AtomicBool,
    /// The coroutine (a pointer) the hook last asked to yield because the call was aborted.
    abort_yield: std::sync::atomic::AtomicUsize,
    /// The hook paused the call for a time slice and it has not run since (see `slice`).
    pub paused: AtomicBool,
    /// The call's own `math.random` generator, made at its first draw (see `random`).
    pub random: super::random::CallGenerator,
    /// Bytes the call's `print` wrote to the log (see `sandbox`).
    pub printed: std::sync::atomic::AtomicUsize,
    /// A unary request of a flat layout, read before the call runs, for the runner to take
    /// (see `requests::take_request`, which drops it once its values are on the Lua stack).
    /// Its place stays put while `take_request` reads it without the lock: the call's
    /// `Arc` holds it, and only `take_request` takes it out, after its last read.
    pub request: Mutex<Option<super::requests::FlatRequest>>,
    /// A streaming call's request stream, closed when the call ends (see [`Self::end`]).
    pub request_stream: Mutex<Option<super::requests::StreamCloser>>,
    /// Bytes by which the state's memory grew while this call ran (freed memory counts
    /// against it): which call holds the memory when the state runs out (see `worker`).
    pub held: AtomicI64,
    /// The state's memory when the call's last run began.
    pub memory_at_run: AtomicU64,
    /// `held` when the call's last run began: what the call had added before the run that met
    /// a memory error (`held` itself has that run's end counted too, collection included).
    pub held_at_run: AtomicI64,
}

/// What a call needs to start (the rest of [`CallShared`] starts empty).
pub struct CallSpec {
    pub method: Arc<str>,
    pub script: Arc<str>,
    pub function: Arc<str>,
    pub output: Option<Output>,
    pub metadata: MetadataMap,
    pub started: Instant,
    pub deadline: Option<Instant>,
    pub budget: u64,
    pub time_budget: Duration,
    pub streams_output: bool,
    pub reply: Option<ReplySender>,
    pub outbox: Option<(OutboxSender, OutboxStream)>,
    /// The entry's own headers (empty for what is not a call of an entry).
    pub entry_headers: Arc<MetadataMap>,
}

/// A method's output type: its descriptor (for messages) and its plan (for encoding).
#[derive(Clone)]
pub struct Output {
    pub desc: MessageDescriptor,
    pub plan: MsgId,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl CallShared {
    pub fn new(spec: CallSpec) -> Self {
        let (sender, stream) = match spec.outbox {
            Some((tx, rx)) => (Some(tx), Some(rx)),
            None => (None, None),
        };
        Self {
            method: spec.method,
            script: spec.script,
            function: spec.function,
            output: spec.output,
            metadata: spec.metadata,
            started: spec.started,
            deadline: spec.deadline,
            budget: spec.budget,
            used: AtomicU64::new(0),
            time_budget: spec.time_budget,
            ran: AtomicU64::new(0),
            protected_depth: AtomicU32::new(0),
            aborted: AtomicU8::new(0),
            ended: AtomicBool::new(false),
            cancelled: AtomicBool::new(false),
            cancel_notify: tokio::sync::Notify::new(),
            headers: Mutex::new(MetadataMap::new()),
            trailers: Arc::new(Mutex::new(MetadataMap::new())),
            entry_headers: spec.entry_headers,
            headers_sent: AtomicBool::new(false),
            streams_output: spec.streams_output,
            reply: Mutex::new(spec.reply),
            stream: Mutex::new(stream),
            sender: Mutex::new(sender),
            pending: Mutex::new(None),
            missed: Mutex::new(None),
            main_thread: std::sync::atomic::AtomicUsize::new(0),
            ctx: std::sync::atomic::AtomicUsize::new(0),
            sliced: Mutex::new(Vec::new()),
            pause_owed: AtomicBool::new(false),
            abort_yield: std::sync::atomic::AtomicUsize::new(0),
            paused: AtomicBool::new(false),
            random: Default::default(),
            printed: std::sync::atomic::AtomicUsize::new(0),
            request: Mutex::new(None),
            request_stream: Mutex::new(None),
            held: AtomicI64::new(0),
            memory_at_run: AtomicU64::new(0),
            held_at_run: AtomicI64::new(0),
        }
    }

    /// A call of no method, for unit tests of what runs scripts: `budget` instructions and
    /// `time_budget` of running time, no deadline, no reply.
    #[cfg(test)]
    pub fn for_test(budget: u64, time_budget: Duration) -> Arc<Self> {
        Arc::new(Self::new(CallSpec {
            method: Arc::from("test"),
            script: Arc::from(""),
            function: Arc::from(""),
            output: None,
            metadata: Default::default(),
            started: Instant::now(),
            deadline: None,
            budget,
            time_budget,
            streams_output: false,
            reply: None,
            outbox: None,
            entry_headers: Default::default(),
        }))
    }

    /// Checked by the hook and [`super::slice::charge`], `running_for` into a time slice:
    /// is there any reason to stop the script now? `step` is the instructions (or units of
    /// library work) since the last check. Once a reason is found, it is found again on every
    /// later check.
    pub fn should_abort(&self, step: u64, running_for: Duration) -> Option<Abort> {
        self.charge(step, Some(running_for))
    }

    /// [`Self::should_abort`] without the clock: charges `step` instructions and says whether
    /// the call is aborted, over its instruction budget or cancelled. Its time and deadline are
    /// left to the hook, which checks them while the script runs.
    pub fn should_abort_untimed(&self, step: u64) -> Option<Abort> {
        self.charge(step, None)
    }

    /// Charges `step` instructions and finds a reason to stop, the time ones only when given
    /// how long the script has run in this slice.
    #[inline]
    fn charge(&self, step: u64, running_for: Option<Duration>) -> Option<Abort> {
        if let Some(a) = self.aborted() {
            return Some(a);
        }
        let used = self
            .used
            .fetch_add(step, Ordering::Relaxed)
            .saturating_add(step);
        let ran =
            |r: Duration| Duration::from_nanos(self.ran.load(Ordering::Relaxed)).saturating_add(r);
        let why = if used > self.budget {
            Abort::Budget(self.budget)
        } else if running_for.is_some_and(|r| ran(r) > self.time_budget) {
            Abort::Time(self.time_budget)
        } else if running_for.is_some() && self.deadline.is_some_and(|d| Instant::now() >= d) {
            Abort::Deadline
        } else if self.is_cancelled() {
            Abort::Cancelled
        } else {
            return None;
        };
        Some(self.abort(why))
    }

    /// Adds a time slice that ended to the time the call's script ran.
    pub fn add_ran(&self, slice: Duration) {
        let nanos = u64::try_from(slice.as_nanos()).unwrap_or(u64::MAX);
        let _ = self
            .ran
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |r| {
                Some(r.saturating_add(nanos))
            });
    }

    /// Records `why` as the call's abort (the first one stays) and returns the recorded one.
    pub fn abort(&self, why: Abort) -> Abort {
        match self
            .aborted
            .compare_exchange(0, why.code(), Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => why,
            Err(earlier) => Abort::from_code(earlier, self.budget, self.time_budget).unwrap_or(why),
        }
    }

    /// The abort error for `why`, recorded as sticky.
    pub fn abort_error(&self, why: Abort) -> mlua::Error {
        mlua::Error::external(self.abort(why))
    }

    pub fn aborted(&self) -> Option<Abort> {
        Abort::from_code(
            self.aborted.load(Ordering::Acquire),
            self.budget,
            self.time_budget,
        )
    }

    /// Whether the client is gone: nobody waits for the answer or reads the stream.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
            || (self.headers_sent.load(Ordering::Acquire)
                && lock(&self.sender).as_ref().is_some_and(|s| s.is_closed()))
    }

    /// The client went away (the handler's future was dropped before the answer).
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Release);
        self.cancel_notify.notify_one();
    }

    /// The call's state was given up while running it (stuck where the hook cannot stop it,
    /// replaced, gone): the call is marked aborted and its client told UNAVAILABLE now, not
    /// when (if ever) its thread runs it again. `why` completes "the script state running this
    /// call …".
    pub fn give_up(&self, why: &str) {
        self.abort(Abort::Cancelled);
        let lost = || CallError::ScriptStateLost {
            method: self.method.clone(),
            why: Arc::from(why),
        };
        if let Some(sender) = lock(&self.sender).take() {
            let _ = sender.try_send(Err(lost().into()));
        }
        self.answer(Err(lost()));
    }

    /// Whether the client still waits for something: the answer, or the end of the stream.
    pub fn unanswered(&self) -> bool {
        lock(&self.reply).is_some() || lock(&self.sender).is_some()
    }

    /// Sends the answer (once; later calls do nothing).
    pub fn answer(&self, result: Result<Reply, CallError>) {
        if let Some(tx) = lock(&self.reply).take() {
            let _ = tx.send(result);
        }
    }

    /// A streaming call answers with its headers and the stream at its first message (or when
    /// the script ends without sending).
    pub(super) fn mark_headers_sent(&self) {
        if self.headers_sent.swap(true, Ordering::AcqRel) {
            return;
        }
        let Some(stream) = lock(&self.stream).take() else {
            return;
        };
        let headers = std::mem::take(&mut *lock(&self.headers));
        self.answer(Ok(Reply {
            responses: Responses::Stream(Box::pin(stream)),
            headers,
            trailers: Some(self.trailers.clone()),
        }));
    }

    /// The call's own thread (a pointer; 0 before it is made).
    pub fn main_thread(&self) -> usize {
        self.main_thread.load(Ordering::Acquire)
    }

    pub fn set_main_thread(&self, thread: usize) {
        self.main_thread.store(thread, Ordering::Release);
    }

    /// Marks coroutine `thread` as yielded by the hook; false (and no mark) for the call's own
    /// thread, which the hook must not yield.
    pub fn mark_sliced(&self, thread: usize) -> bool {
        if thread == self.main_thread.load(Ordering::Acquire) {
            return false;
        }
        let mut sliced = lock(&self.sliced);
        if !sliced.contains(&thread) {
            sliced.push(thread);
        }
        self.paused.store(true, Ordering::Relaxed);
        true
    }

    /// Whether the hook should stop this aborted call by yielding coroutine `thread` (which
    /// can yield) rather than by raising the abort inside it (see `hook`): yes, once per
    /// coroutine; no for the call's own thread, and no when the hook meets the same coroutine
    /// again, which means its resumer did not stop it.
    pub fn yield_for_abort(&self, thread: usize) -> bool {
        if thread == self.main_thread.load(Ordering::Acquire) {
            return false;
        }
        self.abort_yield.swap(thread, Ordering::AcqRel) != thread
    }

    /// Notes that the hook could not yield for a slice that ran out.
    pub fn owe_pause(&self) {
        self.pause_owed.store(true, Ordering::Relaxed);
    }

    /// Whether a pause is owed (forgetting it).
    pub fn take_owed_pause(&self) -> bool {
        self.pause_owed.load(Ordering::Relaxed) && self.pause_owed.swap(false, Ordering::Relaxed)
    }

    pub fn take_sliced(&self, thread: usize) -> bool {
        let mut sliced = lock(&self.sliced);
        match sliced.iter().position(|t| *t == thread) {
            Some(i) => {
                sliced.swap_remove(i);
                true
            }
            None => false,
        }
    }

    /// Ends the call for its handles, and closes its request stream.
    pub fn end(&self) {
        self.ended.store(true, Ordering::Release);
        self.close_request_stream();
    }

    /// Closes the call's request stream, if it has one still open: the transport resets what
    /// the client has not finished sending and gives back the flow-control window the unread
    /// messages held, at once rather than whenever Lua collects the stream's iterator.
    pub fn close_request_stream(&self) {
        let closer = lock(&self.request_stream).take();
        if let Some(closer) = closer {
            closer.close();
        }
    }
}

/// The most a script may set in response headers, and again in trailers: key and value bytes
/// plus 32 per entry, as HTTP/2 counts a header list (the same as a handler file's, which
/// leaves room for the protocol's own entries in a client's 8 KiB). The
/// entry's own `headers` from its handler file count in both: they go out in the header block
/// with the script's headers, and with its trailers when the call ends in an error (a
/// Trailers-Only answer, where the status carries them).
pub const MAX_SCRIPT_METADATA: usize = crate::metadata::MAX_SENT_METADATA;

/// The size of `map` as HTTP/2 counts it, leaving out `except` (an entry about to be replaced).
fn metadata_size(map: &MetadataMap, except: &str) -> usize {
    map.iter()
        .map(entry_size)
        .filter(|(k, _)| *k != except)
        .map(|(_, n)| n)
        .sum()
}

/// What the entry's own headers add to a block holding `map` and `key`: the script's value
/// wins on a key both have, so only the entry's other keys go out.
fn entry_share(entry: &MetadataMap, map: &MetadataMap, key: &str) -> usize {
    entry
        .iter()
        .map(entry_size)
        .filter(|(k, _)| *k != key && !map.contains_key(*k))
        .map(|(_, n)| n)
        .sum()
}

fn insert_metadata(
    map: &mut MetadataMap,
    entry: &MetadataMap,
    key: &str,
    value: &[u8],
) -> mlua::Result<()> {
    let lower = key.to_ascii_lowercase();
    // A -bin value goes out base64-encoded without padding (4 bytes for every 3), as the
    // entries already set are counted.
    let value_len = if lower.ends_with("-bin") {
        (value.len() * 4).div_ceil(3)
    } else {
        value.len()
    };
    let adds = lower.len() + value_len + 32;
    let entry_takes = entry_share(entry, map, &lower);
    let total = metadata_size(map, &lower)
        .saturating_add(entry_takes)
        .saturating_add(adds);
    if total > MAX_SCRIPT_METADATA {
        let shown = lower.chars().take(64).collect::<String>();
        let entry_note = if entry_takes > 0 {
            format!(
                "; the entry's headers in its handler file already take {entry_takes} of them, \
                 since they go out in the same header block"
            )
        } else {
            String::new()
        };
        return Err(mlua::Error::runtime(format!(
            "metadata {shown:?}: the headers or trailers a script sets may take {MAX_SCRIPT_METADATA} bytes in all (keys, values and 32 per entry), the rest of a client's {} being the protocol's own entries{entry_note}",
            crate::metadata::MAX_HEADER_BLOCK
        )));
    }
    crate::metadata::insert(map, &lower, value).map_err(mlua::Error::runtime)
}

fn unix_seconds(at: Instant) -> f64 {
    let now = Instant::now();
    let wall = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    if at >= now {
        wall + (at - now).as_secs_f64()
    } else {
        wall - (now - at).as_secs_f64()
    }
}

/// The call running on this thread: ctx methods work for it once the Lua side has checked
/// that the ctx they were called on is its own (see [`CTX`]).
fn running() -> mlua::Result<Arc<CallShared>> {
    super::slice::running_call().ok_or_else(|| mlua::Error::runtime("ctx used outside a call"))
}

/// What `ctx` is made of in each state: one metatable, its methods written once, so a call's
/// ctx is a plain empty table, named its call's own by one store as the call starts (`bind`,
/// see [`super::ownership`]). Every method and field first checks that the table it was
/// called on is the running call's own ctx (`owned`), then works for the running call: a ctx
/// kept past its call, or handed to another call on the same state, stops working.
const CTX: &str = r#"
local owned, field, elapsed, remaining, set_header, set_trailer, sleep, send_now, try_send, wait_send, raise = ...
local error, tostring = error, tostring
local DEAD = "ctx used after its call ended (a closure kept it past the call)"
local methods = {
  elapsed = function(self)
    if not owned(self) then error(DEAD, 2) end
    return elapsed()
  end,
  remaining = function(self)
    if not owned(self) then error(DEAD, 2) end
    return remaining()
  end,
  set_header = function(self, k, v)
    if not owned(self) then error(DEAD, 2) end
    return set_header(k, v)
  end,
  set_trailer = function(self, k, v)
    if not owned(self) then error(DEAD, 2) end
    return set_trailer(k, v)
  end,
  sleep = function(self, ms)
    if not owned(self) then error(DEAD, 2) end
    return sleep(ms)
  end,
  -- A C function first, then a plain call for what it leaves; waits only when the client
  -- is slow.
  send = function(self, msg)
    if not owned(self) then error(DEAD, 2) end
    local sent = send_now(msg)
    if sent == nil then sent = try_send(msg) end
    if not sent then wait_send() end
  end,
}
return {
  __index = function(self, k)
    local m = methods[k]
    if m ~= nil then return m end
    if k == "method" or k == "deadline" or k == "metadata" then
      if not owned(self) then error(DEAD, 2) end
      return field(k)
    end
    return nil
  end,
  -- At the script's line that wrote, also when a library function did (`table.insert(ctx, 1)`).
  __newindex = function(_, k)
    raise("attempt to modify ctx (key '" .. tostring(k) .. "'): ctx is read-only; set metadata with ctx:set_header and ctx:set_trailer")
  end,
  __metatable = "ctx",
}
"#;

/// The state's ctx metatable, and `bind(ctx)`, which names a new ctx the running call's own
/// as the call starts (the call runner makes each ctx, see `guard`) and says whether the call
/// was stopped meanwhile.
pub fn ctx_parts(lua: &mlua::Lua) -> mlua::Result<(Table, Function)> {
    let elapsed = lua.create_function(|_, ()| Ok(running()?.started.elapsed().as_secs_f64()))?;
    let remaining = lua.create_function(|_, ()| {
        Ok(running()?
            .deadline
            .map(|d| d.saturating_duration_since(Instant::now()).as_secs_f64()))
    })?;
    let set_header = lua.create_function(|lua, (k, v): (LuaValue, LuaValue)| {
        let k: String = arg(lua, k, "ctx:set_header", 1)?;
        let v: mlua::String = arg(lua, v, "ctx:set_header", 2)?;
        let call = running()?;
        if call.headers_sent.load(Ordering::Acquire) {
            return Err(mlua::Error::runtime("ctx:set_header: headers were already sent with the first message; set headers before ctx:send"));
        }
        let mut headers = lock(&call.headers);
        insert_metadata(&mut headers, &call.entry_headers, &k, &v.as_bytes())
    })?;
    let set_trailer = lua.create_function(|lua, (k, v): (LuaValue, LuaValue)| {
        let k: String = arg(lua, k, "ctx:set_trailer", 1)?;
        let v: mlua::String = arg(lua, v, "ctx:set_trailer", 2)?;
        let call = running()?;
        let mut trailers = lock(&call.trailers);
        insert_metadata(&mut trailers, &call.entry_headers, &k, &v.as_bytes())
    })?;
    let sleep_fn = lua.create_async_function(|lua, ms: LuaValue| {
        let ms: mlua::Result<f64> = arg(&lua, ms, "ctx:sleep", 1);
        let call = running();
        super::slice::Waiting::new(async move {
            let ms = ms?;
            let shared = call?;
            sleep(&shared, ms).await
        })
    })?;
    let field = lua.create_function(|lua, key: mlua::String| {
        let call = running()?;
        match &*key.as_bytes() {
            b"method" => Ok(LuaValue::String(lua.create_string(&*call.method)?)),
            b"deadline" => Ok(call
                .deadline
                .map_or(LuaValue::Nil, |d| LuaValue::Number(unix_seconds(d)))),
            b"metadata" => {
                let t = lua.create_table()?;
                for kv in call.metadata.iter() {
                    match kv {
                        KeyAndValueRef::Ascii(k, v) => {
                            t.raw_set(k.as_str(), lua.create_string(v.as_encoded_bytes())?)?
                        }
                        KeyAndValueRef::Binary(k, v) => {
                            let bytes = v.to_bytes().unwrap_or_default();
                            t.raw_set(k.as_str(), lua.create_string(&bytes)?)?
                        }
                    }
                }
                Ok(LuaValue::Table(t))
            }
            _ => Ok(LuaValue::Nil),
        }
    })?;
    let try_send = lua.create_function(|lua, msg: LuaValue| {
        let call = running()?;
        if !call.streams_output {
            return Err(mlua::Error::runtime(format!(
                "ctx:send: {} answers with one message; return it instead",
                call.method
            )));
        }
        call.try_send(lua, &msg)
    })?;
    let wait_send = lua.create_async_function(|_, ()| {
        let call = running();
        super::slice::Waiting::new(async move {
            let shared = call?;
            let pending = lock(&shared.pending).take();
            let sender = lock(&shared.sender).clone();
            match (pending, sender) {
                (Some(item), Some(sender)) => sender
                    .send(item)
                    .await
                    .map_err(|_| shared.abort_error(Abort::Cancelled)),
                _ => Ok(()),
            }
        })
    })?;
    let (owned, bind) = super::ownership::functions(lua)?;
    let metatable = lua.load(CTX).set_name("=protoserve ctx").call((
        owned,
        field,
        elapsed,
        remaining,
        set_header,
        set_trailer,
        sleep_fn,
        super::send_now::function(lua)?,
        try_send,
        wait_send,
        super::freeze::raise_at_script(lua)?,
    ))?;
    Ok((metatable, bind))
}

/// Argument `pos` of ctx's method `method` as a `T`; a wrong one is named as Lua names a bad
/// argument of a library function (the methods' own errors say `ctx:…` too).
fn arg<T: mlua::FromLua>(
    lua: &mlua::Lua,
    value: LuaValue,
    method: &'static str,
    pos: usize,
) -> mlua::Result<T> {
    T::from_lua(value, lua).map_err(|e| mlua::Error::BadArgument {
        to: Some(method.to_owned()),
        pos,
        name: None,
        cause: std::sync::Arc::new(e),
    })
}

/// `ctx:sleep(ms)`: any number of milliseconds; a sleep past the deadline ends the call with
/// DEADLINE_EXCEEDED when the deadline comes, and one too long to represent sleeps until the
/// deadline or cancellation. `ctx:sleep(0)` (or less) only lets the state's other calls run.
async fn sleep(shared: &CallShared, ms: f64) -> mlua::Result<()> {
    if ms.is_nan() {
        return Err(mlua::Error::runtime(
            "ctx:sleep(ms): ms is not a number (nan)",
        ));
    }
    let wanted = Duration::try_from_secs_f64(ms.max(0.0) / 1000.0).ok();
    // No time at all: a turn for the other calls, as scripts use it, and not a timer, which
    // fires at the next tick of the clock's 1 ms wheel.
    if wanted == Some(Duration::ZERO) {
        if shared.deadline.is_some_and(|d| d <= Instant::now()) {
            return Err(shared.abort_error(Abort::Deadline));
        }
        tokio::task::yield_now().await;
        return Ok(());
    }
    let until = wanted.and_then(|w| Instant::now().checked_add(w));
    match (until, shared.deadline) {
        (Some(until), Some(deadline)) if until < deadline => {
            tokio::time::sleep_until(until.into()).await;
            Ok(())
        }
        (Some(until), None) => {
            tokio::time::sleep_until(until.into()).await;
            Ok(())
        }
        (_, Some(deadline)) => {
            tokio::time::sleep_until(deadline.into()).await;
            Err(shared.abort_error(Abort::Deadline))
        }
        // Longer than any clock can say and no deadline: until the client goes away (the
        // hook or the driver notices that).
        (None, None) => std::future::pending().await,
    }
}

impl CallShared {
    /// Sends at once if the stream's buffer has room; otherwise parks the message for
    /// `wait_send`.
    pub fn try_send(&self, lua: &mlua::Lua, msg: &LuaValue) -> mlua::Result<bool> {
        let ended = || {
            Err(mlua::Error::runtime(format!(
                "ctx:send: the call to {} has ended",
                self.method
            )))
        };
        if lock(&self.sender).is_none() {
            return ended();
        }
        let Some(output) = self.output.as_ref() else {
            return Ok(true);
        };
        let message = outgoing_from_lua(lua, msg, output.plan).map_err(|e| {
            e.into_lua_error(|e| {
                mlua::Error::external(super::status::BadMessage(format!(
                    "{}: {} sent a bad {}: {e}",
                    self.script,
                    self.function,
                    output.desc.full_name()
                )))
            })
        })?;
        super::slice::charge(1 + encoded_len(&message) / super::requests::BYTES_PER_UNIT)?;
        self.mark_headers_sent();
        let sent = match lock(&self.sender).as_ref() {
            Some(sender) => sender.try_send(Ok(message)),
            None => return ended(),
        };
        match sent {
            Ok(()) => Ok(true),
            Err(super::outbox::TrySendError::Full(item)) => {
                *lock(&self.pending) = Some(item);
                Ok(false)
            }
            Err(super::outbox::TrySendError::Closed) => Err(self.abort_error(Abort::Cancelled)),
        }
    }
}

/// The bytes of an encoded message, for charging the work to the call.
pub fn encoded_len(message: &Outgoing) -> u64 {
    match message {
        Outgoing::Encoded(b) => b.len() as u64,
        Outgoing::Message(_) => 0,
    }
}

/// Marks headers as sent when the script finishes without sending (so the stream answers).
pub fn finish(shared: &CallShared) {
    shared.mark_headers_sent();
}
