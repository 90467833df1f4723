//! The services every protoserve serves besides the user's: server reflection (v1 and v1alpha,
//! over exactly the files that were compiled, see [`crate::reflection`]) and health (SERVING for
//! every loaded service).
//!
//! Both reflection versions list both reflection services, whichever version a client asks:
//! a client that lists services with v1alpha still learns that v1 is there, and the reverse.

use std::collections::HashSet;
use std::sync::Arc;

use tonic::server::NamedService;
use tower::util::BoxCloneSyncService;

use crate::error::{CallError, StartupError};
use crate::health::HealthReporter;
use crate::reflection;
use crate::router::BuiltinService;
use crate::schema::{Files, Schema};

/// The built-in services with the path prefix that routes to each, and the health handle.
pub struct Builtins {
    pub services: Vec<(&'static str, BuiltinService)>,
    pub health: HealthReporter,
}

/// Reflection, health, and the answer for methods a big tree declares but no handler names.
pub fn services(schema: &Schema) -> Result<Builtins, StartupError> {
    let builtin_files = builtin_files().map_err(|e| StartupError::Proto {
        location: crate::error::Location::file("protos"),
        message: format!("the built-in services' descriptors do not decode: {e}"),
        detail: None,
    })?;
    let index = reflection::Index::new(schema.files.clone(), Arc::new(builtin_files));
    let v1 = reflection::v1::ReflectionV1::server(index.clone());
    let v1alpha = reflection::v1alpha::ReflectionV1alpha::server(index);

    let health = HealthReporter::new();
    for service in schema.files.services() {
        health.set(
            &service.name,
            tonic_health::pb::health_check_response::ServingStatus::Serving,
        );
    }
    let health_service = health.service();

    let mut services = vec![
        (prefix_of(&v1), boxed(v1)),
        (prefix_of(&v1alpha), boxed(v1alpha)),
        (prefix_of(&health_service), boxed(health_service)),
    ];
    if !schema.whole {
        services.push(("/", declared_only(&schema.files)));
    }
    Ok(Builtins { services, health })
}

/// The descriptors of reflection (both versions) and health, for reflection to serve.
fn builtin_files() -> Result<Files, String> {
    let mut set = Vec::new();
    set.extend_from_slice(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET);
    set.extend_from_slice(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET);
    set.extend_from_slice(tonic_health::pb::FILE_DESCRIPTOR_SET);
    Files::from_encoded_set(bytes::Bytes::from(set))
}

/// In a big tree only the services handlers name are in the handler table; every other
/// declared method still gets the usual UNIMPLEMENTED answer, and anything else "unknown".
fn declared_only(files: &Files) -> BuiltinService {
    let paths: Arc<HashSet<Box<str>>> = Arc::new(
        files
            .services()
            .iter()
            .flat_map(|s| {
                s.methods
                    .iter()
                    .map(move |m| format!("/{}/{}", s.name, m.name).into())
            })
            .collect(),
    );
    BoxCloneSyncService::new(tower::service_fn(
        move |req: http::Request<tonic::body::Body>| {
            let path = req.uri().path();
            let error = if paths.contains(path) {
                CallError::Unhandled {
                    method: path.trim_start_matches('/').to_owned(),
                }
            } else {
                CallError::UnknownMethod {
                    path: path.to_owned(),
                }
            };
            let status: tonic::Status = error.into();
            std::future::ready(Ok::<_, std::convert::Infallible>(status.into_http()))
        },
    ))
}

fn prefix_of<S: NamedService>(_: &S) -> &'static str {
    Box::leak(format!("/{}/", S::NAME).into_boxed_str())
}

fn boxed<S>(svc: S) -> BuiltinService
where
    S: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    BoxCloneSyncService::new(svc)
}
