//! The driver shared by the declarative kinds (`reply`, `error`, `stream`, `echo`, `rules`).
//!
//! Each kind answers one request message with an `Outcome`; this module turns that into the
//! method's shape:
//! - unary and server-streaming: the outcome for the one request;
//! - client-streaming: the outcome for the last message of the stream (an empty message if the
//!   client sent none);
//! - bidi: an outcome for every incoming message, sent as it arrives.
//!
//! Streams are pulled, never pushed: a `stream` item is rendered when the client is ready for it
//! and a bidi request is read only once the previous answer went out, so a slow reader holds at
//! most one rendered message here, whatever the request rate. A bidi call answers its first
//! message before the call returns, so the rule that answers it sets the response headers, and a
//! call whose first answer is an error ends Trailers-Only.
//!
//! A big request is answered off the network threads ([`heavy`]), every kind alike: the
//! answer is worked out there, a message answer encoded there, and each `stream` item rendered
//! there when its turn comes; the request is dropped there too once nothing needs it.

use std::future::Future as _;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::Stream;
use prost::Message as _;
use prost_reflect::DynamicMessage;
use tokio::time::Sleep;
use tonic::metadata::MetadataMap;
use tonic::Status;

use super::error::ErrorAction;
use super::heavy;
use super::reply::ReplyAction;
use super::rules::{self, Rule};
use super::stream::StreamAction;
use super::{
    add_missing_metadata, hold_outgoing, hold_while_waiting, Call, Handler, HandlerFuture,
    MethodInfo, Reply, Requests, Responses,
};
use crate::codec::{Incoming, Outgoing};
use crate::error::CallError;
use crate::journal::Tap;
use crate::layers::buffers::{Buffers, Held};

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

    /// What answering a request in wire form does with its bytes ([`Action::respond_incoming`]).
    fn work(&self) -> heavy::Work {
        match &self.kind {
            ActionKind::Echo => heavy::Work::Scan { passes: 1 },
            ActionKind::Reply(r) if r.reads_wire() => heavy::Work::Scan {
                passes: r.wire_passes(),
            },
            _ => heavy::Work::Decode,
        }
    }

    /// The outcome for a request still in wire form; `checked` when its bytes were already
    /// found well-formed.
    fn respond_incoming(
        &self,
        req: Incoming,
        checked: bool,
        method: &Arc<str>,
        limit: usize,
    ) -> Result<Outcome, CallError> {
        match &self.kind {
            ActionKind::Echo => {
                if !checked {
                    req.validate()?;
                }
                Ok(Outcome::One(Outgoing::Encoded(req.bytes().clone())))
            }
            ActionKind::Reply(r) if r.reads_wire() => {
                if !checked {
                    req.validate()?;
                }
                Ok(Outcome::One(r.respond_wire(req.bytes(), method, limit)?))
            }
            _ => self.respond(req.decode()?, method, limit),
        }
    }

    /// The outcome for one request; a reply is at most `limit` bytes.
    fn respond(
        &self,
        req: DynamicMessage,
        method: &Arc<str>,
        limit: usize,
    ) -> Result<Outcome, CallError> {
        match &self.kind {
            ActionKind::Reply(r) => r.respond(&req, method, limit).map(Outcome::One),
            ActionKind::Error(e) => Ok(Outcome::Fail(e.status(&req))),
            ActionKind::Stream(_) => Ok(Outcome::Many { req, heavy: false }),
            ActionKind::Echo => Ok(Outcome::One(Outgoing::Message(req))),
        }
    }
}

/// The answer to one request, before its messages go out.
enum Outcome {
    One(Outgoing),
    /// The chosen `stream` action's items, rendered from this request one at a time; off the
    /// network threads when the request was big.
    Many {
        req: DynamicMessage,
        heavy: bool,
    },
    /// An `error` action's status: like a message, it waits for the delay and carries the
    /// action's headers.
    Fail(Status),
}

/// A single action, or rules choosing one.
#[derive(Debug)]
pub enum Responder {
    Single(Box<Action>),
    Rules(Vec<Rule>),
}

/// The action that answered a request, held by the stream that sends its messages.
#[derive(Clone)]
struct Chosen {
    responder: Arc<Responder>,
    rule: usize,
}

impl Chosen {
    fn action(&self) -> &Action {
        match &*self.responder {
            Responder::Single(a) => a,
            Responder::Rules(rules) => &rules[self.rule].action,
        }
    }
}

/// The outcome for one request and the action that gave it.
type Answer = Result<(Outcome, Chosen), CallError>;

/// An [`Answer`] ready now, or, for a big request, one worked out off the network threads
/// ([`heavy::off_the_network_threads`]).
enum Answering {
    Now(Answer),
    Later(BoxFuture<'static, Answer>),
}

impl Answering {
    async fn wait(self) -> Answer {
        match self {
            Answering::Now(answer) => answer,
            Answering::Later(later) => later.await,
        }
    }
}

/// Starts answering one request: at once, unless it is a big one.
fn answer(
    responder: &Arc<Responder>,
    req: Incoming,
    metadata: &MetadataMap,
    method: &Arc<str>,
    limit: usize,
    journal: Option<&Tap>,
    buffers: Option<&Buffers>,
) -> Answering {
    let work = match &**responder {
        Responder::Single(a) => a.work(),
        Responder::Rules(_) => heavy::Work::Decode,
    };
    let len = req.bytes().len();
    let checked = match work {
        _ if heavy::is_heavy(len, work) => None,
        heavy::Work::Decode => Some(false),
        // Checked here while that stays quick: most of a big request's bytes are then in a
        // few long fields, which the network threads answer sooner than a hop would.
        heavy::Work::Scan { passes } => {
            match req.validate_in_place(heavy::steps_in_place(passes)) {
                Ok(true) => Some(true),
                Ok(false) => None,
                Err(e) => return Answering::Now(Err(e)),
            }
        }
    };
    if let Some(checked) = checked {
        return Answering::Now(answer_now(
            responder, req, checked, metadata, method, limit, journal,
        ));
    }
    let (responder, metadata, method) = (responder.clone(), metadata.clone(), method.clone());
    let journal = journal.cloned();
    let lane = heavy::Lane::of(buffers);
    Answering::Later(Box::pin(async move {
        heavy::off_the_network_threads(&lane, move || {
            let (outcome, chosen) = answer_now(
                &responder,
                req,
                false,
                &metadata,
                &method,
                limit,
                journal.as_ref(),
            )?;
            Ok((settle_heavy(outcome)?, chosen))
        })
        .await
    }))
}

/// Readies the outcome for a big request for the network threads: a message answer (an echo
/// of the decoded request, a `{{.}}` copy) is encoded here rather than by the codec, and a
/// stream's items are marked to be rendered off those threads too.
fn settle_heavy(outcome: Outcome) -> Result<Outcome, CallError> {
    Ok(match outcome {
        Outcome::One(Outgoing::Message(msg)) => {
            let mut buf = Vec::with_capacity(msg.encoded_len());
            msg.encode(&mut buf).map_err(|e| CallError::Encode {
                message: e.to_string(),
            })?;
            Outcome::One(Outgoing::Encoded(buf.into()))
        }
        Outcome::Many { req, .. } => Outcome::Many { req, heavy: true },
        other => other,
    })
}

/// Answers one request on this thread. A single `echo` or wire-readable `reply` never builds
/// the request message (nor checks it again when `checked`); rules and the rest do.
///
/// The rule that answers is noted in the call's journal record, when there is one.
fn answer_now(
    responder: &Arc<Responder>,
    req: Incoming,
    checked: bool,
    metadata: &MetadataMap,
    method: &Arc<str>,
    limit: usize,
    journal: Option<&Tap>,
) -> Answer {
    let (outcome, rule) = match &**responder {
        Responder::Single(a) => (a.respond_incoming(req, checked, method, limit)?, 0),
        Responder::Rules(rules) => {
            let msg = req.decode()?;
            let rule = rules::pick(rules, &msg, metadata).ok_or(CallError::NoRuleMatched {
                method: method.clone(),
            })?;
            if let Some(tap) = journal {
                tap.note_rule(rule);
            }
            (rules[rule].action.respond(msg, method, limit)?, rule)
        }
    };
    let chosen = Chosen {
        responder: responder.clone(),
        rule,
    };
    Ok((outcome, chosen))
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

    fn least_message_size(&self) -> usize {
        let of = |a: &Action| match &a.kind {
            ActionKind::Reply(r) => r.least_size(),
            ActionKind::Stream(s) => s.least_size(),
            ActionKind::Error(_) | ActionKind::Echo => 0,
        };
        match &*self.responder {
            Responder::Single(a) => of(a),
            Responder::Rules(rules) => rules.iter().map(|r| of(&r.action)).max().unwrap_or(0),
        }
    }

    fn call(&self, call: Call, requests: Requests) -> HandlerFuture {
        let info = call.method.clone();
        match requests {
            Requests::One(req) => {
                let answering = answer(
                    &self.responder,
                    req,
                    &call.metadata,
                    &info.name,
                    call.max_message_size,
                    call.journal.as_ref(),
                    call.buffers.as_ref(),
                );
                match answering {
                    Answering::Now(Ok((outcome, chosen))) => respond_one(outcome, chosen, call),
                    Answering::Now(Err(e)) => Box::pin(std::future::ready(Err(e))),
                    Answering::Later(later) => Box::pin(async move {
                        let (outcome, chosen) = later.await?;
                        respond_one(outcome, chosen, call).await
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
                    let (outcome, chosen) = answer(
                        &responder,
                        req,
                        &call.metadata,
                        &info.name,
                        call.max_message_size,
                        call.journal.as_ref(),
                        call.buffers.as_ref(),
                    )
                    .wait()
                    .await?;
                    let action = chosen.action();
                    let result = one_answer(outcome, action.headers.clone(), &info);
                    if let Some(d) = action.delay {
                        let held = hold_while_waiting(call.buffers.as_ref(), &result)?;
                        tokio::time::sleep(d).await;
                        drop(held);
                    }
                    result
                })
            }
            Requests::Stream(mut incoming) => {
                let responder = self.responder.clone();
                Box::pin(async move {
                    let first = incoming.message().await.map_err(CallError::Transport)?;
                    let (current, headers) = match first {
                        Some(req) => {
                            let (outcome, chosen) = answer(
                                &responder,
                                req,
                                &call.metadata,
                                &info.name,
                                call.max_message_size,
                                call.journal.as_ref(),
                                call.buffers.as_ref(),
                            )
                            .wait()
                            .await?;
                            let headers = chosen.action().headers.clone();
                            (
                                Some(Items::new(
                                    outcome,
                                    chosen,
                                    info.name.clone(),
                                    call.max_message_size,
                                    call.buffers.clone(),
                                    None,
                                )),
                                headers,
                            )
                        }
                        None => (None, MetadataMap::new()),
                    };
                    let bidi = Bidi {
                        responder,
                        metadata: call.metadata,
                        journal: call.journal,
                        method: info.name.clone(),
                        limit: call.max_message_size,
                        buffers: call.buffers.clone(),
                        incoming,
                        current,
                        pending: None,
                        spare_sleep: None,
                        done: false,
                    };
                    Ok(Reply {
                        responses: Responses::Stream(Box::pin(bidi)),
                        headers,
                        trailers: None,
                    })
                })
            }
        }
    }
}

/// The reply to a call with one request, once its answer is known: a stream of items for a
/// server-streaming method, else one message, after the action's delay.
fn respond_one(outcome: Outcome, chosen: Chosen, call: Call) -> HandlerFuture {
    let info = call.method;
    let headers = chosen.action().headers.clone();
    if info.shape.streams_output() {
        let reply = Reply {
            responses: Responses::Stream(Box::pin(Items::new(
                outcome,
                chosen,
                info.name.clone(),
                call.max_message_size,
                call.buffers,
                None,
            ))),
            headers,
            trailers: None,
        };
        return Box::pin(std::future::ready(Ok(reply)));
    }
    let delay = chosen.action().delay;
    let result = one_answer(outcome, headers, &info);
    match delay {
        None => Box::pin(std::future::ready(result)),
        Some(d) => Box::pin(async move {
            let held = hold_while_waiting(call.buffers.as_ref(), &result)?;
            tokio::time::sleep(d).await;
            drop(held);
            result
        }),
    }
}

/// The reply of a method that answers with one message; an error's status carries the headers
/// (a Trailers-Only response has one header block).
fn one_answer(
    outcome: Outcome,
    headers: MetadataMap,
    info: &MethodInfo,
) -> Result<Reply, CallError> {
    match outcome {
        Outcome::One(o) => Ok(Reply {
            responses: Responses::One(o),
            headers,
            trailers: None,
        }),
        Outcome::Fail(mut status) => {
            add_missing_metadata(status.metadata_mut(), &headers);
            Err(CallError::Deliberate(status))
        }
        Outcome::Many { .. } => Err(wrong_shape(info)),
    }
}

fn wrong_shape(info: &MethodInfo) -> CallError {
    CallError::BadResponse {
        method: info.name.clone(),
        message: format!(
            "{} is {} and answers with one message",
            info.name,
            info.shape.name()
        ),
    }
}

/// The messages answering one request, rendered one at a time as the client takes them, with
/// the action's delay before each.
struct Items {
    chosen: Chosen,
    outcome: Option<Outcome>,
    next: usize,
    method: Arc<str>,
    /// `--max-message-size`: a rendered item stops there.
    limit: usize,
    /// The connection's buffers, where a message rendered before its delay is held.
    buffers: Option<Buffers>,
    held: Option<Held>,
    /// Armed before each message when the action has a delay; reused across messages.
    sleep: Option<Pin<Box<Sleep>>>,
    waiting: bool,
    /// The item being rendered off the network threads, from a big request.
    rendering: Option<BoxFuture<'static, Rendered>>,
}

/// An item rendered off the network threads, with the request when more items need it.
type Rendered = Result<(Option<Result<Outgoing, CallError>>, Option<DynamicMessage>), CallError>;

impl Items {
    fn new(
        outcome: Outcome,
        chosen: Chosen,
        method: Arc<str>,
        limit: usize,
        buffers: Option<Buffers>,
        sleep: Option<Pin<Box<Sleep>>>,
    ) -> Self {
        Self {
            chosen,
            outcome: Some(outcome),
            next: 0,
            method,
            limit,
            buffers,
            held: None,
            sleep,
            waiting: false,
            rendering: None,
        }
    }

    fn has_next(&self) -> bool {
        match (&self.outcome, &self.chosen.action().kind) {
            (Some(Outcome::One(_) | Outcome::Fail(_)), _) => true,
            (Some(Outcome::Many { .. }), ActionKind::Stream(s)) => self.next < s.len(),
            _ => self.rendering.is_some(),
        }
    }

    /// The next item: at once, or, for a big request's stream, once rendered off the network
    /// threads.
    fn poll_take(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Outgoing, CallError>>> {
        if self.rendering.is_none() {
            match self.outcome.take() {
                None => return Poll::Ready(None),
                Some(Outcome::One(o)) => return Poll::Ready(Some(Ok(o))),
                Some(Outcome::Fail(status)) => {
                    return Poll::Ready(Some(Err(CallError::Deliberate(status))))
                }
                Some(Outcome::Many { req, heavy: false }) => {
                    let ActionKind::Stream(s) = &self.chosen.action().kind else {
                        return Poll::Ready(None);
                    };
                    let item = s.render(self.next, &req, &self.method, self.limit);
                    if let Some(Ok(_)) = item {
                        self.next += 1;
                        self.outcome = Some(Outcome::Many { req, heavy: false });
                    }
                    return Poll::Ready(item);
                }
                Some(Outcome::Many { req, heavy: true }) => {
                    let (chosen, index) = (self.chosen.clone(), self.next);
                    let (method, limit) = (self.method.clone(), self.limit);
                    let lane = heavy::Lane::of(self.buffers.as_ref());
                    self.rendering = Some(Box::pin(async move {
                        heavy::off_the_network_threads(&lane, move || {
                            let ActionKind::Stream(s) = &chosen.action().kind else {
                                return Ok((None, None));
                            };
                            let item = s.render(index, &req, &method, limit);
                            // After the last item or a failed one the request goes, here.
                            let more = matches!(item, Some(Ok(_))) && index + 1 < s.len();
                            Ok((item, more.then_some(req)))
                        })
                        .await
                    }));
                }
            }
        }
        let Some(rendering) = &mut self.rendering else {
            return Poll::Ready(None);
        };
        let rendered = ready!(rendering.as_mut().poll(cx));
        self.rendering = None;
        let (item, req) = rendered.unwrap_or_else(|e| (Some(Err(e)), None));
        if let Some(Ok(_)) = item {
            self.next += 1;
        }
        if let Some(req) = req {
            self.outcome = Some(Outcome::Many { req, heavy: true });
        }
        Poll::Ready(item)
    }
}

impl Stream for Items {
    type Item = Result<Outgoing, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.rendering.is_some() {
            return this
                .poll_take(cx)
                .map(|item| item.map(|r| r.map_err(Status::from)));
        }
        if !this.has_next() {
            return Poll::Ready(None);
        }
        if let Some(delay) = this.chosen.action().delay {
            if !this.waiting {
                // A message rendered before the delay (a reply, an echo) is held through it.
                if let Some(Outcome::One(out)) = &this.outcome {
                    match hold_outgoing(this.buffers.as_ref(), out) {
                        Ok(held) => this.held = held,
                        Err(e) => {
                            this.outcome = None;
                            return Poll::Ready(Some(Err(e.into())));
                        }
                    }
                }
                // Delays are at most a day (checked at startup), so this cannot overflow.
                let now = tokio::time::Instant::now();
                let at = now.checked_add(delay).unwrap_or(now);
                match &mut this.sleep {
                    Some(s) => s.as_mut().reset(at),
                    None => this.sleep = Some(Box::pin(tokio::time::sleep_until(at))),
                }
                this.waiting = true;
            }
            if let Some(s) = &mut this.sleep {
                ready!(s.as_mut().poll(cx));
            }
            this.waiting = false;
        }
        this.held = None;
        this.poll_take(cx)
            .map(|item| item.map(|r| r.map_err(Status::from)))
    }
}

/// Answers every incoming message as it arrives; stops at the first error or when the client
/// goes away. The next request is read only when the previous answer has gone out.
struct Bidi {
    responder: Arc<Responder>,
    metadata: MetadataMap,
    journal: Option<Tap>,
    method: Arc<str>,
    limit: usize,
    buffers: Option<Buffers>,
    incoming: tonic::Streaming<Incoming>,
    current: Option<Items>,
    /// The answer being worked out off the network threads, for a big request.
    pending: Option<BoxFuture<'static, Answer>>,
    /// The timer of the last finished answer, reused by the next one.
    spare_sleep: Option<Pin<Box<Sleep>>>,
    done: bool,
}

impl Bidi {
    /// Makes `answer` the current one; an error ends the stream with it.
    fn begin(&mut self, answer: Answer) -> Result<(), Status> {
        match answer {
            Ok((outcome, chosen)) => {
                let sleep = self.spare_sleep.take();
                self.current = Some(Items::new(
                    outcome,
                    chosen,
                    self.method.clone(),
                    self.limit,
                    self.buffers.clone(),
                    sleep,
                ));
                Ok(())
            }
            Err(e) => {
                self.done = true;
                Err(e.into())
            }
        }
    }
}

impl Stream for Bidi {
    type Item = Result<Outgoing, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(items) = &mut this.current {
                match ready!(Pin::new(items).poll_next(cx)) {
                    Some(Err(status)) => {
                        this.done = true;
                        this.current = None;
                        return Poll::Ready(Some(Err(status)));
                    }
                    Some(ok) => return Poll::Ready(Some(ok)),
                    None => {}
                }
            }
            if let Some(pending) = &mut this.pending {
                let answer = ready!(pending.as_mut().poll(cx));
                this.pending = None;
                if let Err(status) = this.begin(answer) {
                    return Poll::Ready(Some(Err(status)));
                }
                continue;
            }
            if this.done {
                return Poll::Ready(None);
            }
            if let Some(finished) = this.current.take() {
                this.spare_sleep = finished.sleep;
            }
            let req = match ready!(Pin::new(&mut this.incoming).poll_next(cx)) {
                Some(Ok(req)) => req,
                Some(Err(status)) => {
                    // tonic's statuses are made gRPC's on the way out (`layers::status`).
                    this.done = true;
                    return Poll::Ready(Some(Err(status)));
                }
                None => {
                    this.done = true;
                    return Poll::Ready(None);
                }
            };
            let answering = answer(
                &this.responder,
                req,
                &this.metadata,
                &this.method,
                this.limit,
                this.journal.as_ref(),
                this.buffers.as_ref(),
            );
            let begun = match answering {
                Answering::Now(now) => this.begin(now),
                Answering::Later(later) => {
                    this.pending = Some(later);
                    Ok(())
                }
            };
            if let Err(status) = begun {
                return Poll::Ready(Some(Err(status)));
            }
        }
    }
}
