//! The admin listener: one port, HTTP/1.1 and HTTP/2 (hyper-util's automatic connection
//! builder), gRPC told from JSON by the content-type.
//!
//! It is as guarded as the public port: a bounded number of connections, a client must start
//! its request within a few seconds, request heads and bodies are bounded
//! ([`MAX_BODY`](super::http::MAX_BODY)), every request has an overall time limit, and the
//! token (when the server has one) is checked before anything else runs, for both front ends.
//! Answers not yet taken by their clients are bounded in bytes and in time ([`transit`]).
//!
//! A connection with no request in flight for [`IDLE_LIMIT`] is closed, HTTP/2 included (with
//! GOAWAY): HTTP/1.1's head timeout already closes an idle keep-alive connection, but an HTTP/2
//! connection that answers pings and asks nothing would otherwise hold one of the
//! [`MAX_CONNECTIONS`] slots for as long as it likes, and that many lock everyone out, token or
//! not (see [`crate::idle`]). A client that reopens them as soon as they are closed would still
//! hold every slot, so a connection accepted while all are taken is served, and the one idle
//! the longest is closed instead ([`crate::evict`]).

use std::convert::Infallible;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use http::{header, Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::grpc::GrpcFront;
use super::http::{error_response, router};
use super::transit::{self, Pending, Transit};
use super::Admin;
use crate::error::AdminError;
use crate::evict::Roster;
use crate::idle::{Tracked, CLOSE_GRACE, IDLE_LIMIT};
use crate::refusal::Refusals;
use crate::server::{once_a_second, HandshakeGuard};

/// Connections served at once; one more accepted closes the one idle the longest, or is
/// refused when every one has a request in flight.
const MAX_CONNECTIONS: usize = 64;
/// Time a connection has to send its first bytes, and a request its head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest a request may take, body and work included (a reload of a large project fits).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// Bytes of request head (HTTP/1) or header list (HTTP/2).
const MAX_HEAD: usize = 64 * 1024;
/// Bytes a client must send before [`HEAD_TIMEOUT`]: the start of a request line, or the HTTP/2
/// preface.
const FIRST_BYTES: usize = 16;

/// The running admin listener; [`AdminHandle::stop`] ends it.
pub struct AdminHandle {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl AdminHandle {
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// Starts serving the admin API on `listener`. Its setup (compiling the admin `.proto`) runs
/// in the admin's own task, so the public listener starts serving at once; admin connections
/// made meanwhile wait in the listener's backlog.
pub fn start(listener: TcpListener, admin: Arc<Admin>) -> AdminHandle {
    let stop = CancellationToken::new();
    let until = stop.clone();
    let task = tokio::spawn(async move {
        let front = match Front::new(admin) {
            Ok(f) => f,
            Err(e) => {
                tracing::error!("admin API not started: {e}");
                return;
            }
        };
        accept(listener, front, until).await;
    });
    AdminHandle { stop, task }
}

async fn accept(listener: TcpListener, front: Front, stop: CancellationToken) {
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .max_buf_size(MAX_HEAD);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(32)
        .max_header_list_size(MAX_HEAD as u32)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    let builder = Arc::new(builder);
    let refusals = Refusals::new(true);
    let roster = Roster::new(
        MAX_CONNECTIONS,
        format!("admin API: {MAX_CONNECTIONS} connections"),
    );
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!("admin API: accepting a connection failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let Ok(seat) = roster.admit() else {
                    // Every connection has a request in flight.
                    static REFUSED: AtomicU64 = AtomicU64::new(0);
                    let crowded = AdminError::Crowded { connections: MAX_CONNECTIONS };
                    let why = crowded.message();
                    if once_a_second(&REFUSED) {
                        tracing::warn!("admin API: refusing connections: {why}");
                    } else {
                        tracing::debug!("admin API: refusing a connection: {why}");
                    }
                    refusals.refuse(stream, why, crowded.json());
                    continue;
                };
                let io = TokioIo::new(HandshakeGuard::new(stream, HEAD_TIMEOUT).first_bytes(FIRST_BYTES));
                let front = front.clone();
                let builder = builder.clone();
                connections.spawn(async move {
                    let activity = seat.activity.clone();
                    let _seat = seat;
                    let pending = Pending::default();
                    let answers = pending.clone();
                    let service = hyper::service::service_fn(move |req| {
                        let front = front.clone();
                        let pending = pending.clone();
                        async move { Ok::<_, Infallible>(front.handle(req, &pending).await) }
                    });
                    let conn = builder.serve_connection(io, Tracked::new(service, activity.clone()));
                    tokio::pin!(conn);
                    let close = tokio::select! {
                        result = conn.as_mut() => Err(result),
                        () = activity.idle(IDLE_LIMIT, || true) => Ok(()),
                        () = activity.evicted() => match activity.hurried() {
                            true => return,
                            false => Ok(()),
                        },
                        () = answers.overdue() => {
                            tracing::debug!(
                                "admin API: closing a connection whose client did not take an answer within {:?}",
                                transit::SEND_TIMEOUT
                            );
                            return;
                        }
                    };
                    let result = match close {
                        Err(result) => result,
                        Ok(()) => {
                            // GOAWAY, then a few seconds for the client to close its side;
                            // requests begun after the GOAWAY are cut then.
                            activity.goaway_sent();
                            conn.as_mut().graceful_shutdown();
                            let quiet = activity.quiet_past(tokio::time::Instant::now() + CLOSE_GRACE);
                            tokio::select! {
                                result = conn.as_mut() => result,
                                () = quiet => return,
                                () = answers.overdue() => return,
                            }
                        }
                    };
                    if let Err(e) = result {
                        tracing::debug!("admin API connection closed: {e}");
                    }
                });
                // The new connection reads what its client has sent (a request makes it busy)
                // before the next one is accepted, which may close the one idle the longest.
                tokio::task::yield_now().await;
            }
        }
    }
    connections.shutdown().await;
}

/// Both front ends and what they share.
#[derive(Clone)]
struct Front {
    admin: Arc<Admin>,
    grpc: GrpcFront,
    http: axum::Router,
    transit: Transit,
    /// Journal answers being made: one at a time (see [`Front::handle`]).
    answering: Arc<tokio::sync::Semaphore>,
}

impl Front {
    fn new(admin: Arc<Admin>) -> Result<Self, String> {
        let schema = super::schema::compile()?;
        Ok(Front {
            grpc: GrpcFront::new(admin.clone(), &schema)?,
            http: router(admin.clone()),
            admin,
            transit: Transit::default(),
            answering: Arc::new(tokio::sync::Semaphore::new(1)),
        })
    }

    async fn handle(
        &self,
        req: Request<Incoming>,
        pending: &Pending,
    ) -> Response<axum::body::Body> {
        let grpc = is_grpc(&req);
        // Reflection streams its answers as the client asks: they are small, and there is no
        // whole body to take in.
        let streams = grpc && req.uri().path().starts_with("/grpc.reflection.");
        let big = reads_journal(&req);
        if !authorized(self.admin.token(), &req) {
            return refuse(grpc, AdminError::Unauthenticated);
        }
        let turn = self.answering.clone();
        let work = async {
            // Held until the answer is counted (below): a journal answer is built, written out
            // and counted one at a time, so the answers being made add at most one to those
            // counted.
            let turn = match big {
                true => Some(turn.acquire_owned().await),
                false => None,
            };
            let resp = if grpc {
                self.grpc
                    .call(req.map(tonic::body::Body::new))
                    .await
                    .map(axum::body::Body::new)
            } else {
                let resp: Result<_, Infallible> =
                    tower::ServiceExt::oneshot(self.http.clone(), req).await;
                match resp {
                    Ok(resp) => resp,
                    Err(never) => match never {},
                }
            };
            (resp, turn)
        };
        let (resp, _turn) = match tokio::time::timeout(REQUEST_TIMEOUT, work).await {
            Ok(answered) => answered,
            Err(_) => (refuse(grpc, AdminError::Timeout(REQUEST_TIMEOUT)), None),
        };
        if streams {
            return resp;
        }
        self.counted(grpc, resp, pending).await
    }

    /// `resp` with its body counted until the client takes it, or a refusal when the answers
    /// not yet taken hold too much (see [`transit`]). The body is in memory already (both
    /// front ends build answers whole), so taking it in costs no waiting.
    async fn counted(
        &self,
        grpc: bool,
        resp: Response<axum::body::Body>,
        pending: &Pending,
    ) -> Response<axum::body::Body> {
        let (parts, body) = resp.into_parts();
        let collected = match http_body_util::BodyExt::collect(body).await {
            Ok(c) => c,
            Err(e) => {
                return refuse(
                    grpc,
                    AdminError::Internal(format!("building the answer failed: {e}")),
                )
            }
        };
        let trailers = collected.trailers().cloned();
        let bytes = collected.to_bytes();
        if bytes.is_empty() && trailers.is_none() {
            // Nothing to count, and a body known to be empty from the start: a gRPC error is
            // then sent as gRPC's Trailers-Only answer, one HEADERS frame that ends the
            // stream. A body that turns out empty only once read made HEADERS and then an empty
            // DATA frame ending the stream, which grpc-core clients (grpcio, grpc-node's C
            // core) refuse: they reported UNKNOWN "Stream removed" instead of the status.
            return Response::from_parts(parts, axum::body::Body::empty());
        }
        match self.transit.admit(bytes, trailers, pending) {
            Ok(held) => Response::from_parts(parts, axum::body::Body::new(held)),
            Err(e) => {
                tracing::debug!("admin API: {}", e.message());
                refuse(grpc, e)
            }
        }
    }
}

/// Whether `req` reads the journal (a page, a call, a verify), whose answer may be tens of MB.
fn reads_journal<B>(req: &Request<B>) -> bool {
    let path = req.uri().path();
    path.starts_with("/v1/journal")
        || path == "/v1/verify"
        || [
            "/protoserve.admin.v1.Admin/ListCalls",
            "/protoserve.admin.v1.Admin/GetCall",
            "/protoserve.admin.v1.Admin/Verify",
        ]
        .contains(&path)
}

fn is_grpc<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|ct| ct.as_bytes().starts_with(b"application/grpc"))
}

fn refuse(grpc: bool, e: AdminError) -> Response<axum::body::Body> {
    if grpc {
        tonic::Status::from(e)
            .into_http::<tonic::body::Body>()
            .map(axum::body::Body::new)
    } else {
        error_response(&e)
    }
}

/// True when the server has no token, or the request carries it as `Bearer TOKEN`.
fn authorized<B>(token: Option<&str>, req: &Request<B>) -> bool {
    let Some(token) = token else { return true };
    let Some(given) = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes())
    else {
        return false;
    };
    let Some(given) = given
        .get(..7)
        .filter(|scheme| scheme.eq_ignore_ascii_case(b"bearer "))
        .map(|_| &given[7..])
    else {
        return false;
    };
    constant_time_eq(given, token.as_bytes())
}

/// Compares without stopping at the first difference, so timing says nothing about the token.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_must_match_exactly_as_a_bearer() {
        let req = |value: Option<&str>| {
            let mut b = Request::builder();
            if let Some(v) = value {
                b = b.header("authorization", v);
            }
            b.body(()).unwrap()
        };
        assert!(authorized(None, &req(None)));
        assert!(authorized(Some("s3cret"), &req(Some("Bearer s3cret"))));
        assert!(authorized(Some("s3cret"), &req(Some("bearer s3cret"))));
        assert!(!authorized(Some("s3cret"), &req(None)));
        assert!(!authorized(Some("s3cret"), &req(Some("Bearer s3cre"))));
        assert!(!authorized(Some("s3cret"), &req(Some("Bearer s3cretX"))));
        assert!(!authorized(Some("s3cret"), &req(Some("Basic s3cret"))));
        assert!(!authorized(Some("s3cret"), &req(Some("s3cret"))));
    }
}
