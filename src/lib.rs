//! protoserve: a gRPC server for any `.proto`, with no code generation.
//!
//! The library does the work; `main.rs` only parses arguments. Everything served is one
//! [`Generation`], built from the inputs by [`generation::Builder`]; [`Live`] holds the current
//! one and replaces it on reload; [`serve`] runs the server over it.

#![deny(unsafe_code)]

pub mod admin;
pub mod builtin;
pub mod codec;
pub mod config;
pub mod control;
pub mod data;
pub mod error;
pub mod evict;
pub mod fieldpath;
pub mod floods;
pub mod generation;
pub mod handler;
pub mod health;
pub mod idle;
pub mod input;
pub mod journal;
pub mod jsonkeys;
pub mod jsonpos;
pub mod kinds;
pub mod layers;
pub mod live;
pub mod matcher;
pub mod metadata;
pub mod reflection;
pub mod refusal;
pub mod regexes;
pub mod router;
pub mod schema;
pub mod script;
pub mod server;
pub mod suggest;
pub mod template;
pub mod wire;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use error::{StartupError, StartupErrors};
use generation::Generation;
use live::Live;
use router::{Limits, Router};

/// Where the user's files are, and the server's limits.
#[derive(Debug, Clone)]
pub struct Options {
    pub protos: Vec<PathBuf>,
    pub import_paths: Vec<PathBuf>,
    /// Encoded `FileDescriptorSet`s served along with the protos (`--descriptor-set`).
    pub descriptor_sets: Vec<PathBuf>,
    /// The descriptor cache folder; `None`: no cache (`--no-cache`).
    pub cache_dir: Option<PathBuf>,
    pub handlers: PathBuf,
    pub data: PathBuf,
    pub max_message_size: usize,
    pub scripts: script::ScriptOptions,
    pub server: server::ServerOptions,
    /// The call journal's bounds, or off.
    pub journal: journal::JournalOptions,
    /// The admin API's token (its address is the listener given to [`serve`]).
    pub admin: admin::AdminOptions,
    /// How many replaced generations' Lua states open calls may keep running
    /// (`--keep-replaced-scripts`); a reload closes the oldest past this (see [`live`]).
    pub keep_replaced_scripts: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            protos: vec![PathBuf::from("protos")],
            import_paths: Vec::new(),
            descriptor_sets: Vec::new(),
            cache_dir: schema::cache::default_dir(),
            handlers: PathBuf::from("handlers"),
            data: PathBuf::from("data"),
            max_message_size: 4 * 1024 * 1024,
            scripts: script::ScriptOptions::default(),
            server: server::ServerOptions::default(),
            journal: journal::JournalOptions::default(),
            admin: admin::AdminOptions::default(),
            keep_replaced_scripts: live::KEEP_REPLACED_SCRIPTS,
        }
    }
}

/// Builds the first generation: compiles the protos and builds the handler table; every
/// problem found is reported at once. `check` and `list` use this; `serve` goes through
/// [`live::Live::start`], which builds the same way.
pub fn load(options: &Options) -> Result<Generation, StartupErrors> {
    generation::Builder {
        options,
        runtime: &config::RuntimeHandlers::new(),
        schema: None,
        engine: None,
        number: 1,
    }
    .build()
}

/// Serves `live`'s current generation on `listener` until `shutdown` resolves, then drains:
/// health turns NOT_SERVING, in-flight calls may finish within `--shutdown-timeout`, the rest
/// end with UNAVAILABLE (see [`server`]). The admin API is served on `admin`, if given, until
/// the server has drained; calls are journaled unless `--journal off`.
pub async fn serve(
    live: Arc<Live>,
    listener: tokio::net::TcpListener,
    admin: Option<tokio::net::TcpListener>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), StartupError> {
    let options = live.options();
    let journal = options
        .journal
        .enabled
        .then(|| journal::Journal::new(options.journal));
    let admin = match admin {
        Some(admin_listener) => {
            let control = Arc::new(live::LiveControl(live.clone()));
            let api = admin::Admin::new(control, journal.clone(), options.admin.clone());
            Some(admin::listener::start(admin_listener, Arc::new(api)))
        }
        None => None,
    };
    let router = Router::new(
        live.shared(),
        builtin::health(live.health(), options.max_message_size),
        Limits {
            max_message_size: options.max_message_size,
        },
    );
    let health = live.health().clone();
    server::run(
        listener,
        router,
        options.server,
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
