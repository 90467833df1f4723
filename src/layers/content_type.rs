//! Refuses a request that is not gRPC: a `content-type` other than `application/grpc`,
//! `application/grpc+proto` or `application/grpc;…` gets HTTP 415 with INVALID_ARGUMENT
//! naming what was sent (`application/grpc+json` too: protoserve speaks protobuf only). The
//! type is compared without regard to case, as MIME types are (RFC 2045): `APPLICATION/GRPC`
//! is gRPC.
//!
//! A gRPC request whose HTTP method is not POST (a `GET` with `content-type: application/grpc`)
//! gets HTTP 405 with INTERNAL naming the method, and its handler never runs: grpc-go answers
//! it so, and the gRPC over HTTP/2 protocol has every call be a POST. Nothing else on this port
//! takes other methods (the admin API has its own listener, and gRPC-Web, whose CORS preflight
//! is an OPTIONS, is not spoken: such a request is refused for its content-type first).
//!
//! It also refuses a request whose headers (metadata) are over `--max-header-list-size`, with
//! RESOURCE_EXHAUSTED naming the flag. HTTP/2 lets the server refuse them itself, but only
//! with HTTP 431 and no gRPC status, which clients report as UNKNOWN without saying which limit
//! to raise; so the HTTP/2 limit is set a few times higher (see `server.rs`) and the real one
//! is checked here, counted as HTTP/2 counts it (each field's name and value plus 32 bytes,
//! pseudo-headers included).
//!
//! It is the outermost layer, before the call limits and the journal: such a request is not
//! a call of the server's, so it takes no call slot (a flood of them cannot crowd out real
//! calls, and it gets the same answer however loaded the server is), the journal records
//! nothing of it, and the router never sees it. The checks are one header lookup and one
//! walk over the headers, and cost nothing else: the refusal is built only for a refused
//! request, and the layer wraps no body.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{HeaderMap, Request, Response};
use pin_project_lite::pin_project;
use tower::Service;

use crate::error::CallError;

/// The layer's service: see the module docs.
#[derive(Clone)]
pub struct GrpcOnly<S> {
    inner: S,
    max_header_list_size: usize,
}

impl<S> GrpcOnly<S> {
    /// `max_header_list_size`: `--max-header-list-size`, the request headers a call may have.
    pub fn new(inner: S, max_header_list_size: usize) -> Self {
        Self {
            inner,
            max_header_list_size,
        }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

/// Why a request with these headers is not gRPC, if it is not.
fn not_grpc(headers: &HeaderMap) -> Option<CallError> {
    let ct = headers
        .get(http::header::CONTENT_TYPE)
        .map(|v| v.as_bytes());
    let ok = ct.is_some_and(|ct| {
        starts_with_ignoring_case(ct, b"application/grpc")
            && matches!(ct.get(16), None | Some(b'+') | Some(b';'))
            && !starts_with_ignoring_case(ct, b"application/grpc+json")
    });
    if ok {
        return None;
    }
    let content_type = ct.map_or_else(|| "none".into(), shown);
    Some(CallError::NotGrpc { content_type })
}

/// Why a gRPC request with this HTTP method is refused, if it is.
fn not_post(method: &http::Method) -> Option<CallError> {
    (method != http::Method::POST).then(|| CallError::NotPost {
        method: method.as_str().to_owned(),
    })
}

/// Whether `bytes` starts with `prefix` (lowercase ASCII), in any case.
fn starts_with_ignoring_case(bytes: &[u8], prefix: &[u8]) -> bool {
    bytes
        .get(..prefix.len())
        .is_some_and(|start| start.eq_ignore_ascii_case(prefix))
}

/// The size of `req`'s header list as HTTP/2 counts it against SETTINGS_MAX_HEADER_LIST_SIZE:
/// each field's name and value plus 32 bytes, the pseudo-headers included.
fn header_list_size<B>(req: &Request<B>) -> usize {
    const ENTRY: usize = 32;
    let uri = req.uri();
    let pseudo = (":method".len() + req.method().as_str().len())
        + uri
            .scheme_str()
            .map_or(0, |s| ":scheme".len() + s.len() + ENTRY)
        + uri
            .authority()
            .map_or(0, |a| ":authority".len() + a.as_str().len() + ENTRY)
        + uri
            .path_and_query()
            .map_or(0, |p| ":path".len() + p.as_str().len() + ENTRY)
        + ENTRY;
    req.headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + ENTRY)
        .sum::<usize>()
        + pseudo
}

/// The most of a refused content-type the answer names (bytes): the request may carry one of
/// nearly the whole header list, and echoed whole it would make response headers larger than
/// clients accept (16 KiB for hyper's), so the client would see a broken stream, not the 415.
const SHOWN_CONTENT_TYPE: usize = 128;

/// A refused content-type as the answer names it: its start, marked when cut.
fn shown(ct: &[u8]) -> String {
    let mut shown = String::from_utf8_lossy(&ct[..ct.len().min(SHOWN_CONTENT_TYPE)]).into_owned();
    if ct.len() > SHOWN_CONTENT_TYPE {
        shown.push('…');
    }
    shown
}

impl<S, ReqBody, B> Service<Request<ReqBody>> for GrpcOnly<S>
where
    S: Service<Request<ReqBody>, Response = Response<B>>,
    B: Default,
{
    type Response = Response<B>;
    type Error = S::Error;
    type Future = GrpcOnlyFuture<S::Future, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let refusal = not_grpc(req.headers())
            .or_else(|| not_post(req.method()))
            .or_else(|| {
                let size = header_list_size(&req);
                (size > self.max_header_list_size).then_some(CallError::HeadersTooLarge {
                    size,
                    limit: self.max_header_list_size,
                })
            });
        match refusal {
            Some(error) => GrpcOnlyFuture::Refused {
                response: Some(error.into_http()),
            },
            None => GrpcOnlyFuture::Passed {
                fut: self.inner.call(req),
            },
        }
    }
}

pin_project! {
    /// The inner call's future, or the refusal.
    #[project = GrpcOnlyProj]
    pub enum GrpcOnlyFuture<F, B> {
        Passed { #[pin] fut: F },
        Refused { response: Option<Response<B>> },
    }
}

impl<F, B, E> Future for GrpcOnlyFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Default,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            GrpcOnlyProj::Passed { fut } => fut.poll(cx),
            GrpcOnlyProj::Refused { response } => {
                Poll::Ready(Ok(response.take().unwrap_or_default()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(ct: Option<&'static str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(ct) = ct {
            h.insert(http::header::CONTENT_TYPE, ct.parse().unwrap());
        }
        h
    }

    #[test]
    fn grpc_content_types_pass_and_others_are_named() {
        for ok in [
            "application/grpc",
            "application/grpc+proto",
            "application/grpc;charset=utf-8",
            "APPLICATION/GRPC",
            "Application/gRPC+Proto",
        ] {
            assert!(not_grpc(&with(Some(ok))).is_none(), "{ok}");
        }
        for bad in [
            "application/grpc+json",
            "APPLICATION/GRPC+JSON",
            "application/grpcx",
            "application/json",
        ] {
            assert!(
                matches!(not_grpc(&with(Some(bad))), Some(CallError::NotGrpc { content_type }) if content_type == bad),
                "{bad}"
            );
        }
        assert!(matches!(
            not_grpc(&with(None)),
            Some(CallError::NotGrpc { content_type }) if content_type == "none"
        ));
    }
}
