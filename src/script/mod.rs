//! Script handlers: Lua 5.4 functions (mlua, vendored) answering calls in all four shapes.
//!
//! A pool of sandboxed Lua states, one per core by default, each with every script loaded and
//! each on its own thread (see [`worker`]): Lua never runs on the threads that drive the
//! network, so no script, whatever it does, delays other calls' I/O. A call takes the least busy
//! state and runs there as a coroutine; waiting (`ctx:sleep`, `ctx:send` under flow control,
//! reading the request stream) yields it, so one state serves many calls at once. A hook, set
//! for one instruction by a signal from the thread's CPU clock (see [`preempt`]; or counting
//! instructions, with `--script-instructions`), enforces the running call's budget, stops it
//! when the call is cancelled or its deadline passes (for good: see [`guard`]), and yields a
//! busy script every couple of milliseconds so the other calls on its state keep moving.
//!
//! Shapes, as a script sees them:
//! - unary: `function M(req, ctx) return resp end`
//! - server streaming: `ctx:send(msg)` for each message, or return an array of messages
//! - client streaming: `for msg in stream do … end`, then return one response
//! - bidi: iterate `stream` and `ctx:send` as you go

pub mod barrier;
pub mod bytecode;
pub mod bytewise;
pub mod context;
pub mod convert;
pub mod decode;
pub mod encode;
pub mod encode_stack;
pub mod freeze;
pub mod guard;
pub mod hook;
pub mod long_needle;
pub mod lost;
pub mod meter;
pub mod numeral;
pub mod outbox;
pub mod ownership;
pub mod pattern;
pub mod pausable;
pub mod plan;
pub mod preempt;
pub mod random;
pub mod requests;
pub mod sandbox;
pub mod scheduling;
pub mod send_now;
pub mod slice;
pub mod sliced_decode;
pub mod spare_stack;
pub mod status;
pub mod stdlib;
pub mod trap;
pub mod wakes;
pub mod worker;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mlua::Value as LuaValue;
use prost_reflect::MessageDescriptor;
use tokio::sync::oneshot;
use tonic::Status;

use crate::data::DataSets;
use crate::error::{CallError, Location, StartupError, StartupErrors};
use crate::handler::{Call, Handler, HandlerFuture, MethodInfo, Reply, Requests, Responses};
use crate::schema::Schema;
use context::{CallShared, CallSpec, Output};
use convert::{outgoing_from_lua, unwrap_readonly};
use outbox::OutboxSender;
use plan::Plans;
use slice::Running;
use status::{find, Abort, BadMessage, IncomingError, ScriptStatus, StateFull};
use worker::{Job, Loading, Pool, Recipe, State};

/// Limits and sizing for scripts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScriptOptions {
    /// Lua states in the pool (0: one per core).
    pub states: usize,
    /// Lua instructions one call may run (0: instructions are not counted, the clock pauses
    /// scripts; see `preempt`).
    pub instructions: u64,
    /// How long one call's script may run, over all its time slices.
    pub time_budget: Duration,
    /// Bytes of memory per Lua state.
    pub memory_limit: usize,
    /// A state whose call runs this long without returning to its executor is replaced.
    pub stuck_after: Duration,
    /// The largest reply, in bytes (`--max-message-size`); converting a bigger one stops early.
    pub max_message_size: usize,
}

impl ScriptOptions {
    /// The instruction budget of a call: none when instructions are not counted.
    pub fn instruction_budget(&self) -> u64 {
        if self.instructions == 0 {
            u64::MAX
        } else {
            self.instructions
        }
    }
}

impl Default for ScriptOptions {
    fn default() -> Self {
        Self {
            states: 0,
            instructions: 0,
            time_budget: Duration::from_secs(1),
            memory_limit: 256 * 1024 * 1024,
            stuck_after: Duration::from_secs(5),
            max_message_size: 4 * 1024 * 1024,
        }
    }
}

/// The scripts of one generation while its handler files are read. Lua states are made only
/// when the first entry names a script, so a project without scripts starts no threads; and
/// none at all while every entry names a function the replaced generation's [`Engine`] runs
/// from the same inputs (see [`Engine::serves_inputs`]): the new generation then takes that
/// engine, so a change to anything else (a declarative handler, a reply file) starts no Lua
/// states and leaves no states behind for calls open on the old generation.
pub struct Scripts<'a> {
    handlers_dir: &'a Path,
    data: &'a DataSets,
    options: ScriptOptions,
    schema: &'a Arc<Schema>,
    builder: Option<EngineBuilder>,
    /// The replaced generation's engine, while every entry read so far is one it runs.
    reusing: Option<Reuse>,
    /// Every script entry read, in order: loaded into new states if reuse ends.
    added: Vec<Added>,
    /// Where each entry's function is in the engine that will run it (by [`ScriptRef`]).
    found: Vec<Found>,
    /// Entries that failed to load into new states once reuse ended.
    replay_errors: StartupErrors,
}

/// A script entry as read: enough to load it again.
struct Added {
    path: PathBuf,
    function: String,
    input: MessageDescriptor,
    output: MessageDescriptor,
}

impl<'a> Scripts<'a> {
    /// `previous`: the engine of the generation being replaced, taken over if it runs every
    /// script entry from the same inputs.
    pub fn new(
        handlers_dir: &'a Path,
        data: &'a DataSets,
        options: ScriptOptions,
        schema: &'a Arc<Schema>,
        previous: Option<Arc<Engine>>,
    ) -> Self {
        let reusing = previous.and_then(|engine| {
            let recipe = engine.pool.recipe()?;
            engine
                .serves_inputs(&recipe, handlers_dir, data, &options, schema)
                .then(|| Reuse {
                    engine,
                    recipe,
                    sources: HashMap::new(),
                })
        });
        Self {
            handlers_dir,
            data,
            options,
            schema,
            builder: None,
            reusing,
            added: Vec::new(),
            found: Vec::new(),
            replay_errors: StartupErrors::default(),
        }
    }

    /// Loads `script` (relative to the handlers folder) if it is new, and finds `function`.
    pub fn add(
        &mut self,
        script: &str,
        function: &str,
        info: &MethodInfo,
    ) -> Result<ScriptRef, ScriptSetupError> {
        let path = script_path(self.handlers_dir, script)?;
        let reused = self
            .reusing
            .as_mut()
            .and_then(|r| r.find(&path, function, info));
        let found = match reused {
            Some(found) => found,
            None => {
                self.stop_reusing()?;
                self.builder()?
                    .add(&path, function, &info.input, &info.output)?
            }
        };
        self.added.push(Added {
            path,
            function: function.to_owned(),
            input: info.input.clone(),
            output: info.output.clone(),
        });
        self.found.push(found);
        Ok(ScriptRef {
            slot: self.found.len() - 1,
        })
    }

    fn builder(&mut self) -> Result<&mut EngineBuilder, ScriptSetupError> {
        if self.builder.is_none() {
            let builder = EngineBuilder::new(self.handlers_dir, self.data, self.options)
                .map_err(ScriptSetupError::Script)?;
            self.builder = Some(builder);
        }
        Ok(self.builder.as_mut().expect("made above"))
    }

    /// An entry the replaced engine does not run: new states load every entry.
    fn stop_reusing(&mut self) -> Result<(), ScriptSetupError> {
        if self.reusing.take().is_none() || self.added.is_empty() {
            return Ok(());
        }
        self.builder()?;
        let added = std::mem::take(&mut self.added);
        let mut found = std::mem::take(&mut self.found);
        let builder = self.builder()?;
        let mut errors = StartupErrors::default();
        for (i, a) in added.iter().enumerate() {
            match builder.add(&a.path, &a.function, &a.input, &a.output) {
                Ok(f) => found[i] = f,
                // The same text loaded before: only a script whose top level differs from one
                // load to the next gets here.
                Err(ScriptSetupError::Script(e)) => errors.push(e),
                Err(ScriptSetupError::Entry(m)) => errors.push(StartupError::Script {
                    location: Location::file(&a.path),
                    message: m,
                    hint: None,
                }),
            }
        }
        self.added = added;
        self.found = found;
        self.replay_errors.absorb(errors);
        Ok(())
    }

    /// The engine every entry runs on: new states, or the replaced generation's; `None` when no
    /// entry named a script.
    pub fn finish(self) -> Result<Option<ScriptsReady>, StartupErrors> {
        if !self.replay_errors.is_empty() {
            return Err(self.replay_errors);
        }
        if self.found.is_empty() {
            return Ok(None);
        }
        let engine = match (self.builder, self.reusing) {
            (Some(builder), _) => builder.finish(self.schema.clone())?,
            (None, Some(reuse)) => {
                tracing::debug!("the scripts run on the Lua states of the replaced generation");
                reuse.engine
            }
            (None, None) => return Ok(None),
        };
        Ok(Some(ScriptsReady {
            engine,
            found: self.found,
        }))
    }
}

/// `script` as a path inside the handlers folder.
fn script_path(handlers_dir: &Path, script: &str) -> Result<PathBuf, ScriptSetupError> {
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
    Ok(handlers_dir.join(rel))
}

/// The replaced generation's engine while it may be taken over.
struct Reuse {
    engine: Arc<Engine>,
    recipe: Arc<Recipe>,
    /// Each script read for this build: the engine's index of the same file with the same text.
    sources: HashMap<PathBuf, Option<usize>>,
}

impl Reuse {
    /// Where `function` of the script at `path` is in the engine, if the engine loaded that
    /// script from the same text, found that function, and converts the method's messages.
    fn find(&mut self, path: &Path, function: &str, info: &MethodInfo) -> Option<Found> {
        let recipe = &self.recipe;
        let script = *self.sources.entry(path.to_path_buf()).or_insert_with(|| {
            let source = crate::input::read_to_string(path).ok()?;
            recipe
                .scripts
                .iter()
                .position(|(p, text)| p == path && *text == source)
        });
        let script = script?;
        let index = recipe
            .functions
            .iter()
            .position(|(s, f)| *s == script && f == function)?;
        let plans = &recipe.plans;
        let input = plans.find(info.input.full_name())?;
        let layout = plans.find_layout(input)?;
        let output = plans.find(info.output.full_name())?;
        Some(Found {
            index,
            layout,
            output: Output {
                desc: info.output.clone(),
                plan: output,
            },
            script: Arc::from(path.display().to_string().as_str()),
            function: Arc::from(function),
        })
    }
}

/// A script entry, found at load time; its engine makes it a handler (see [`ScriptsReady`]).
pub struct ScriptRef {
    slot: usize,
}

/// One function of one script in the engine that runs it.
#[derive(Clone)]
struct Found {
    index: usize,
    /// The request type's layout (see `decode`).
    layout: usize,
    output: Output,
    script: Arc<str>,
    function: Arc<str>,
}

/// A generation's engine, with where each of its script entries is in it.
impl Scripts<'_> {
    /// `--max-message-size`, which the entries' constant replies are held to as well.
    pub fn max_message_size(&self) -> usize {
        self.options.max_message_size
    }
}

pub struct ScriptsReady {
    pub engine: Arc<Engine>,
    found: Vec<Found>,
}

impl ScriptsReady {
    /// The handler of the entry `found` stands for.
    pub fn handler(&self, found: &ScriptRef, method: Arc<MethodInfo>) -> ScriptHandler {
        let f = self.found[found.slot].clone();
        ScriptHandler {
            engine: self.engine.clone(),
            index: f.index,
            layout: f.layout,
            output: f.output,
            script: f.script,
            function: f.function,
            method,
        }
    }
}

/// The running Lua states of one generation, or of several in a row when nothing they depend
/// on changed. When the last handler holding it is gone (the generations were replaced and
/// their script calls have ended), the state threads are told to stop; a reload may also
/// close it sooner (see [`Engine::close_replaced`]).
pub struct Engine {
    pool: Arc<Pool>,
    /// The schema the conversion plans were made from.
    schema: Arc<Schema>,
    /// The module files the scripts `require`d, with the text they loaded (`None`: missing or
    /// unreadable then).
    modules: Vec<sandbox::ReadModule>,
}

impl Engine {
    /// Whether states built for a new generation from these inputs would be these: the same
    /// handlers folder, options and data sets, the same schema (the very one, or whole pools
    /// of the same files), and the modules on disk as they were loaded. Each script entry is
    /// then checked on its own ([`Reuse::find`]): its file's text, its function, its messages.
    fn serves_inputs(
        &self,
        recipe: &Recipe,
        handlers_dir: &Path,
        data: &DataSets,
        options: &ScriptOptions,
        schema: &Schema,
    ) -> bool {
        !self.pool.is_closing()
            && !data.unloaded
            && recipe.handlers_dir == handlers_dir
            && recipe.options == *options
            && recipe.data.dir == data.dir
            && recipe.data.sets == data.sets
            && same_schema(&self.schema, schema)
            && self
                .modules
                .iter()
                .all(|(path, text)| crate::input::read_to_string(path).ok() == *text)
    }

    /// Calls running on these states, or handed to them and not started.
    pub fn open_calls(&self) -> usize {
        self.pool.open_calls()
    }

    /// Stops the states of a replaced generation now: every call still open on them ends with
    /// UNAVAILABLE ([`CallError::ScriptsReplaced`]), and their threads exit, freeing the states.
    pub fn close_replaced(&self) {
        self.pool.shut_down();
    }
}

/// Whether plans made from `a` hold for `b`.
fn same_schema(a: &Schema, b: &Schema) -> bool {
    a.pool == b.pool
        || (a.whole
            && b.whole
            && a.files.len() == b.files.len()
            && a.files
                .iter()
                .zip(b.files.iter())
                .all(|(x, y)| x.name == y.name && x.bytes == y.bytes))
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.pool.close();
    }
}

/// Builds the engine while handler files are read: scripts load into a first state (so
/// problems are reported per handler entry), and the recipe remembers them for the others.
struct EngineBuilder {
    first: Loading,
    recipe: Recipe,
    script_index: HashMap<PathBuf, usize>,
    plans: Plans,
}

impl EngineBuilder {
    fn new(
        handlers_dir: &Path,
        data: &DataSets,
        options: ScriptOptions,
    ) -> Result<Self, StartupError> {
        let first = Loading::new(handlers_dir, data, &options)?;
        Ok(Self {
            first,
            recipe: Recipe {
                handlers_dir: handlers_dir.to_path_buf(),
                data: data.clone(),
                options,
                plans: Arc::default(),
                scripts: Vec::new(),
                functions: Vec::new(),
            },
            script_index: HashMap::new(),
            plans: Plans::default(),
        })
    }

    fn add(
        &mut self,
        path: &Path,
        function: &str,
        input: &MessageDescriptor,
        output: &MessageDescriptor,
    ) -> Result<Found, ScriptSetupError> {
        let display = path.display().to_string();
        let script_index = match self.script_index.get(path) {
            Some(i) => *i,
            None => {
                let source = crate::input::read_to_string(path).map_err(|e| {
                    ScriptSetupError::Entry(format!("cannot read script {display}: {e}"))
                })?;
                self.first
                    .load_script(path, &source, &self.recipe.options)?;
                self.recipe.scripts.push((path.to_path_buf(), source));
                let i = self.recipe.scripts.len() - 1;
                self.script_index.insert(path.to_path_buf(), i);
                i
            }
        };
        let env = self.first.load_script(path, "", &self.recipe.options)?;
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
        self.first.functions.push(f);
        self.recipe
            .functions
            .push((script_index, function.to_owned()));
        let input = self.plans.add(input);
        let layout = self.plans.layout(input);
        let output = Output {
            desc: output.clone(),
            plan: self.plans.add(output),
        };
        Ok(Found {
            index: self.recipe.functions.len() - 1,
            layout,
            output,
            script: Arc::from(display.as_str()),
            function: Arc::from(function),
        })
    }

    /// Locks every script environment and starts the state threads.
    fn finish(mut self, schema: Arc<Schema>) -> Result<Arc<Engine>, StartupErrors> {
        let n = if self.recipe.options.states == 0 {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        } else {
            self.recipe.options.states
        };
        self.recipe.plans = Arc::new(std::mem::take(&mut self.plans));
        let modules = self.first.read_modules();
        let first = self.first.finish(true, &self.recipe.plans)?;
        let pool = Pool::start(self.recipe, n, first)?;
        Ok(Arc::new(Engine {
            pool,
            schema,
            modules,
        }))
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

/// `handlers/x.lua:3: message` → a StartupError at that line.
pub(crate) fn script_startup_error(path: &Path, e: &mlua::Error) -> StartupError {
    let text = root_message(e);
    let prefix = format!("{}:", path.display());
    let (line, message) = match text
        .strip_prefix(&prefix)
        .and_then(|rest| rest.split_once(':'))
    {
        Some((line, msg)) if line.parse::<usize>().is_ok() => {
            (line.parse().unwrap_or(0), msg.trim().to_owned())
        }
        // Raised inside a library function: the traceback knows the script's line.
        _ => (traceback_line(e, &prefix).unwrap_or(0), text.clone()),
    };
    let hint = if matches!(e, mlua::Error::SyntaxError { .. }) {
        Some("fix the Lua syntax; scripts are Lua 5.4".to_owned())
    } else if is_memory_error(e) {
        Some(MEMORY_HINT.to_owned())
    } else {
        None
    };
    StartupError::Script {
        location: Location::at(path, line, 0),
        message,
        hint,
    }
}

/// The first line of the script (`prefix` is `path:`) in the error's traceback.
fn traceback_line(e: &mlua::Error, prefix: &str) -> Option<usize> {
    let full = e.to_string();
    let (_, trace) = full.split_once("stack traceback:")?;
    trace.lines().find_map(|l| {
        let rest = l.trim().strip_prefix(prefix)?;
        rest.split(':').next()?.parse().ok()
    })
}

/// What to do when loading runs out of a state's memory: every state loads every script, and
/// the request builders of every method.
pub(crate) const MEMORY_HINT: &str =
    "raise --script-memory: each Lua state holds every script, data set and request builder";

/// The innermost message of an mlua error, without tracebacks.
fn root_message(e: &mlua::Error) -> String {
    match e {
        mlua::Error::CallbackError { cause, .. } | mlua::Error::WithContext { cause, .. } => {
            root_message(cause)
        }
        mlua::Error::SyntaxError { message, .. } => message.clone(),
        mlua::Error::MemoryError(m) => format!("out of memory: {m}"),
        other => guard::lua_message(other),
    }
}

/// A method answered by a Lua function.
pub struct ScriptHandler {
    engine: Arc<Engine>,
    index: usize,
    /// The request type's layout (see `decode`).
    layout: usize,
    output: Output,
    script: Arc<str>,
    function: Arc<str>,
    method: Arc<MethodInfo>,
}

/// Tells the call it was cancelled if the handler's future is dropped before the answer.
struct CancelOnDrop(Option<Arc<CallShared>>);

impl CancelOnDrop {
    /// The answer arrived: dropping is no longer a cancellation.
    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(shared) = self.0.take() {
            shared.cancel();
        }
    }
}

impl Handler for ScriptHandler {
    fn kind(&self) -> &'static str {
        "script"
    }

    fn call(&self, call: Call, requests: Requests) -> HandlerFuture {
        let pool = &self.engine.pool;
        let method = &self.method;
        let streams_output = method.shape.streams_output();
        let deadline = call.deadline();
        let (reply_tx, reply_rx) = oneshot::channel();
        let shared = Arc::new(CallShared::new(CallSpec {
            method: method.name.clone(),
            script: self.script.clone(),
            function: self.function.clone(),
            output: Some(self.output.clone()),
            metadata: call.metadata,
            started: call.started,
            deadline,
            budget: pool.budget(),
            time_budget: pool.time_budget(),
            streams_output,
            reply: Some(reply_tx),
            outbox: streams_output.then(|| outbox::outbox(call.buffers)),
            entry_headers: call.entry_headers,
        }));
        let mut cancel = CancelOnDrop(Some(shared.clone()));
        let name = method.name.clone();
        let submitted = pool.submit(
            pool.pick(),
            Job {
                function: self.index,
                layout: self.layout,
                unanswered: lost::Unanswered::new(shared.clone()),
                shared,
                requests,
            },
        );
        let refused = (!submitted).then(|| pool.is_closing());
        let lost = |method| CallError::ScriptStateLost {
            method,
            why: Arc::from("had stopped (see the server log)"),
        };
        Box::pin(async move {
            match refused {
                Some(true) => return Err(CallError::ScriptsReplaced { method: name }),
                Some(false) => return Err(lost(name)),
                None => {}
            }
            // The state thread's answer wakes this task in its batch (see `wakes`).
            let reply_rx = wakes::Relayed::new(reply_rx);
            let answer = match deadline {
                None => reply_rx.await,
                Some(d) => match tokio::time::timeout_at(d.into(), reply_rx).await {
                    Ok(r) => r,
                    Err(_) => return Err(CallError::DeadlineExceeded { method: name }),
                },
            };
            cancel.disarm();
            answer.unwrap_or_else(|_| Err(lost(name)))
        })
    }
}

/// Runs one call on this state thread, start to answer.
async fn run_call(state: &State, job: Job) {
    let Job {
        function,
        layout,
        shared,
        requests,
        unanswered,
    } = job;
    // Dropped last: a call dropped before its answer (its state replaced) is answered by it.
    let _unanswered = unanswered;
    // Dropped before the end only when its thread gives the call up (see `worker::serve`).
    let mut ending = Ending {
        shared: &shared,
        sender: None,
        done: false,
    };
    // A streamed message's conversion left when the call ends goes with it.
    let _forget = sliced_decode::Forget(Arc::as_ptr(&shared) as usize);
    let started = slice::with_call(&shared, || {
        start(state, function, layout, &shared, requests)
    });
    let started = match started {
        Ok(Started::Converting(converting)) => tokio::select! {
            r = converting.finish(&shared) => r,
            () = cancelled(&shared) => Err(shared.abort_error(Abort::Cancelled)),
            () = sleep_until(shared.deadline) => Err(shared.abort_error(Abort::Deadline)),
        },
        Ok(Started::Ready(running, threads)) => Ok((running, threads)),
        Err(e) => Err(e),
    };
    let outcome = match started {
        Err(e) => Err(e),
        Ok((running, threads)) => {
            let outcome = tokio::select! {
                r = running => r,
                () = cancelled(&shared) => Err(shared.abort_error(Abort::Cancelled)),
                () = sleep_until(shared.deadline) => Err(shared.abort_error(Abort::Deadline)),
            };
            state.recycle(threads);
            outcome
        }
    };
    // The script is done with its requests, whatever it left unread: the transport resets the
    // request stream now, so unread messages do not hold the connection's flow-control window
    // while the answer goes out (or until Lua collects the stream's iterator).
    shared.close_request_stream();
    let memory = matches!(&outcome, Err(e) if is_memory_error(e));
    // Running out of a state that other calls fill is not this call's doing.
    let outcome = match outcome {
        Err(e) if memory => Err(match worker::after_memory_error(&shared) {
            Some(full) => mlua::Error::external(full),
            None => e,
        }),
        other => other,
    };
    if shared.streams_output {
        ending.sender = context::lock(&shared.sender).take();
        finish_stream(state, &shared, outcome, ending.sender.as_ref()).await;
    } else {
        finish_one(state, &shared, outcome);
    }
    ending.done = true;
    // The stream closes.
    ending.sender = None;
    shared.end();
}

/// A call in progress on a state thread; if its task is dropped before the call ends, its
/// client is told now (see [`stop_dropped_call`]) rather than left waiting for an answer that
/// cannot come.
struct Ending<'a> {
    shared: &'a CallShared,
    /// The response stream, once the script ended and its last messages go out.
    sender: Option<OutboxSender>,
    done: bool,
}

impl Drop for Ending<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        if let Some(sender) = self.sender.take() {
            let _ = sender.try_send(Err(dropped_call_error(self.shared).into()));
        }
        stop_dropped_call(self.shared);
    }
}

/// Why a call its state thread gave up ended: its pool was shut down (a reload replaced its
/// scripts), or its state was lost.
fn dropped_call_error(shared: &CallShared) -> CallError {
    let method = shared.method.clone();
    if worker::pool_shut_down_here() {
        CallError::ScriptsReplaced { method }
    } else {
        CallError::ScriptStateLost {
            method,
            why: lost::reason(),
        }
    }
}

/// Ends a call its state thread gives up, running or not started: it is marked aborted, and
/// its client gets the status at once (in place of the answer, or at the end of the stream).
pub(crate) fn stop_dropped_call(shared: &CallShared) {
    shared.abort(Abort::Cancelled);
    if let Some(sender) = context::lock(&shared.sender).take() {
        let _ = sender.try_send(Err(dropped_call_error(shared).into()));
    }
    shared.answer(Err(dropped_call_error(shared)));
    shared.end();
}

/// Resolves when the client goes away.
async fn cancelled(shared: &CallShared) {
    let sender = shared
        .sender
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let closed = async {
        match sender {
            Some(s) => s.closed().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        () = shared.cancel_notify.notified() => {}
        () = closed => {}
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

/// A call's function, ready to run as a coroutine.
type Launched = (Running<mlua::AsyncThread<LuaValue>>, worker::CallThreads);

/// What [`start`] prepared.
enum Started {
    /// The call's coroutine, ready.
    Ready(Running<mlua::AsyncThread<LuaValue>>, worker::CallThreads),
    /// A big unary request still to convert, in time slices (see [`sliced_decode`]).
    Converting(Converting),
}

/// A call whose big unary request is being converted where it can pause.
struct Converting {
    threads: worker::CallThreads,
    /// The runner's arguments before the request's slots.
    args: Vec<LuaValue>,
    conversion: sliced_decode::Conversion,
}

impl Converting {
    /// Converts the request a time slice at a time, letting the state's other calls run in
    /// between, then prepares the function's coroutine.
    async fn finish(mut self, shared: &Arc<CallShared>) -> mlua::Result<Launched> {
        loop {
            match slice::with_call(shared, || self.conversion.resume()) {
                sliced_decode::Resumed::Done(slots) => {
                    self.args.extend(slots?);
                    return launch(shared, self.threads, self.args);
                }
                sliced_decode::Resumed::Suspended => {
                    let _paused = slice::paused_here();
                    worker::admit_arrivals();
                    tokio::task::yield_now().await;
                }
            }
        }
    }
}

/// Reads the request into what makes its tables, and prepares the function's coroutine (it
/// runs when polled; the runner makes the request first, see `requests`). A big unary request
/// of a layout with tables is left to convert in time slices.
fn start(
    state: &State,
    function: usize,
    layout: usize,
    shared: &Arc<CallShared>,
    requests: Requests,
) -> mlua::Result<Started> {
    let lua = &state.lua;
    if function >= state.functions.len() || layout >= state.builders.len() {
        return Err(mlua::Error::runtime("no such script function"));
    }
    let threads = state.threads()?;
    let body = &threads.1;
    let mut args = Vec::with_capacity(8);
    // (The runner's tables count from 1.)
    args.extend([
        LuaValue::Thread(body.clone()),
        LuaValue::Integer(function as i64 + 1),
        LuaValue::Integer(layout as i64 + 1),
    ]);
    match requests {
        Requests::One(msg) => {
            let plans = requests::plans_of(lua)?;
            if plans.layouts[layout].flat {
                // The runner takes it from the call (see `requests::take_request`).
                args.push(LuaValue::Nil);
                let request = requests::FlatRequest::read(&plans, msg, layout)?;
                *context::lock(&shared.request) = Some(request);
            } else {
                args.push(LuaValue::Boolean(false));
                args.push(LuaValue::Boolean(true));
                let msg = if msg.bytes().len() >= sliced_decode::PAUSE_FROM {
                    match sliced_decode::Conversion::new(lua, plans.clone(), msg, layout) {
                        Ok(conversion) => {
                            return Ok(Started::Converting(Converting {
                                threads,
                                args,
                                conversion,
                            }));
                        }
                        Err(msg) => msg,
                    }
                } else {
                    msg
                };
                requests::decode_request(lua, &plans, &msg, layout, &mut args, None)?;
            }
        }
        Requests::Stream(stream) => {
            args.extend(requests::RequestStream::iterator_args(
                lua,
                shared.clone(),
                stream,
                layout,
            )?);
        }
    }
    let (running, threads) = launch(shared, threads, args)?;
    Ok(Started::Ready(running, threads))
}

/// The call's function as a coroutine on its thread, given the runner's arguments.
fn launch(
    shared: &Arc<CallShared>,
    threads: worker::CallThreads,
    args: Vec<LuaValue>,
) -> mlua::Result<Launched> {
    let main = &threads.0;
    shared.set_main_thread(main.to_pointer() as usize);
    let running = main
        .clone()
        .into_async::<LuaValue>(mlua::MultiValue::from_vec(args))?;
    Ok((Running::new(shared.clone(), running), threads))
}

/// Unary and client-streaming: answer with the returned message (converted while the call is
/// still current, so metamethods it meets stay under the call's budget).
fn finish_one(state: &State, shared: &Arc<CallShared>, outcome: mlua::Result<LuaValue>) {
    let result = match outcome {
        Err(e) => Err(to_call_error(&e, shared, state)),
        Ok(value) => {
            let output = shared.output.as_ref();
            let converted = slice::with_call(shared, || {
                output.map(|o| {
                    let msg = outgoing_from_lua(&state.lua, &value, o.plan);
                    if let Ok(m) = &msg {
                        // Over budget shows as the call's abort, checked next.
                        let _ =
                            slice::charge(1 + context::encoded_len(m) / requests::BYTES_PER_UNIT);
                    }
                    msg
                })
            });
            match (converted, shared.aborted()) {
                (_, Some(a)) => Err(abort_error(a, shared, state)),
                (Some(Ok(msg)), None) => Ok(msg),
                (Some(Err(e)), None) => Err(e.into_call_error(&shared.method, |e| {
                    format!(
                        "{}: {} returned a bad {}: {e}",
                        shared.script,
                        shared.function,
                        output.map_or("", |o| o.desc.full_name())
                    )
                })),
                (None, None) => Err(CallError::Script {
                    message: "no output type".into(),
                }),
            }
        }
    };
    let result = match result {
        Ok(msg) => {
            let headers =
                std::mem::take(&mut *shared.headers.lock().unwrap_or_else(|e| e.into_inner()));
            Ok(Reply {
                responses: Responses::One(msg),
                headers,
                trailers: Some(shared.trailers.clone()),
            })
        }
        Err(e) => failed(e, shared),
    };
    shared.answer(result);
}

/// The answer of a call that failed before its headers went out: the headers the script set
/// go with the status, as grpc-go sends what `SetHeader` set before a handler returned an
/// error (the router sends them in one block with the status and the trailers when all fit,
/// else first). A call stopped because its client went away or its deadline passed answers
/// with the status alone, as the handler's own deadline does (see `ScriptHandler::call`).
fn failed(e: CallError, shared: &CallShared) -> Result<Reply, CallError> {
    let stopped = matches!(e, CallError::Cancelled | CallError::DeadlineExceeded { .. });
    let e = with_trailers(e, shared);
    if stopped {
        return Err(e);
    }
    let headers = std::mem::take(&mut *shared.headers.lock().unwrap_or_else(|e| e.into_inner()));
    Ok(Reply {
        responses: Responses::Failed(e.into()),
        headers,
        // Already with the status (see `with_trailers`): the script is done.
        trailers: None,
    })
}

/// Server-streaming and bidi: the script's messages went out as it sent them; send what it
/// returned (an array), or its error, then close the stream.
async fn finish_stream(
    state: &State,
    shared: &Arc<CallShared>,
    outcome: mlua::Result<LuaValue>,
    sender: Option<&OutboxSender>,
) {
    match outcome {
        Err(e) => {
            let e = to_call_error(&e, shared, state);
            if shared
                .headers_sent
                .load(std::sync::atomic::Ordering::Acquire)
            {
                if let Some(sender) = sender {
                    let _ = sender.send(Err(with_trailers(e, shared).into())).await;
                }
            } else {
                shared.answer(failed(e, shared));
            }
        }
        Ok(value) => {
            context::finish(shared);
            let (LuaValue::Table(t), Some(sender), Some(output)) =
                (value, sender, shared.output.as_ref())
            else {
                return;
            };
            // A returned array is sent after whatever ctx:send sent.
            let t = unwrap_readonly(t);
            let len = t.raw_len();
            let whole = encode::only_sequence(&t, len, "list of messages", &convert::Path::Root);
            if let Err(e) = whole {
                let e = e.into_call_error(&shared.method, |e| {
                    format!("{}: {} returned {e}", shared.script, shared.function)
                });
                let _ = sender.send(Err(Status::from(e))).await;
                return;
            }
            for i in 1..=len {
                let item: LuaValue = t.raw_get(i).unwrap_or(LuaValue::Nil);
                let msg =
                    slice::with_call(shared, || outgoing_from_lua(&state.lua, &item, output.plan));
                let msg = msg.map_err(|e| {
                    Status::from(e.into_call_error(&shared.method, |e| {
                        format!(
                            "{}: {} returned a bad {}: item {i}: {e}",
                            shared.script,
                            shared.function,
                            output.desc.full_name()
                        )
                    }))
                });
                let failed = msg.is_err();
                if sender.send(msg).await.is_err() || failed {
                    break;
                }
            }
        }
    }
}

/// Whether the innermost error is Lua running out of memory.
pub(crate) fn is_memory_error(e: &mlua::Error) -> bool {
    match e {
        mlua::Error::MemoryError(_) => true,
        mlua::Error::CallbackError { cause, .. } | mlua::Error::WithContext { cause, .. } => {
            is_memory_error(cause)
        }
        _ => false,
    }
}

fn abort_error(a: Abort, shared: &CallShared, state: &State) -> CallError {
    tracing::debug!(method = &*shared.method, "script stopped: {a}");
    match a {
        Abort::Budget(_) | Abort::Time(_) => CallError::ScriptBudget {
            method: shared.method.clone(),
            message: format!("{}: {}: {a}", shared.script, shared.function),
        },
        Abort::Deadline => CallError::DeadlineExceeded {
            method: shared.method.clone(),
        },
        Abort::Cancelled => CallError::Cancelled,
        Abort::Memory => CallError::ScriptMemory {
            method: shared.method.clone(),
            limit_mib: state.memory_limit >> 20,
        },
    }
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
fn to_call_error(e: &mlua::Error, shared: &CallShared, state: &State) -> CallError {
    if let Some(a) = shared.aborted().or_else(|| find::<Abort>(e)) {
        return abort_error(a, shared, state);
    }
    if let Some(s) = find::<ScriptStatus>(e) {
        return CallError::Deliberate(s.to_status());
    }
    if let Some(full) = find::<StateFull>(e) {
        return CallError::ScriptStateFull {
            method: shared.method.clone(),
            held_mib: full.held >> 20,
            limit_mib: state.memory_limit >> 20,
        };
    }
    if is_memory_error(e) {
        return CallError::ScriptMemory {
            method: shared.method.clone(),
            limit_mib: state.memory_limit >> 20,
        };
    }
    if let Some(t) = find::<convert::TooLarge>(e) {
        return CallError::ReplyTooLarge {
            method: shared.method.clone(),
            limit: t.limit,
        };
    }
    if let Some(b) = find::<BadMessage>(e) {
        return CallError::BadResponse {
            method: shared.method.clone(),
            message: b.0,
        };
    }
    if let Some(IncomingError(status)) = find::<IncomingError>(e) {
        return CallError::Transport(status);
    }
    let message = root_message(e);
    tracing::warn!(
        method = &*shared.method,
        "script error: {}",
        crate::error::log_escaped(&message)
    );
    CallError::Script {
        message: format!("{} ({}): {message}", shared.function, shared.method),
    }
}
