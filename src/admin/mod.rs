//! The admin API: a separate listener (`--admin`, loopback by default, never the public port:
//! it can install handlers) that controls the running server and reads its call journal.
//!
//! One port serves two front ends: JSON over HTTP/1.1 (or HTTP/2) for curl and test scripts
//! ([`http`]), and the gRPC service `protoserve.admin.v1.Admin` with server reflection
//! ([`grpc`]); requests are told apart by their content-type ([`listener`]). Both only
//! translate requests into the operations of [`Admin::run`], which answer JSON; the gRPC front
//! end maps that JSON onto its messages. The operations on the server go through
//! [`Control`]; the journal is read here.

pub mod client;
pub mod grpc;
pub mod http;
pub mod listener;
pub mod schema;
pub mod transit;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde_json::{json, Value as Json};

use crate::config::RuntimeEntry;
use crate::control::Control;
use crate::error::AdminError;
use crate::journal::query::Query;
use crate::journal::render::{call_json, View};
use crate::journal::verify::Verify;
use crate::journal::Journal;

/// The admin API's settings besides its address.
#[derive(Debug, Clone, Default)]
pub struct AdminOptions {
    /// `--admin-token`: every request must carry `Authorization: Bearer TOKEN`.
    pub token: Option<String>,
}

/// One admin operation, as either front end asks for it.
#[derive(Debug)]
pub enum Op {
    Status,
    Services,
    Reload,
    /// `method` is `package.Service/Method`; `entry` a handler file's method entry, with the
    /// text it was parsed from when it came as text (its problems are located in it).
    PutHandler {
        method: String,
        entry: Json,
        text: Option<String>,
    },
    RemoveHandler {
        method: String,
    },
    /// Runtime handlers and journal.
    Reset,
    /// Journal filters and paging as name/value pairs (see [`Query::parse`]).
    ListCalls(Vec<(String, String)>),
    GetCall(String),
    ClearJournal,
    Verify(Json),
}

/// What the admin API works on.
pub struct Admin {
    control: Arc<dyn Control>,
    journal: Option<Journal>,
    options: AdminOptions,
    /// Journal reads run one at a time: each may spend up to
    /// [`READ_BUDGET`](crate::journal::render::READ_BUDGET) on decoded messages, and the
    /// listener's 64 connections reading at once would multiply that.
    reads: Arc<tokio::sync::Semaphore>,
}

impl Admin {
    pub fn new(control: Arc<dyn Control>, journal: Option<Journal>, options: AdminOptions) -> Self {
        Self {
            control,
            journal,
            options,
            reads: Arc::new(tokio::sync::Semaphore::new(1)),
        }
    }

    /// Runs one operation; the answer is the JSON both front ends send.
    pub async fn run(&self, op: Op) -> Result<Json, AdminError> {
        match op {
            Op::Status => Ok(self.with_journal(self.control.status())),
            Op::Services => Ok(self.control.services()),
            Op::Reload => Ok(self.with_journal(self.control.reload().await?)),
            Op::PutHandler {
                method,
                entry,
                text,
            } => {
                check_method_name(&method)?;
                let entry = RuntimeEntry {
                    entry,
                    text: text.map(Arc::from),
                };
                Ok(self.control.put_handler(method, entry).await?)
            }
            Op::RemoveHandler { method } => {
                check_method_name(&method)?;
                Ok(self.control.remove_handler(method).await?)
            }
            Op::Reset => {
                let mut answer = self.control.reset().await?;
                let cleared = self.journal.as_ref().map_or(0, Journal::clear);
                if let Json::Object(fields) = &mut answer {
                    fields.insert("journal_cleared".into(), json!(cleared));
                }
                Ok(answer)
            }
            Op::ListCalls(pairs) => {
                let journal = self.journal()?.clone();
                let query = Query::parse(&pairs).map_err(AdminError::BadRequest)?;
                let filter = query.method().map(str::to_owned);
                let page = {
                    let journal = journal.clone();
                    self.blocking(move || Ok(query.run(&journal))).await?
                };
                let empty = page["calls"].as_array().is_some_and(Vec::is_empty);
                match filter {
                    Some(name) if empty && !self.serves(&name) => {
                        let any = Query::any_call_of(&name);
                        let seen = self.blocking(move || Ok(any.run(&journal))).await?;
                        if seen["calls"].as_array().is_some_and(Vec::is_empty) {
                            return Err(self.unknown_filter(&name));
                        }
                        Ok(page)
                    }
                    _ => Ok(page),
                }
            }
            Op::GetCall(id) => {
                let journal = self.journal()?.clone();
                let id: u64 = id.trim().parse().map_err(|_| {
                    AdminError::BadRequest(format!(
                        "{id:?} is not a call id; ids are the numbers GET /v1/journal lists"
                    ))
                })?;
                self.blocking(move || {
                    journal
                        .get(id)
                        .and_then(|call| call_json(&call, View::Full))
                        .ok_or_else(|| {
                            let stats = journal.stats();
                            AdminError::NotFound(format!(
                                "no call {id} in the journal (it holds {} calls; older ones are dropped beyond --journal-calls / --journal-bytes)",
                                stats.calls
                            ))
                        })
                })
                .await
            }
            Op::ClearJournal => Ok(json!({"cleared": self.journal()?.clear()})),
            Op::Verify(body) => {
                let journal = self.journal()?.clone();
                let verify = Verify::parse(&body).map_err(AdminError::BadRequest)?;
                let method = self
                    .control
                    .method(&verify.method)
                    .ok_or_else(|| self.unknown_method(&verify.method))?;
                self.blocking_until_dropped(move |given_up| {
                    verify
                        .run(&journal, &method.input(), given_up)
                        .map_err(AdminError::BadRequest)
                })
                .await
            }
        }
    }

    /// The server's token, if it has one.
    pub fn token(&self) -> Option<&str> {
        self.options.token.as_deref()
    }

    fn journal(&self) -> Result<&Journal, AdminError> {
        self.journal.as_ref().ok_or(AdminError::JournalOff)
    }

    /// A status answer with the journal's counts added.
    fn with_journal(&self, mut status: Json) -> Json {
        let journal = match &self.journal {
            Some(j) => {
                let mut stats = serde_json::to_value(j.stats()).unwrap_or_default();
                stats["enabled"] = json!(true);
                stats
            }
            None => json!({"enabled": false}),
        };
        if let Json::Object(fields) = &mut status {
            fields.insert("journal".into(), journal);
        }
        status
    }

    /// Whether `name`, a method (`package.Service/Method`) or a service, is in the protos
    /// served now.
    fn serves(&self, name: &str) -> bool {
        let services = self.control.services();
        let services = services["services"].as_array().into_iter().flatten();
        match name.split_once('/') {
            Some(_) => services
                .flat_map(|s| s["methods"].as_array().into_iter().flatten())
                .filter_map(|m| m["path"].as_str())
                .any(|path| path.trim_start_matches('/') == name),
            None => services
                .filter_map(|s| s["name"].as_str())
                .any(|s| s == name),
        }
    }

    /// A journal filter naming neither a method nor a service served now, nor any call the
    /// journal holds: a typo, which an empty page would hide.
    fn unknown_filter(&self, name: &str) -> AdminError {
        let services = self.control.services();
        let services = services["services"].as_array().cloned().unwrap_or_default();
        let candidates: Vec<&str> = if name.contains('/') {
            services
                .iter()
                .flat_map(|s| s["methods"].as_array().into_iter().flatten())
                .filter_map(|m| m["path"].as_str())
                .map(|p| p.trim_start_matches('/'))
                .collect()
        } else {
            services.iter().filter_map(|s| s["name"].as_str()).collect()
        };
        AdminError::NotFound(format!(
            "method filter {:?}{}: no service or method of that name is served, and the journal holds no call to it; name a method (package.Service/Method) or a service",
            crate::error::clipped(name, SHOWN_NAME),
            crate::suggest::did_you_mean(name, candidates)
        ))
    }

    fn unknown_method(&self, name: &str) -> AdminError {
        let services = self.control.services();
        let names: Vec<String> = services["services"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|s| s["methods"].as_array().into_iter().flatten())
            .filter_map(|m| m["path"].as_str())
            .map(|p| p.trim_start_matches('/').to_owned())
            .collect();
        AdminError::NotFound(format!(
            "unknown method {:?}{}; name it package.Service/Method",
            crate::error::clipped(name, SHOWN_NAME),
            crate::suggest::did_you_mean(name, names.iter().map(String::as_str))
        ))
    }
}

/// The most of a name the client sent that an answer repeats (bytes): a query string may be
/// tens of kilobytes.
const SHOWN_NAME: usize = 200;

/// `package.Service/Method`, checked for shape only (the server says whether it exists).
fn check_method_name(method: &str) -> Result<(), AdminError> {
    match method.split_once('/') {
        Some((service, name)) if !service.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok(())
        }
        _ => Err(AdminError::BadRequest(format!(
            "{:?} is not a method name; write package.Service/Method",
            crate::error::clipped(method, SHOWN_NAME)
        ))),
    }
}

impl Admin {
    /// Journal reads decode messages: they run off the async workers, which serve calls, and
    /// one at a time (see `reads`).
    async fn blocking(
        &self,
        work: impl FnOnce() -> Result<Json, AdminError> + Send + 'static,
    ) -> Result<Json, AdminError> {
        self.blocking_until_dropped(|_| work()).await
    }

    /// [`Admin::blocking`] for work that may take long (a verify checks every call of the
    /// journal against its `when`, whose cost has no bound but the body's size): `work` is
    /// told when nobody waits for its answer any more (the client went away, or the request
    /// outlived the listener's timeout), and should stop. Until it does, it holds the turn
    /// of every other journal read.
    async fn blocking_until_dropped(
        &self,
        work: impl FnOnce(&AtomicBool) -> Result<Json, AdminError> + Send + 'static,
    ) -> Result<Json, AdminError> {
        /// Raises the flag when the request's future is dropped (before the work ended, if
        /// nobody waits for it).
        struct GiveUpOnDrop(Arc<AtomicBool>);
        impl Drop for GiveUpOnDrop {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Relaxed);
            }
        }
        let given_up = GiveUpOnDrop(Arc::new(AtomicBool::new(false)));
        let flag = given_up.0.clone();
        let work = move || work(&flag);
        let turn = self
            .reads
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| AdminError::Internal(format!("the journal read failed: {e}")))?;
        // The turn ends with the work, even if the client has gone away meanwhile.
        let work = move || {
            let _turn = turn;
            work()
        };
        let answer = tokio::task::spawn_blocking(work).await.unwrap_or_else(|e| {
            Err(AdminError::Internal(format!(
                "the journal read failed: {e}"
            )))
        });
        // Raised now, the flag tells work that has ended nothing.
        drop(given_up);
        answer
    }
}
