//! Script handlers: Lua 5.4 functions (mlua, vendored) answering calls in all four shapes.
//!
//! A pool of sandboxed Lua states, one per core by default, each with every script loaded. A
//! call takes the least busy state and runs its function as a coroutine there, polled by the
//! server's own worker threads, so a quick script costs no thread hand-off. Waiting
//! (`ctx:sleep`, `ctx:send` under flow control, reading the request stream) yields the coroutine,
//! so one state serves many calls at once. One instruction hook per state enforces the running
//! call's budget, stops it when the call is cancelled or its deadline passes, and yields a busy
//! script every couple of milliseconds so it never holds a worker thread for long: other calls,
//! and the connections themselves, keep moving.
//!
//! Shapes, as a script sees them:
//! - unary: `function M(req, ctx) return resp end`
//! - server streaming: `ctx:send(msg)` for each message, or return an array of messages
//! - client streaming: `for msg in stream do … end`, then return one response
//! - bidi: iterate `stream` and `ctx:send` as you go

pub mod context;
pub mod convert;
pub mod pattern;
pub mod sandbox;
pub mod slice;
pub mod status;
pub mod stdlib;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use mlua::{Function, HookTriggers, Lua, Table, Value as LuaValue, VmState};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataMap;
use tonic::Status;

use crate::codec::Incoming;
use crate::data::DataSets;
use crate::error::{CallError, Location, StartupError};
use crate::handler::{Call, Handler, HandlerFuture, MethodInfo, Reply, Requests, Responses};
use context::{CallShared, Ctx};
use convert::{message_to_lua, outgoing_from_lua, unwrap_readonly};
use sandbox::Sandbox;
use slice::CurrentCall;
use status::{find, Abort, BadMessage, IncomingError, ScriptStatus};

/// Instructions between two checks of the budget, deadline and cancellation.
const HOOK_STEP: u32 = 10_000;

/// Limits and sizing for scripts.
#[derive(Debug, Clone, Copy)]
pub struct ScriptOptions {
    /// Lua states in the pool (0: one per core).
    pub states: usize,
    /// Lua instructions one call may run.
    pub instructions: u64,
    /// Bytes of memory per Lua state.
    pub memory_limit: usize,
}

impl Default for ScriptOptions {
    fn default() -> Self {
        Self {
            states: 0,
            instructions: 100_000_000,
            memory_limit: 256 * 1024 * 1024,
        }
    }
}

/// One Lua state with its handler functions.
struct Slot {
    lua: Lua,
    functions: Vec<Function>,
    stream_ctx: Function,
    /// The ctx of one-message calls: it reads the running call, so no call allocates one.
    shared_ctx: mlua::AnyUserData,
    active: AtomicUsize,
}

/// How long a script may run before the hook yields it so other work can go on.
const TIME_SLICE: Duration = Duration::from_millis(2);

/// The pool of Lua states with every script loaded.
pub struct ScriptEngine {
    slots: Vec<Slot>,
    options: ScriptOptions,
    next: AtomicUsize,
}

/// A state being prepared: the state, its sandbox helpers, script environments by path, and
/// the handler functions in registration order.
type LoadingState = (Lua, Sandbox, HashMap<PathBuf, Table>, Vec<Function>);

/// Builds the engine while handler files are read.
pub struct EngineBuilder {
    handlers_dir: PathBuf,
    states: Vec<LoadingState>,
    options: ScriptOptions,
    cell: Arc<OnceLock<ScriptEngine>>,
}

fn lua_setup_error(what: &str, e: mlua::Error) -> StartupError {
    StartupError::Script {
        location: Location::file("handlers"),
        message: format!("{what}: {e}"),
        hint: None,
    }
}

impl EngineBuilder {
    pub fn new(
        handlers_dir: &Path,
        data: &DataSets,
        options: ScriptOptions,
    ) -> Result<Self, StartupError> {
        let n = if options.states == 0 {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        } else {
            options.states
        };
        let mut states = Vec::with_capacity(n);
        for _ in 0..n {
            let (lua, sandbox) = sandbox::new_state(handlers_dir, data, options.memory_limit)
                .map_err(|e| lua_setup_error("setting up Lua", e))?;
            states.push((lua, sandbox, HashMap::new(), Vec::new()));
        }
        Ok(Self {
            handlers_dir: handlers_dir.to_path_buf(),
            states,
            options,
            cell: Arc::new(OnceLock::new()),
        })
    }

    /// Loads `script` (relative to the handlers folder) into every state and finds `function`.
    pub fn add(
        &mut self,
        script: &str,
        function: &str,
        info: &Arc<MethodInfo>,
    ) -> Result<Arc<dyn Handler>, ScriptSetupError> {
        let rel = Path::new(script);
        if rel.is_absolute()
            || rel
                .components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(ScriptSetupError::Entry(format!(
                "script {script:?} must be a path inside the handlers folder"
            )));
        }
        let path = self.handlers_dir.join(rel);
        let source = std::fs::read_to_string(&path).map_err(|e| {
            ScriptSetupError::Entry(format!("cannot read script {}: {e}", path.display()))
        })?;
        let display = path.display().to_string();
        let mut index = 0;
        for (lua, sandbox, envs, functions) in &mut self.states {
            let env = match envs.get(&path) {
                Some(env) => env.clone(),
                None => {
                    let env = load_script(lua, sandbox, &source, &path)?;
                    envs.insert(path.clone(), env.clone());
                    env
                }
            };
            let f = match env.raw_get::<LuaValue>(function) {
                Ok(LuaValue::Function(f)) => f,
                _ => {
                    let defined: Vec<String> = env
                        .pairs::<String, LuaValue>()
                        .filter_map(Result::ok)
                        .filter(|(_, v)| v.is_function())
                        .map(|(k, _)| k)
                        .collect();
                    return Err(ScriptSetupError::Entry(format!(
                        "{display} defines no function {function}{}; it defines: {}",
                        crate::suggest::did_you_mean(function, defined.iter().map(String::as_str)),
                        if defined.is_empty() {
                            "nothing".to_owned()
                        } else {
                            defined.join(", ")
                        }
                    )));
                }
            };
            index = functions.len();
            functions.push(f);
        }
        Ok(Arc::new(ScriptHandler {
            engine: self.cell.clone(),
            index,
            script: Arc::from(display.as_str()),
            function: Arc::from(function),
            method: info.clone(),
        }))
    }

    /// Locks every script environment and hands the pool to the handlers.
    pub fn finish(self) -> Result<(), StartupError> {
        let mut slots = Vec::with_capacity(self.states.len());
        for (lua, sandbox, envs, functions) in self.states {
            for (path, env) in envs {
                sandbox
                    .lock_env
                    .call::<()>((env, lua.globals(), path.display().to_string()))
                    .map_err(|e| lua_setup_error("locking script globals", e))?;
            }
            // One hook for every coroutine of this state; it checks whichever call is running.
            lua.set_global_hook(
                HookTriggers::new().every_nth_instruction(HOOK_STEP),
                |_, _| match slice::check(u64::from(HOOK_STEP), TIME_SLICE) {
                    slice::Check::Continue => Ok(VmState::Continue),
                    slice::Check::Yield => Ok(VmState::Yield),
                    slice::Check::Abort(a) => Err(mlua::Error::external(a)),
                },
            )
            .map_err(|e| lua_setup_error("installing the instruction hook", e))?;
            // Calls make many short-lived tables and strings: generational collection suits them.
            lua.gc_gen(0, 0);
            let shared_ctx = lua
                .create_userdata(Ctx(None))
                .map_err(|e| lua_setup_error("creating ctx", e))?;
            slots.push(Slot {
                lua,
                functions,
                stream_ctx: sandbox.stream_ctx.clone(),
                shared_ctx,
                active: AtomicUsize::new(0),
            });
        }
        let _ = self.cell.set(ScriptEngine {
            slots,
            options: self.options,
            next: AtomicUsize::new(0),
        });
        Ok(())
    }
}

/// A script problem found at startup.
#[derive(Debug)]
pub enum ScriptSetupError {
    /// About the handler entry (missing file, missing function).
    Entry(String),
    /// In the script itself, with its own location.
    Script(StartupError),
}

fn load_script(
    lua: &Lua,
    sandbox: &Sandbox,
    source: &str,
    path: &Path,
) -> Result<Table, ScriptSetupError> {
    let env: Table = sandbox.new_env.call(lua.globals()).map_err(|e| {
        ScriptSetupError::Script(lua_setup_error("creating a script environment", e))
    })?;
    let chunk = lua
        .load(source)
        .set_name(format!("@{}", path.display()))
        .set_mode(mlua::ChunkMode::Text)
        .set_environment(env.clone());
    chunk
        .exec()
        .map_err(|e| ScriptSetupError::Script(script_startup_error(path, &e)))?;
    Ok(env)
}

/// `handlers/x.lua:3: message` → a StartupError at that line.
fn script_startup_error(path: &Path, e: &mlua::Error) -> StartupError {
    let text = root_message(e);
    let prefix = format!("{}:", path.display());
    let (line, message) = match text
        .strip_prefix(&prefix)
        .and_then(|rest| rest.split_once(':'))
    {
        Some((line, msg)) if line.parse::<usize>().is_ok() => {
            (line.parse().unwrap_or(0), msg.trim().to_owned())
        }
        _ => (0, text.clone()),
    };
    let hint = matches!(e, mlua::Error::SyntaxError { .. })
        .then(|| "fix the Lua syntax; scripts are Lua 5.4".to_owned());
    StartupError::Script {
        location: Location::at(path, line, 0),
        message,
        hint,
    }
}

/// The innermost message of an mlua error, without tracebacks.
fn root_message(e: &mlua::Error) -> String {
    match e {
        mlua::Error::CallbackError { cause, .. } | mlua::Error::WithContext { cause, .. } => {
            root_message(cause)
        }
        mlua::Error::RuntimeError(m) => {
            m.split("\nstack traceback:").next().unwrap_or(m).to_owned()
        }
        mlua::Error::SyntaxError { message, .. } => message.clone(),
        mlua::Error::MemoryError(m) => format!("out of memory: {m}"),
        other => other.to_string(),
    }
}

/// A method answered by a Lua function.
pub struct ScriptHandler {
    engine: Arc<OnceLock<ScriptEngine>>,
    index: usize,
    script: Arc<str>,
    function: Arc<str>,
    method: Arc<MethodInfo>,
}

impl Handler for ScriptHandler {
    fn kind(&self) -> &'static str {
        "script"
    }

    fn call(&self, call: Call, requests: Requests) -> HandlerFuture {
        let Some(engine) = self.engine.get() else {
            let e = CallError::Script {
                message: "scripts are not ready".into(),
            };
            return Box::pin(std::future::ready(Err(e)));
        };
        let index = engine.pick();
        let slot = &engine.slots[index];
        slot.active.fetch_add(1, Ordering::Relaxed);
        let guard = ActiveGuard {
            engine: self.engine.clone(),
            index,
        };
        let method = &self.method;
        let streams_output = method.shape.streams_output();
        let (tx, rx) = if streams_output {
            let (tx, rx) = mpsc::channel(64);
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        // Only streaming calls wait for the first message before answering.
        let (first_tx, first_rx) = if streams_output {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let shared = Arc::new(CallShared {
            method: method.name,
            script: self.script.clone(),
            function: self.function.clone(),
            output: method.output.clone(),
            deadline: call.deadline(),
            metadata: call.metadata,
            started: call.started,
            budget: engine.options.instructions,
            used: AtomicU64::new(0),
            headers: Mutex::new(MetadataMap::new()),
            trailers: Arc::new(Mutex::new(MetadataMap::new())),
            headers_sent: Default::default(),
            sender: Mutex::new(tx),
            streams_output,
            first_send: Mutex::new(first_tx),
            pending: Mutex::new(None),
        });
        let running = start(slot, &slot.functions[self.index], &shared, requests);
        if !streams_output {
            return Box::pin(async move {
                let _guard = guard;
                let running = running.map_err(|e| to_call_error(&e, &shared))?;
                one_response(running, &shared).await
            });
        }
        let driver_shared = shared.clone();
        tokio::spawn(async move {
            let _guard = guard;
            drive_stream(running, driver_shared).await;
        });
        Box::pin(async move {
            // A streaming call answers once the script sends its first message (or ends), so
            // headers it sets before then go out with the response.
            if let Some(first) = first_rx {
                let _ = first.await;
            }
            let headers =
                std::mem::take(&mut *shared.headers.lock().unwrap_or_else(|e| e.into_inner()));
            let stream = ReceiverStream::new(rx.unwrap_or_else(|| mpsc::channel(1).1));
            Ok(Reply {
                responses: Responses::Stream(Box::pin(stream)),
                headers,
                trailers: Some(shared.trailers.clone()),
            })
        })
    }
}

/// Counts a call against its state while it lasts.
struct ActiveGuard {
    engine: Arc<OnceLock<ScriptEngine>>,
    index: usize,
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        if let Some(engine) = self.engine.get() {
            engine.slots[self.index]
                .active
                .fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl ScriptEngine {
    /// The least busy state; the scan starts at a rotating index, so calls arriving together
    /// on different threads spread over equally idle states instead of all taking the first.
    fn pick(&self) -> usize {
        let n = self.slots.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let mut best = start;
        let mut load = self.slots[start].active.load(Ordering::Relaxed);
        for i in (start + 1..n).chain(0..start) {
            let l = self.slots[i].active.load(Ordering::Relaxed);
            if l < load {
                best = i;
                load = l;
            }
        }
        best
    }
}

/// A script call in progress.
trait Running: std::future::Future<Output = mlua::Result<LuaValue>> + Unpin + Send {}

impl<F: std::future::Future<Output = mlua::Result<LuaValue>> + Unpin + Send> Running for F {}

/// Converts the request and starts the function as a coroutine (it runs when polled).
fn start(
    slot: &Slot,
    function: &Function,
    shared: &Arc<CallShared>,
    requests: Requests,
) -> mlua::Result<CurrentCall<impl Running>> {
    let lua = &slot.lua;
    let arg = match requests {
        Requests::One(msg) => LuaValue::Table(message_to_lua(lua, &decode(&msg)?)?),
        Requests::Stream(stream) => LuaValue::Function(request_iterator(lua, stream)?),
    };
    let ctx = if shared.streams_output {
        let own = lua.create_userdata(Ctx(Some(shared.clone())))?;
        slot.stream_ctx.call::<LuaValue>(own)?
    } else {
        LuaValue::UserData(slot.shared_ctx.clone())
    };
    Ok(CurrentCall::new(
        shared.clone(),
        function.call_async::<LuaValue>((arg, ctx)),
    ))
}

/// Unary and client-streaming: run to the end, then answer with the returned message.
async fn one_response(
    running: CurrentCall<impl Running>,
    shared: &CallShared,
) -> Result<Reply, CallError> {
    let finished = match shared.deadline {
        None => running.await,
        Some(deadline) => match tokio::time::timeout_at(deadline.into(), running).await {
            Ok(r) => r,
            Err(_) => {
                return Err(CallError::DeadlineExceeded {
                    method: shared.method,
                })
            }
        },
    };
    let value = finished.map_err(|e| with_trailers(to_call_error(&e, shared), shared))?;
    let msg = outgoing_from_lua(&value, &shared.output).map_err(|e| CallError::BadResponse {
        method: shared.method,
        message: format!(
            "{}: {} returned a bad {}: {e}",
            shared.script,
            shared.function,
            shared.output.full_name()
        ),
    })?;
    let headers = std::mem::take(&mut *shared.headers.lock().unwrap_or_else(|e| e.into_inner()));
    Ok(Reply {
        responses: Responses::One(msg),
        headers,
        trailers: Some(shared.trailers.clone()),
    })
}

/// Server-streaming and bidi: run the script while its messages flow out through the channel.
async fn drive_stream(running: mlua::Result<CurrentCall<impl Running>>, shared: Arc<CallShared>) {
    let Some(tx) = shared
        .sender
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
    else {
        return;
    };
    let outcome = match running {
        Err(e) => Err(to_call_error(&e, &shared)),
        Ok(running) => {
            let cancelled = tx.clone();
            tokio::select! {
                r = running => r.map_err(|e| to_call_error(&e, &shared)),
                () = cancelled.closed() => {
                    tracing::debug!(method = shared.method, "script stopped: {}", Abort::Cancelled);
                    Err(CallError::Cancelled)
                }
                () = sleep_until(shared.deadline) => Err(CallError::DeadlineExceeded { method: shared.method }),
            }
        }
    };
    context::finish(&shared);
    match outcome {
        Ok(LuaValue::Table(t)) => {
            // A returned array is sent after whatever ctx:send sent.
            let t = unwrap_readonly(t);
            for i in 1..=t.raw_len() {
                let item: LuaValue = t.raw_get(i).unwrap_or(LuaValue::Nil);
                let msg = outgoing_from_lua(&item, &shared.output).map_err(|e| {
                    Status::from(CallError::BadResponse {
                        method: shared.method,
                        message: format!(
                            "{}: {} returned a bad {}: item {i}: {e}",
                            shared.script,
                            shared.function,
                            shared.output.full_name()
                        ),
                    })
                });
                let failed = msg.is_err();
                if tx.send(msg).await.is_err() || failed {
                    break;
                }
            }
        }
        Ok(_) => {}
        Err(e) => {
            let _ = tx.send(Err(with_trailers(e, &shared).into())).await;
        }
    }
    // Dropping the last sender ends the response stream.
    shared
        .sender
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

/// `for msg in stream do … end`: each call yields the next request message, then nil.
fn request_iterator(lua: &Lua, stream: tonic::Streaming<Incoming>) -> mlua::Result<Function> {
    let stream = Arc::new(tokio::sync::Mutex::new(stream));
    lua.create_async_function(move |lua, _: mlua::Variadic<LuaValue>| {
        let stream = stream.clone();
        async move {
            let mut s = stream.lock().await;
            match s.message().await {
                Ok(Some(msg)) => Ok(LuaValue::Table(message_to_lua(&lua, &decode(&msg)?)?)),
                Ok(None) => Ok(LuaValue::Nil),
                Err(status) => Err(mlua::Error::external(IncomingError(status))),
            }
        }
    })
}

/// The request message; a malformed one fails the call with INVALID_ARGUMENT.
fn decode(msg: &Incoming) -> mlua::Result<prost_reflect::DynamicMessage> {
    msg.decode()
        .map_err(|e| mlua::Error::external(IncomingError(e.into())))
}

/// Trailers the script set also go with an error status.
fn with_trailers(e: CallError, shared: &CallShared) -> CallError {
    let trailers = shared
        .trailers
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    if trailers.is_empty() {
        return e;
    }
    let mut status: Status = e.into();
    for kv in trailers.iter() {
        match kv {
            tonic::metadata::KeyAndValueRef::Ascii(k, v) => {
                status.metadata_mut().insert(k.clone(), v.clone());
            }
            tonic::metadata::KeyAndValueRef::Binary(k, v) => {
                status.metadata_mut().insert_bin(k.clone(), v.clone());
            }
        }
    }
    CallError::Deliberate(status)
}

/// What a failed script means for the call.
fn to_call_error(e: &mlua::Error, shared: &CallShared) -> CallError {
    if let Some(s) = find::<ScriptStatus>(e) {
        return CallError::Deliberate(s.to_status());
    }
    if let Some(a) = find::<Abort>(e) {
        tracing::debug!(method = shared.method, "script stopped: {a}");
        return match a {
            Abort::Budget(_) => CallError::ScriptBudget {
                method: shared.method,
                message: format!("{}: {}: {a}", shared.script, shared.function),
            },
            Abort::Deadline => CallError::DeadlineExceeded {
                method: shared.method,
            },
            Abort::Cancelled => CallError::Cancelled,
        };
    }
    if let Some(b) = find::<BadMessage>(e) {
        return CallError::BadResponse {
            method: shared.method,
            message: b.0,
        };
    }
    if let Some(IncomingError(status)) = find::<IncomingError>(e) {
        return CallError::Transport(status);
    }
    let message = root_message(e);
    tracing::warn!(method = shared.method, "script error: {e}");
    CallError::Script {
        message: format!("{} ({}): {message}", shared.function, shared.method),
    }
}
