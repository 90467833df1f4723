//! A generation: everything served, compiled from the inputs as one immutable value.
//!
//! The descriptor pool, the handler table with its compiled templates and rules, the Lua states
//! with their scripts and data, and the reflection services over exactly these files are built
//! together by [`Builder`] and never change afterwards. The live server swaps whole generations
//! (see [`crate::live`]); a call holds its method's entry of the generation it started on until
//! it ends (see [`crate::router::CallBody`]), so nothing it uses can change under it. A replaced
//! generation is freed as soon as it is no longer served; what outlives it is what its open
//! calls answer with: a declarative handler (and the descriptors it reads), or for a script
//! call the Lua states (threads, data) of that generation, which stop when their last call is
//! done, or when the live server closes them (see [`crate::live`]).
//!
//! The Lua states are the one part a new generation may take over from the one it replaces:
//! when the scripts, data sets, script options and schema they were built from are the same
//! (see [`crate::script::Scripts`]), starting new states would only make the same ones again.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::builtin;
use crate::config::{self, PendingScripts, RuntimeHandlers};
use crate::data::DataSets;
use crate::error::StartupErrors;
use crate::handler::HandlerTable;
use crate::regexes::Regexes;
use crate::router::BuiltinService;
use crate::schema::{self, Schema};
use crate::script::{Engine, ScriptOptions, Scripts};
use crate::Options;

/// Everything one generation serves.
pub struct Generation {
    /// 1 for the generation loaded at startup, then one more per successful reload.
    pub number: u64,
    pub schema: Arc<Schema>,
    pub table: HandlerTable,
    /// Server reflection over this generation's files, by path prefix.
    pub reflection: Vec<(String, BuiltinService)>,
    /// The runtime handlers laid over the files' handlers in this generation.
    pub runtime: RuntimeHandlers,
    /// The Lua states its script handlers run on (`None`: no handler is a script); shared
    /// with the generation before when nothing they depend on changed.
    pub engine: Option<Arc<Engine>>,
    pub loaded_at: SystemTime,
    pub load_time: Duration,
}

impl Generation {
    pub fn service_count(&self) -> usize {
        self.schema.service_count()
    }

    /// Every declared method, handled or not.
    pub fn method_count(&self) -> usize {
        self.schema.method_count()
    }

    /// Whether this generation runs Lua states (some handler is a script).
    pub fn runs_scripts(&self) -> bool {
        self.engine.is_some()
    }

    pub fn handled_count(&self) -> usize {
        self.table.iter().filter(|e| e.handler.is_some()).count()
    }

    /// The full names of the services this generation serves.
    pub fn service_names(&self) -> impl Iterator<Item = String> + '_ {
        self.schema
            .files
            .services()
            .iter()
            .map(|s| s.name.to_string())
    }
}

/// Builds a generation from the inputs: the only loading path, used at startup, on reload
/// and when a runtime handler changes. Runs on a blocking thread (it reads files, compiles and
/// starts Lua states); every problem found is reported at once.
pub struct Builder<'a> {
    pub options: &'a Options,
    pub runtime: &'a RuntimeHandlers,
    /// A schema to reuse instead of compiling the protos again (when only handlers changed).
    pub schema: Option<Arc<Schema>>,
    /// The Lua states of the generation being replaced, taken over if they fit.
    pub engine: Option<Arc<Engine>>,
    pub number: u64,
}

impl Builder<'_> {
    pub fn build(self) -> Result<Generation, StartupErrors> {
        let started = Instant::now();
        let options = self.options;
        // A big tree decodes only the services handlers name (files and runtime entries).
        let named: Vec<String> = config::named_services(&options.handlers)
            .into_iter()
            .chain(
                self.runtime
                    .keys()
                    .filter_map(|k| k.split_once('/').map(|(s, _)| s.to_owned())),
            )
            .collect();
        let schema = match self.schema {
            Some(s) => Schema::covering(s, &named)?,
            None => Arc::new(schema::compile(&schema::SchemaInputs {
                protos: options.protos.clone(),
                import_paths: options.import_paths.clone(),
                descriptor_sets: options.descriptor_sets.clone(),
                cache_dir: options.cache_dir.clone(),
                services: named,
            })?),
        };
        tracing::debug!("protos ready in {:?}", started.elapsed());
        let mut table = HandlerTable::from_pool(&schema.pool);
        // Data and handler problems are all reported together, so one run of `check` lists
        // them all.
        let mut errors = StartupErrors::default();
        for folder in [&options.handlers, &options.data] {
            if let Err(e) = crate::input::check_folders(folder) {
                errors.push(e);
            }
        }
        let data = DataSets::load(&options.data).unwrap_or_else(|e| {
            errors.absorb(e);
            DataSets::unloaded(&options.data)
        });
        let script_options = ScriptOptions {
            max_message_size: options.max_message_size,
            ..options.scripts
        };
        let mut scripts = Scripts::new(
            &options.handlers,
            &data,
            script_options,
            &schema,
            self.engine,
        );
        let mut pending = PendingScripts::new();
        // One budget for the regex tests of the files and the runtime handlers together.
        let mut regexes = Regexes::default();
        if let Err(e) = config::load_handlers(
            &options.handlers,
            &schema.pool,
            &mut table,
            &mut scripts,
            &mut pending,
            &mut regexes,
        ) {
            errors.absorb(e);
        }
        if let Err(e) = config::load_runtime(
            self.runtime,
            &schema.pool,
            &mut table,
            &mut scripts,
            &mut pending,
            &mut regexes,
        ) {
            errors.absorb(e);
        }
        if data.unloaded {
            // A script that reads a data set fails to load for the data error listed already.
            errors
                .0
                .retain(|e| !e.to_string().contains(crate::data::NOT_LOADED));
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let ready = scripts.finish()?;
        if let Some(ready) = &ready {
            for (path, p) in pending {
                let Some(info) = table.info(&path) else {
                    continue;
                };
                let handler = ready.handler(&p.found, info);
                table.set_handler(&path, Arc::new(handler), p.around, p.origin);
            }
        }
        let reflection = builtin::reflection(&schema, options.max_message_size)?;
        tracing::debug!("handlers and data loaded at {:?}", started.elapsed());
        Ok(Generation {
            number: self.number,
            schema,
            table,
            reflection,
            runtime: self.runtime.clone(),
            engine: ready.map(|r| r.engine),
            loaded_at: SystemTime::now(),
            load_time: started.elapsed(),
        })
    }
}
