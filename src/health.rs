//! `grpc.health.v1.Health`, following the health checking protocol to the letter.
//!
//! tonic-health answers `Watch` on an unknown service with NOT_FOUND, but the protocol says the
//! server streams SERVICE_UNKNOWN, keeps the call open and sends the real status once the service
//! is registered. `Check` on an unknown service stays NOT_FOUND. [`HealthReporter`] is the handle
//! that sets statuses: every loaded service is SERVING at startup and NOT_SERVING while the
//! server drains on SIGTERM.
//!
//! Watching an unknown name registers nothing, so clients cannot grow the table: unknown
//! watchers wait on one shared "something changed" signal and look the name up again.
//!
//! When the server drains ([`HealthReporter::drain`]) every watcher gets NOT_SERVING (or its
//! last status, for an unknown service) and then its stream ends, so open `Watch` calls do not
//! hold the shutdown until `--shutdown-timeout`.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
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
    /// Bumped whenever a service is registered and when draining starts.
    changed: watch::Sender<u64>,
    draining: AtomicBool,
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
                changed: watch::channel(0).0,
                draining: AtomicBool::new(false),
            }),
        };
        reporter.set("", ServingStatus::Serving);
        reporter
    }

    /// Sets (or registers) the status of `service`, notifying its watchers. While draining, a
    /// service registered late (by a reload) is NOT_SERVING whatever is asked.
    pub fn set(&self, service: &str, status: ServingStatus) {
        let status = if self.draining() {
            ServingStatus::NotServing
        } else {
            status
        };
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
                self.bump();
            }
        }
    }

    /// Forgets `service` (it is no longer served): `Check` answers NOT_FOUND and its watchers
    /// see SERVICE_UNKNOWN, then its status again if it comes back.
    pub fn remove(&self, service: &str) {
        let removed = self
            .inner
            .services
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(service);
        if removed.is_some() {
            self.bump();
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

    /// Draining: every service NOT_SERVING; watchers get that and their streams end.
    pub fn drain(&self) {
        self.set_all(ServingStatus::NotServing);
        self.inner.draining.store(true, Ordering::Release);
        self.bump();
    }

    fn draining(&self) -> bool {
        self.inner.draining.load(Ordering::Acquire)
    }

    fn bump(&self) {
        self.inner.changed.send_modify(|n| *n = n.wrapping_add(1));
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
    changed: watch::Receiver<u64>,
    current: Option<watch::Receiver<ServingStatus>>,
    last: Option<ServingStatus>,
    done: bool,
}

/// The status of `service` now and at every change; SERVICE_UNKNOWN while it is not registered.
/// Ends after the status it has when draining starts.
fn watch_status(reporter: HealthReporter, service: String) -> WatchStream {
    // Subscribe to changes before the first lookup, so none is missed in between.
    let changed = reporter.inner.changed.subscribe();
    let state = Watching {
        reporter,
        service,
        changed,
        current: None,
        last: None,
        done: false,
    };
    Box::pin(stream::unfold(state, |mut st| async move {
        loop {
            if st.done {
                return None;
            }
            if st.current.is_none() {
                st.current = st.reporter.subscribe(&st.service);
            }
            let draining = st.reporter.draining();
            let status = match &mut st.current {
                Some(rx) if draining => *rx.borrow_and_update(),
                Some(rx) => {
                    tokio::select! {
                        r = rx.changed() => match r {
                            Ok(()) => *rx.borrow_and_update(),
                            // Removed by a reload that no longer serves it.
                            Err(_) => {
                                st.current = None;
                                ServingStatus::ServiceUnknown
                            }
                        },
                        r = st.changed.changed() => {
                            r.ok()?;
                            continue;
                        }
                    }
                }
                None if draining || st.last.is_none() => ServingStatus::ServiceUnknown,
                None => {
                    st.changed.changed().await.ok()?;
                    continue;
                }
            };
            st.done = draining;
            if st.last == Some(status) {
                continue;
            }
            st.last = Some(status);
            return Some((Ok(response(status)), st));
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use std::time::Duration;

    async fn next(s: &mut WatchStream) -> Option<i32> {
        tokio::time::timeout(Duration::from_secs(5), s.next())
            .await
            .expect("no update")
            .map(|r| r.unwrap().status)
    }

    #[tokio::test]
    async fn watch_of_an_unknown_service_updates_when_it_appears() {
        let reporter = HealthReporter::new();
        let mut s = watch_status(reporter.clone(), "late.Service".into());
        assert_eq!(
            next(&mut s).await,
            Some(ServingStatus::ServiceUnknown as i32)
        );
        let quiet = tokio::time::timeout(Duration::from_millis(100), s.next()).await;
        assert!(quiet.is_err(), "nothing changes while it stays unknown");
        reporter.set("late.Service", ServingStatus::Serving);
        assert_eq!(next(&mut s).await, Some(ServingStatus::Serving as i32));
        reporter.set("late.Service", ServingStatus::NotServing);
        assert_eq!(next(&mut s).await, Some(ServingStatus::NotServing as i32));
    }

    #[tokio::test]
    async fn draining_sends_not_serving_then_ends_every_watch() {
        let reporter = HealthReporter::new();
        reporter.set("a.A", ServingStatus::Serving);
        let mut known = watch_status(reporter.clone(), "a.A".into());
        let mut unknown = watch_status(reporter.clone(), "b.B".into());
        assert_eq!(next(&mut known).await, Some(ServingStatus::Serving as i32));
        assert_eq!(
            next(&mut unknown).await,
            Some(ServingStatus::ServiceUnknown as i32)
        );
        reporter.drain();
        assert_eq!(
            next(&mut known).await,
            Some(ServingStatus::NotServing as i32)
        );
        assert_eq!(next(&mut known).await, None);
        assert_eq!(next(&mut unknown).await, None);
        assert_eq!(reporter.status(""), Some(ServingStatus::NotServing));
    }
}
