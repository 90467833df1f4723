//! The live server: the generation being served, and every way to replace it.
//!
//! A reload (file change, SIGHUP, admin API) and a runtime-handler change are the same
//! operation: build a new [`Generation`] from the inputs on disk plus the runtime handlers, off
//! the async workers, and swap it in atomically. Calls that started before keep the generation
//! they took (the router hands it to their response body), so no call fails or changes
//! behaviour halfway because of a reload. A build that fails changes nothing: the old
//! generation keeps serving and every problem is logged exactly as `check` prints it, and kept
//! for the admin API's status.
//!
//! Rebuilds are serialized by one lock, so two changes arriving together are applied one after
//! the other, each on top of the last.
//!
//! Lua states are the costly part of a generation (a thread each, with every script and a copy
//! of every data set). A rebuild that changes nothing they are built from keeps them (see
//! [`crate::generation`]), so an open script call then holds nothing the new generation does
//! not. A rebuild that does replace them leaves them running for the script calls still open
//! on them; but a client that keeps a stream open across each of many reloads would keep one
//! set per reload. So at most `--keep-replaced-scripts` replaced sets stay (the newest): each
//! further one closes the oldest, whose calls end at once with UNAVAILABLE, saying to call
//! again, and whose threads exit.

pub mod watch;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Instant, SystemTime};

use arc_swap::ArcSwap;
use futures_util::future::BoxFuture;
use serde_json::{json, Value as Json};

use crate::builtin;
use crate::config::{self, RuntimeHandlers};
use crate::control::{Control, Problem, Refusal};
use crate::error::{StartupError, StartupErrors};
use crate::generation::{Builder, Generation};
use crate::health::HealthReporter;
use crate::script::Engine;
use crate::Options;

/// Replaced generations' Lua states kept for the script calls open on them, by default: a
/// stream opened just before a reload, and one before the reload before, keep running.
pub const KEEP_REPLACED_SCRIPTS: usize = 2;

/// What set off a rebuild, for the log and the status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// A file under the watched folders changed.
    Files { protos: bool },
    /// SIGHUP.
    Signal,
    /// The admin API's reload.
    Admin,
    /// A runtime handler was added, replaced or removed (or all were reset).
    Handlers,
}

impl Trigger {
    fn name(self) -> &'static str {
        match self {
            Trigger::Files { .. } => "files changed",
            Trigger::Signal => "SIGHUP",
            Trigger::Admin => "admin API",
            Trigger::Handlers => "runtime handlers",
        }
    }

    /// Whether the protos must be compiled again (otherwise the current schema is reused).
    /// `unserved` says that the protos changed since the schema being served was compiled: a
    /// reload that compiled them failed (a broken handler next to a good .proto fails it too,
    /// and so does a runtime handler of a method the new protos rename or remove), so a later
    /// edit of only a handler, or a change of the runtime handlers, must compile them again:
    /// every build reads the handler files on disk, and would pair them with the protos of
    /// before.
    fn recompiles(self, unserved: bool) -> bool {
        match self {
            Trigger::Files { protos } => protos || unserved,
            Trigger::Signal | Trigger::Admin => true,
            Trigger::Handlers => unserved,
        }
    }
}

/// How the last reload went, for the admin API's status.
#[derive(Debug, Clone)]
pub struct ReloadReport {
    pub ok: bool,
    pub at: SystemTime,
    pub trigger: Trigger,
    pub millis: u128,
    pub problems: Vec<Problem>,
}

/// The server's current generation and what it is rebuilt from.
pub struct Live {
    current: Arc<ArcSwap<Generation>>,
    options: Options,
    health: HealthReporter,
    /// Held while a generation is built; holds the runtime handlers of the next build.
    building: tokio::sync::Mutex<RuntimeHandlers>,
    last_reload: Mutex<Option<ReloadReport>>,
    /// The protos on disk may differ from the served schema: the last reload that compiled
    /// them failed. Only read and written under `building`.
    protos_unserved: AtomicBool,
    /// Lua states that replaced generations ran, oldest first, with the number of the last
    /// generation that served each: those still alive run calls open on them.
    replaced: Mutex<VecDeque<(u64, Weak<Engine>)>>,
}

impl Live {
    /// Builds the first generation (off the async workers) and registers its services with
    /// health.
    pub async fn start(options: Options) -> Result<Arc<Live>, StartupErrors> {
        let opts = options.clone();
        let first = tokio::task::spawn_blocking(move || {
            Builder {
                options: &opts,
                runtime: &RuntimeHandlers::new(),
                schema: None,
                engine: None,
                number: 1,
            }
            .build()
        })
        .await
        .map_err(|e| StartupError::Usage(format!("loading failed: {e}")))??;
        let health = HealthReporter::new();
        builtin::update_health(&health, None, &first.schema);
        Ok(Arc::new(Live {
            current: Arc::new(ArcSwap::from_pointee(first)),
            options,
            health,
            building: tokio::sync::Mutex::new(RuntimeHandlers::new()),
            last_reload: Mutex::new(None),
            protos_unserved: AtomicBool::new(false),
            replaced: Mutex::new(VecDeque::new()),
        }))
    }

    /// The generation being served.
    pub fn current(&self) -> Arc<Generation> {
        self.current.load_full()
    }

    /// The pointer the router reads each call's generation from.
    pub fn shared(&self) -> Arc<ArcSwap<Generation>> {
        self.current.clone()
    }

    pub fn health(&self) -> &HealthReporter {
        &self.health
    }

    pub fn options(&self) -> &Options {
        &self.options
    }

    /// Rebuilds from the files (and the runtime handlers) and swaps the result in; on failure
    /// the current generation keeps serving.
    pub async fn reload(&self, trigger: Trigger) -> Result<Arc<Generation>, Vec<Problem>> {
        let runtime = self.building.lock().await;
        let result = self.rebuild(&runtime, trigger).await;
        let report = ReloadReport {
            ok: result.is_ok(),
            at: SystemTime::now(),
            trigger,
            millis: 0,
            problems: result.as_ref().err().cloned().unwrap_or_default(),
        };
        *self.last_reload.lock().unwrap_or_else(|e| e.into_inner()) = Some(ReloadReport {
            millis: result.as_ref().map_or(0, |g| g.load_time.as_millis()),
            ..report
        });
        result
    }

    /// Applies `change` to the runtime handlers and rebuilds; the change is kept only if the
    /// new generation builds.
    async fn change_handlers(
        &self,
        change: impl FnOnce(&mut RuntimeHandlers) -> Result<(), Refusal>,
    ) -> Result<Arc<Generation>, Refusal> {
        let mut runtime = self.building.lock().await;
        let mut next = runtime.clone();
        change(&mut next)?;
        let generation = self
            .rebuild(&next, Trigger::Handlers)
            .await
            .map_err(|problems| Refusal::Invalid { problems })?;
        *runtime = next;
        // The files built: problems a reload reported before are gone from what is served.
        // A refused change is answered with its problems and leaves the report alone.
        *self.last_reload.lock().unwrap_or_else(|e| e.into_inner()) = Some(ReloadReport {
            ok: true,
            at: SystemTime::now(),
            trigger: Trigger::Handlers,
            millis: generation.load_time.as_millis(),
            problems: Vec::new(),
        });
        Ok(generation)
    }

    /// Builds a generation with `runtime` and swaps it in. The caller holds the build lock.
    async fn rebuild(
        &self,
        runtime: &RuntimeHandlers,
        trigger: Trigger,
    ) -> Result<Arc<Generation>, Vec<Problem>> {
        let started = Instant::now();
        let before = self.current.load_full();
        let options = self.options.clone();
        let runtime = runtime.clone();
        let recompiles = trigger.recompiles(self.protos_unserved.load(Ordering::Relaxed));
        let schema = (!recompiles).then(|| before.schema.clone());
        let engine = before.engine.clone();
        let number = before.number + 1;
        let built = tokio::task::spawn_blocking(move || {
            Builder {
                options: &options,
                runtime: &runtime,
                schema,
                engine,
                number,
            }
            .build()
        })
        .await;
        let built = match built {
            Ok(r) => r,
            Err(e) => Err(StartupError::Usage(format!("the build stopped: {e}")).into()),
        };
        if recompiles {
            self.protos_unserved
                .store(built.is_err(), Ordering::Relaxed);
        }
        match built {
            Ok(generation) => {
                let generation = Arc::new(generation);
                // Calls see the new services before health reports them, and health stops
                // reporting the old ones only once calls no longer reach them.
                self.current.store(generation.clone());
                builtin::update_health(&self.health, Some(&before.schema), &generation.schema);
                let (replaced, replaced_number) = (before.engine.clone(), before.number);
                // Freed here unless calls still run on its scripts.
                drop(before);
                let states = match (&generation.engine, &replaced) {
                    (Some(new), Some(old)) if Arc::ptr_eq(new, old) => {
                        ", scripts on the same Lua states"
                    }
                    (Some(_), _) => ", scripts on new Lua states",
                    (None, _) => "",
                };
                tracing::info!(
                    "generation {number} serving ({}): {} services, {} of {} methods with handlers{states}, built in {} ms",
                    trigger.name(),
                    generation.service_count(),
                    generation.handled_count(),
                    generation.table.method_count(),
                    started.elapsed().as_millis()
                );
                self.retire(replaced, replaced_number, &generation);
                Ok(generation)
            }
            Err(errors) => {
                for e in &errors.0 {
                    let text = e.to_string();
                    let text = crate::error::log_escaped_keeping_lines(&text);
                    tracing::error!("{}", crate::error::indented(&text));
                }
                tracing::error!(
                    "reload ({}) failed with {} problem(s); still serving generation {}",
                    trigger.name(),
                    errors.0.len(),
                    before.number
                );
                Err(errors.0.iter().map(Problem::from).collect())
            }
        }
    }

    /// Keeps the Lua states `old` (last served by generation `number`) for the calls open on
    /// them if `current` does not run on them, and closes the oldest replaced states past
    /// `--keep-replaced-scripts`. Called under the build lock.
    fn retire(&self, old: Option<Arc<Engine>>, number: u64, current: &Generation) {
        let mut replaced = self.replaced.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = old {
            if !current
                .engine
                .as_ref()
                .is_some_and(|e| Arc::ptr_eq(e, &old))
            {
                replaced.push_back((number, Arc::downgrade(&old)));
            }
        }
        // States no call holds any more have stopped.
        replaced.retain(|(_, e)| e.strong_count() > 0);
        let keep = self.options.keep_replaced_scripts;
        while replaced.len() > keep {
            let Some((n, oldest)) = replaced.pop_front() else {
                break;
            };
            let Some(engine) = oldest.upgrade() else {
                continue;
            };
            let open = engine.open_calls();
            engine.close_replaced();
            tracing::warn!(
                "closed the Lua states of generation {n}: {open} script call(s) still open on them end with UNAVAILABLE (--keep-replaced-scripts {keep}: only the newest {keep} replaced generations' states stay for the calls open on them)"
            );
        }
        let kept = replaced.len();
        if kept > 0 {
            tracing::info!(
                "the Lua states of {kept} replaced generation(s) still run script calls open on them"
            );
        }
    }

    fn status_json(&self) -> Json {
        let generation = self.current.load_full();
        let last = self
            .last_reload
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let paths = |v: &[std::path::PathBuf]| -> Vec<String> {
            v.iter().map(|p| p.display().to_string()).collect()
        };
        json!({
            "generation": generation.number,
            "loaded_at": rfc3339(generation.loaded_at),
            "load_ms": generation.load_time.as_millis() as u64,
            "inputs": {
                "protos": paths(&self.options.protos),
                "import_paths": paths(&self.options.import_paths),
                "handlers": self.options.handlers.display().to_string(),
                "data": self.options.data.display().to_string(),
                "files": generation.schema.pool.files().len(),
            },
            "services": generation.service_count(),
            "methods": generation.table.method_count(),
            "handled_methods": generation.handled_count(),
            "runtime_handlers": generation.runtime.len(),
            "last_reload": last.map(|r| json!({
                "ok": r.ok,
                "at": rfc3339(r.at),
                "trigger": r.trigger.name(),
                "ms": r.millis as u64,
                "problems": r.problems,
            })),
        })
    }
}

/// The services and methods of `generation`, with each method's handler: every declared
/// service, also those of a big tree that no handler names (their methods have none).
pub fn services_json(generation: &Generation) -> Json {
    let services: Vec<Json> = generation
        .schema
        .files
        .services()
        .iter()
        .map(|service| {
            let methods: Vec<Json> = service
                .methods
                .iter()
                .map(|method| {
                    let path = format!("/{}/{}", service.name, method.name);
                    let handler = generation.table.get(&path).and_then(|entry| {
                        let h = entry.handler.as_ref()?;
                        let mut j = json!({ "kind": h.kind() });
                        if let Some(source) = entry.origin.source() {
                            j["source"] = json!(source);
                        }
                        if let Some(file) = entry.origin.file() {
                            j["file"] = json!(file.display().to_string());
                        }
                        Some(j)
                    });
                    json!({
                        "name": &*method.name,
                        "path": path,
                        "shape": method.shape.name(),
                        "input": &*method.input,
                        "output": &*method.output,
                        "handler": handler,
                    })
                })
                .collect();
            json!({ "name": &*service.name, "methods": methods })
        })
        .collect();
    json!({ "services": services })
}

/// `2026-01-02T03:04:05.678Z`, without a date crate: the admin API's only timestamps.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Days since 1970-01-01 → (year, month, day) in the proleptic Gregorian calendar.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Checks that `method` names a method of the current generation (`package.Service/Method`).
fn known_method(generation: &Generation, method: &str) -> Result<(), Refusal> {
    // In a big tree the pool holds only the services handlers name; the next generation
    // decodes the one this method belongs to.
    if generation.schema.files.declares(&format!("/{method}")) {
        return Ok(());
    }
    config::runtime_method(&generation.schema.pool, &generation.table, method)
        .map(|_| ())
        .map_err(|message| Refusal::NotFound { message })
}

/// The admin API's view of the live server.
pub struct LiveControl(pub Arc<Live>);

impl Control for LiveControl {
    fn status(&self) -> Json {
        self.0.status_json()
    }

    fn services(&self) -> Json {
        services_json(&self.0.current())
    }

    fn method(&self, name: &str) -> Option<prost_reflect::MethodDescriptor> {
        let generation = self.0.current();
        let (service, method) = name.rsplit_once('/')?;
        let find = |pool: &prost_reflect::DescriptorPool| {
            pool.get_service_by_name(service)?
                .methods()
                .find(|m| m.name() == method)
        };
        if let Some(found) = find(&generation.schema.pool) {
            return Some(found);
        }
        // A big tree decodes only the services handlers name, but serves (UNIMPLEMENTED) and
        // journals every other one: a verify of such a method decodes its service now.
        let covering =
            crate::schema::Schema::covering(generation.schema.clone(), &[service.to_owned()]);
        find(&covering.ok()?.pool)
    }

    fn reload(&self) -> BoxFuture<'static, Result<Json, Refusal>> {
        let live = self.0.clone();
        Box::pin(async move {
            live.reload(Trigger::Admin)
                .await
                .map_err(|problems| Refusal::Invalid { problems })?;
            Ok(live.status_json())
        })
    }

    fn put_handler(
        &self,
        method: String,
        entry: config::RuntimeEntry,
    ) -> BoxFuture<'static, Result<Json, Refusal>> {
        let live = self.0.clone();
        Box::pin(async move {
            known_method(&live.current.load_full(), &method)?;
            let generation = live
                .change_handlers(|runtime| {
                    runtime.insert(method.clone(), entry);
                    Ok(())
                })
                .await?;
            Ok(json!({ "method": method, "generation": generation.number }))
        })
    }

    fn remove_handler(&self, method: String) -> BoxFuture<'static, Result<Json, Refusal>> {
        let live = self.0.clone();
        Box::pin(async move {
            let generation = live
                .change_handlers(|runtime| match runtime.remove(&method) {
                    Some(_) => Ok(()),
                    None => Err(Refusal::NotFound {
                        message: format!("{method} has no runtime handler"),
                    }),
                })
                .await?;
            Ok(json!({ "method": method, "generation": generation.number }))
        })
    }

    fn reset(&self) -> BoxFuture<'static, Result<Json, Refusal>> {
        let live = self.0.clone();
        Box::pin(async move {
            let removed = live.building.lock().await.len();
            if removed == 0 {
                return Ok(json!({ "removed_handlers": 0, "generation": live.current().number }));
            }
            let generation = live
                .change_handlers(|runtime| {
                    runtime.clear();
                    Ok(())
                })
                .await?;
            Ok(json!({ "removed_handlers": removed, "generation": generation.number }))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::rfc3339;
    use std::time::{Duration, SystemTime};

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(rfc3339(t), "2023-11-14T22:13:20.123Z");
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let leap = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }
}
