//! The threads Lua runs on: never the ones that drive the network.
//!
//! Each Lua state lives on its own OS thread, which runs a small executor (a current-thread
//! tokio runtime and a `LocalSet`) for that state's calls: each call is a task driving the
//! call's coroutine, so calls waiting on timers, request streams or a slow client interleave,
//! and the instruction hook yields a busy call every couple of milliseconds so the others on
//! the same state keep moving. Calls arrive through a channel; answers go back through the
//! call's oneshot (and a bounded outbox for streams). A busy call also admits newly arrived
//! calls at each time slice, so they do not wait behind it for the executor's own turn. A new
//! call goes to the least busy state, passing over one whose current turn has run far past a
//! time slice (stuck in one library call, or in one instruction that works long inside the VM,
//! such as comparing or joining huge strings, which the hook cannot pause until it ends), as
//! long as another state is not. State threads run under `SCHED_BATCH` (see `scheduling`), so
//! handing one a call does not preempt the network thread that hands it over.
//!
//! A state that cannot be trusted any more is replaced by a fresh one with every script loaded
//! again: after a panic on its thread, after a memory error that leaves it over its limit once
//! collected with no one call to blame, and (by the watchdog) when one poll has run far longer
//! than any time slice, which only happens when a call is stuck in a library function. The log
//! says which state and why. Every call in progress on it is answered UNAVAILABLE at once,
//! saying why (see [`super::lost`]); calls queued for it and not started yet did nothing wrong
//! and wait for the fresh state, which takes them from the same queue.
//!
//! A memory error is charged to the call that meets it only if collecting frees the state
//! (what the call held is garbage once it ended). If the state is still nearly full, other
//! calls in progress hold the memory: the one whose runs grew the state the most (by a quarter
//! of the limit at least) is stopped with RESOURCE_EXHAUSTED, which frees the state without
//! replacing it, and the call that met the error is answered UNAVAILABLE ("call again").

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::poll_fn;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use mlua::{Function, Lua, Table};
use tokio::sync::mpsc;

use super::context::{CallShared, CallSpec};
use super::convert::Conv;
use super::guard::RUNNER_KEY;
use super::hook::{self, LOADING};
use super::lost::{self, InProgress, Unanswered};
use super::plan::Plans;
use super::preempt;
use super::sandbox::{self, Sandbox};
use super::scheduling;
use super::slice::{self, Heartbeat};
use super::status::{Abort, StateFull};
use super::wakes;
use super::{ScriptOptions, ScriptSetupError};
use crate::data::DataSets;
use crate::error::{Location, StartupError, StartupErrors};
use crate::handler::Requests;

/// A poll of a call this long is stuck where the hook cannot pause it: ten time slices, far more
/// than a slice plus the hook's check interval, or a garbage collection step.
const STUCK_POLL: Duration = Duration::from_millis(hook::TIME_SLICE.as_millis() as u64 * 10);

/// Above its memory after loading plus this share of its limit, a state keeps at most one call
/// paused for a time slice (see [`slice::set_pause_below`]).
const PAUSE_MEMORY_SHARE: usize = 32;

/// Wall-clock limit on loading one script file (its top-level code and what it requires).
const LOAD_TIME: Duration = Duration::from_secs(5);

/// What every state is built from, kept to build replacements.
pub struct Recipe {
    pub handlers_dir: PathBuf,
    pub data: DataSets,
    pub options: ScriptOptions,
    /// Conversion plans of the methods' messages.
    pub plans: Arc<Plans>,
    /// Script files in load order, with their text.
    pub scripts: Vec<(PathBuf, String)>,
    /// Handler functions: (index into `scripts`, function name).
    pub functions: Vec<(usize, String)>,
}

/// A state with every script loaded.
pub struct State {
    pub lua: Lua,
    /// The memory limit, for messages.
    pub memory_limit: usize,
    pub functions: Vec<Function>,
    /// Per request layout, the function that makes its tables (see `decode`).
    pub builders: Vec<Function>,
    pub runner: Function,
    /// What a call's own coroutine runs (see `guard`).
    pub body: Function,
    /// Threads of calls that returned normally, ready for the next call.
    spare: RefCell<Vec<CallThreads>>,
}

/// A call's thread (running the runner) and its own coroutine (running the body).
pub type CallThreads = (mlua::Thread, mlua::Thread);

/// Spare coroutines kept per state.
const SPARE_THREADS: usize = 64;

impl State {
    /// The call's thread (running the runner) and its own coroutine (running the body):
    /// spare ones, or new ones.
    pub fn threads(&self) -> mlua::Result<CallThreads> {
        match self.spare.borrow_mut().pop() {
            Some(t) => Ok(t),
            None => Ok((
                self.lua.create_thread(self.runner.clone())?,
                self.lua.create_thread(self.body.clone())?,
            )),
        }
    }

    /// Keeps a call's threads for another call if both finished normally (so nothing of the
    /// call is left in them: no pending to-be-closed variable, no frame).
    pub fn recycle(&self, (main, own): CallThreads) {
        let finished = mlua::ThreadStatus::Finished;
        if main.status() != finished || own.status() != finished {
            return;
        }
        let mut spare = self.spare.borrow_mut();
        if spare.len() < SPARE_THREADS
            && main.reset(self.runner.clone()).is_ok()
            && own.reset(self.body.clone()).is_ok()
        {
            spare.push((main, own));
        }
    }
}

/// A state being loaded.
pub struct Loading {
    pub lua: Lua,
    /// Whether the hook counts instructions (else the clock pauses scripts, see `preempt`).
    counting: bool,
    memory_limit: usize,
    max_message_size: usize,
    sandbox: Sandbox,
    envs: HashMap<PathBuf, Table>,
    pub functions: Vec<Function>,
}

fn lua_setup_error(what: &str, e: mlua::Error) -> StartupError {
    let hint = super::is_memory_error(&e).then(|| super::MEMORY_HINT.to_owned());
    StartupError::Script {
        location: Location::file("handlers"),
        message: format!("{what}: {e}"),
        hint,
    }
}

impl Loading {
    /// A fresh sandboxed state with the hook installed.
    pub fn new(
        recipe_dir: &std::path::Path,
        data: &DataSets,
        options: &ScriptOptions,
    ) -> Result<Self, StartupError> {
        let (lua, sandbox) = sandbox::new_state(recipe_dir, data, options.memory_limit)?;
        // One hook for every thread of this state; it checks whichever call is current.
        let counting = hook::install(&lua, options.instructions > 0)
            .map_err(|e| lua_setup_error("installing the instruction hook", e))?;
        // Calls make many short-lived tables and strings: generational collection suits them.
        lua.gc_gen(0, 0);
        Ok(Self {
            lua,
            counting,
            memory_limit: options.memory_limit,
            max_message_size: options.max_message_size,
            sandbox,
            envs: HashMap::new(),
            functions: Vec::new(),
        })
    }

    /// Loads `source` (once per path) under the load budget; its environment.
    pub fn load_script(
        &mut self,
        path: &std::path::Path,
        source: &str,
        options: &ScriptOptions,
    ) -> Result<Table, ScriptSetupError> {
        if let Some(env) = self.envs.get(path) {
            return Ok(env.clone());
        }
        let env: Table = self.sandbox.new_env.call(self.lua.globals()).map_err(|e| {
            ScriptSetupError::Script(lua_setup_error("creating a script environment", e))
        })?;
        let chunk = self
            .lua
            .load(source)
            .set_name(format!("@{}", path.display()))
            .set_mode(mlua::ChunkMode::Text)
            .set_environment(env.clone());
        let meter = Arc::new(CallShared::new(CallSpec {
            method: Arc::from(LOADING),
            script: Arc::from(path.display().to_string().as_str()),
            function: Arc::from(""),
            output: None,
            metadata: Default::default(),
            started: Instant::now(),
            deadline: Instant::now().checked_add(LOAD_TIME),
            budget: options.instruction_budget(),
            // Loading is bounded by its deadline, whose error says so.
            time_budget: Duration::MAX,
            streams_output: false,
            reply: None,
            outbox: None,
            entry_headers: Default::default(),
        }));
        hook::take_load_stop();
        let _clock = (!self.counting).then(preempt::clock);
        // Whatever happens inside, nothing stays noted as running once the load is over.
        let _note = preempt::within(std::ptr::null_mut());
        let result = slice::with_call(&meter, || run_top_level(&self.lua, chunk));
        if let Err(e) = result {
            return Err(ScriptSetupError::Script(load_error(path, &e, &meter)));
        }
        self.envs.insert(path.to_path_buf(), env.clone());
        Ok(env)
    }

    /// Each module file `require` looked for while this state loaded, with its text (`None`:
    /// not readable then).
    pub fn read_modules(&self) -> Vec<super::sandbox::ReadModule> {
        self.sandbox
            .read_modules
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Locks every script environment and freezes what the scripts built: the state is ready
    /// to serve. `check_code` (once per pool) also rejects functions that would assign
    /// module-level locals while serving.
    pub fn finish(self, check_code: bool, plans: &Arc<Plans>) -> Result<State, StartupErrors> {
        for (path, env) in &self.envs {
            self.sandbox
                .lock_env
                .call::<()>((env.clone(), self.lua.globals(), path.display().to_string()))
                .map_err(|e| lua_setup_error("locking script globals", e))?;
        }
        sandbox::finish_loading(
            &self.lua,
            &self.sandbox,
            &self.envs,
            check_code,
            self.memory_limit,
        )?;
        let runner: Function = self
            .lua
            .named_registry_value(RUNNER_KEY)
            .map_err(|e| lua_setup_error("finding the call runner", e))?;
        let body: Function = self
            .lua
            .named_registry_value(super::guard::BODY_KEY)
            .map_err(|e| lua_setup_error("finding the call runner", e))?;
        self.lua
            .set_app_data(Conv::new(plans.clone(), self.max_message_size));
        let builders = plans
            .layouts
            .iter()
            .map(|layout| layout.compile(&self.lua, plans))
            .collect::<mlua::Result<Vec<_>>>()
            .map_err(|e| lua_setup_error("preparing request conversion", e))?;
        let iterate = super::requests::iterator_factory(&self.lua)
            .map_err(|e| lua_setup_error("preparing request streams", e))?;
        fill_handlers(&self.lua, &self.functions, &builders, iterate)
            .map_err(|e| lua_setup_error("preparing the call runner", e))?;
        Ok(State {
            memory_limit: self.memory_limit,
            builders,
            lua: self.lua,
            functions: self.functions,
            runner,
            body,
            spare: RefCell::new(Vec::new()),
        })
    }
}

/// Gives the call runner what calls run: a call names its handler function and request
/// layout by number, so starting one hands the runner no function.
fn fill_handlers(
    lua: &Lua,
    functions: &[Function],
    builders: &[Function],
    iterate: Function,
) -> mlua::Result<()> {
    let handlers: Table = lua.named_registry_value(super::guard::HANDLERS_KEY)?;
    let into = |name: &str, list: &[Function]| -> mlua::Result<()> {
        let t: Table = handlers.raw_get(name)?;
        for (i, f) in list.iter().enumerate() {
            t.raw_set(i + 1, f)?;
        }
        Ok(())
    };
    into("functions", functions)?;
    into("builders", builders)?;
    handlers.raw_set("iterate", iterate)
}

/// Runs a script's top-level code through the guard's loader: in a coroutine, so the hook can
/// stop it by yielding (see [`hook`]).
fn run_top_level(lua: &Lua, chunk: mlua::Chunk<'_>) -> mlua::Result<()> {
    let load: Function = lua.named_registry_value(super::guard::LOAD_KEY)?;
    // Where an earlier file's load was paused says nothing of this one.
    let _ = hook::take_load_stop();
    load.call(chunk.into_function()?)
}

/// A failed load as `file:line: what`, stops by the load budget included.
fn load_error(path: &std::path::Path, e: &mlua::Error, meter: &CallShared) -> StartupError {
    if let Some(a) = meter.aborted() {
        let (file, line) = hook::take_load_stop()
            .map(|(s, l)| (PathBuf::from(s), l))
            .unwrap_or_else(|| (path.to_path_buf(), 0));
        let message = match a {
            Abort::Deadline => format!(
                "loading the script ran for more than {} s (an endless loop at the top level?)",
                LOAD_TIME.as_secs()
            ),
            other => format!("loading the script stopped: {other}"),
        };
        return StartupError::Script {
            location: Location::at(file, line, 0),
            message,
            hint: Some(
                "top-level code runs once per Lua state at startup and must finish quickly; do the work inside the handler function".into(),
            ),
        };
    }
    super::script_startup_error(path, e)
}

/// Builds a state from the recipe (for each state thread, and for replacements).
pub fn build(recipe: &Recipe) -> Result<State, StartupError> {
    let mut loading = Loading::new(&recipe.handlers_dir, &recipe.data, &recipe.options)?;
    for (path, source) in &recipe.scripts {
        loading
            .load_script(path, source, &recipe.options)
            .map_err(|e| match e {
                ScriptSetupError::Script(e) => e,
                ScriptSetupError::Entry(m) => {
                    lua_setup_error("loading scripts", mlua::Error::runtime(m))
                }
            })?;
    }
    for (script, name) in &recipe.functions {
        let path = &recipe.scripts[*script].0;
        let f = loading
            .envs
            .get(path)
            .and_then(|env| env.raw_get::<Function>(name.as_str()).ok())
            .ok_or_else(|| {
                lua_setup_error(
                    "loading scripts",
                    mlua::Error::runtime(format!("{} no longer defines {name}", path.display())),
                )
            })?;
        loading.functions.push(f);
    }
    // The first state checked the code already; a rebuild meets the same scripts.
    loading.finish(false, &recipe.plans).map_err(|mut e| {
        e.0.drain(..)
            .next()
            .unwrap_or_else(|| lua_setup_error("loading scripts", mlua::Error::runtime("failed")))
    })
}

/// One call handed to a state thread.
pub struct Job {
    pub function: usize,
    /// The request type's layout.
    pub layout: usize,
    pub shared: Arc<CallShared>,
    pub requests: Requests,
    /// Answers the call if it is dropped unanswered, wherever that happens.
    pub unanswered: Unanswered,
}

/// The thread currently serving a slot: how it reports its polls, and how it is told to stop.
struct Generation {
    heartbeat: Arc<Heartbeat>,
    condemned: Arc<tokio::sync::Notify>,
    /// Its calls in progress, answered at once when the watchdog gives it up.
    calls: Arc<InProgress>,
}

impl Generation {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            heartbeat: Arc::default(),
            condemned: Arc::new(tokio::sync::Notify::new()),
            calls: Arc::default(),
        })
    }
}

/// Calls waiting for a state thread; shared by a stuck thread and its replacement, which
/// each hold the lock only to take one call.
type Queue = Arc<Mutex<mpsc::UnboundedReceiver<Job>>>;

/// One state's place in the pool.
pub struct Slot {
    tx: mpsc::UnboundedSender<Job>,
    queue: Queue,
    current: RwLock<Arc<Generation>>,
    generation: AtomicU64,
    /// Tells the serving thread to poll the queue again: a replaced thread may have been the
    /// last to register for its wake-ups.
    kick: tokio::sync::Notify,
    /// Calls handed to this slot and not finished yet.
    pub active: AtomicUsize,
}

/// Every state thread, and what they are built from.
pub struct Pool {
    pub slots: Vec<Slot>,
    /// Dropped when the pool is shut down: a call whose client reads nothing may keep the pool
    /// a while after its states are gone, and should not keep their scripts and data too.
    recipe: Mutex<Option<Arc<Recipe>>>,
    /// The recipe's options, read per call.
    options: ScriptOptions,
    next: AtomicUsize,
    /// Set when the pool is shut down (see [`Pool::shut_down`]): its threads end the calls
    /// they hold instead of finishing them.
    closing: AtomicBool,
    /// Dropped with the pool, which wakes the watchdog to stop at once: sleeping out its
    /// period, every generation a reload storm replaced kept a watchdog thread alive.
    /// Taken by [`Pool::shut_down`]: a pool shut down has no state to watch, though a call
    /// whose client does not read its end may keep the pool itself a while.
    stops_watchdog: Mutex<Option<std::sync::mpsc::Sender<()>>>,
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Pool {
    /// Starts `n` state threads; `first` (already loaded) serves the first one.
    pub fn start(recipe: Recipe, n: usize, first: State) -> Result<Arc<Pool>, StartupError> {
        let stuck_after = recipe.options.stuck_after;
        let slots = (0..n.max(1))
            .map(|_| {
                let (tx, rx) = mpsc::unbounded_channel();
                Slot {
                    tx,
                    queue: Arc::new(Mutex::new(rx)),
                    current: RwLock::new(Generation::new()),
                    generation: AtomicU64::new(0),
                    kick: tokio::sync::Notify::new(),
                    active: AtomicUsize::new(0),
                }
            })
            .collect();
        let (stops_watchdog, stopped) = std::sync::mpsc::channel();
        let pool = Arc::new(Pool {
            slots,
            options: recipe.options,
            recipe: Mutex::new(Some(Arc::new(recipe))),
            next: AtomicUsize::new(0),
            closing: AtomicBool::new(false),
            stops_watchdog: Mutex::new(Some(stops_watchdog)),
        });
        let mut first = Some(first);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        for index in 0..pool.slots.len() {
            spawn_thread(&pool, index, 0, first.take(), Some(ready_tx.clone()))?;
        }
        drop(ready_tx);
        for result in ready_rx {
            result?;
        }
        let watched = Arc::downgrade(&pool);
        std::thread::Builder::new()
            .name("lua-watchdog".into())
            .spawn(move || watchdog(watched, stopped, stuck_after))
            .map_err(|e| StartupError::Usage(format!("cannot start the script watchdog: {e}")))?;
        Ok(pool)
    }

    /// What the states are built from; `None` once the pool is shut down.
    pub fn recipe(&self) -> Option<Arc<Recipe>> {
        lock(&self.recipe).clone()
    }

    /// Calls handed to the states and not finished yet.
    pub fn open_calls(&self) -> usize {
        self.slots
            .iter()
            .map(|s| s.active.load(Ordering::Relaxed))
            .sum()
    }

    /// Whether the pool was shut down.
    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// Stops every state thread now: the calls they hold, running or waiting, end at once
    /// (each told its scripts were replaced, see [`super::stop_dropped_call`]), nothing new is
    /// taken, and each thread drops its state and exits.
    pub fn shut_down(&self) {
        self.closing.store(true, Ordering::Release);
        self.close();
        lock(&self.stops_watchdog).take();
        lock(&self.recipe).take();
    }

    pub fn budget(&self) -> u64 {
        self.options.instruction_budget()
    }

    pub fn time_budget(&self) -> Duration {
        self.options.time_budget
    }

    /// The least busy state that is not stuck; the scan starts at a rotating index, so calls
    /// arriving together spread over equally idle states instead of all taking the first.
    ///
    /// A state whose current poll has run far past a time slice is stuck where the hook cannot
    /// pause its call (a metamethod or callback Lua calls from C): it serves nothing else until
    /// that call returns, is stopped by its budget, or its state is replaced. It is picked only
    /// when every state is stuck.
    pub fn pick(&self) -> usize {
        let n = self.slots.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let mut best: Option<(usize, usize)> = None;
        let mut stuck_best = (start, usize::MAX);
        for i in (start..n).chain(0..start) {
            let load = self.slots[i].active.load(Ordering::Relaxed);
            if best.is_some_and(|(_, b)| load >= b) {
                continue;
            }
            // A state with no call in hand cannot be stuck in one.
            if load > 0 && self.is_stuck(i) {
                if load < stuck_best.1 {
                    stuck_best = (i, load);
                }
                continue;
            }
            best = Some((i, load));
            if load == 0 {
                break;
            }
        }
        best.map_or(stuck_best.0, |(i, _)| i)
    }

    /// Whether the state at `index` has been in one poll of a call for longer than
    /// [`STUCK_POLL`].
    fn is_stuck(&self, index: usize) -> bool {
        read(&self.slots[index].current)
            .heartbeat
            .busy_for()
            .is_some_and(|busy| busy >= STUCK_POLL)
    }

    /// Tells every state thread to stop once the calls it holds are done (the generation this
    /// pool belongs to has been replaced and nothing can submit to it any more).
    pub fn close(&self) {
        for slot in &self.slots {
            lock(&slot.queue).close();
            slot.kick.notify_one();
        }
    }

    /// Hands `job` to the state at `index`; false if its thread is gone.
    pub fn submit(&self, index: usize, job: Job) -> bool {
        let slot = &self.slots[index];
        slot.active.fetch_add(1, Ordering::Relaxed);
        if slot.tx.send(job).is_ok() {
            return true;
        }
        slot.active.fetch_sub(1, Ordering::Relaxed);
        false
    }

    /// Puts a fresh thread and state in place of a stuck one; it takes the calls waiting.
    fn replace(self: &Arc<Self>, index: usize, why: &str) {
        let slot = &self.slots[index];
        let id = slot.generation.fetch_add(1, Ordering::AcqRel) + 1;
        let old = std::mem::replace(
            &mut *slot.current.write().unwrap_or_else(|e| e.into_inner()),
            Generation::new(),
        );
        // They cannot move while their state is stuck: each is told now, and stops there
        // if its thread ever returns.
        let lost_calls = old.calls.count();
        old.calls.give_up_all(&format!("was replaced: {why}"));
        tracing::warn!(
            "script state {index} replaced: {why}; its {lost_calls} calls in progress were answered UNAVAILABLE, a fresh state takes the calls queued"
        );
        old.condemned.notify_one();
        if let Err(e) = spawn_thread(self, index, id, None, None) {
            tracing::error!(
                "script state {index}: {}",
                crate::error::log_escaped(&e.to_string())
            );
        }
    }
}

fn spawn_thread(
    pool: &Arc<Pool>,
    index: usize,
    generation: u64,
    state: Option<State>,
    ready: Option<std::sync::mpsc::Sender<Result<(), StartupError>>>,
) -> Result<(), StartupError> {
    let pool = pool.clone();
    let current = read(&pool.slots[index].current).clone();
    std::thread::Builder::new()
        .name(format!("lua-{index}"))
        .spawn(move || state_thread(pool, index, generation, current, state, ready))
        .map(|_| ())
        .map_err(|e| StartupError::Usage(format!("cannot start a script thread: {e}")))
}

/// Why a state stopped serving.
enum Exit {
    /// Its channel closed (replaced by the watchdog, or the server is stopping).
    Closed,
    /// It must be rebuilt (the reason goes to the log).
    Unrecoverable(String),
}

/// A state thread: builds its state (unless given one), serves it, rebuilds it when it
/// cannot be trusted any more.
fn state_thread(
    pool: Arc<Pool>,
    index: usize,
    generation: u64,
    current: Arc<Generation>,
    mut state: Option<State>,
    mut ready: Option<std::sync::mpsc::Sender<Result<(), StartupError>>>,
) {
    slice::set_heartbeat(current.heartbeat.clone());
    if !scheduling::run_as_batch() {
        tracing::debug!("script state {index}: its thread keeps the default scheduling policy");
    }
    // Where the clock pauses scripts, it signals this thread for as long as it serves.
    let _clock = (pool.options.instructions == 0).then(preempt::clock);
    loop {
        let loaded = match state.take() {
            Some(s) => s,
            None => {
                // Shut down: nothing to serve.
                let Some(recipe) = pool.recipe() else {
                    return;
                };
                match build(&recipe) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::error!(
                            "script state {index} could not be built: {}",
                            crate::error::log_escaped(&e.to_string())
                        );
                        if let Some(r) = ready.take() {
                            let _ = r.send(Err(e));
                            return;
                        }
                        // A replacement: its queue must not wait for a state that never comes.
                        if !refuse_queued(&pool, index, generation) {
                            return;
                        }
                        continue;
                    }
                }
            }
        };
        slice::set_pause_below(
            loaded
                .lua
                .used_memory()
                .saturating_add(pool.options.memory_limit / PAUSE_MEMORY_SHARE),
        );
        if let Some(r) = ready.take() {
            let _ = r.send(Ok(()));
        }
        let loaded = Rc::new(loaded);
        let served = std::panic::catch_unwind(AssertUnwindSafe(|| {
            serve(&pool, index, generation, &current, &loaded)
        }));
        INBOX.with(|i| i.borrow_mut().take());
        // Whatever a panic left deferred is delivered; from here on wake-ups go out at once.
        wakes::flush_and(true);
        teardown(loaded);
        match served {
            Ok(Exit::Closed) => return,
            Ok(Exit::Unrecoverable(why)) => {
                tracing::warn!(
                    "script state {index} replaced: {why}; its calls in progress were answered UNAVAILABLE, a fresh state takes the calls queued"
                );
            }
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic".into());
                tracing::error!(
                    "script state {index} replaced: its thread panicked ({what}); its calls in progress were answered UNAVAILABLE, a fresh state takes the calls queued"
                );
            }
        }
        if pool.slots[index].generation.load(Ordering::Acquire) != generation {
            return;
        }
    }
}

/// After a failed rebuild: answers the calls queued meanwhile UNAVAILABLE, waits a moment and
/// says whether to try again (false once the pool is closed or the slot has a newer thread).
fn refuse_queued(pool: &Pool, index: usize, generation: u64) -> bool {
    let slot = &pool.slots[index];
    let tried_at = Instant::now();
    lost::lose_calls_because(Some(
        "was replaced, and its replacement could not be built (see the server log)",
    ));
    loop {
        let job = lock(&slot.queue).try_recv();
        match job {
            Ok(job) => {
                slot.active.fetch_sub(1, Ordering::Relaxed);
                drop(job);
            }
            Err(mpsc::error::TryRecvError::Empty) => {}
            Err(mpsc::error::TryRecvError::Disconnected) => return false,
        }
        if pool.is_closing() || (lock(&slot.queue).is_closed() && lock(&slot.queue).is_empty()) {
            return false;
        }
        if slot.generation.load(Ordering::Acquire) != generation {
            return false;
        }
        if tried_at.elapsed() >= REBUILD_PAUSE {
            lost::lose_calls_because(None);
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// How long a slot whose state could not be rebuilt refuses calls before trying again.
const REBUILD_PAUSE: Duration = Duration::from_secs(1);

/// Runs `f` (state housekeeping outside any call: collecting, closing) under a small budget,
/// so whatever Lua code it sets off (finalizers) is bounded too.
fn housekeeping<R>(what: &'static str, f: impl FnOnce() -> R) -> R {
    let meter = Arc::new(CallShared::new(CallSpec {
        method: Arc::from(what),
        script: Arc::from(""),
        function: Arc::from(""),
        output: None,
        metadata: Default::default(),
        started: Instant::now(),
        deadline: Instant::now().checked_add(Duration::from_millis(200)),
        budget: 10_000_000,
        time_budget: Duration::from_millis(200),
        streams_output: false,
        reply: None,
        outbox: None,
        entry_headers: Default::default(),
    }));
    slice::with_call(&meter, f)
}

/// Drops a state (finalizers, to-be-closed variables of its main thread run bounded).
fn teardown(state: Rc<State>) {
    housekeeping("(closing a script state)", move || drop(state));
}

thread_local! {
    /// This thread's job queue, so a busy call can admit new calls at its time slices.
    static INBOX: RefCell<Option<Inbox>> = const { RefCell::new(None) };
}

struct Inbox {
    queue: Queue,
    state: Rc<State>,
    pool: Arc<Pool>,
    index: usize,
    generation: u64,
    unrecoverable: Rc<RefCell<Option<String>>>,
    wake: Rc<tokio::sync::Notify>,
    calls: Arc<InProgress>,
}

impl Inbox {
    fn replaced(&self) -> bool {
        self.pool.slots[self.index]
            .generation
            .load(Ordering::Acquire)
            != self.generation
    }

    /// Starts a call as a task of this thread; false when this generation was replaced.
    fn admit(&self, mut job: Job) -> bool {
        if self.pool.is_closing() {
            refuse(&self.pool, self.index, job);
            return false;
        }
        if self.replaced() {
            // Replaced while stuck: the new state takes it.
            let slot = &self.pool.slots[self.index];
            slot.active.fetch_sub(1, Ordering::Relaxed);
            let _ = self.pool.submit(self.index, job);
            return false;
        }
        job.unanswered.list_in(&self.calls);
        let state = self.state.clone();
        let pool = self.pool.clone();
        let index = self.index;
        // Boxed: the executor moves a task's future and writes its stage whole several times
        // per call, and this future (the call, its coroutine runner and select) is kilobytes.
        tokio::task::spawn_local(Box::pin(wakes::FlushAfter::new(async move {
            super::run_call(&state, job).await;
            pool.slots[index].active.fetch_sub(1, Ordering::Relaxed);
            collect_over_pause_bound(&state, pool.options.memory_limit);
        })));
        true
    }

    /// See [`after_memory_error`].
    fn after_memory_error(&self, call: &CallShared) -> Option<StateFull> {
        let limit = self.pool.options.memory_limit;
        // A call already stopped for holding the memory frees it as it ends: collecting again
        // (each time a call meets the full state meanwhile) would only slow the state down.
        if self.calls.holder_stopped() {
            return Some(StateFull {
                held: self.state.lua.used_memory(),
            });
        }
        let used = housekeeping("(collecting after a memory error)", || {
            let _ = self.state.lua.gc_collect();
            let _ = self.state.lua.gc_collect();
            self.state.lua.used_memory()
        });
        let nearly_full = limit / 10 * 9;
        if used <= nearly_full {
            // Freed: the memory was the call's own, unless the state was already full when the
            // call's last run began and the call had added little before that run (another
            // call held the memory and ended meanwhile, leaving it to collect).
            let at_run = usize::try_from(call.memory_at_run.load(Ordering::Relaxed)).unwrap_or(0);
            let added = call.held_at_run.load(Ordering::Relaxed);
            if at_run > nearly_full && added < i64::try_from(limit / 4).unwrap_or(i64::MAX) {
                return Some(StateFull { held: at_run });
            }
            return None;
        }
        let holder = self.calls.biggest_holder(call);
        match holder {
            Some((holder, held)) if held >= i64::try_from(limit / 4).unwrap_or(i64::MAX) => {
                holder.abort(Abort::Memory);
                tracing::warn!(
                    method = &*holder.method,
                    "script state {} out of memory: stopped the call holding the most of it (its runs grew the state by {} MiB of {} MiB)",
                    self.index,
                    held >> 20,
                    limit >> 20
                );
            }
            _ => {
                *self.unrecoverable.borrow_mut() = Some(format!(
                    "after a memory error it still uses {} MiB of its {} MiB once collected, held by no one call",
                    used >> 20,
                    limit >> 20
                ));
                self.wake.notify_one();
            }
        }
        Some(StateFull { held: used })
    }
}

/// The memory this thread's state uses, when it serves one.
pub fn used_memory() -> Option<usize> {
    INBOX.with(|i| {
        let inbox = i.try_borrow().ok()?;
        inbox.as_ref().map(|inbox| inbox.state.lua.used_memory())
    })
}

/// After `call` met a memory error, before it is answered: collects, and if the state is still
/// nearly full, other calls in progress hold the memory, not `call` (what it held is garbage
/// now). Then the call whose runs grew the state the most is stopped (or, when no call stands
/// out, the state is given up), and `call` learns that the state was full ([`StateFull`]).
/// `None`: collecting freed the state, the memory was the call's own.
pub fn after_memory_error(call: &CallShared) -> Option<StateFull> {
    INBOX.with(|i| {
        let inbox = i.try_borrow().ok()?;
        inbox.as_ref()?.after_memory_error(call)
    })
}

thread_local! {
    /// Memory this thread's state used after its last collection by
    /// [`collect_over_pause_bound`] (0: none since it was last under the bound).
    static COLLECTED_AT: Cell<usize> = const { Cell::new(0) };
}

/// After a call: when the state uses more memory than the mark above which it keeps at most one
/// call paused for a time slice, collect. What the call held is garbage now, but nothing
/// collects it while the calls that go on allocate nothing, and meanwhile at most one of them
/// could be paused: one call that left a big string behind made later long calls hold up the
/// quick ones. At most once per share of the limit of new memory, so that calls ending
/// while another call holds much are not each charged a full collection.
fn collect_over_pause_bound(state: &State, limit: usize) {
    let used = state.lua.used_memory();
    if !slice::over_pause_mark(used) {
        COLLECTED_AT.with(|c| c.set(0));
        return;
    }
    let last = COLLECTED_AT.with(Cell::get);
    if last != 0 && used < last.saturating_add(limit / PAUSE_MEMORY_SHARE) {
        return;
    }
    let after = housekeeping("(collecting after a call)", || {
        let _ = state.lua.gc_collect();
        state.lua.used_memory()
    });
    COLLECTED_AT.with(|c| c.set(after.max(1)));
}

/// Called at a time slice of a busy call: starts calls that arrived meanwhile.
pub fn admit_arrivals() {
    INBOX.with(|i| {
        let Ok(inbox) = i.try_borrow() else { return };
        let Some(inbox) = inbox.as_ref() else { return };
        loop {
            if inbox.replaced() || inbox.pool.is_closing() {
                return;
            }
            let job = lock(&inbox.queue).try_recv();
            match job {
                Ok(job) => {
                    if !inbox.admit(job) {
                        return;
                    }
                }
                Err(_) => return,
            }
        }
    });
}

/// Serves calls until the channel closes or the state must go.
fn serve(
    pool: &Arc<Pool>,
    index: usize,
    generation: u64,
    current: &Generation,
    state: &Rc<State>,
) -> Exit {
    let queue = pool.slots[index].queue.clone();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .on_thread_park(wakes::flush)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return Exit::Unrecoverable(format!("cannot start its executor: {e}")),
    };
    let local = tokio::task::LocalSet::new();
    let unrecoverable = Rc::new(RefCell::new(None));
    let wake = Rc::new(tokio::sync::Notify::new());
    INBOX.with(|i| {
        *i.borrow_mut() = Some(Inbox {
            queue: queue.clone(),
            state: state.clone(),
            pool: pool.clone(),
            index,
            generation,
            unrecoverable: unrecoverable.clone(),
            wake: wake.clone(),
            calls: current.calls.clone(),
        })
    });
    wakes::defer_on_this_thread();
    let serving = async {
        loop {
            let next = poll_fn(|cx| lock(&queue).poll_recv(cx));
            let job = tokio::select! {
                biased;
                () = current.condemned.notified() => {
                    pool.slots[index].kick.notify_one();
                    return Exit::Closed;
                }
                () = pool.slots[index].kick.notified() => {
                    if pool.is_closing() {
                        // Another thread of this slot (a stuck one) may wait for it too.
                        pool.slots[index].kick.notify_one();
                        return Exit::Closed;
                    }
                    continue;
                }
                job = next => job,
                () = wake.notified() => {
                    if let Some(why) = unrecoverable.borrow_mut().take() {
                        return Exit::Unrecoverable(why);
                    }
                    continue;
                }
            };
            let Some(job) = job else {
                return Exit::Closed;
            };
            let admitted =
                INBOX.with(|i| i.borrow().as_ref().is_some_and(|inbox| inbox.admit(job)));
            if !admitted {
                // Replaced: finish what runs here.
                pool.slots[index].kick.notify_one();
                return Exit::Closed;
            }
        }
    };
    let served = std::panic::catch_unwind(AssertUnwindSafe(|| {
        local.block_on(&runtime, wakes::FlushAfter::new(serving))
    }));
    let exit = match served {
        Ok(exit) => exit,
        Err(panic) => {
            // The calls in progress go with the executor: each is told why as it is dropped.
            lost::lose_calls_because(Some("was replaced: its thread panicked"));
            wakes::flush_and(true);
            INBOX.with(|i| i.borrow_mut().take());
            drop(local);
            lost::lose_calls_because(None);
            std::panic::resume_unwind(panic);
        }
    };
    if pool.is_closing() {
        end_dropped_calls(|| drop(local));
    } else if let Exit::Unrecoverable(why) = &exit {
        // The calls in progress go with the executor: each is told why as it is dropped.
        lost::lose_calls_because(Some(&format!("was replaced: {why}")));
        wakes::flush_and(true);
        INBOX.with(|i| i.borrow_mut().take());
        drop(local);
        lost::lose_calls_because(None);
    } else {
        // Let the calls in progress finish, unless the pool is shut down meanwhile.
        let kick = &pool.slots[index].kick;
        runtime.block_on(async {
            let mut local = Box::pin(local);
            loop {
                tokio::select! {
                    () = &mut local => return,
                    () = kick.notified() => {
                        if pool.is_closing() {
                            kick.notify_one();
                            end_dropped_calls(|| drop(local));
                            return;
                        }
                    }
                }
            }
        });
    }
    if pool.is_closing() {
        // Calls handed over but not started yet.
        while let Ok(job) = lock(&queue).try_recv() {
            refuse(pool, index, job);
        }
    }
    wakes::flush_and(true);
    INBOX.with(|i| i.borrow_mut().take());
    exit
}

thread_local! {
    /// Set while a shut-down pool's thread drops the calls it holds.
    static ENDING_CALLS: Cell<bool> = const { Cell::new(false) };
}

/// Runs `drop_calls` (which drops call tasks) telling each call it ends because its pool was
/// shut down. What Lua code that sets off (the calls' to-be-closed variables) runs bounded.
fn end_dropped_calls(drop_calls: impl FnOnce()) {
    ENDING_CALLS.with(|e| e.set(true));
    housekeeping("(ending the calls of replaced scripts)", drop_calls);
    ENDING_CALLS.with(|e| e.set(false));
}

/// Whether the call being dropped on this thread ends because its pool was shut down (not
/// because its state was lost).
pub fn pool_shut_down_here() -> bool {
    ENDING_CALLS.with(Cell::get)
}

/// Ends a call the shut-down pool will not run.
fn refuse(pool: &Pool, index: usize, job: Job) {
    pool.slots[index].active.fetch_sub(1, Ordering::Relaxed);
    end_dropped_calls(|| super::stop_dropped_call(&job.shared));
}

/// Replaces states whose current poll has run far past any time slice, until the pool is
/// dropped (`stopped` disconnects).
fn watchdog(
    pool: std::sync::Weak<Pool>,
    stopped: std::sync::mpsc::Receiver<()>,
    stuck_after: Duration,
) {
    let period = (stuck_after / 4).max(Duration::from_millis(20));
    loop {
        if let Err(std::sync::mpsc::RecvTimeoutError::Disconnected) = stopped.recv_timeout(period) {
            return;
        }
        let Some(pool) = pool.upgrade() else { return };
        for index in 0..pool.slots.len() {
            let busy = read(&pool.slots[index].current).heartbeat.busy_for();
            if let Some(busy) = busy.filter(|b| *b >= stuck_after) {
                pool.replace(
                    index,
                    &format!(
                        "a call has run {} ms without returning to its executor (stuck in a library function?)",
                        busy.as_millis()
                    ),
                );
            }
        }
    }
}
