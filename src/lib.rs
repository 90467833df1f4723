//! protoserve: a gRPC server for any `.proto`, with no code generation.
//!
//! The library does the work; `main.rs` only parses arguments. [`load`] compiles the protos,
//! reads the handler files and validates everything once; [`serve`] runs the result. Tests and
//! embedders use the same two calls.

#![deny(unsafe_code)]

pub mod admin;
pub mod builtin;
pub mod codec;
pub mod config;
pub mod control;
pub mod data;
pub mod error;
pub mod fieldpath;
pub mod handler;
pub mod health;
pub mod journal;
pub mod layers;
pub mod live_placeholder;
pub mod matcher;
pub mod router;
pub mod schema;
pub mod script;
pub mod server;
pub mod suggest;
pub mod template;
pub mod wire;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use error::{StartupError, StartupErrors};
use handler::HandlerTable;
use router::{Limits, Router};
use schema::Schema;

/// Where the user's files are, and the server's limits.
#[derive(Debug, Clone)]
pub struct Options {
    pub protos: Vec<PathBuf>,
    pub import_paths: Vec<PathBuf>,
    pub handlers: PathBuf,
    pub data: PathBuf,
    pub max_message_size: usize,
    pub scripts: script::ScriptOptions,
    pub server: server::ServerOptions,
    /// The call journal's bounds, or off.
    pub journal: journal::JournalOptions,
    /// The admin API's token (its address is the listener given to [`serve`]).
    pub admin: admin::AdminOptions,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            protos: vec![PathBuf::from("protos")],
            import_paths: Vec::new(),
            handlers: PathBuf::from("handlers"),
            data: PathBuf::from("data"),
            max_message_size: 4 * 1024 * 1024,
            scripts: script::ScriptOptions::default(),
            server: server::ServerOptions::default(),
            journal: journal::JournalOptions::default(),
            admin: admin::AdminOptions::default(),
        }
    }
}

/// Everything loaded and validated, ready to serve.
pub struct Loaded {
    pub schema: Schema,
    pub table: HandlerTable,
    pub options: Options,
    pub load_time: Duration,
}

impl Loaded {
    pub fn service_count(&self) -> usize {
        self.schema.pool.services().len()
    }

    pub fn handled_count(&self) -> usize {
        self.table.iter().filter(|e| e.handler.is_some()).count()
    }
}

/// Compiles the protos and builds the handler table; every problem found is reported at once.
pub fn load(options: Options) -> Result<Loaded, StartupErrors> {
    let started = Instant::now();
    let schema = schema::compile(&options.protos, &options.import_paths)?;
    tracing::debug!("protos compiled in {:?}", started.elapsed());
    let mut table = HandlerTable::from_pool(&schema.pool);
    // Data and handler problems are all reported together, so one run of `check` lists them all.
    let mut errors = StartupErrors::default();
    let data = data::DataSets::load(&options.data).unwrap_or_else(|mut e| {
        errors.0.append(&mut e.0);
        data::DataSets::default()
    });
    // Lua states are made only when a handler file names a script.
    let mut engine: Option<script::EngineBuilder> = None;
    let mut scripts = |file: &str, function: &str, info: &std::sync::Arc<handler::MethodInfo>| {
        if engine.is_none() {
            let script_options = script::ScriptOptions {
                max_message_size: options.max_message_size,
                ..options.scripts
            };
            let built = script::EngineBuilder::new(&options.handlers, &data, script_options)
                .map_err(script::ScriptSetupError::Script)?;
            engine = Some(built);
        }
        match engine.as_mut() {
            Some(e) => e.add(file, function, info),
            None => Err(script::ScriptSetupError::Entry(
                "scripts are unavailable".into(),
            )),
        }
    };
    if let Err(mut e) =
        config::load_handlers(&options.handlers, &schema.pool, &mut table, &mut scripts)
    {
        errors.0.append(&mut e.0);
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    if let Some(engine) = engine {
        engine.finish()?;
    }
    tracing::debug!("handlers and data loaded at {:?}", started.elapsed());
    Ok(Loaded {
        schema,
        table,
        options,
        load_time: started.elapsed(),
    })
}

/// Serves `loaded` on `listener` until `shutdown` resolves, then drains: health turns
/// NOT_SERVING, in-flight calls may finish within `--shutdown-timeout`, the rest end with
/// UNAVAILABLE (see [`server`]). The admin API is served on `admin`, if given, until the
/// server has drained; calls are journaled unless `--journal off`.
pub async fn serve(
    loaded: Loaded,
    listener: tokio::net::TcpListener,
    admin: Option<tokio::net::TcpListener>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), StartupError> {
    let builtins = builtin::services(&loaded.schema)?;
    let journal = loaded
        .options
        .journal
        .enabled
        .then(|| journal::Journal::new(loaded.options.journal));
    let admin = match admin {
        Some(admin_listener) => {
            // Until generations can be swapped, the admin API sees the one loaded at startup.
            let control = std::sync::Arc::new(live_placeholder::Placeholder::new(&loaded));
            let api = admin::Admin::new(control, journal.clone(), loaded.options.admin.clone());
            Some(admin::listener::start(
                admin_listener,
                std::sync::Arc::new(api),
            ))
        }
        None => None,
    };
    let router = Router::new(
        &loaded.table,
        builtins.services,
        Limits {
            max_message_size: loaded.options.max_message_size,
        },
    );
    let health = builtins.health;
    server::run(
        listener,
        router,
        loaded.options.server,
        journal,
        shutdown,
        move || {
            health.drain();
        },
    )
    .await;
    if let Some(admin) = admin {
        admin.stop().await;
    }
    Ok(())
}

/// Binds `addr`, for callers that want the real port (with `:0`) before serving.
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, StartupError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| StartupError::Usage(format!("cannot listen on {addr}: {e}")))
}
