//! A stand-in [`Control`] over the one generation loaded at startup, until the server can
//! swap generations: status and the service list are real; reload and runtime handlers answer
//! that they are not available in this build.

use std::time::SystemTime;

use futures_util::future::BoxFuture;
use prost_reflect::{DescriptorPool, MethodDescriptor};
use serde_json::{json, Value as Json};

use crate::control::{Control, Refusal};
use crate::handler::HandlerTable;
use crate::Loaded;

pub struct Placeholder {
    status: Json,
    services: Json,
    pool: DescriptorPool,
}

impl Placeholder {
    pub fn new(loaded: &Loaded) -> Self {
        let o = &loaded.options;
        let paths = |ps: &[std::path::PathBuf]| -> Vec<String> {
            ps.iter().map(|p| p.display().to_string()).collect()
        };
        let status = json!({
            "generation": 1,
            "loaded_at": humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            "load_ms": loaded.load_time.as_millis() as u64,
            "inputs": {
                "protos": paths(&o.protos),
                "import_paths": paths(&o.import_paths),
                "handlers": o.handlers.display().to_string(),
                "data": o.data.display().to_string(),
            },
            "last_reload": null,
            "runtime_handlers": 0,
        });
        Self {
            status,
            services: services_json(&loaded.table),
            pool: loaded.schema.pool.clone(),
        }
    }
}

/// Every service with its methods, shapes and handlers, in the order the protos declare them.
pub fn services_json(table: &HandlerTable) -> Json {
    let mut services: Vec<(String, Vec<Json>)> = Vec::new();
    for entry in table.iter() {
        let service = entry
            .info
            .descriptor
            .parent_service()
            .full_name()
            .to_owned();
        let handler = entry.handler.as_ref().map(|h| {
            let mut handler = json!({"kind": h.kind(), "source": entry.origin.source()});
            if let Some(file) = entry.origin.file() {
                handler["file"] = json!(file.display().to_string());
            }
            handler
        });
        let method = json!({
            "name": entry.info.descriptor.name(),
            "path": entry.info.path,
            "shape": entry.info.shape.name(),
            "input": entry.info.input.full_name(),
            "output": entry.info.output.full_name(),
            "handler": handler,
        });
        match services.last_mut() {
            Some((name, methods)) if *name == service => methods.push(method),
            _ => services.push((service, vec![method])),
        }
    }
    let services: Vec<Json> = services
        .into_iter()
        .map(|(name, methods)| json!({"name": name, "methods": methods}))
        .collect();
    json!({ "services": services })
}

fn unavailable<T: Send + 'static>(what: &str) -> BoxFuture<'static, Result<T, Refusal>> {
    let message = format!("{what} not available in this build");
    Box::pin(async move { Err(Refusal::NotFound { message }) })
}

impl Control for Placeholder {
    fn status(&self) -> Json {
        self.status.clone()
    }

    fn services(&self) -> Json {
        self.services.clone()
    }

    fn reload(&self) -> BoxFuture<'static, Result<Json, Refusal>> {
        unavailable("reload is")
    }

    fn put_handler(&self, _: String, _: Json) -> BoxFuture<'static, Result<Json, Refusal>> {
        unavailable("runtime handlers are")
    }

    fn remove_handler(&self, _: String) -> BoxFuture<'static, Result<Json, Refusal>> {
        unavailable("runtime handlers are")
    }

    /// There are no runtime handlers to remove, so reset has nothing to do here (the admin API
    /// clears the journal itself).
    fn reset(&self) -> BoxFuture<'static, Result<Json, Refusal>> {
        Box::pin(async { Ok(json!({"runtime_handlers_removed": 0})) })
    }

    fn method(&self, name: &str) -> Option<MethodDescriptor> {
        let (service, method) = name.trim_start_matches('/').rsplit_once('/')?;
        self.pool
            .get_service_by_name(service)?
            .methods()
            .find(|m| m.name() == method)
    }
}
