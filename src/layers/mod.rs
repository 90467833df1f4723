//! Cross-cutting behaviour around the router, as tower layers, one connection at a time:
//!
//! ```text
//! hyper → GrpcOnly (content-type) → Limited (calls in flight) → Journaled (call journal)
//!       → Cutoff (deadline, shutdown deadline) → CleanStatus (tonic's statuses as gRPC's)
//!       → Inflate (gzip requests inflated off the network threads) → Router
//! ```
//!
//! A request that is not gRPC is refused before it counts as a call; over-limit calls are
//! refused before their handler or the journal sees them; the journal records the calls that
//! got in with the status the client got (the cutoff's, or the router's once cleaned up), so
//! every layer between it and the router hands it the call's record
//! ([`CarryTap`](crate::journal::layer::CarryTap)); the router knows nothing of any of them.
//! The layers wrap futures and bodies in place, never boxing them (only a gzip call's request
//! body is boxed once more, in its [`inflate::Inflating`] body), and the router's own body
//! ([`CallBody`]) is what they wrap, unboxed too. Every request body is metered against the
//! connection's [`buffers::Buffers`] on its way in, every response chunk on its way out
//! ([`limit::Permitted`]), and the router hands the same buffers to handlers that queue
//! responses of their own (script outboxes).

pub mod buffers;
pub mod cardinality;
pub mod content_type;
pub mod cutoff;
pub mod inflate;
pub mod limit;
pub mod overdue;
pub mod status;

use std::convert::Infallible;

use http::{Request, Response};
use hyper::body::Incoming;
use tonic::body::Body;
use tower::Service;

use crate::journal::layer::{JournalBody, JournalFuture, Journaled};
use crate::journal::Journal;
use crate::router::{CallBody, Router};
use buffers::{Buffers, MeteredRequest};
use content_type::{GrpcOnly, GrpcOnlyFuture};
use cutoff::{Cutoff, CutoffBody, CutoffFuture, Stop};
use inflate::Inflate;
use limit::{Limited, LimitedFuture, Permitted, ServerCalls};
use status::{CleanStatus, CleanStatusBody, CleanStatusFuture};

/// The service stack of one connection.
pub type Stack = GrpcOnly<Limited<Journaled<Cutoff<CleanStatus<Inflate<Router>>>>>>;

/// The body every response has on the wire.
pub type ResponseBody = Permitted<JournalBody<CutoffBody<CleanStatusBody<CallBody>>>>;

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
    max_header_list_size: usize,
) -> Stack {
    let limit = router.max_message_size();
    let router = Inflate::new(
        router.for_connection(buffers.clone()),
        limit,
        buffers.clone(),
    );
    let journaled = Journaled::new(
        Cutoff::new(CleanStatus::new(router), stop),
        recording.journal,
        recording.peer,
    );
    GrpcOnly::new(
        Limited::new(journaled, per_connection, server, buffers),
        max_header_list_size,
    )
}

type RouterFuture = <Router as Service<Request<Body>>>::Future;

/// Adapts the tower stack to hyper: hyper's request body, metered, becomes tonic's, and every
/// request gets its own clone of the stack (a few reference counts; every layer is always
/// ready).
#[derive(Clone)]
pub struct Hyper(pub Stack);

impl hyper::service::Service<Request<Incoming>> for Hyper {
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = GrpcOnlyFuture<
        LimitedFuture<
            JournalFuture<CutoffFuture<CleanStatusFuture<RouterFuture>>>,
            JournalBody<CutoffBody<CleanStatusBody<CallBody>>>,
        >,
        ResponseBody,
    >;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let buffers = self.0.get_ref().buffers().clone();
        self.0
            .clone()
            .call(req.map(|b| Body::new(MeteredRequest::new(b, buffers))))
    }
}
