//! The services every protoserve serves besides the user's: server reflection (v1 and v1alpha,
//! over exactly the descriptor set that is served) and health (SERVING for every loaded service).
//!
//! Both reflection versions list both reflection services, whichever version a client asks:
//! a client that lists services with v1alpha still learns that v1 is there, and the reverse.

use tonic::server::NamedService;
use tower::util::BoxCloneSyncService;

use crate::error::StartupError;
use crate::health::HealthReporter;
use crate::router::BuiltinService;
use crate::schema::Schema;

/// The built-in services with the path prefix that routes to each, and the health handle.
pub struct Builtins {
    pub services: Vec<(&'static str, BuiltinService)>,
    pub health: HealthReporter,
}

/// Reflection and health.
pub fn services(schema: &Schema) -> Result<Builtins, StartupError> {
    let reflection_error = |e: tonic_reflection::server::Error| StartupError::Proto {
        location: crate::error::Location::file("protos"),
        message: format!("server reflection could not index the descriptors: {e}"),
        detail: None,
    };
    let mut services = reflection(&[&schema.encoded, tonic_health::pb::FILE_DESCRIPTOR_SET])
        .map_err(reflection_error)?;

    let health = HealthReporter::new();
    for service in schema.pool.services() {
        health.set(
            service.full_name(),
            tonic_health::pb::health_check_response::ServingStatus::Serving,
        );
    }
    let health_service = health.service();

    services.push((prefix_of(&health_service), boxed(health_service)));
    Ok(Builtins { services, health })
}

/// Server reflection, v1 and v1alpha, over the encoded descriptor sets `sets`, with the path
/// prefix that routes to each.
pub fn reflection(
    sets: &[&[u8]],
) -> Result<Vec<(&'static str, BuiltinService)>, tonic_reflection::server::Error> {
    // Each builder adds its own version's descriptors; the other version's are added here, so
    // both reflection services are listed and resolvable in either version.
    let configure = || {
        sets.iter().fold(
            tonic_reflection::server::Builder::configure(),
            |builder, set| builder.register_encoded_file_descriptor_set(set),
        )
    };
    let v1 = configure()
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let v1alpha = configure()
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    Ok(vec![
        (prefix_of(&v1), boxed(v1)),
        (prefix_of(&v1alpha), boxed(v1alpha)),
    ])
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
