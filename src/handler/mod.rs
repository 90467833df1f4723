//! Handlers and the table that finds them.
//!
//! Every method of every loaded service gets a [`MethodEntry`], prepared once at startup: its
//! descriptors, its streaming [`Shape`] and its handler (or none). The router finds the entry with
//! one map lookup on the request path; nothing on the call path looks anything up by name.
//!
//! One [`Handler`] trait serves all four shapes: a handler receives either one request or the
//! stream of requests, and answers with one response or a stream of them. Declarative kinds
//! (`reply`, `error`, `rules`, `stream`, `echo`) share one driver in [`declarative`]; scripts
//! have their own in [`crate::script`].

pub mod declarative;
pub mod echo;
pub mod error;
pub mod heavy;
pub mod reply;
pub mod rules;
pub mod stream;

use std::collections::HashMap;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use futures_util::Stream;
use prost_reflect::{DescriptorPool, MessageDescriptor, MethodDescriptor};
use tonic::metadata::MetadataMap;
use tonic::{Status, Streaming};

use crate::codec::{Incoming, Outgoing};
use crate::error::CallError;
use crate::journal::Tap;

/// The four gRPC call shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Unary,
    ServerStreaming,
    ClientStreaming,
    Bidi,
}

impl Shape {
    pub fn of(method: &MethodDescriptor) -> Self {
        match (method.is_client_streaming(), method.is_server_streaming()) {
            (false, false) => Shape::Unary,
            (false, true) => Shape::ServerStreaming,
            (true, false) => Shape::ClientStreaming,
            (true, true) => Shape::Bidi,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Shape::Unary => "unary",
            Shape::ServerStreaming => "server-streaming",
            Shape::ClientStreaming => "client-streaming",
            Shape::Bidi => "bidi-streaming",
        }
    }

    pub fn streams_output(self) -> bool {
        matches!(self, Shape::ServerStreaming | Shape::Bidi)
    }

    pub fn streams_input(self) -> bool {
        matches!(self, Shape::ClientStreaming | Shape::Bidi)
    }
}

/// What a call needs to know about its method, prepared at startup.
#[derive(Debug)]
pub struct MethodInfo {
    /// `/package.Service/Method`, the HTTP/2 path.
    pub path: Arc<str>,
    /// `package.Service/Method`, for messages.
    pub name: Arc<str>,
    pub descriptor: MethodDescriptor,
    pub input: MessageDescriptor,
    pub output: MessageDescriptor,
    pub shape: Shape,
}

impl MethodInfo {
    pub fn new(descriptor: MethodDescriptor) -> Self {
        let name = format!(
            "{}/{}",
            descriptor.parent_service().full_name(),
            descriptor.name()
        );
        let path = format!("/{name}");
        Self {
            path: Arc::from(path),
            name: Arc::from(name),
            input: descriptor.input(),
            output: descriptor.output(),
            shape: Shape::of(&descriptor),
            descriptor,
        }
    }
}

/// One call as a handler sees it.
pub struct Call {
    pub method: Arc<MethodInfo>,
    pub metadata: MetadataMap,
    pub started: Instant,
    /// The call's journal record, when the journal is on: handlers note in it what the
    /// journal cannot see from outside (which rule answered).
    pub journal: Option<Tap>,
    /// The connection's message buffers, where responses queued by the handler count.
    pub buffers: Option<crate::layers::buffers::Buffers>,
    /// `--max-message-size`: handlers stop building a response that passes it.
    pub max_message_size: usize,
    /// The entry's own `headers` (see [`Around`]), which the router adds under the handler's:
    /// they go out in the same header block, so a handler that sets metadata per call (a
    /// script) counts them against the same limit.
    pub entry_headers: Arc<MetadataMap>,
}

impl Call {
    /// When the client's `grpc-timeout` runs out, if it sent one that can be represented (a
    /// timeout too far in the future to be an `Instant` means no deadline).
    pub fn deadline(&self) -> Option<Instant> {
        let raw = self
            .metadata
            .as_ref()
            .get(&crate::metadata::names::GRPC_TIMEOUT)?;
        parse_grpc_timeout(raw.as_bytes()).and_then(|d| self.started.checked_add(d))
    }
}

/// `grpc-timeout`: digits and a unit (H, M, S, m, u, n). The spec allows at most 8 digits;
/// longer values are read too and saturate, so no value can overflow. `None`: malformed.
pub fn parse_grpc_timeout(raw: &[u8]) -> Option<Duration> {
    let (&unit, digits) = raw.split_last()?;
    if digits.is_empty() {
        return None;
    }
    let mut n: u64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        n = n.saturating_mul(10).saturating_add(u64::from(d - b'0'));
    }
    Some(match unit {
        b'H' => Duration::from_secs(n.saturating_mul(3600)),
        b'M' => Duration::from_secs(n.saturating_mul(60)),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Room in the connection's buffers for a response that waits (a `delay_ms`) before it goes
/// out: it is held all that time, and many calls waiting at once must not hold more than
/// `--max-buffered` allows. `None` when nothing is counted (no buffers, or a small message, as
/// in [`crate::layers::buffers`]).
pub fn hold_while_waiting(
    buffers: Option<&crate::layers::buffers::Buffers>,
    reply: &Result<Reply, CallError>,
) -> Result<Option<crate::layers::buffers::Held>, CallError> {
    match reply {
        Ok(Reply {
            responses: Responses::One(out),
            ..
        }) => hold_outgoing(buffers, out),
        _ => Ok(None),
    }
}

/// [`hold_while_waiting`] for one message.
pub fn hold_outgoing(
    buffers: Option<&crate::layers::buffers::Buffers>,
    out: &Outgoing,
) -> Result<Option<crate::layers::buffers::Held>, CallError> {
    let Some(buffers) = buffers else {
        return Ok(None);
    };
    let len = match out {
        Outgoing::Encoded(bytes) => bytes.len(),
        Outgoing::Message(m) => prost::Message::encoded_len(m),
    };
    if len < crate::layers::buffers::SMALL {
        return Ok(None);
    }
    buffers.take(len).map(Some)
}

/// Adds the entries of `extra` whose keys `dst` lacks (values already in `dst` win).
pub fn add_missing_metadata(dst: &mut MetadataMap, extra: &MetadataMap) {
    for entry in extra.iter() {
        match entry {
            tonic::metadata::KeyAndValueRef::Ascii(k, v) => {
                if !dst.contains_key(k) {
                    dst.insert(k.clone(), v.clone());
                }
            }
            tonic::metadata::KeyAndValueRef::Binary(k, v) => {
                if !dst.contains_key(k) {
                    dst.insert_bin(k.clone(), v.clone());
                }
            }
        }
    }
}

/// The request side of a call.
pub enum Requests {
    One(Incoming),
    Stream(Streaming<Incoming>),
}

pub type ResponseStream = Pin<Box<dyn Stream<Item = Result<Outgoing, Status>> + Send>>;

/// The response side of a call.
pub enum Responses {
    One(Outgoing),
    Stream(ResponseStream),
    /// The call failed before its first message, after the handler set response headers:
    /// they go out with the status, as grpc-go sends what `SetHeader` set before a handler
    /// returned an error (in one block with the trailers when all fit, see the router).
    Failed(Status),
}

/// A handler's answer: responses plus response headers.
pub struct Reply {
    pub responses: Responses,
    pub headers: MetadataMap,
    /// Trailers filled in while the responses are produced, read when the stream ends.
    pub trailers: Option<Arc<Mutex<MetadataMap>>>,
}

pub type HandlerFuture = BoxFuture<'static, Result<Reply, CallError>>;

/// Answers calls to one method, in whichever shape the method has.
pub trait Handler: Send + Sync + 'static {
    /// The handler kind, as `protoserve list` shows it.
    fn kind(&self) -> &'static str;
    fn call(&self, call: Call, requests: Requests) -> HandlerFuture;
    /// The largest size, in bytes, below which some message the handler may send cannot be
    /// (its constant part, encoded at startup): over `--max-message-size`, every call that
    /// sends it would fail, so loading refuses it instead.
    fn least_message_size(&self) -> usize {
        0
    }
}

/// A method and what answers it.
pub struct MethodEntry {
    pub info: Arc<MethodInfo>,
    pub handler: Option<Arc<dyn Handler>>,
    /// Applied by the router around whatever the handler does.
    pub around: Around,
    /// Where the handler was declared, for the admin API and the journal.
    pub origin: Origin,
    /// The method and handler as the journal notes them for each call.
    pub answerer: Arc<crate::journal::Answerer>,
}

/// Where a method's handler comes from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Origin {
    /// No handler.
    #[default]
    None,
    /// A handler file, as the user named it (under `--handlers`).
    File(Arc<Path>),
    /// Installed at run time through the admin API.
    Runtime,
}

impl Origin {
    /// `"file"`, `"runtime"` or `None`, as the admin API and the journal say it.
    pub fn source(&self) -> Option<&'static str> {
        match self {
            Origin::None => None,
            Origin::File(_) => Some("file"),
            Origin::Runtime => Some("runtime"),
        }
    }

    pub fn file(&self) -> Option<&Path> {
        match self {
            Origin::File(p) => Some(p),
            _ => None,
        }
    }
}

/// Entry options the router applies around any handler kind (`script`, `rules`), so what
/// `check` accepts, `serve` honours: a delay before the first response (or the error) and
/// response headers merged under the handler's own.
#[derive(Debug, Default)]
pub struct Around {
    pub delay: Option<Duration>,
    /// Shared with each call (see [`Call::entry_headers`]).
    pub headers: Arc<MetadataMap>,
}

impl Around {
    pub fn is_empty(&self) -> bool {
        self.delay.is_none() && self.headers.is_empty()
    }
}

/// Every loaded method by HTTP/2 path.
#[derive(Default)]
pub struct HandlerTable {
    entries: HashMap<Arc<str>, Arc<MethodEntry>>,
    order: Vec<Arc<str>>,
}

impl HandlerTable {
    /// A table with every method of every service in `pool`, none with a handler yet.
    pub fn from_pool(pool: &DescriptorPool) -> Self {
        let mut table = Self::default();
        for service in pool.services() {
            for method in service.methods() {
                let info = Arc::new(MethodInfo::new(method));
                table.order.push(info.path.clone());
                let answerer = Arc::new(crate::journal::Answerer {
                    method: info.clone(),
                    handler: None,
                });
                table.entries.insert(
                    info.path.clone(),
                    Arc::new(MethodEntry {
                        info,
                        handler: None,
                        around: Around::default(),
                        origin: Origin::None,
                        answerer,
                    }),
                );
            }
        }
        table
    }

    pub fn info(&self, path: &str) -> Option<Arc<MethodInfo>> {
        self.entries.get(path).map(|e| e.info.clone())
    }

    /// Sets the handler of the method at `path` (which must be in the table), with the
    /// options the router applies around it and where it was declared.
    pub fn set_handler(
        &mut self,
        path: &str,
        handler: Arc<dyn Handler>,
        around: Around,
        origin: Origin,
    ) {
        if let Some(entry) = self.entries.get_mut(path) {
            let answerer = Arc::new(crate::journal::Answerer {
                method: entry.info.clone(),
                handler: Some(crate::journal::HandlerNote {
                    kind: handler.kind(),
                    origin: origin.clone(),
                }),
            });
            *entry = Arc::new(MethodEntry {
                info: entry.info.clone(),
                handler: Some(handler),
                around,
                origin,
                answerer,
            });
        }
    }

    /// The entry of the method at `path`.
    pub fn get(&self, path: &str) -> Option<&Arc<MethodEntry>> {
        self.entries.get(path)
    }

    /// Entries in the order the protos declare them.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<MethodEntry>> {
        self.order.iter().filter_map(|p| self.entries.get(p))
    }

    /// How many methods the protos declare.
    pub fn method_count(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::parse_grpc_timeout;
    use std::time::Duration;

    #[test]
    fn grpc_timeout_parses_saturates_and_refuses_garbage() {
        assert_eq!(
            parse_grpc_timeout(b"250m"),
            Some(Duration::from_millis(250))
        );
        assert_eq!(parse_grpc_timeout(b"2H"), Some(Duration::from_secs(7200)));
        assert_eq!(
            parse_grpc_timeout(b"9223372036854775807S"),
            Some(Duration::from_secs(i64::MAX as u64))
        );
        assert_eq!(
            parse_grpc_timeout(b"99999999999999999999999H"),
            Some(Duration::from_secs(u64::MAX))
        );
        for bad in [
            &b""[..],
            b"S",
            b"12",
            b"1x",
            b"-1S",
            b"1.5S",
            b" 1S",
            "1\u{e9}S".as_bytes(),
        ] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
    }
}
