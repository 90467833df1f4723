//! The operations the admin API offers on a running server, as one trait.
//!
//! The admin listener (HTTP/JSON and gRPC) only translates requests into these calls; the live
//! server implements them. Keeping the seam this narrow lets both front ends offer exactly the
//! same operations, and lets either side change without touching the other.

use futures_util::future::BoxFuture;
use serde::Serialize;
use serde_json::Value as Json;

use crate::config::RuntimeEntry;
use crate::error::StartupError;

/// One problem with the inputs, as the admin API reports it: the same text `check` prints,
/// plus its location split out for tools.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Problem {
    /// The file, relative as the user named it; empty when the problem is not about a file.
    pub file: String,
    /// 1-based; 0 when unknown.
    pub line: usize,
    /// 1-based; 0 when unknown.
    pub col: usize,
    /// The whole message, exactly as `protoserve check` prints it (without `error: `).
    pub message: String,
}

impl From<&StartupError> for Problem {
    fn from(e: &StartupError) -> Self {
        let location = e.location();
        Self {
            file: location
                .map(|l| l.path.display().to_string())
                .unwrap_or_default(),
            line: location.map_or(0, |l| l.line),
            col: location.map_or(0, |l| l.col),
            message: e.to_string(),
        }
    }
}

/// Why an operation was refused.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "error", rename_all = "snake_case")]
pub enum Refusal {
    /// The inputs (or the runtime handler given) have problems; nothing changed.
    Invalid { problems: Vec<Problem> },
    /// The method or handler named does not exist.
    NotFound { message: String },
}

/// What the admin API can do to a running server. Every answer is JSON so both front ends can
/// pass it on unchanged (the gRPC front end maps it onto its messages with the proto JSON
/// mapping).
pub trait Control: Send + Sync + 'static {
    /// `{"generation": n, "loaded_at": rfc3339, "load_ms": n, "inputs": {...},
    ///   "last_reload": {"ok": bool, "at": rfc3339, "problems": [Problem]}|null,
    ///   "runtime_handlers": n}`
    fn status(&self) -> Json;

    /// `{"services": [{"name", "methods": [{"name", "path", "shape", "input", "output",
    ///   "handler": {"kind", "source": "file"|"runtime", "file"?: path}|null}]}]}`
    fn services(&self) -> Json;

    /// Rebuilds the generation from the inputs on disk (plus the runtime handlers). On success
    /// answers the new status; on failure the old generation keeps serving.
    fn reload(&self) -> BoxFuture<'static, Result<Json, Refusal>>;

    /// Adds or replaces the runtime handler of `method` (`package.Service/Method`); `entry` is
    /// the JSON a handler file has under `"methods": {"Method": …}`, with the text it came as
    /// if any (its problems are located in it). Calls that start after the answer use it;
    /// calls in flight keep theirs.
    fn put_handler(
        &self,
        method: String,
        entry: RuntimeEntry,
    ) -> BoxFuture<'static, Result<Json, Refusal>>;

    /// Removes the runtime handler of `method`; the file-based one (if any) serves again.
    fn remove_handler(&self, method: String) -> BoxFuture<'static, Result<Json, Refusal>>;

    /// Removes every runtime handler (the journal is reset by the admin API itself).
    fn reset(&self) -> BoxFuture<'static, Result<Json, Refusal>>;

    /// The method named `package.Service/Method` in the current generation: `verify` compiles
    /// its `when` against the method's input type, as a rule's would be.
    fn method(&self, name: &str) -> Option<prost_reflect::MethodDescriptor>;
}
