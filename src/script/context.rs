//! `ctx`, the second argument of every script function: what the call knows and can do.
//!
//! | member | meaning |
//! |---|---|
//! | `ctx.method` | `"package.Service/Method"` |
//! | `ctx.metadata` | request metadata, lowercase keys (a `-bin` value is its raw bytes) |
//! | `ctx.deadline` | the client's deadline as Unix time in seconds, or nil |
//! | `ctx:remaining()` | seconds until the deadline, or nil |
//! | `ctx:elapsed()` | seconds since the call started |
//! | `ctx:send(msg)` | send one response (server-streaming, bidi); waits while the client is slow |
//! | `ctx:sleep(ms)` | pause this call without blocking a thread |
//! | `ctx:set_header(k, v)` | response header (before the first message) |
//! | `ctx:set_trailer(k, v)` | response trailer |

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mlua::{UserData, UserDataFields, UserDataMethods, Value as LuaValue};
use prost_reflect::MessageDescriptor;
use tokio::sync::{mpsc, oneshot};
use tonic::metadata::{KeyAndValueRef, MetadataMap};
use tonic::Status;

use super::convert::outgoing_from_lua;
use super::status::Abort;
use crate::codec::Outgoing;

/// State shared by a call's ctx, its hook and its driver.
pub struct CallShared {
    pub method: &'static str,
    pub script: Arc<str>,
    pub function: Arc<str>,
    pub output: MessageDescriptor,
    pub metadata: MetadataMap,
    pub started: Instant,
    pub deadline: Option<Instant>,
    pub budget: u64,
    pub used: AtomicU64,
    pub headers: Mutex<MetadataMap>,
    pub trailers: Arc<Mutex<MetadataMap>>,
    pub headers_sent: AtomicBool,
    /// The response channel of a streaming call; taken when the script ends so the stream closes.
    pub sender: Mutex<Option<mpsc::Sender<Result<Outgoing, Status>>>>,
    pub streams_output: bool,
    /// Fired at the first `ctx:send`, so the driver can send headers.
    pub first_send: Mutex<Option<oneshot::Sender<()>>>,
    /// A message `try_send` could not place yet; `wait_send` sends it.
    pub pending: Mutex<Option<Result<Outgoing, Status>>>,
}

impl CallShared {
    /// Checked by the instruction hook: is there any reason to stop the script now?
    pub fn should_abort(&self, step: u64) -> Option<Abort> {
        let used = self.used.fetch_add(step, Ordering::Relaxed) + step;
        if used > self.budget {
            return Some(Abort::Budget(self.budget));
        }
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            return Some(Abort::Deadline);
        }
        let closed = self
            .sender
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_some_and(|s| s.is_closed());
        if closed {
            return Some(Abort::Cancelled);
        }
        None
    }

    fn mark_headers_sent(&self) {
        if !self.headers_sent.swap(true, Ordering::AcqRel) {
            if let Some(tx) = self
                .first_send
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take()
            {
                let _ = tx.send(());
            }
        }
    }
}

/// The Lua-side handle.
/// `Some` for a streaming call's own ctx; `None` for the one ctx a Lua state hands to every
/// one-message call, which stands for whichever call is running (see `slice::with_current`).
pub struct Ctx(pub Option<Arc<CallShared>>);

impl Ctx {
    fn call(&self) -> mlua::Result<Arc<CallShared>> {
        match &self.0 {
            Some(shared) => Ok(shared.clone()),
            None => super::slice::running_call()
                .ok_or_else(|| mlua::Error::runtime("ctx is only usable while its call runs")),
        }
    }
}

fn abort(a: Abort) -> mlua::Error {
    mlua::Error::external(a)
}

fn insert_metadata(map: &mut MetadataMap, key: &str, value: &[u8]) -> mlua::Result<()> {
    let key = key.to_ascii_lowercase();
    if key.ends_with("-bin") {
        let k = tonic::metadata::BinaryMetadataKey::from_bytes(key.as_bytes())
            .map_err(|_| mlua::Error::runtime(format!("{key:?} is not a valid metadata key")))?;
        map.insert_bin(k, tonic::metadata::BinaryMetadataValue::from_bytes(value));
    } else {
        let k = tonic::metadata::AsciiMetadataKey::from_bytes(key.as_bytes())
            .map_err(|_| mlua::Error::runtime(format!("{key:?} is not a valid metadata key")))?;
        let v = tonic::metadata::AsciiMetadataValue::try_from(value).map_err(|_| {
            mlua::Error::runtime(format!(
                "metadata {key:?}: values must be printable ASCII; use a key ending in -bin"
            ))
        })?;
        map.insert(k, v);
    }
    Ok(())
}

fn unix_seconds(at: Instant) -> f64 {
    let now = Instant::now();
    let wall = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    if at >= now {
        wall + (at - now).as_secs_f64()
    } else {
        wall - (now - at).as_secs_f64()
    }
}

impl UserData for Ctx {
    fn add_fields<F: UserDataFields<Self>>(fields: &mut F) {
        fields.add_field_method_get("method", |_, this| Ok(this.call()?.method));
        fields.add_field_method_get("deadline", |_, this| {
            Ok(this.call()?.deadline.map(unix_seconds))
        });
        fields.add_field_method_get("metadata", |lua, this| {
            let t = lua.create_table()?;
            for kv in this.call()?.metadata.iter() {
                match kv {
                    KeyAndValueRef::Ascii(k, v) => {
                        t.raw_set(k.as_str(), lua.create_string(v.as_encoded_bytes())?)?
                    }
                    KeyAndValueRef::Binary(k, v) => {
                        let bytes = v.to_bytes().unwrap_or_default();
                        t.raw_set(k.as_str(), lua.create_string(&bytes)?)?
                    }
                }
            }
            Ok(t)
        });
    }

    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_method("elapsed", |_, this, ()| {
            Ok(this.call()?.started.elapsed().as_secs_f64())
        });
        methods.add_method("remaining", |_, this, ()| {
            Ok(this
                .call()?
                .deadline
                .map(|d| d.saturating_duration_since(Instant::now()).as_secs_f64()))
        });
        methods.add_method("set_header", |_, this, (k, v): (String, mlua::String)| {
            if this.call()?.headers_sent.load(Ordering::Acquire) {
                return Err(mlua::Error::runtime("ctx:set_header: headers were already sent with the first message; set headers before ctx:send"));
            }
            insert_metadata(&mut this.call()?.headers.lock().unwrap_or_else(|e| e.into_inner()), &k, &v.as_bytes())
        });
        methods.add_method("set_trailer", |_, this, (k, v): (String, mlua::String)| {
            insert_metadata(
                &mut this
                    .call()?
                    .trailers
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()),
                &k,
                &v.as_bytes(),
            )
        });
        methods.add_async_method("sleep", |_, this, ms: f64| async move {
            let wanted = Duration::from_secs_f64((ms.max(0.0)) / 1000.0);
            let shared = this.call()?;
            drop(this);
            match shared.deadline {
                Some(d) if Instant::now() + wanted >= d => {
                    tokio::time::sleep_until(d.into()).await;
                    Err(abort(Abort::Deadline))
                }
                _ => {
                    tokio::time::sleep(wanted).await;
                    Ok(())
                }
            }
        });
        // `ctx:send(msg)` for streaming calls is `try_send`, then `wait_send` only when the
        // client is slow (see `sandbox::STREAM_CTX`): no async machinery per message.
        methods.add_method("try_send", |lua, this, msg: LuaValue| {
            this.call()?.try_send(lua, &msg)
        });
        methods.add_async_method("wait_send", |_, this, ()| async move {
            let shared = this.call()?;
            drop(this);
            let pending = shared
                .pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            let sender = shared
                .sender
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            match (pending, sender) {
                (Some(item), Some(sender)) => {
                    sender.send(item).await.map_err(|_| abort(Abort::Cancelled))
                }
                _ => Ok(()),
            }
        });
        methods.add_method("send", |_, this, msg: LuaValue| {
            // Reached only by one-message methods: streaming calls get the wrapper above.
            let _ = msg;
            Err::<(), _>(mlua::Error::runtime(format!(
                "ctx:send: {} answers with one message; return it instead",
                this.call()?.method
            )))
        });
    }
}

impl CallShared {
    /// Sends at once if the channel has room; otherwise parks the message for `wait_send`.
    fn try_send(&self, lua: &mlua::Lua, msg: &LuaValue) -> mlua::Result<bool> {
        let sender = self
            .sender
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let Some(sender) = sender else {
            return Err(mlua::Error::runtime(format!(
                "ctx:send: the call to {} has ended",
                self.method
            )));
        };
        let message = outgoing_from_lua(lua, msg, &self.output).map_err(|e| {
            e.into_lua_error(|e| {
                mlua::Error::external(super::status::BadMessage(format!(
                    "{}: {} sent a bad {}: {e}",
                    self.script,
                    self.function,
                    self.output.full_name()
                )))
            })
        })?;
        self.mark_headers_sent();
        match sender.try_send(Ok(message)) {
            Ok(()) => Ok(true),
            Err(mpsc::error::TrySendError::Full(item)) => {
                *self.pending.lock().unwrap_or_else(|e| e.into_inner()) = Some(item);
                Ok(false)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(abort(Abort::Cancelled)),
        }
    }
}

/// Marks headers as sent when the script finishes without sending (so the driver can go on).
pub fn finish(shared: &CallShared) {
    shared.mark_headers_sent();
}
