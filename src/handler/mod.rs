//! Handlers and the table that finds them.
//!
//! Every method of every loaded service gets a [`MethodEntry`], prepared once at startup: its
//! descriptors, its streaming [`Shape`] and its handler (or none). The router finds the entry with
//! one map lookup on the request path; nothing on the call path looks anything up by name.
//!
//! One [`Handler`] trait serves all four shapes: a handler receives either one request or the
//! stream of requests, and answers with one response or a stream of them. Declarative kinds
//! (`reply`, `error`, `rules`, `stream`, `echo`) share one driver in [`declarative`]; scripts
//! have their own in [`script`].

pub mod declarative;
pub mod echo;
pub mod error;
pub mod reply;
pub mod rules;
pub mod stream;

use std::collections::HashMap;
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
}

/// What a call needs to know about its method, prepared at startup.
#[derive(Debug)]
pub struct MethodInfo {
    /// `/package.Service/Method`, the HTTP/2 path.
    pub path: &'static str,
    /// `package.Service/Method`, for messages.
    pub name: &'static str,
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
            path: Box::leak(path.into_boxed_str()),
            name: Box::leak(name.into_boxed_str()),
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
}

impl Call {
    /// When the client's `grpc-timeout` runs out, if it sent one.
    pub fn deadline(&self) -> Option<Instant> {
        let raw = self.metadata.get("grpc-timeout")?.to_str().ok()?;
        parse_grpc_timeout(raw).map(|d| self.started + d)
    }
}

/// `grpc-timeout`: up to 8 digits and a unit (H, M, S, m, u, n).
pub fn parse_grpc_timeout(raw: &str) -> Option<Duration> {
    let (digits, unit) = raw.split_at(raw.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
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
}

/// A method and what answers it.
pub struct MethodEntry {
    pub info: Arc<MethodInfo>,
    pub handler: Option<Arc<dyn Handler>>,
}

/// Every loaded method by HTTP/2 path.
#[derive(Default)]
pub struct HandlerTable {
    entries: HashMap<&'static str, Arc<MethodEntry>>,
    order: Vec<&'static str>,
}

impl HandlerTable {
    /// A table with every method of every service in `pool`, none with a handler yet.
    pub fn from_pool(pool: &DescriptorPool) -> Self {
        let mut table = Self::default();
        for service in pool.services() {
            for method in service.methods() {
                let info = Arc::new(MethodInfo::new(method));
                table.order.push(info.path);
                table.entries.insert(
                    info.path,
                    Arc::new(MethodEntry {
                        info,
                        handler: None,
                    }),
                );
            }
        }
        table
    }

    pub fn info(&self, path: &str) -> Option<Arc<MethodInfo>> {
        self.entries.get(path).map(|e| e.info.clone())
    }

    /// Sets the handler of the method at `path` (which must be in the table).
    pub fn set_handler(&mut self, path: &str, handler: Arc<dyn Handler>) {
        if let Some(entry) = self.entries.get_mut(path) {
            *entry = Arc::new(MethodEntry {
                info: entry.info.clone(),
                handler: Some(handler),
            });
        }
    }

    /// Entries in the order the protos declare them.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<MethodEntry>> {
        self.order.iter().filter_map(|p| self.entries.get(p))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}
