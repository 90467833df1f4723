//! The `protoserve` command: parse arguments, set up logging, hand over to the library.

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use protoserve::{Loaded, Options};
use tracing_subscriber::EnvFilter;

/// A gRPC server for any .proto: no code generation, handlers in JSON and Lua.
#[derive(Parser, Debug)]
#[command(name = "protoserve", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve the protos with their handlers (the default).
    Serve(ServeArgs),
    /// Load and validate protos, handlers and data; print every problem; exit non-zero on any.
    Check(LoadArgs),
    /// Print each service and method with its shape and handler kind.
    List(LoadArgs),
}

#[derive(Args, Debug, Clone)]
struct LoadArgs {
    /// Folder of .proto files to serve (repeatable); each is also an import root.
    #[arg(long = "protos", value_name = "DIR", default_value = "protos")]
    protos: Vec<PathBuf>,
    /// Extra import root for `import` statements (repeatable).
    #[arg(short = 'I', long = "import-path", value_name = "DIR")]
    import_paths: Vec<PathBuf>,
    /// Folder of handler files.
    #[arg(long, value_name = "DIR", default_value = "handlers")]
    handlers: PathBuf,
    /// Folder of data sets (*.json) for scripts.
    #[arg(long, value_name = "DIR", default_value = "data")]
    data: PathBuf,
    /// Largest message accepted or sent, in bytes; larger ones get RESOURCE_EXHAUSTED.
    #[arg(long, value_name = "BYTES", default_value_t = 4 * 1024 * 1024)]
    max_message_size: usize,
    /// Lua instructions one script call may run before it is stopped with RESOURCE_EXHAUSTED.
    #[arg(long, value_name = "N", default_value_t = 100_000_000)]
    script_instructions: u64,
    /// Memory limit of each Lua state, in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 256)]
    script_memory: usize,
    /// Lua states in the script pool (0: one per core).
    #[arg(long, value_name = "N", default_value_t = 0)]
    script_states: usize,
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
    #[arg(long, value_name = "ADDR", default_value = "[::]:50051")]
    listen: SocketAddr,
    #[command(flatten)]
    load: LoadArgs,
}

impl LoadArgs {
    fn options(&self) -> Options {
        Options {
            protos: self.protos.clone(),
            import_paths: self.import_paths.clone(),
            handlers: self.handlers.clone(),
            data: self.data.clone(),
            max_message_size: self.max_message_size,
            scripts: protoserve::script::ScriptOptions {
                states: self.script_states,
                instructions: self.script_instructions,
                memory_limit: self.script_memory.saturating_mul(1024 * 1024),
                max_message_size: self.max_message_size,
            },
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Serve(cli.serve));
    let log_level = match &command {
        Command::Serve(a) => &a.load.log_level,
        Command::Check(a) | Command::List(a) => &a.log_level,
    };
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_new(log_level).unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match command {
        Command::Serve(args) => serve(args),
        Command::Check(args) => check(&args),
        Command::List(args) => list(&args),
    }
}

fn load(args: &LoadArgs) -> Result<Loaded, ExitCode> {
    protoserve::load(args.options()).map_err(|errors| {
        eprintln!("{errors}");
        eprintln!(
            "protoserve: {} problem(s) found; nothing was served",
            errors.0.len()
        );
        ExitCode::from(2)
    })
}

fn check(args: &LoadArgs) -> ExitCode {
    match load(args) {
        Ok(loaded) => {
            println!(
                "ok: {} services, {} methods ({} with handlers), loaded in {} ms",
                loaded.service_count(),
                loaded.table.len(),
                loaded.handled_count(),
                loaded.load_time.as_millis()
            );
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

fn list(args: &LoadArgs) -> ExitCode {
    let loaded = match load(args) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let mut current = "";
    for entry in loaded.table.iter() {
        let service = entry.info.descriptor.parent_service();
        if service.full_name() != current {
            println!("{}", service.full_name());
            current = Box::leak(service.full_name().to_owned().into_boxed_str());
        }
        let kind = entry.handler.as_ref().map_or("no handler", |h| h.kind());
        println!(
            "  {:<24} {:<17} {}",
            entry.info.descriptor.name(),
            entry.info.shape.name(),
            kind
        );
    }
    ExitCode::SUCCESS
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
    runtime.block_on(async move {
        let loaded = match load(&args.load) {
            Ok(l) => l,
            Err(code) => return code,
        };
        let listener = match protoserve::bind(args.listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        };
        let addr = listener
            .local_addr()
            .map_or_else(|_| args.listen.to_string(), |a| a.to_string());
        tracing::info!(
            "listening on {addr}: {} services, {} of {} methods with handlers, loaded in {} ms",
            loaded.service_count(),
            loaded.handled_count(),
            loaded.table.len(),
            loaded.load_time.as_millis()
        );
        match protoserve::serve(loaded, listener, shutdown_signal()).await {
            Ok(()) => {
                tracing::info!("stopped");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

/// Resolves on SIGINT or SIGTERM; the server then stops accepting and finishes in-flight calls.
async fn shutdown_signal() {
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
    tracing::info!("shutting down: finishing in-flight calls");
}
