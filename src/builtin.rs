//! The services every protoserve serves besides the user's: server reflection (v1 and v1alpha,
//! over exactly the descriptor set that is served) and health (SERVING for every loaded service).

use tonic::server::NamedService;
use tower::util::BoxCloneSyncService;

use crate::error::StartupError;
use crate::router::BuiltinService;
use crate::schema::Schema;

/// Reflection and health, each with the path prefix that routes to it.
pub async fn services(
    schema: &Schema,
) -> Result<Vec<(&'static str, BuiltinService)>, StartupError> {
    let reflection_error = |e: tonic_reflection::server::Error| StartupError::Proto {
        location: crate::error::Location::file("protos"),
        message: format!("server reflection could not index the descriptors: {e}"),
        detail: None,
    };
    let v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(&schema.encoded)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(reflection_error)?;
    let v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(&schema.encoded)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(reflection_error)?;

    let (reporter, health) = tonic_health::server::health_reporter();
    for service in schema.pool.services() {
        reporter
            .set_service_status(service.full_name(), tonic_health::ServingStatus::Serving)
            .await;
    }

    Ok(vec![
        (prefix_of(&v1), boxed(v1)),
        (prefix_of(&v1alpha), boxed(v1alpha)),
        (prefix_of(&health), boxed(health)),
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
