//! `grpc.health.v1.Health`, following the health checking protocol to the letter.
//!
//! tonic-health answers `Watch` on an unknown service with NOT_FOUND, but the protocol says the
//! server streams SERVICE_UNKNOWN, keeps the call open and sends the real status once the service
//! is registered. `Check` on an unknown service stays NOT_FOUND. [`HealthReporter`] is the handle
//! that sets statuses: every loaded service is SERVING at startup and NOT_SERVING while the
//! server drains on SIGTERM.
//!
//! Watching an unknown name registers nothing, so clients cannot grow the table: unknown
//! watchers wait on one shared "a service was added" signal and look the name up again.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, RwLock};

use futures_util::{stream, Stream};
use tokio::sync::watch;
use tonic::{Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

/// Sets the status of services; clones share one table.
#[derive(Clone)]
pub struct HealthReporter {
    inner: Arc<Inner>,
}

struct Inner {
    services: RwLock<HashMap<String, watch::Sender<ServingStatus>>>,
    /// Bumped whenever a service is registered, for watchers of unknown names.
    added: watch::Sender<u64>,
}

impl Default for HealthReporter {
    fn default() -> Self {
        Self::new()
    }
}

impl HealthReporter {
    /// A table with only the server as a whole (`""`), SERVING.
    pub fn new() -> Self {
        let reporter = Self {
            inner: Arc::new(Inner {
                services: RwLock::new(HashMap::new()),
                added: watch::channel(0).0,
            }),
        };
        reporter.set("", ServingStatus::Serving);
        reporter
    }

    /// Sets (or registers) the status of `service`, notifying its watchers.
    pub fn set(&self, service: &str, status: ServingStatus) {
        let mut services = self
            .inner
            .services
            .write()
            .unwrap_or_else(|e| e.into_inner());
        match services.get(service) {
            Some(tx) => {
                tx.send_replace(status);
            }
            None => {
                services.insert(service.to_owned(), watch::channel(status).0);
                drop(services);
                self.inner.added.send_modify(|n| *n = n.wrapping_add(1));
            }
        }
    }

    /// Sets every registered service, the server itself included, to `status`.
    pub fn set_all(&self, status: ServingStatus) {
        let services = self
            .inner
            .services
            .read()
            .unwrap_or_else(|e| e.into_inner());
        for tx in services.values() {
            tx.send_replace(status);
        }
    }

    /// The current status of `service`, if registered.
    pub fn status(&self, service: &str) -> Option<ServingStatus> {
        let services = self
            .inner
            .services
            .read()
            .unwrap_or_else(|e| e.into_inner());
        services.get(service).map(|tx| *tx.borrow())
    }

    fn subscribe(&self, service: &str) -> Option<watch::Receiver<ServingStatus>> {
        let services = self
            .inner
            .services
            .read()
            .unwrap_or_else(|e| e.into_inner());
        services.get(service).map(|tx| {
            let mut rx = tx.subscribe();
            rx.mark_changed();
            rx
        })
    }

    /// The gRPC service answering `Check` and `Watch` from this table.
    pub fn service(&self) -> HealthServer<HealthService> {
        HealthServer::new(HealthService(self.clone()))
    }
}

/// The `Health` implementation over a [`HealthReporter`].
pub struct HealthService(HealthReporter);

type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

fn response(status: ServingStatus) -> HealthCheckResponse {
    HealthCheckResponse {
        status: status as i32,
    }
}

#[tonic::async_trait]
impl Health for HealthService {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        let service = &request.get_ref().service;
        match self.0.status(service) {
            Some(status) => Ok(Response::new(response(status))),
            None => Err(Status::not_found(format!(
                "unknown service {service:?}: health knows the services loaded from the protos, and \"\" for the server"
            ))),
        }
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        let service = request.into_inner().service;
        Ok(Response::new(watch_status(self.0.clone(), service)))
    }
}

struct Watching {
    reporter: HealthReporter,
    service: String,
    added: watch::Receiver<u64>,
    current: Option<watch::Receiver<ServingStatus>>,
    last: Option<ServingStatus>,
}

/// The status of `service` now and at every change; SERVICE_UNKNOWN while it is not registered.
fn watch_status(reporter: HealthReporter, service: String) -> WatchStream {
    // Subscribe to additions before the first lookup, so none is missed in between.
    let added = reporter.inner.added.subscribe();
    let state = Watching {
        reporter,
        service,
        added,
        current: None,
        last: None,
    };
    Box::pin(stream::unfold(state, |mut st| async move {
        loop {
            if st.current.is_none() {
                st.current = st.reporter.subscribe(&st.service);
            }
            let status = match &mut st.current {
                Some(rx) => {
                    rx.changed().await.ok()?;
                    *rx.borrow_and_update()
                }
                None if st.last.is_none() => ServingStatus::ServiceUnknown,
                None => {
                    st.added.changed().await.ok()?;
                    continue;
                }
            };
            if st.last == Some(status) {
                continue;
            }
            st.last = Some(status);
            return Some((Ok(response(status)), st));
        }
    }))
}
