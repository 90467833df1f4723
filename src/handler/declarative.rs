//! The driver shared by the declarative kinds (`reply`, `error`, `stream`, `echo`, `rules`).
//!
//! Each kind answers one request message with an [`Outcome`]; this module turns that into the
//! method's shape:
//! - unary and server-streaming: the outcome for the one request;
//! - client-streaming: the outcome for the last message of the stream (an empty message if the
//!   client sent none);
//! - bidi: an outcome for every incoming message, sent as it arrives.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{stream, StreamExt};
use prost_reflect::DynamicMessage;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataMap;
use tonic::Status;

use super::error::ErrorAction;
use super::reply::ReplyAction;
use super::rules::{self, Rule};
use super::stream::StreamAction;
use super::{Call, Handler, HandlerFuture, MethodInfo, Reply, Requests, ResponseStream, Responses};
use crate::codec::{Incoming, Outgoing};
use crate::error::{normalize_status, CallError};

/// What to do with one request message.
#[derive(Debug)]
pub enum ActionKind {
    Reply(ReplyAction),
    Error(ErrorAction),
    Stream(StreamAction),
    Echo,
}

/// An action with its options.
#[derive(Debug)]
pub struct Action {
    pub kind: ActionKind,
    /// Waited before each response message.
    pub delay: Option<Duration>,
    /// Response headers (initial metadata).
    pub headers: MetadataMap,
}

impl Action {
    fn name(&self) -> &'static str {
        match self.kind {
            ActionKind::Reply(_) => "reply",
            ActionKind::Error(_) => "error",
            ActionKind::Stream(_) => "stream",
            ActionKind::Echo => "echo",
        }
    }

    /// The responses for a request still in wire form.
    fn respond_incoming(&self, req: Incoming, method: &'static str) -> Result<Outcome, CallError> {
        match &self.kind {
            ActionKind::Echo => {
                req.validate()?;
                Ok(Outcome::One(Outgoing::Encoded(req.bytes().clone())))
            }
            ActionKind::Reply(r) if r.reads_wire() => {
                req.validate()?;
                Ok(Outcome::One(r.respond_wire(req.bytes())))
            }
            _ => self.respond(req.decode()?, method),
        }
    }

    /// The responses for one request.
    fn respond(&self, req: DynamicMessage, method: &'static str) -> Result<Outcome, CallError> {
        match &self.kind {
            ActionKind::Reply(r) => r.respond(&req, method).map(Outcome::One),
            ActionKind::Error(e) => Err(CallError::Deliberate(e.status(&req))),
            ActionKind::Stream(s) => s.respond(&req, method).map(Outcome::Many),
            ActionKind::Echo => Ok(Outcome::One(Outgoing::Message(req))),
        }
    }
}

enum Outcome {
    One(Outgoing),
    Many(Vec<Outgoing>),
}

impl Outcome {
    fn into_vec(self) -> Vec<Outgoing> {
        match self {
            Outcome::One(o) => vec![o],
            Outcome::Many(v) => v,
        }
    }
}

/// A single action, or rules choosing one.
#[derive(Debug)]
pub enum Responder {
    Single(Box<Action>),
    Rules(Vec<Rule>),
}

impl Responder {
    /// The outcome for one request, with the chosen action's delay and headers. A single
    /// `echo` or wire-readable `reply` never builds the request message; rules and the rest do.
    fn answer(
        &self,
        req: Incoming,
        metadata: &MetadataMap,
        method: &'static str,
    ) -> Result<(Outcome, Option<Duration>, &MetadataMap), CallError> {
        match self {
            Responder::Single(a) => Ok((a.respond_incoming(req, method)?, a.delay, &a.headers)),
            Responder::Rules(rules) => {
                let msg = req.decode()?;
                let a = rules::pick(rules, &msg, metadata)
                    .ok_or(CallError::NoRuleMatched { method })?;
                Ok((a.respond(msg, method)?, a.delay, &a.headers))
            }
        }
    }
}

/// A declarative handler for one method.
pub struct Declarative {
    responder: Arc<Responder>,
    kind: &'static str,
}

impl Declarative {
    pub fn new(responder: Responder) -> Self {
        let kind = match &responder {
            Responder::Single(a) => a.name(),
            Responder::Rules(_) => "rules",
        };
        Self {
            responder: Arc::new(responder),
            kind,
        }
    }
}

impl Handler for Declarative {
    fn kind(&self) -> &'static str {
        self.kind
    }

    fn call(&self, call: Call, requests: Requests) -> HandlerFuture {
        let info = call.method.clone();
        match requests {
            Requests::One(req) => {
                let result = self
                    .responder
                    .answer(req, &call.metadata, info.name)
                    .map(|(outcome, delay, headers)| (outcome, delay, headers.clone()));
                let (outcome, delay, headers) = match result {
                    Ok(r) => r,
                    Err(e) => return Box::pin(std::future::ready(Err(e))),
                };
                if info.shape.streams_output() {
                    let reply = Reply {
                        responses: Responses::Stream(paced(outcome.into_vec(), delay)),
                        headers,
                        trailers: None,
                    };
                    return Box::pin(std::future::ready(Ok(reply)));
                }
                let reply = match outcome {
                    Outcome::One(o) => Reply {
                        responses: Responses::One(o),
                        headers,
                        trailers: None,
                    },
                    Outcome::Many(_) => {
                        return Box::pin(std::future::ready(Err(wrong_shape(&info))))
                    }
                };
                match delay {
                    None => Box::pin(std::future::ready(Ok(reply))),
                    Some(d) => Box::pin(async move {
                        tokio::time::sleep(d).await;
                        Ok(reply)
                    }),
                }
            }
            Requests::Stream(mut incoming) if !info.shape.streams_output() => {
                let responder = self.responder.clone();
                Box::pin(async move {
                    let mut last = None;
                    while let Some(msg) = incoming.message().await.map_err(CallError::Transport)? {
                        last = Some(msg);
                    }
                    let req =
                        last.unwrap_or_else(|| Incoming::new(Bytes::new(), info.input.clone()));
                    let (outcome, delay, headers) =
                        responder.answer(req, &call.metadata, info.name)?;
                    let headers = headers.clone();
                    let Outcome::One(o) = outcome else {
                        return Err(wrong_shape(&info));
                    };
                    if let Some(d) = delay {
                        tokio::time::sleep(d).await;
                    }
                    Ok(Reply {
                        responses: Responses::One(o),
                        headers,
                        trailers: None,
                    })
                })
            }
            Requests::Stream(incoming) => {
                let headers = match &*self.responder {
                    Responder::Single(a) => a.headers.clone(),
                    Responder::Rules(_) => MetadataMap::new(),
                };
                let stream = bidi(self.responder.clone(), info, call.metadata, incoming);
                Box::pin(std::future::ready(Ok(Reply {
                    responses: Responses::Stream(stream),
                    headers,
                    trailers: None,
                })))
            }
        }
    }
}

fn wrong_shape(info: &MethodInfo) -> CallError {
    CallError::BadResponse {
        method: info.name,
        message: format!(
            "{} is {} and answers with one message",
            info.name,
            info.shape.name()
        ),
    }
}

/// The messages of one outcome, with `delay` before each.
fn paced(items: Vec<Outgoing>, delay: Option<Duration>) -> ResponseStream {
    match delay {
        None => Box::pin(stream::iter(items.into_iter().map(Ok))),
        Some(d) => Box::pin(stream::iter(items).then(move |item| async move {
            tokio::time::sleep(d).await;
            Ok(item)
        })),
    }
}

/// Answers every incoming message as it arrives; stops at the first error or when the client
/// goes away.
fn bidi(
    responder: Arc<Responder>,
    info: Arc<MethodInfo>,
    metadata: MetadataMap,
    mut incoming: tonic::Streaming<Incoming>,
) -> ResponseStream {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Outgoing, Status>>(16);
    tokio::spawn(async move {
        loop {
            let req = match incoming.message().await {
                Ok(Some(m)) => m,
                Ok(None) => return,
                Err(status) => {
                    let _ = tx.send(Err(normalize_status(status))).await;
                    return;
                }
            };
            let result = responder
                .answer(req, &metadata, info.name)
                .map(|(outcome, delay, _)| (outcome, delay));
            let (outcome, delay) = match result {
                Ok(r) => r,
                Err(e) => {
                    let _ = tx.send(Err(e.into())).await;
                    return;
                }
            };
            for item in outcome.into_vec() {
                if let Some(d) = delay {
                    tokio::time::sleep(d).await;
                }
                if tx.send(Ok(item)).await.is_err() {
                    return;
                }
            }
        }
    });
    Box::pin(ReceiverStream::new(rx))
}
