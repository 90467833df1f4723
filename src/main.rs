//! The `protoserve` command: parse arguments, set up logging, hand over to the library.

#![deny(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use protoserve::generation::Generation;
use protoserve::live::{watch, Live};
use protoserve::server::ServerOptions;
use protoserve::Options;
use tracing_subscriber::EnvFilter;

/// The process's allocator. A call allocates many small buffers in h2, hyper and tonic, and Lua
/// scripts allocate through mlua into this allocator too: mimalloc serves both in fewer
/// instructions than glibc's malloc. Transparent huge pages are off (the `no_thp` feature): they
/// doubled the idle server's resident memory.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` and `mi_option_arena_purge_mult` (their indexes in
/// `mi_option_t`, mimalloc.h); the Rust bindings leave them unnamed.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
const MI_OPTION_ARENA_PURGE_MULT: libmimalloc_sys::mi_option_t = 24;

/// How long memory freed stays with the process before mimalloc hands it back to the OS.
const PURGE_DELAY_MS: std::os::raw::c_long = 10;

/// Makes mimalloc hand freed pages back to the OS 10 ms after they are freed.
///
/// With its defaults, freed memory may wait 100 ms in its arenas: under a burst of large
/// requests the buffers of those that had already ended stayed resident, and peak memory
/// doubled next to glibc's malloc, past what the per-connection buffer limits are meant to
/// bound. Purging at once (no delay) bounded that, but pages freed by one call and taken by the
/// next were purged in between and faulted back in: 0.4 page faults per unary call (`reply`),
/// 1.1 per Lua call, against 0.02 for the code-generated tonic server. 10 ms keeps the pages
/// that are reused at once (0.05 and 0.1 faults per call) and still returns a burst's memory
/// within a few ticks of the allocator.
#[allow(unsafe_code)]
fn purge_freed_memory_soon() {
    // mimalloc reads its own environment variable; one given there wins.
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    // SAFETY: called first in `main`, before any other thread exists; each stores an integer
    // in mimalloc's option table, both valid values.
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS);
        libmimalloc_sys::mi_option_set(MI_OPTION_ARENA_PURGE_MULT, 1);
    }
}

/// The exit status of every startup problem: bad files, bad flags, a port in use.
const STARTUP_PROBLEM: u8 = 2;

/// A gRPC server for any .proto: no code generation, handlers in JSON and Lua.
#[derive(Parser, Debug)]
#[command(
    name = "protoserve",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve the protos with their handlers (the default).
    Serve(Box<ServeArgs>),
    /// Load and validate protos, handlers and data; print every problem; exit non-zero on any.
    Check(LoadArgs),
    /// Print each service and method with its shape and handler kind.
    List(ListArgs),
    /// Check a running server's call journal, for CI scripts: exit 0 when the verify holds, 1
    /// when it does not (the explanation is printed), 2 on errors.
    Verify(VerifyArgs),
}

#[derive(Args, Debug, Clone)]
struct ListArgs {
    #[command(flatten)]
    load: LoadArgs,
    /// Only services whose full name starts with one of these (a package such as
    /// `google.cloud.speech` or a service such as `helloworld.Greeter`).
    #[arg(value_name = "PREFIX")]
    prefixes: Vec<String>,
}

#[derive(Args, Debug, Clone)]
struct VerifyArgs {
    /// The server's admin API: its --admin address (the log's "admin API on http://ADDR").
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9901", value_parser = verify_admin_addr)]
    admin: SocketAddr,
    /// The server's admin token.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "PROTOSERVE_ADMIN_TOKEN",
        hide_env_values = true
    )]
    admin_token: Option<String>,
    /// A JSON file with one verify, or an array of them; "-" reads standard input.
    /// A verify: {"method": "pkg.Service/Method", "when": {...}, "exactly": 1}.
    #[arg(value_name = "FILE")]
    file: PathBuf,
}

#[derive(Args, Debug, Clone)]
struct LoadArgs {
    /// Folder of .proto files to serve (repeatable); each is also an import root
    /// [default: protos, unless --descriptor-set is given].
    #[arg(long = "protos", value_name = "DIR")]
    protos: Vec<PathBuf>,
    /// Extra import root for `import` statements (repeatable).
    #[arg(short = 'I', long = "import-path", value_name = "DIR")]
    import_paths: Vec<PathBuf>,
    /// Binary FileDescriptorSet to serve, as written by `buf build -o FILE.binpb` or
    /// `protoc --include_imports --descriptor_set_out=FILE` (repeatable; mixes with --protos).
    #[arg(long = "descriptor-set", value_name = "FILE")]
    descriptor_sets: Vec<PathBuf>,
    /// Folder of the descriptor cache [default: protoserve/ in the user's cache folder].
    #[arg(long, value_name = "DIR", conflicts_with = "no_cache")]
    cache_dir: Option<PathBuf>,
    /// Compile every start from the sources; read and write no descriptor cache.
    #[arg(long)]
    no_cache: bool,
    /// Folder of handler files.
    #[arg(long, value_name = "DIR", default_value = "handlers")]
    handlers: PathBuf,
    /// Folder of data sets (*.json) for scripts.
    #[arg(long, value_name = "DIR", default_value = "data")]
    data: PathBuf,
    /// Largest message accepted or sent (bytes, or such as 4MiB; at least 1 byte); larger
    /// ones get RESOURCE_EXHAUSTED.
    #[arg(long, value_name = "SIZE", default_value = "4MiB", value_parser = size_limit)]
    max_message_size: usize,
    /// Milliseconds one script call may run (over all its time slices) before it is stopped
    /// with RESOURCE_EXHAUSTED (at least 1).
    #[arg(long, value_name = "MS", default_value_t = 1000, value_parser = milliseconds)]
    script_time_ms: u64,
    /// Also count each call's Lua instructions and stop it past N (0: not counted). Exact and
    /// the same on every machine, but scripts run about 1.7 times slower.
    #[arg(long, value_name = "N", default_value_t = 0)]
    script_instructions: u64,
    /// Memory limit of each Lua state, in MiB (1 to 1048576).
    #[arg(long, value_name = "MIB", default_value_t = 256, value_parser = script_memory)]
    script_memory: usize,
    /// Lua states in the script pool, at most 1024 (0: one per core).
    #[arg(long, value_name = "N", default_value_t = 0, value_parser = script_states)]
    script_states: usize,
    /// A Lua state whose call runs this many milliseconds without returning to its scheduler
    /// (stuck in a library function) is replaced by a fresh one.
    #[arg(long, value_name = "MS", default_value_t = 5000, value_parser = milliseconds)]
    script_watchdog_ms: u64,
    /// Log filter: error, warn, info, debug, trace, or a tracing filter such as "protoserve=debug".
    #[arg(
        long,
        value_name = "LEVEL",
        default_value = "info",
        env = "PROTOSERVE_LOG"
    )]
    log_level: String,
}

#[derive(Args, Debug, Clone)]
struct ServeArgs {
    /// Address to listen on; port 0 picks a free port (the log line shows it).
    #[arg(long, value_name = "ADDR", default_value = "[::]:50051", value_parser = listen_addr)]
    listen: SocketAddr,
    /// Do not reload when files under the protos, -I, handlers or data folders change (SIGHUP and
    /// the admin API still reload).
    #[arg(long)]
    no_watch: bool,
    /// Replaced generations whose Lua states script calls still open on them may keep running;
    /// past this many, a reload closes the oldest, and its calls end with UNAVAILABLE (0: every
    /// reload that replaces the scripts ends the script calls open on them).
    #[arg(long, value_name = "N", default_value_t = protoserve::live::KEEP_REPLACED_SCRIPTS)]
    keep_replaced_scripts: usize,
    #[command(flatten)]
    load: LoadArgs,
    #[command(flatten)]
    transport: TransportArgs,
    #[command(flatten)]
    live: LiveArgs,
}

/// The admin API and the call journal (serve only).
#[derive(Args, Debug, Clone)]
struct LiveArgs {
    /// Address of the admin API (JSON over HTTP, and gRPC), or "off". Keep it on loopback or
    /// set --admin-token: it can install handlers.
    #[arg(long, value_name = "ADDR|off", default_value = "127.0.0.1:9901", value_parser = admin_addr)]
    admin: AdminAddr,
    /// A token every admin request must carry as `Authorization: Bearer TOKEN`.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "PROTOSERVE_ADMIN_TOKEN",
        hide_env_values = true
    )]
    admin_token: Option<String>,
    /// Record every call, with every message, in the journal the admin API reads ("on"), or
    /// not ("off").
    #[arg(long, value_name = "on|off", default_value = "on", value_parser = on_off, action = clap::ArgAction::Set)]
    journal: bool,
    /// Calls the journal keeps; the oldest go first.
    #[arg(long, value_name = "N", default_value_t = 10_000, value_parser = positive)]
    journal_calls: usize,
    /// Bytes the journal keeps, messages and metadata together (such as 64MiB, 512KiB); the
    /// oldest calls go first, and one call larger than this keeps its first messages.
    #[arg(long, value_name = "SIZE", default_value = "64MiB", value_parser = journal_size)]
    journal_bytes: usize,
}

/// An IP address with a port, or what to write instead: a bare port or a host name is the
/// usual mistake, and the standard parser says only "invalid socket address syntax".
fn socket_addr(s: &str, example: &str, public: bool) -> Result<SocketAddr, String> {
    let s = s.trim();
    if let Ok(addr) = s.parse() {
        return Ok(addr);
    }
    if let Ok(port) = s.trim_start_matches(':').parse::<u16>() {
        let everywhere = if public {
            format!(", or [::]:{port} for every interface")
        } else {
            String::new()
        };
        return Err(format!(
            "{s:?} is a port without an address; give both, such as 127.0.0.1:{port}{everywhere}"
        ));
    }
    Err(format!(
        "{s:?} is not an IP address with a port; give one such as {example} or [::1]:0 (port 0 picks a free one; host names are not looked up)"
    ))
}

/// `--listen`: an IP address with a port.
fn listen_addr(s: &str) -> Result<SocketAddr, String> {
    socket_addr(s, "127.0.0.1:50051", true)
}

/// `--admin`: an address, or off.
#[derive(Debug, Clone, Copy)]
struct AdminAddr(Option<SocketAddr>);

fn admin_addr(s: &str) -> Result<AdminAddr, String> {
    if s.trim().eq_ignore_ascii_case("off") {
        return Ok(AdminAddr(None));
    }
    socket_addr(s, "127.0.0.1:9901", false)
        .map(|a| AdminAddr(Some(a)))
        .map_err(|e| format!("{e}; or off"))
}

/// `verify --admin`: the address the server's `--admin` was given, as `serve` reads it (a
/// bare port says what to write instead), or as its log shows it (`http://ADDR`).
fn verify_admin_addr(s: &str) -> Result<SocketAddr, String> {
    let addr = protoserve::admin::client::authority(s);
    if addr.eq_ignore_ascii_case("off") {
        return Err("the server's admin API must be on for verify: give the address its --admin was given (its log says \"admin API on http://ADDR\")".into());
    }
    let given =
        "give the server's admin address, as its log shows it (\"admin API on http://ADDR\")";
    match socket_addr(addr, "127.0.0.1:9901", false) {
        Ok(a) if a.port() == 0 => Err(format!(
            "{addr:?}: port 0 is where serve picks a free port; {given}"
        )),
        Ok(a) => Ok(a),
        // A bare port: serve's words, which say what to write.
        Err(e) if addr.trim_start_matches(':').parse::<u16>().is_ok() => Err(e),
        Err(_) => Err(format!(
            "{addr:?} is not an IP address with a port, such as 127.0.0.1:9901 (host names are not looked up, as by serve --admin); {given}"
        )),
    }
}

fn on_off(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "on" | "true" | "yes" => Ok(true),
        "off" | "false" | "no" => Ok(false),
        _ => Err(format!("{s:?}: use on or off")),
    }
}

/// The smallest journal byte budget: a few calls with their metadata.
const MIN_JOURNAL_BYTES: usize = 64 * 1024;

/// The journal's byte budget: a [`byte_size`] of at least [`MIN_JOURNAL_BYTES`].
fn journal_size(s: &str) -> Result<usize, String> {
    let bytes = byte_size(s)?;
    if bytes < MIN_JOURNAL_BYTES {
        return Err(format!("{:?} is too small; give at least 64KiB", s.trim()));
    }
    Ok(bytes)
}

/// A message or buffer limit: a [`byte_size`] of at least one byte.
fn size_limit(s: &str) -> Result<usize, String> {
    match byte_size(s)? {
        0 => Err("must be at least 1 byte".into()),
        bytes => Ok(bytes),
    }
}

/// A size in bytes: a number with an optional unit (B, KiB, MiB, GiB; K, M, G and KB, MB, GB
/// mean the same binary multiples). The flags given in bytes (`--max-message-size`,
/// `--max-buffered…`, `--journal-bytes`) all read sizes this way, so a unit one takes works
/// for all. A fraction is taken where it makes whole bytes (`1.5MiB`, as a duration takes
/// `1.5s`); one that does not, and a number too large for this machine, are refused saying so;
/// anything else (a sign, an exponent, a space inside the number) is not a size.
fn byte_size(s: &str) -> Result<usize, String> {
    const USAGE: &str = "write bytes, or a number with KiB, MiB or GiB (such as 64MiB)";
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let scale: u128 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ if !number.bytes().any(|b| b.is_ascii_digit()) => {
            return Err(format!("{s:?} is not a size; {USAGE}"))
        }
        _ => return Err(format!("unknown unit {:?} in {s:?}; {USAGE}", unit.trim())),
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() || fraction.contains('.') {
        return Err(format!("{s:?} is not a size; {USAGE}"));
    }
    let too_large = || format!("{s:?} is too large (the most is {} bytes)", usize::MAX);
    // Only digits are left. A whole part of more than 20 digits is too large for any machine;
    // 28 significant digits in all (times a GiB, the most a u128 holds) are more than any
    // size needs.
    let fraction = fraction.trim_end_matches('0');
    if whole.trim_start_matches('0').len() > 20 {
        return Err(too_large());
    }
    let digits = format!("{whole}{fraction}");
    let digits = digits.trim_start_matches('0');
    if digits.len() > 28 || fraction.len() > 28 {
        return Err(format!(
            "{s:?} has more digits than a size needs (28 at most); {USAGE}"
        ));
    }
    let n: u128 = digits.parse().unwrap_or(0);
    let tenths = 10u128.pow(fraction.len() as u32);
    if !(n * scale).is_multiple_of(tenths) {
        return Err(format!(
            "{s:?} is not a whole number of bytes; give whole bytes, or a fraction of KiB, MiB or GiB that makes them (such as 1.5KiB)"
        ));
    }
    usize::try_from(n * scale / tenths).map_err(|_| too_large())
}

impl LiveArgs {
    fn journal(&self) -> protoserve::journal::JournalOptions {
        protoserve::journal::JournalOptions {
            enabled: self.journal,
            max_calls: self.journal_calls,
            max_bytes: self.journal_bytes,
        }
    }

    fn admin(&self) -> protoserve::admin::AdminOptions {
        protoserve::admin::AdminOptions {
            token: self.admin_token.clone().filter(|t| !t.is_empty()),
        }
    }
}

/// Limits and timeouts of connections and calls (serve only).
#[derive(Args, Debug, Clone)]
struct TransportArgs {
    /// Connections served at once; one more closes the connection idle the longest, or is
    /// refused when every one has a call in flight.
    #[arg(long, value_name = "N", default_value_t = 1024, value_parser = positive)]
    max_connections: usize,
    /// HTTP/2 streams a client may open at once on one connection (more wait in the client).
    #[arg(long, value_name = "N", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    max_concurrent_streams: u32,
    /// Calls in flight on one connection; more get RESOURCE_EXHAUSTED at once.
    #[arg(long, value_name = "N", default_value_t = 256, value_parser = positive)]
    max_calls_per_connection: usize,
    /// Calls in flight on the whole server, past each connection's first 4 (which always get
    /// in); more get RESOURCE_EXHAUSTED at once.
    #[arg(long, value_name = "N", default_value_t = 4096, value_parser = positive)]
    max_calls: usize,
    /// Bytes of request headers (metadata) one call may send.
    #[arg(long, value_name = "BYTES", default_value_t = 16 * 1024, value_parser = clap::value_parser!(u32).range(1024..))]
    max_header_list_size: u32,
    /// Bytes of messages the server holds for one connection: requests still arriving and
    /// responses the client has not read; a message past it ends its call with
    /// RESOURCE_EXHAUSTED (bytes, or such as 64MiB).
    #[arg(long, value_name = "SIZE", default_value = "64MiB", value_parser = size_limit)]
    max_buffered_per_connection: usize,
    /// The same, for all connections together.
    #[arg(long, value_name = "SIZE", default_value = "1GiB", value_parser = size_limit)]
    max_buffered: usize,
    /// Time a new connection has to send the HTTP/2 preface before it is closed (more than 0).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = some_time)]
    handshake_timeout: Duration,
    /// Interval of the HTTP/2 pings that detect dead peers (0: never ping).
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = duration)]
    keepalive_interval: Duration,
    /// How long a ping may go unanswered before the connection is dropped (more than 0).
    #[arg(long, value_name = "DURATION", default_value = "20s", value_parser = some_time)]
    keepalive_timeout: Duration,
    /// After SIGTERM/SIGINT, how long in-flight calls may run before they end with UNAVAILABLE.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = duration)]
    shutdown_timeout: Duration,
}

impl TransportArgs {
    fn options(&self) -> ServerOptions {
        ServerOptions {
            max_connections: self.max_connections,
            max_concurrent_streams: self.max_concurrent_streams,
            max_calls_per_connection: self.max_calls_per_connection,
            max_calls: self.max_calls,
            handshake_timeout: self.handshake_timeout,
            keepalive_interval: Some(self.keepalive_interval).filter(|d| !d.is_zero()),
            keepalive_timeout: self.keepalive_timeout,
            shutdown_timeout: self.shutdown_timeout,
            max_header_list_size: self.max_header_list_size,
            max_buffered_per_connection: self.max_buffered_per_connection,
            max_buffered: self.max_buffered,
        }
    }
}

/// The largest `--script-memory`, 1 TiB: the Lua allocator takes a limit of 0, or one past
/// `isize::MAX` bytes, for no limit at all.
const MAX_SCRIPT_MEMORY_MIB: usize = 1 << 20;

/// `--script-memory`: MiB per Lua state, 1 to [`MAX_SCRIPT_MEMORY_MIB`].
fn script_memory(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if (1..=MAX_SCRIPT_MEMORY_MIB).contains(&n) => Ok(n),
        Ok(_) => Err(format!(
            "give the MiB each Lua state may use, from 1 to {MAX_SCRIPT_MEMORY_MIB} (there is no setting without a limit)"
        )),
        Err(_) => Err("give a whole number of MiB, such as 256".into()),
    }
}

/// The most Lua states `--script-states` may ask for: each is a thread with its own Lua state
/// (about 400 KiB before any script runs, 1.6 GiB and 8 s to start for 4096).
const MAX_SCRIPT_STATES: usize = 1024;

/// `--script-states`: 0 (one per core) to [`MAX_SCRIPT_STATES`].
fn script_states(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if n <= MAX_SCRIPT_STATES => Ok(n),
        Ok(_) => Err(format!(
            "at most {MAX_SCRIPT_STATES} (each state is a thread with its own Lua memory; 0 gives one per core)"
        )),
        Err(_) => Err("give a whole number of states, or 0 for one per core".into()),
    }
}

/// A number of milliseconds, at least 1.
fn milliseconds(s: &str) -> Result<u64, String> {
    match s.trim().parse::<u64>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(_) => Err("give a whole number of milliseconds, such as 1000".into()),
    }
}

fn positive(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// A duration: a number of seconds, or a number with a unit: `ms`, `s`, `m`, `h` (`1.5s`,
/// `250ms`).
fn duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let scale = match unit.trim() {
        "" | "s" => 1.0,
        "ms" => 0.001,
        "m" => 60.0,
        "h" => 3600.0,
        other => {
            return Err(format!(
            "unknown unit {other:?}; write seconds, or a number with ms, s, m or h (such as 500ms)"
        ))
        }
    };
    let n: f64 = number.parse().map_err(|_| {
        format!("{s:?} is not a duration; write seconds, or a number with ms, s, m or h")
    })?;
    Duration::try_from_secs_f64(n * scale).map_err(|_| format!("{s:?} is out of range"))
}
/// A [`duration`] that is not zero: a timeout of none would close every connection that has
/// not already sent what it waits for.
fn some_time(s: &str) -> Result<Duration, String> {
    match duration(s)? {
        d if d.is_zero() => Err("must be more than 0, such as 500ms".into()),
        d => Ok(d),
    }
}

impl LoadArgs {
    fn options(&self, server: ServerOptions) -> Options {
        // `protos/` is the default only when nothing else is served.
        let protos = if self.protos.is_empty() && self.descriptor_sets.is_empty() {
            vec![PathBuf::from("protos")]
        } else {
            self.protos.clone()
        };
        Options {
            protos,
            import_paths: self.import_paths.clone(),
            descriptor_sets: self.descriptor_sets.clone(),
            cache_dir: if self.no_cache {
                None
            } else {
                self.cache_dir
                    .clone()
                    .or_else(protoserve::schema::cache::default_dir)
            },
            handlers: self.handlers.clone(),
            data: self.data.clone(),
            max_message_size: self.max_message_size,
            scripts: protoserve::script::ScriptOptions {
                states: self.script_states,
                instructions: self.script_instructions,
                time_budget: std::time::Duration::from_millis(self.script_time_ms),
                memory_limit: self.script_memory.saturating_mul(1024 * 1024),
                stuck_after: std::time::Duration::from_millis(self.script_watchdog_ms),
                max_message_size: self.max_message_size,
            },
            server,
            journal: protoserve::journal::JournalOptions::default(),
            admin: protoserve::admin::AdminOptions::default(),
            keep_replaced_scripts: protoserve::live::KEEP_REPLACED_SCRIPTS,
        }
    }

    /// `--data` and `-I` folders named on the command line must exist; the default data folder
    /// may be absent (no data/ is no data). Missing `--protos` and `--handlers` folders are
    /// reported by `load`.
    fn check_given_folders(&self, matches: &ArgMatches) -> Result<(), String> {
        let mut given: Vec<(&str, &PathBuf, &str)> = self
            .import_paths
            .iter()
            .map(|p| ("--import-path", p, "an import root"))
            .collect();
        if matches.value_source("data") == Some(ValueSource::CommandLine) {
            given.push(("--data", &self.data, "the folder with your data sets"));
        }
        let problems: Vec<String> = given
            .into_iter()
            .filter(|(_, path, _)| !path.is_dir())
            .map(|(flag, path, what)| {
                let wrong = if path.exists() {
                    "not a folder"
                } else {
                    "no such folder"
                };
                format!(
                    "error: {flag} {}: {wrong}\n  help: create it, or point {flag} at {what}",
                    path.display()
                )
            })
            .collect();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("\n"))
        }
    }
}

/// Log lines kept for the log's writer while standard error does not take them; past this
/// many, lines are dropped rather than waited for.
const LOG_LINES_HELD: usize = 10_000;

/// Where the log goes: standard error, written by a thread of its own. Writing from the thread
/// that logs made a log read slowly (a pipe whose reader lags, a full terminal) hold the
/// network threads, and with them every call; now a line waits in memory, at most
/// [`LOG_LINES_HELD`] of them, and the rest are dropped. The guard writes what is held when
/// `main` returns.
fn log_writer() -> (
    tracing_appender::non_blocking::NonBlocking,
    tracing_appender::non_blocking::WorkerGuard,
) {
    tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(LOG_LINES_HELD)
        .thread_name("log")
        .finish(std::io::stderr())
}

/// The log filter: level names, or tracing directives such as `protoserve=debug`. A bare word
/// that is no level is refused (tracing would read it as a target and log nothing useful).
fn log_filter(spec: &str) -> Result<EnvFilter, String> {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    for directive in spec.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        if !directive.contains('=')
            && !directive.contains('[')
            && !LEVELS.contains(&directive.to_ascii_lowercase().as_str())
        {
            let hint = protoserve::suggest::did_you_mean(directive, LEVELS.iter().copied());
            return Err(format!(
                "--log-level {spec:?}: {directive:?} is not a log level{hint}; use error, warn, info, debug, trace, or a filter such as protoserve=debug"
            ));
        }
    }
    let filter = EnvFilter::try_new(spec).map_err(|e| format!("--log-level {spec:?}: {e}"))?;
    // The file watcher's own log says, as a warning in its debug format, that it could not
    // unwatch a folder that is gone: every removed or replaced folder, which the server
    // handles, would read as trouble. Its real failures reach the server as errors, which it
    // logs itself. A filter that names it still gets everything it logs.
    //
    // h2 warns, unthrottled, of what a misbehaving client does to one connection (an
    // acknowledgement of a PING the server never sent, a stream reset too many): one client
    // wrote a million lines a second. The server logs those floods itself, once a second at
    // most, and closes the connection. A filter that names h2 gets everything it logs.
    let mut filter = filter;
    for (target, quiet) in [("notify", "notify=error"), ("h2", "h2=error")] {
        if !spec.contains(target) {
            filter = filter.add_directive(quiet.parse().map_err(|e| format!("{e}"))?);
        }
    }
    Ok(filter)
}

/// The arguments. Options before a subcommand would be the default `serve`'s, silently left
/// unused (`protoserve --protos api check` checked protos/): clap refuses them, and this says
/// where they go.
fn parse_args() -> ArgMatches {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    match Cli::command().try_get_matches() {
        Ok(m) => m,
        Err(e) => {
            if let (ErrorKind::ArgumentConflict, Some(ContextValue::String(sub))) =
                (e.kind(), e.get(ContextKind::InvalidSubcommand))
            {
                let _ = e.print();
                eprintln!("help: give the options after the subcommand, as in `protoserve {sub} --protos DIR`");
                std::process::exit(STARTUP_PROBLEM.into());
            }
            e.exit()
        }
    }
}

fn main() -> ExitCode {
    purge_freed_memory_soon();
    let matches = parse_args();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let command = cli.command.unwrap_or(Command::Serve(Box::new(cli.serve)));
    let command_matches = matches.subcommand().map_or(&matches, |(_, m)| m);
    let load_args = match &command {
        Command::Serve(a) => &a.load,
        Command::Check(a) => a,
        Command::List(a) => &a.load,
        Command::Verify(a) => return verify(a),
    };
    let filter = match log_filter(&load_args.log_level) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(STARTUP_PROBLEM);
        }
    };
    if let Err(e) = load_args.check_given_folders(command_matches) {
        eprintln!("{e}");
        return ExitCode::from(STARTUP_PROBLEM);
    }
    let (writer, _flush_at_exit) = log_writer();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match command {
        Command::Serve(args) => serve(*args),
        Command::Check(args) => check(&args),
        Command::List(args) => list(&args),
        Command::Verify(_) => ExitCode::from(STARTUP_PROBLEM),
    }
}

fn report(errors: &protoserve::error::StartupErrors) -> ExitCode {
    // Written, not `eprintln!`ed: a report of many problems fills a pipe, and one whose reader
    // stopped early (`check 2>&1 | head`) made `eprintln!` panic. The exit code says it all.
    use std::io::Write;
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{errors}").and_then(|()| {
        writeln!(
            err,
            "protoserve: {} problem(s) found; nothing was served",
            errors.0.len()
        )
    });
    ExitCode::from(STARTUP_PROBLEM)
}

fn load(args: &LoadArgs) -> Result<Generation, ExitCode> {
    protoserve::load(&args.options(ServerOptions::default())).map_err(|e| report(&e))
}

fn check(args: &LoadArgs) -> ExitCode {
    match load(args) {
        Ok(loaded) => {
            let mut out = Output::new();
            out.line(format_args!(
                "ok: {} services, {} methods ({} with handlers), loaded in {} ms",
                loaded.service_count(),
                loaded.method_count(),
                loaded.handled_count(),
                loaded.load_time.as_millis()
            ));
            out.finish().unwrap_or(ExitCode::SUCCESS)
        }
        Err(code) => code,
    }
}

fn list(args: &ListArgs) -> ExitCode {
    let loaded = match load(&args.load) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let kinds: std::collections::HashMap<String, &'static str> = loaded
        .table
        .iter()
        .filter_map(|e| Some((e.info.path.to_string(), e.handler.as_ref()?.kind())))
        .collect();
    let wanted = |name: &str| {
        args.prefixes.is_empty() || args.prefixes.iter().any(|p| name.starts_with(p.as_str()))
    };
    let mut out = Output::new();
    let mut shown = 0;
    for service in loaded.schema.files.services() {
        if !wanted(&service.name) {
            continue;
        }
        shown += 1;
        out.line(format_args!("{}", service.name));
        for method in &service.methods {
            let path = format!("/{}/{}", service.name, method.name);
            let kind = kinds.get(&path).copied().unwrap_or("no handler");
            out.line(format_args!(
                "  {:<24} {:<17} {}",
                method.name,
                method.shape.name(),
                kind
            ));
        }
        if out.stopped() {
            break;
        }
    }
    if let Some(code) = out.finish() {
        return code;
    }
    if shown == 0 && !args.prefixes.is_empty() {
        eprintln!(
            "no service starts with {}; `protoserve list` without a prefix lists all {}",
            args.prefixes.join(" or "),
            loaded.service_count()
        );
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}

/// Standard output of `list`, `check` and `verify`. `println!` panics when the reader has gone
/// (`protoserve list | head -1` printed "failed printing to stdout" and a backtrace); here a
/// reader that stops early ends the output quietly, as it ends other tools' output, and any
/// other write error (a full disk) is reported once, after which nothing more is written.
struct Output {
    out: std::io::Stdout,
    error: Option<std::io::Error>,
}

impl Output {
    fn new() -> Output {
        Output {
            out: std::io::stdout(),
            error: None,
        }
    }

    /// Writes one line, unless writing already stopped.
    fn line(&mut self, text: std::fmt::Arguments) {
        use std::io::Write;
        if self.error.is_none() {
            if let Err(e) = writeln!(self.out, "{text}") {
                self.error = Some(e);
            }
        }
    }

    /// Whether writing stopped (the reader went away, or a write failed).
    fn stopped(&self) -> bool {
        self.error.is_some()
    }

    /// Flushes; `None` when the output went out, or the reader stopped reading early (which
    /// is not the command's failure), else the exit code of a write that failed.
    fn finish(mut self) -> Option<ExitCode> {
        use std::io::Write;
        if self.error.is_none() {
            self.error = self.out.flush().err();
        }
        match self.error? {
            e if e.kind() == std::io::ErrorKind::BrokenPipe => None,
            e => {
                eprintln!("error: cannot write to standard output: {e}");
                Some(ExitCode::from(STARTUP_PROBLEM))
            }
        }
    }
}

fn serve(args: ServeArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("protoserve: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(async move {
        let mut options = args.load.options(args.transport.options());
        options.journal = args.live.journal();
        options.admin = args.live.admin();
        options.keep_replaced_scripts = args.keep_replaced_scripts;
        let hangups = match watch::listen_for_sighup() {
            Ok(h) => h,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(STARTUP_PROBLEM);
            }
        };
        // Watching starts before loading, so a change made while loading is reloaded; a
        // problem with watching is reported after those of the inputs.
        let watching = (!args.no_watch).then(|| watch::watch_files(&options));
        let live = match Live::start(options).await {
            Ok(l) => l,
            Err(errors) => return report(&errors),
        };
        let _watching = match watching {
            None => None,
            Some(Ok((watching, changes))) => {
                changes.reload(live.clone());
                Some(watching)
            }
            Some(Err(e)) => {
                eprintln!("error: {e}\n  help: pass --no-watch to serve without watching");
                return ExitCode::from(STARTUP_PROBLEM);
            }
        };
        watch::reload_on_sighup(live.clone(), hangups);
        let loaded = live.current();
        let listener = match protoserve::bind(args.listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("error: {e}\n  help: stop what is using the port, or pick another with --listen (port 0 picks a free one)");
                return ExitCode::from(STARTUP_PROBLEM);
            }
        };
        let admin = match args.live.admin.0 {
            None => None,
            Some(addr) => match protoserve::bind(addr).await {
                Ok(l) => Some(l),
                Err(e) => {
                    eprintln!("error: --admin: {e}\n  help: stop what is using the port, pick another with --admin (port 0 picks a free one), or turn the admin API off with --admin off");
                    return ExitCode::from(STARTUP_PROBLEM);
                }
            },
        };
        if let Some(admin) = &admin {
            let addr = admin.local_addr().map_or_else(|_| args.live.admin.0.map(|a| a.to_string()).unwrap_or_default(), |a| a.to_string());
            tracing::info!("admin API on http://{addr}");
            if !admin.local_addr().is_ok_and(|a| a.ip().is_loopback()) && live.options().admin.token.is_none() {
                tracing::warn!("the admin API on {addr} is reachable from other machines and has no token: anyone who reaches it can install handlers; set --admin-token, or keep --admin on 127.0.0.1");
            }
        }
        if !live.options().journal.enabled {
            tracing::info!("journal off: calls are not recorded");
        }
        let addr = listener
            .local_addr()
            .map_or_else(|_| args.listen.to_string(), |a| a.to_string());
        tracing::info!(
            "listening on {addr}: {} services, {} of {} methods with handlers, loaded in {} ms",
            loaded.service_count(),
            loaded.handled_count(),
            loaded.method_count(),
            loaded.load_time.as_millis()
        );
        drop(loaded);
        match protoserve::serve(live, listener, admin, shutdown_signal()).await {
            Ok(()) => {
                tracing::info!("stopped");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(STARTUP_PROBLEM)
            }
        }
    });
    // Nothing the server started may keep the process alive once it is done.
    runtime.shutdown_timeout(Duration::from_secs(1));
    code
}

/// `protoserve verify`: posts each verify of the file to the admin API and prints the verdicts.
fn verify(args: &VerifyArgs) -> ExitCode {
    let name = args.file.display().to_string();
    // What the admin API takes in one body: a file past it could not be posted anyway, and
    // reading on (from /dev/zero, or `yes | protoserve verify -`) grew without end.
    let most = protoserve::admin::http::MAX_BODY;
    let read = |from: &mut dyn std::io::Read| {
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut std::io::Read::take(from, most as u64 + 1), &mut bytes)
            .map(|_| bytes)
    };
    let bytes = if name == "-" {
        read(&mut std::io::stdin())
    } else {
        std::fs::metadata(&args.file)
            .and_then(|m| match m.is_file() {
                true => std::fs::File::open(&args.file),
                false => Err(std::io::Error::other(
                    "not a regular file (a folder, FIFO, socket or device); give a file, or - \
                     for standard input",
                )),
            })
            .and_then(|mut f| read(&mut f))
    };
    let bytes = match bytes {
        Ok(b) if b.len() > most => {
            eprintln!(
                "error: {name}: more than {} MiB, the most the admin API takes in one request\n  help: split the verifies into several files",
                most >> 20
            );
            return ExitCode::from(STARTUP_PROBLEM);
        }
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: {name}: {e}");
            return ExitCode::from(STARTUP_PROBLEM);
        }
    };
    // A leading byte-order mark (a file saved by a Windows editor) is dropped, as from a
    // handler file.
    let text = protoserve::input::without_bom(&bytes);
    // Text that is not UTF-8 is placed at its first bad byte, as in a handler file.
    if let Err(e) = std::str::from_utf8(text) {
        let (line, col) = protoserve::input::position(text, e.valid_up_to());
        eprintln!(
            "error: {}: not UTF-8 text\n  help: save the file as UTF-8",
            protoserve::error::Location::at(&args.file, line, col)
        );
        return ExitCode::from(STARTUP_PROBLEM);
    }
    let json: serde_json::Value = match serde_json::from_slice(text) {
        Ok(j) => j,
        Err(e) => {
            // Located as a handler file's problems are: a column of 0 (the end of an empty
            // file) is left out, since columns count from 1.
            let (line, col) = protoserve::input::json_error_at(text, &e);
            let problem = if protoserve::input::nested_too_deep(&e) {
                format!(
                    "arrays and objects nested more than {} deep (the most a verify may nest)",
                    protoserve::input::JSON_MAX_DEPTH
                )
            } else {
                format!(
                    "not valid JSON: {}",
                    protoserve::input::json_error_message(&e)
                )
            };
            eprintln!(
                "error: {}: {problem}",
                protoserve::error::Location::at(&args.file, line, col)
            );
            return ExitCode::from(STARTUP_PROBLEM);
        }
    };
    // A key given twice would be read as one of the two: refused as in a handler file.
    let text_str = std::str::from_utf8(text).unwrap_or_default();
    let duplicates = protoserve::jsonkeys::duplicates(text_str);
    for d in &duplicates {
        eprintln!(
            "error: {}: {}\n  help: {}",
            protoserve::error::Location::at(&args.file, d.again.0, d.again.1),
            d.message(),
            d.hint()
        );
    }
    if !duplicates.is_empty() {
        return ExitCode::from(STARTUP_PROBLEM);
    }
    let verifies = match json {
        serde_json::Value::Array(items) => items,
        one @ serde_json::Value::Object(_) => vec![one],
        _ => {
            eprintln!("error: {name}: give a verify object, or an array of them, such as {{\"method\": \"pkg.Service/Method\", \"exactly\": 1}}");
            return ExitCode::from(STARTUP_PROBLEM);
        }
    };
    if verifies.is_empty() {
        eprintln!("error: {name}: the array holds no verifies, so it would pass whatever the server saw; give at least one");
        return ExitCode::from(STARTUP_PROBLEM);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("protoserve: cannot start the runtime: {e}");
            return ExitCode::from(STARTUP_PROBLEM);
        }
    };
    let token = args.admin_token.as_deref().filter(|t| !t.is_empty());
    // A reader that stops early (`| head`) does not stop the verifies: their verdicts still set
    // the exit status.
    let mut out = Output::new();
    let mut failed = 0;
    for (i, item) in verifies.iter().enumerate() {
        let label = if verifies.len() > 1 {
            format!("[{i}] ")
        } else {
            String::new()
        };
        let body = bytes::Bytes::from(item.to_string());
        let answer = runtime.block_on(protoserve::admin::client::request(
            &args.admin.to_string(),
            http::Method::POST,
            "/v1/verify",
            token,
            Some(body),
        ));
        let (status, body) = match answer {
            Ok(a) => a,
            Err(e) => {
                eprintln!("error: cannot reach the admin API at {}: {e}\n  help: point --admin at the server's admin address (its log says \"admin API on …\")", args.admin);
                return ExitCode::from(STARTUP_PROBLEM);
            }
        };
        let reply: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let message = reply["message"].as_str().unwrap_or_default();
        if !status.is_success() {
            eprintln!("error: {label}{name}: the admin API answered {status}: {message}");
            return ExitCode::from(STARTUP_PROBLEM);
        }
        if !is_verify_answer(&reply) {
            eprintln!(
                "error: {label}{name}: {} answered {status} with something other than a verify's verdict: {}\n  help: point --admin at protoserve's admin address (its log says \"admin API on …\")",
                args.admin,
                answer_preview(&body)
            );
            return ExitCode::from(STARTUP_PROBLEM);
        }
        if reply["ok"].as_bool() == Some(true) {
            out.line(format_args!("ok: {label}{message}"));
            continue;
        }
        failed += 1;
        out.line(format_args!("FAILED: {label}{message}"));
        for miss in reply["near_misses"].as_array().into_iter().flatten() {
            out.line(format_args!("  call {}:", miss["id"]));
            for why in miss["failed"].as_array().into_iter().flatten() {
                out.line(format_args!("    {}", why.as_str().unwrap_or_default()));
            }
            if let Some(request) = miss.get("request") {
                out.line(format_args!("    request: {request}"));
            }
        }
        if let Some(note) = reply["note"].as_str() {
            out.line(format_args!("  note: {note}"));
        }
    }
    if let Some(code) = out.finish() {
        return code;
    }
    if failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// Whether `reply` is what protoserve's `POST /v1/verify` answers: a verdict, a count and the
/// sentence that says both. Anything else (another server on the port, a proxy's page) must not
/// pass, nor fail as if the verify did not hold.
fn is_verify_answer(reply: &serde_json::Value) -> bool {
    reply["ok"].is_boolean() && reply["message"].is_string() && reply["count"].is_u64()
}

/// The start of an answer that was not a verdict, escaped for a terminal.
fn answer_preview(body: &[u8]) -> String {
    const SHOWN: usize = 80;
    let text = String::from_utf8_lossy(&body[..body.len().min(SHOWN)]);
    let more = if body.len() > SHOWN { "…" } else { "" };
    if text.trim().is_empty() {
        "an empty body".into()
    } else {
        format!("{:?}{more}", text.as_ref())
    }
}

/// Resolves on SIGINT or SIGTERM; the server then stops accepting and finishes in-flight calls.
/// A second signal exits at once.
async fn shutdown_signal() {
    signal().await;
    tracing::info!("shutting down: health is NOT_SERVING, finishing in-flight calls (a second signal exits now)");
    tokio::spawn(async {
        signal().await;
        eprintln!("protoserve: second signal, exiting without finishing calls");
        std::process::exit(130);
    });
}

async fn signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

#[cfg(test)]
mod tests {
    use super::{byte_size, duration, journal_size, log_filter, size_limit};

    #[test]
    fn byte_sizes_take_bytes_or_a_binary_unit() {
        assert_eq!(byte_size("65536"), Ok(65536));
        assert_eq!(byte_size("64MiB"), Ok(64 << 20));
        assert_eq!(byte_size("512k"), Ok(512 << 10));
        assert_eq!(byte_size("1 GB"), Ok(1 << 30));
        for bad in [
            "",
            "MiB",
            "1x",
            "99999999999999999999G",
            "-1M",
            ".",
            "1.2.3K",
            "0.1",
        ] {
            assert!(byte_size(bad).is_err(), "{bad:?}");
        }
        assert_eq!(byte_size("1.5MiB"), Ok(1536 << 10));
        assert_eq!(byte_size(".5k"), Ok(512));
        assert_eq!(byte_size("2.0"), Ok(2));
        assert_eq!(
            byte_size("000000000000000000000000000000000001G"),
            Ok(1 << 30)
        );
        assert_eq!(byte_size("18446744073709551615"), Ok(usize::MAX));
        assert!(byte_size("18446744073709551616")
            .unwrap_err()
            .contains("too large"));
        assert!(byte_size("0.3K")
            .unwrap_err()
            .contains("not a whole number of bytes"));
        assert!(byte_size("1.00000000000000000000000000000000000000000G").is_ok());
        assert!(byte_size("9999999999999999999999999999.9999999999999999999999999999G").is_err());
        assert!(byte_size(&format!("0.{}1", "0".repeat(40))).is_err());
        // Nothing written panics.
        let alphabet = ["0", "9", ".", "k", "B", " ", "-", "e", "é"];
        let mut texts = vec![String::new()];
        for _ in 0..5 {
            texts = texts
                .iter()
                .flat_map(|t| alphabet.iter().map(move |c| format!("{t}{c}")))
                .collect();
            for text in &texts {
                let _ = byte_size(text);
            }
        }
        assert_eq!(size_limit("1"), Ok(1));
        assert_eq!(size_limit("1GiB"), Ok(1 << 30));
        assert!(size_limit("0").is_err());
        assert!(size_limit("0MiB").is_err());
        assert_eq!(journal_size("64KiB"), Ok(64 << 10));
        assert!(journal_size("10").is_err());
    }
    use std::time::Duration;

    #[test]
    fn durations_take_seconds_or_a_unit() {
        assert_eq!(duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(duration("0"), Ok(Duration::ZERO));
        for bad in ["", "s", "-1", "1x", "1e400", "99999999999999999999999h"] {
            assert!(duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn log_levels_and_filters() {
        for good in [
            "info",
            "DEBUG",
            "protoserve=debug",
            "warn,protoserve=trace",
            "off",
        ] {
            assert!(log_filter(good).is_ok(), "{good:?}");
        }
        for bad in ["verbose", "inof", "protoserve=loud"] {
            assert!(log_filter(bad).is_err(), "{bad:?}");
        }
    }
}
