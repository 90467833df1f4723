//! The tower [`Service`] that every HTTP/2 request reaches.
//!
//! It takes the current [`Generation`] once per call, finds the method's [`MethodEntry`] with
//! one map lookup on the path and drives the call through `tonic::server::Grpc` (its streaming
//! entry points, for every shape), with the [`RequestCodec`] for its types. The response body
//! ([`CallBody`]) holds the method's entry (its handler, and through it what the handler reads)
//! until the call ends, so a reload never changes what a call in flight uses; it does not hold
//! the rest of the generation, so a call open on a replaced generation keeps alive only what it
//! answers with (a script call: that generation's Lua states; a declarative one: no states).
//! Paths that are no loaded method fall through to the built-in services (the generation's
//! reflection, then health) by prefix, then to UNIMPLEMENTED.
//!
//! What every request gets whatever it calls (the content-type check, call limits, deadlines,
//! the journal, the clean-up of tonic's statuses) is done by the layers around the router
//! ([`crate::layers`]).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use arc_swap::ArcSwap;
use futures_util::future::BoxFuture;
use futures_util::{stream, StreamExt, TryFutureExt};
use http::{Request, Response};
use tonic::body::Body;
use tonic::codec::CompressionEncoding;
use tonic::metadata::MetadataMap;
use tonic::server::Grpc;
use tonic::{Status, Streaming};
use tower::util::BoxCloneSyncService;
use tower::Service;

use crate::codec::{Incoming, Outgoing, RequestCodec};
use crate::error::{CallError, CHOSEN_STATUS, MISSING_REQUEST};
use crate::generation::Generation;
use crate::handler::{
    add_missing_metadata, Call, HandlerFuture, MethodEntry, Reply, Requests, ResponseStream,
    Responses, Shape,
};
use crate::journal::codec::Journaling;
use crate::journal::layer::CarryTap;
use crate::journal::Tap;
use crate::layers::buffers::Buffers;
use crate::layers::cardinality::OneMessage;
use crate::metadata;

/// A built-in gRPC service (reflection, health), boxed.
pub type BuiltinService = BoxCloneSyncService<Request<Body>, Response<Body>, Infallible>;

/// Limits applied to every call.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_message_size: usize,
}

/// The whole server as one service.
#[derive(Clone)]
pub struct Router {
    /// The generation being served; a reload stores a new one.
    current: Arc<ArcSwap<Generation>>,
    /// Health outlives generations: (path prefix, service).
    health: Arc<(String, BuiltinService)>,
    limits: Limits,
    /// The connection's message buffers, for handlers that queue responses of their own.
    buffers: Option<Buffers>,
    /// The journal record of the call this clone is about to serve (see [`CarryTap`]).
    tap: Option<Tap>,
}

impl CarryTap for Router {
    fn carry_tap(&mut self, tap: Tap) {
        self.tap = Some(tap);
    }

    fn refused_before_routing(&mut self, path: &str) {
        let Some(tap) = self.tap.take() else {
            return;
        };
        let generation = self.current.load();
        if let Some(entry) = generation.table.get(path) {
            tap.attach(&entry.answerer);
        } else if generation
            .reflection
            .iter()
            .map(|(prefix, _)| prefix)
            .chain([&self.health.0])
            .any(|prefix| path.starts_with(prefix.as_str()))
        {
            // Reflection and health calls are never journaled, refused or not.
            tap.discard();
        }
    }
}

impl Router {
    pub fn new(
        current: Arc<ArcSwap<Generation>>,
        health: (String, BuiltinService),
        limits: Limits,
    ) -> Self {
        Self {
            current,
            health: Arc::new(health),
            limits,
            buffers: None,
            tap: None,
        }
    }

    /// `--max-message-size`: the largest request message, compressed or inflated.
    pub fn max_message_size(&self) -> usize {
        self.limits.max_message_size
    }

    /// This router for one connection, whose calls count their queued responses in `buffers`.
    pub fn for_connection(&self, buffers: Buffers) -> Self {
        Self {
            buffers: Some(buffers),
            ..self.clone()
        }
    }
}

impl Service<Request<Body>> for Router {
    type Response = Response<CallBody>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response<CallBody>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let tap = self.tap.take();
        let generation = self.current.load_full();
        let path = req.uri().path();
        // A method of the built-in services that the user's protos declare too (a vendored
        // grpc/health/v1/health.proto) is the built-in's unless a handler says otherwise:
        // without one it was answered "no handler", and every health probe failed.
        let entry = generation.table.get(path).filter(|e| {
            e.handler.is_some()
                || !(path.starts_with(self.health.0.as_str())
                    || generation
                        .reflection
                        .iter()
                        .any(|(prefix, _)| path.starts_with(prefix.as_str())))
        });
        if let Some(entry) = entry {
            let entry = entry.clone();
            let limits = self.limits;
            let buffers = self.buffers.clone();
            return Box::pin(async move { Ok(dispatch(entry, req, limits, buffers, tap).await) });
        }
        // Reflection and health are the server's own business, not the client's calls: they
        // are not journaled.
        for (prefix, svc) in generation.reflection.iter() {
            if path.starts_with(prefix.as_str()) {
                if let Some(tap) = tap {
                    tap.discard();
                }
                return builtin(svc.clone(), req, REFLECTION_METHODS);
            }
        }
        if path.starts_with(self.health.0.as_str()) {
            if let Some(tap) = tap {
                tap.discard();
            }
            return builtin(self.health.1.clone(), req, HEALTH_METHODS);
        }
        // A big tree's table holds only the services handlers name; the other declared methods
        // get the same answer as a method without a handler.
        let status: Status = if generation.schema.files.declares(path) {
            CallError::NoHandler {
                method: Arc::from(path.trim_start_matches('/')),
            }
        } else {
            CallError::UnknownMethod {
                path: path.to_owned(),
                methods: path
                    .strip_prefix('/')
                    .and_then(|p| p.split_once('/'))
                    .and_then(|(service, _)| generation.schema.files.service(service))
                    .map(|s| s.methods.iter().map(|m| m.name.to_string()).collect()),
            }
        }
        .into();
        Box::pin(std::future::ready(Ok(status.into_http())))
    }
}

/// The methods of server reflection (either version): name, and whether it takes exactly one
/// request message.
const REFLECTION_METHODS: &[(&str, bool)] = &[("ServerReflectionInfo", false)];

/// The methods of `grpc.health.v1.Health`, as [`REFLECTION_METHODS`].
const HEALTH_METHODS: &[(&str, bool)] = &[("Check", true), ("Watch", true)];

/// A call to a built-in service of `methods`, whose body holds no generation and no trailers.
/// A method it does not have is answered as an unknown method of a loaded service (tonic's
/// servers say UNIMPLEMENTED with no message), and a method that takes one request message
/// fails on a second (see `layers::cardinality`).
fn builtin(
    mut svc: BuiltinService,
    req: Request<Body>,
    methods: &[(&str, bool)],
) -> BoxFuture<'static, Result<Response<CallBody>, Infallible>> {
    let path = req.uri().path();
    let name = path.rsplit_once('/').map_or("", |(_, m)| m);
    let Some(&(_, one_message)) = methods.iter().find(|(m, _)| *m == name) else {
        let status: Status = CallError::UnknownMethod {
            path: path.to_owned(),
            methods: Some(methods.iter().map(|(m, _)| (*m).to_owned()).collect()),
        }
        .into();
        return Box::pin(std::future::ready(Ok(status.into_http())));
    };
    let req = if one_message {
        let method: Arc<str> = Arc::from(path.trim_start_matches('/'));
        req.map(|body| Body::new(OneMessage::new(body, method)))
    } else {
        req
    };
    Box::pin(svc.call(req).map_ok(|resp| resp.map(CallBody::plain)))
}

async fn dispatch(
    entry: Arc<MethodEntry>,
    req: Request<Body>,
    limits: Limits,
    buffers: Option<Buffers>,
    journal: Option<Tap>,
) -> Response<CallBody> {
    if let Some(tap) = &journal {
        tap.attach(&entry.answerer);
    }
    let one_message = matches!(entry.info.shape, Shape::Unary | Shape::ServerStreaming);
    let mut codec =
        RequestCodec::new(entry.info.input.clone()).message_limit(limits.max_message_size);
    if one_message {
        codec = codec.one_message(entry.info.name.clone());
    }
    let mut grpc = Grpc::new(Journaling::new(codec, journal.clone()))
        .accept_compressed(CompressionEncoding::Gzip)
        .send_compressed(CompressionEncoding::Gzip)
        .max_decoding_message_size(limits.max_message_size)
        .max_encoding_message_size(limits.max_message_size);
    let svc = MethodService(entry.clone(), limits.max_message_size, journal, buffers);
    // Methods that answer one message go through tonic's streaming entry points too (on the
    // wire a response of one message either way): a call that fails after its handler set
    // headers may need them sent before the status (see `first_then_rest`), which tonic's
    // unary ones cannot do.
    let mut resp = if one_message {
        grpc.server_streaming(svc, req).await
    } else {
        grpc.streaming(svc, req).await
    };
    // A method that takes one request message and got none is a request cardinality violation
    // (UNIMPLEMENTED, in gRPC's table of status codes), said with the method's name; tonic's
    // unary entry points answer it INTERNAL. (A second message is refused by the codec.) The
    // header holds tonic's message percent-encoded, where a space is `%20`; a status a handler
    // chose with the same words is marked as chosen, and left.
    if one_message
        && resp
            .headers()
            .get(&crate::metadata::names::GRPC_MESSAGE)
            .is_some_and(|m| m.as_bytes() == MISSING_REQUEST.replace(' ', "%20").as_bytes())
        && !resp.headers().contains_key(CHOSEN_STATUS)
    {
        resp = CallError::RequestCount {
            method: entry.info.name.clone(),
            sent: "none",
        }
        .into_http();
    }
    let slot = resp.extensions_mut().remove::<TrailerSlot>().map(|s| s.0);
    resp.map(|inner| CallBody {
        inner,
        slot,
        _entry: Some(entry),
    })
}

/// Adapts a [`MethodEntry`] to tonic's four service shapes (with the message size limit and
/// the call's journal record).
#[derive(Clone)]
struct MethodService(Arc<MethodEntry>, usize, Option<Tap>, Option<Buffers>);

impl MethodService {
    fn run(&self, metadata: tonic::metadata::MetadataMap, requests: Requests) -> HandlerFuture {
        let call = Call {
            method: self.0.info.clone(),
            metadata,
            started: Instant::now(),
            journal: self.2.clone(),
            buffers: self.3.clone(),
            max_message_size: self.1,
            entry_headers: self.0.around.headers.clone(),
        };
        let fut = match &self.0.handler {
            Some(h) => h.call(call, requests),
            None => {
                return Box::pin(std::future::ready(Err(CallError::NoHandler {
                    method: self.0.info.name.clone(),
                })))
            }
        };
        if self.0.around.is_empty() {
            return fut;
        }
        let entry = self.0.clone();
        let buffers = self.3.clone();
        Box::pin(async move {
            let result = fut.await;
            if let Some(delay) = entry.around.delay {
                let held = crate::handler::hold_while_waiting(buffers.as_ref(), &result)?;
                tokio::time::sleep(delay).await;
                drop(held);
            }
            match result {
                Ok(mut reply) => {
                    add_missing_metadata(&mut reply.headers, &entry.around.headers);
                    Ok(reply)
                }
                Err(e) => {
                    let mut status = Status::from(e);
                    add_missing_metadata(status.metadata_mut(), &entry.around.headers);
                    Err(CallError::Deliberate(status))
                }
            }
        })
    }
}

/// gRPC answers an over-limit outgoing message with RESOURCE_EXHAUSTED (tonic's own check says
/// OUT_OF_RANGE, and only after encoding), so the size is checked before the message leaves.
fn check_size(msg: Outgoing, limit: usize) -> Result<Outgoing, Status> {
    let len = match &msg {
        Outgoing::Encoded(b) => b.len(),
        Outgoing::Message(m) => prost::Message::encoded_len(m),
    };
    if len > limit {
        return Err(CallError::ResponseTooLarge { len, limit }.into());
    }
    Ok(msg)
}

/// The response of a call, once its first message (or its failure) is known.
///
/// Response headers go out with the first message, as grpc-go and grpc-java send them, so a
/// call that fails before its first message ends Trailers-Only (one HEADERS frame carrying
/// `grpc-status`): tonic would otherwise send headers as soon as the handler returns its stream,
/// and tonic clients then see a successful call whose first item is an error.
///
/// Trailers-Only puts the response headers, the trailers and the status in one header block:
/// when the headers and trailers a script set (each within the limit) do not fit one block
/// together, the headers go out first and the status with the trailers after, as for a
/// stream that failed later, rather than a block clients refuse. A call of one message that
/// fails after its handler set headers ([`Responses::Failed`]) is answered the same way.
async fn first_then_rest(reply: Reply, limit: usize) -> Result<tonic::Response<Peeked>, Status> {
    let Reply {
        responses,
        headers,
        trailers,
    } = reply;
    let (first, mut rest): (_, ResponseStream) = match responses {
        Responses::One(o) => (Some(Ok(o)), Box::pin(stream::empty())),
        Responses::Stream(mut s) => (s.next().await, s),
        Responses::Failed(status) => (Some(Err(status)), Box::pin(stream::empty())),
    };
    let first = match first.map(|r| r.and_then(|o| check_size(o, limit))) {
        Some(Ok(o)) => Some(o),
        // A status of tonic's that gRPC specifies differently is rewritten on the way out, as
        // every status is ([`crate::layers::status`]).
        Some(Err(mut status)) => {
            let extra = trailers
                .as_ref()
                .map(|slot| slot.lock().unwrap_or_else(|e| e.into_inner()).clone())
                .unwrap_or_default();
            let together = [&headers, status.metadata(), &extra]
                .iter()
                .fold(0usize, |n, m| n.saturating_add(metadata::map_size(m)));
            if together <= metadata::MAX_SENT_METADATA {
                add_missing_metadata(status.metadata_mut(), &headers);
                add_missing_metadata(status.metadata_mut(), &extra);
                return Err(status);
            }
            rest = Box::pin(stream::once(std::future::ready(Err(status))));
            None
        }
        None => None,
    };
    let mut resp = tonic::Response::new(Peeked { first, rest, limit });
    *resp.metadata_mut() = headers;
    if let Some(slot) = trailers {
        resp.extensions_mut().insert(TrailerSlot(slot));
    }
    Ok(resp)
}

/// A response stream whose first message was taken out to decide how the call answers.
pub struct Peeked {
    first: Option<Outgoing>,
    rest: ResponseStream,
    limit: usize,
}

impl futures_util::Stream for Peeked {
    type Item = Result<Outgoing, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Some(first) = this.first.take() {
            return Poll::Ready(Some(Ok(first)));
        }
        let limit = this.limit;
        this.rest
            .as_mut()
            .poll_next(cx)
            .map(|item| item.map(|r| r.and_then(|o| check_size(o, limit))))
    }
}

/// Trailers a handler fills in during the call; tonic writes only grpc-status and grpc-message,
/// so these are merged into its trailers frame on the way out.
#[derive(Clone)]
struct TrailerSlot(Arc<Mutex<MetadataMap>>);

/// The router's response body: adds the trailers a handler set (if any) to the trailers frame,
/// and keeps the call's method entry alive until the body is done: its handler and what that
/// handler holds, not the generation the call started on (whose other handlers, Lua states and
/// data would otherwise live as long as any of its calls, see [`crate::generation`]). The
/// layers wrap it as it is, so it costs no allocation of its own.
#[derive(Default)]
pub struct CallBody {
    inner: Body,
    slot: Option<Arc<Mutex<MetadataMap>>>,
    _entry: Option<Arc<MethodEntry>>,
}

impl CallBody {
    /// A body of tonic's, with no trailers to add and no handler to keep.
    fn plain(inner: Body) -> Self {
        Self {
            inner,
            slot: None,
            _entry: None,
        }
    }
}

impl http_body::Body for CallBody {
    type Data = bytes::Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, Status>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) if this.slot.is_some() => match frame.into_trailers() {
                Ok(mut trailers) => {
                    let extra = match &this.slot {
                        Some(slot) => slot.lock().unwrap_or_else(|e| e.into_inner()).clone(),
                        None => MetadataMap::new(),
                    };
                    for (k, v) in extra.into_headers() {
                        if let Some(k) = k {
                            if !k.as_str().starts_with("grpc-") {
                                trailers.insert(k, v);
                            }
                        }
                    }
                    Poll::Ready(Some(Ok(http_body::Frame::trailers(trailers))))
                }
                Err(frame) => Poll::Ready(Some(Ok(frame))),
            },
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

type StreamFuture = Pin<Box<dyn Future<Output = Result<tonic::Response<Peeked>, Status>> + Send>>;

impl MethodService {
    /// The call's answer, once its handler has replied: a method that sends one message
    /// (unary and client-streaming) is held to one, and its trailers are final.
    fn answer(&self, fut: HandlerFuture) -> StreamFuture {
        let limit = self.1;
        let what = match self.0.info.shape {
            Shape::Unary => Some("a unary method"),
            Shape::ClientStreaming => Some("a client-streaming method"),
            Shape::ServerStreaming | Shape::Bidi => None,
        };
        let Some(what) = what else {
            return Box::pin(async move { first_then_rest(fut.await?, limit).await });
        };
        let method = self.0.info.name.clone();
        Box::pin(async move {
            let mut reply = fut.await?;
            if let Responses::Stream(_) = reply.responses {
                return Err(CallError::BadResponse {
                    method,
                    message: format!("{what} answers with one message"),
                }
                .into());
            }
            // The handler is done, so its trailers are final: keep the slot only if there are any.
            reply.trailers = reply
                .trailers
                .filter(|t| !t.lock().unwrap_or_else(|e| e.into_inner()).is_empty());
            first_then_rest(reply, limit).await
        })
    }
}

impl tonic::server::ServerStreamingService<Incoming> for MethodService {
    type Response = Outgoing;
    type ResponseStream = Peeked;
    type Future = StreamFuture;

    fn call(&mut self, request: tonic::Request<Incoming>) -> Self::Future {
        let (metadata, _, msg) = request.into_parts();
        let fut = self.run(metadata, Requests::One(msg));
        self.answer(fut)
    }
}

impl tonic::server::StreamingService<Incoming> for MethodService {
    type Response = Outgoing;
    type ResponseStream = Peeked;
    type Future = StreamFuture;

    fn call(&mut self, request: tonic::Request<Streaming<Incoming>>) -> Self::Future {
        let (metadata, _, msgs) = request.into_parts();
        let fut = self.run(metadata, Requests::Stream(msgs));
        self.answer(fut)
    }
}
