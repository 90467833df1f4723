//! Errors that travel through Lua as values and come out typed on the Rust side.
//!
//! `error(grpc.status("NOT_FOUND", "…"))` raises a [`ScriptStatus`]; the instruction hook raises
//! an [`Abort`]. Both are found again by walking the `mlua::Error` chain.

use std::fmt;
use std::time::Duration;

use mlua::Value as LuaValue;
use tonic::{Code, Status};

use crate::metadata::parse_code;

/// The longest code name a status error shows (bytes).
const MAX_CODE_NAME: usize = 64;

/// A status chosen by the script.
#[derive(Debug, Clone)]
pub struct ScriptStatus {
    pub code: Code,
    pub message: String,
}

impl ScriptStatus {
    pub fn from_lua(code: &LuaValue, message: String) -> Result<Self, String> {
        let json = match code {
            LuaValue::Integer(n) => serde_json::Value::from(*n),
            LuaValue::Number(n) if n.fract() == 0.0 && n.abs() < 1e18 => {
                serde_json::Value::from(*n as i64)
            }
            LuaValue::Number(n) => {
                return Err(format!(
                    "grpc.status: {n} is not a gRPC status code; use a name such as \"NOT_FOUND\" or a number 1-16"
                ))
            }
            // No code name is long: a long string is named by its start only (the error
            // message would copy it whole, outside Lua's memory).
            LuaValue::String(s) => {
                let bytes = s.as_bytes();
                let shown = String::from_utf8_lossy(&bytes[..bytes.len().min(MAX_CODE_NAME)]);
                if bytes.len() > MAX_CODE_NAME {
                    serde_json::Value::from(format!("{shown}…"))
                } else {
                    serde_json::Value::from(shown.into_owned())
                }
            }
            other => {
                return Err(format!(
                    "grpc.status: the code must be a name or a number, not a {}",
                    other.type_name()
                ))
            }
        };
        let code = parse_code(&json).map_err(|e| format!("grpc.status: {e}"))?;
        Ok(Self { code, message })
    }

    pub fn to_status(&self) -> Status {
        crate::error::chosen(Status::new(self.code, self.message.clone()))
    }
}

impl fmt::Display for ScriptStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "grpc status {:?}: {}", self.code, self.message)
    }
}

impl std::error::Error for ScriptStatus {}

/// Why the server stopped a script.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Abort {
    /// Past its budget of Lua instructions (when they are counted).
    Budget(u64),
    /// Past its budget of running time.
    Time(Duration),
    Deadline,
    Cancelled,
    /// Its state ran out of memory while this call held the most of it (see `worker`).
    Memory,
}

impl Abort {
    /// A nonzero code for the sticky abort slot of a call.
    pub fn code(self) -> u8 {
        match self {
            Abort::Budget(_) => 1,
            Abort::Deadline => 2,
            Abort::Cancelled => 3,
            Abort::Time(_) => 4,
            Abort::Memory => 5,
        }
    }

    pub fn from_code(code: u8, budget: u64, time_budget: Duration) -> Option<Self> {
        match code {
            1 => Some(Abort::Budget(budget)),
            2 => Some(Abort::Deadline),
            3 => Some(Abort::Cancelled),
            4 => Some(Abort::Time(time_budget)),
            5 => Some(Abort::Memory),
            _ => None,
        }
    }
}

impl fmt::Display for Abort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Abort::Budget(n) => write!(
                f,
                "the script ran past its budget of {n} Lua instructions (an endless loop?); raise --script-instructions if it needs more"
            ),
            Abort::Time(t) => write!(
                f,
                "the script ran past its time budget of {} ms (an endless loop?); raise --script-time-ms if it needs more",
                t.as_millis()
            ),
            Abort::Deadline => write!(f, "the call's deadline passed"),
            Abort::Cancelled => write!(f, "the call was cancelled"),
            Abort::Memory => write!(
                f,
                "the script state ran out of memory while this call held the most of it"
            ),
        }
    }
}

impl std::error::Error for Abort {}

/// The first error of type `T` in an `mlua::Error` chain.
pub fn find<T: std::error::Error + Clone + 'static>(err: &mlua::Error) -> Option<T> {
    match err {
        mlua::Error::ExternalError(e) => e.downcast_ref::<T>().cloned(),
        mlua::Error::CallbackError { cause, .. } => find(cause),
        mlua::Error::WithContext { cause, .. } => find(cause),
        _ => None,
    }
}

/// A message the script produced that does not fit the method's output type.
#[derive(Debug, Clone)]
pub struct BadMessage(pub String);

impl fmt::Display for BadMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadMessage {}

/// The client's request stream failed while the script was reading it.
#[derive(Debug, Clone)]
pub struct IncomingError(pub Status);

impl fmt::Display for IncomingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "reading the request stream failed: {}", self.0.message())
    }
}

impl std::error::Error for IncomingError {}

/// A call ran out of its state's memory while other calls held `held` bytes of it once
/// collected (see `worker`).
#[derive(Debug, Clone, Copy)]
pub struct StateFull {
    pub held: usize,
}

impl fmt::Display for StateFull {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "not enough memory: other calls hold {} MiB of this state's memory",
            self.held >> 20
        )
    }
}

impl std::error::Error for StateFull {}
