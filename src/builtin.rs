//! The services every protoserve serves besides the user's: server reflection (v1 and v1alpha,
//! over exactly the files that were compiled, see [`crate::reflection`], rebuilt with each
//! generation) and health (SERVING for every loaded service, one table for the life of the
//! server).
//!
//! Both reflection versions list both reflection services, whichever version a client asks:
//! a client that lists services with v1alpha still learns that v1 is there, and the reverse.

use std::sync::Arc;

use tonic::codec::CompressionEncoding::Gzip;
use tonic::server::NamedService;
use tower::util::BoxCloneSyncService;

use crate::error::StartupError;
use crate::health::HealthReporter;
use crate::reflection;
use crate::router::BuiltinService;
use crate::schema::{Files, Schema};
use tonic_health::pb::health_check_response::ServingStatus;

/// Server reflection over `schema`'s files and the built-in services' files, both versions, by
/// the path prefix that routes to each. Requests are held to `max_message_size`, as every
/// method's are (`--max-message-size`), and may be gzip-compressed.
pub fn reflection(
    schema: &Schema,
    max_message_size: usize,
) -> Result<Vec<(String, BuiltinService)>, StartupError> {
    let builtin_files = builtin_files().map_err(|e| StartupError::Proto {
        location: crate::error::Location::file("protos"),
        message: format!("the built-in services' descriptors do not decode: {e}"),
        detail: None,
    })?;
    let index = reflection::Index::new(
        schema.files.clone(),
        Arc::new(builtin_files),
        max_message_size,
    );
    let v1 = reflection::v1::ReflectionV1::server(index.clone())
        .max_decoding_message_size(max_message_size)
        .accept_compressed(Gzip)
        .send_compressed(Gzip);
    let v1alpha = reflection::v1alpha::ReflectionV1alpha::server(index)
        .max_decoding_message_size(max_message_size)
        .accept_compressed(Gzip)
        .send_compressed(Gzip);
    Ok(vec![
        (prefix_of(&v1), boxed(v1)),
        (prefix_of(&v1alpha), boxed(v1alpha)),
    ])
}

/// The descriptors of reflection (both versions) and health, for reflection to serve.
fn builtin_files() -> Result<Files, String> {
    let mut set = Vec::new();
    set.extend_from_slice(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET);
    set.extend_from_slice(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET);
    set.extend_from_slice(tonic_health::pb::FILE_DESCRIPTOR_SET);
    Files::from_encoded_set(bytes::Bytes::from(set))
}

/// Server reflection, v1 and v1alpha, over the encoded descriptor sets `sets`, with the path
/// prefix that routes to each (the admin listener serves its own).
pub fn reflection_over(
    sets: &[&[u8]],
) -> Result<Vec<(String, BuiltinService)>, tonic_reflection::server::Error> {
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
        .build_v1()?
        .accept_compressed(Gzip)
        .send_compressed(Gzip);
    let v1alpha = configure()
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?
        .accept_compressed(Gzip)
        .send_compressed(Gzip);
    Ok(vec![
        (prefix_of(&v1), boxed(v1)),
        (prefix_of(&v1alpha), boxed(v1alpha)),
    ])
}

/// Health checking over `health`'s table, with the path prefix that routes to it. It outlives
/// generations: watchers stay connected across reloads and see services come and go. Requests
/// are held to `max_message_size`, and may be gzip-compressed, as every method's (a client
/// that compresses every call, as a channel-wide setting does, must get health answered).
pub fn health(health: &HealthReporter, max_message_size: usize) -> (String, BuiltinService) {
    let service = health
        .service()
        .max_decoding_message_size(max_message_size)
        .accept_compressed(Gzip)
        .send_compressed(Gzip);
    (prefix_of(&service), boxed(service))
}

/// Sets health to match `now` after `before` (if any): new services SERVING, services that
/// are gone removed (their watchers see SERVICE_UNKNOWN).
pub fn update_health(health: &HealthReporter, before: Option<&Schema>, now: &Schema) {
    let names = |s: &Schema| -> std::collections::HashSet<String> {
        s.files
            .services()
            .iter()
            .map(|s| s.name.to_string())
            .collect()
    };
    let current = names(now);
    if let Some(before) = before {
        for gone in names(before).difference(&current) {
            health.remove(gone);
        }
    }
    for name in &current {
        if health.status(name).is_none() {
            health.set(name, ServingStatus::Serving);
        }
    }
}

fn prefix_of<S: NamedService>(_: &S) -> String {
    format!("/{}/", S::NAME)
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
