//! Cross-cutting behaviour around the router, as tower layers, one connection at a time:
//!
//! ```text
//! hyper → Limited (calls in flight) → Journaled (call journal) → Cutoff (deadline, shutdown
//! deadline) → Router
//! ```
//!
//! Over-limit calls are refused before anything else runs; the journal records the calls that
//! got in with the status the cutoff gave them; the router knows nothing of any of them. Every
//! request body is metered against the connection's [`buffers::Buffers`] on its way in, every
//! response chunk on its way out ([`limit::Permitted`]), and the router hands the same buffers
//! to handlers that queue responses of their own (script outboxes).

pub mod buffers;
pub mod cutoff;
pub mod limit;

use std::convert::Infallible;

use http::{Request, Response};
use hyper::body::Incoming;
use tonic::body::Body;
use tower::Service;

use crate::journal::layer::{JournalBody, JournalFuture, Journaled};
use crate::journal::Journal;
use crate::router::Router;
use buffers::{Buffers, MeteredRequest};
use cutoff::{Cutoff, CutoffBody, CutoffFuture, Stop};
use limit::{Limited, LimitedFuture, Permitted, ServerCalls};

/// The service stack of one connection.
pub type Stack = Limited<Journaled<Cutoff<Router>>>;

/// The body every response has on the wire.
pub type ResponseBody = Permitted<JournalBody<CutoffBody<Body>>>;

/// The connection's peer and the journal its calls go to (none: journal off).
pub struct Recording {
    pub journal: Option<Journal>,
    pub peer: Option<std::net::SocketAddr>,
}

/// Builds the stack for a new connection.
pub fn stack(
    router: &Router,
    per_connection: usize,
    server: ServerCalls,
    stop: Stop,
    recording: Recording,
    buffers: Buffers,
) -> Stack {
    let router = router.for_connection(buffers.clone());
    let journaled = Journaled::new(Cutoff::new(router, stop), recording.journal, recording.peer);
    Limited::new(journaled, per_connection, server, buffers)
}

/// Adapts the tower stack to hyper: hyper's request body, metered, becomes tonic's, and every
/// request gets its own clone of the stack (a few reference counts; every layer is always
/// ready).
#[derive(Clone)]
pub struct Hyper(pub Stack);

impl hyper::service::Service<Request<Incoming>> for Hyper {
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = LimitedFuture<
        JournalFuture<CutoffFuture<<Router as Service<Request<Body>>>::Future>>,
        JournalBody<CutoffBody<Body>>,
    >;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let buffers = self.0.buffers().clone();
        self.0
            .clone()
            .call(req.map(|b| Body::new(MeteredRequest::new(b, buffers))))
    }
}
