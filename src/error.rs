//! Errors, in two families that never mix.
//!
//! [`StartupError`] is everything that can be wrong with the files a user wrote (protos, handler
//! files, scripts, data). Each carries the file and, where known, `line:col`, plus a hint on what to
//! fix, because the person reading it is editing those files right now.
//!
//! [`CallError`] is everything that can go wrong while answering a call. `impl From<CallError> for
//! tonic::Status` is the one place where a failure becomes a gRPC status, so codes stay consistent.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use tonic::{Code, Status};

use crate::metadata::names;

/// A place in a user's file: `path:line:col` (1-based, `line`/`col` 0 when unknown).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub path: PathBuf,
    pub line: usize,
    pub col: usize,
}

impl Location {
    pub fn file(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            line: 0,
            col: 0,
        }
    }

    pub fn at(path: impl Into<PathBuf>, line: usize, col: usize) -> Self {
        Self {
            path: path.into(),
            line,
            col,
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if self.line > 0 {
            write!(f, ":{}", self.line)?;
            if self.col > 0 {
                write!(f, ":{}", self.col)?;
            }
        }
        Ok(())
    }
}

/// What is wrong with the user's files; startup stops on any of these.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("{location}: {message}{}", render_detail(.detail))]
    Proto {
        location: Location,
        message: String,
        detail: Option<String>,
    },

    #[error("{location}: {}{message}{}", render_entry(.entry), render_hint(.hint))]
    Handler {
        location: Location,
        entry: String,
        message: String,
        hint: Option<String>,
    },

    #[error("{location}: {message}{}", render_hint(.hint))]
    Script {
        location: Location,
        message: String,
        hint: Option<String>,
    },

    #[error("{location}: {message}{}", render_hint(.hint))]
    Data {
        location: Location,
        message: String,
        hint: Option<String>,
    },

    /// A file that is not UTF-8 text.
    #[error("{location}: {message}{}", render_hint(.hint))]
    Encoding {
        location: Location,
        message: String,
        hint: Option<String>,
    },

    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    /// A folder under an input folder that cannot be listed: what it holds would be lost
    /// without a word, and the watcher could not see changes in it.
    #[error("{}: cannot read this folder: {source}{}", .path.display(), folder_hint(.path, .under))]
    Folder {
        path: PathBuf,
        under: PathBuf,
        source: std::io::Error,
    },

    #[error("{0}")]
    Usage(String),
}

fn render_hint(hint: &Option<String>) -> String {
    hint.as_ref()
        .map(|h| format!("\n  help: {h}"))
        .unwrap_or_default()
}

fn folder_hint(path: &std::path::Path, under: &std::path::Path) -> String {
    let fix = "make it readable by the server (chmod u+rx, or chown it)";
    if path == under {
        format!("\n  help: {fix}")
    } else {
        format!(
            "\n  help: {fix}, or move it out of {} (hidden folders are not read)",
            under.display()
        )
    }
}

fn render_entry(entry: &str) -> String {
    if entry.is_empty() {
        String::new()
    } else {
        format!("{entry}: ")
    }
}

fn render_detail(detail: &Option<String>) -> String {
    detail
        .as_ref()
        .map(|d| format!("\n{d}"))
        .unwrap_or_default()
}

impl StartupError {
    /// Where the problem is, when it is in a file.
    pub fn location(&self) -> Option<&Location> {
        match self {
            Self::Proto { location, .. }
            | Self::Handler { location, .. }
            | Self::Script { location, .. }
            | Self::Data { location, .. }
            | Self::Encoding { location, .. } => Some(location),
            Self::Io { .. } | Self::Folder { .. } | Self::Usage(_) => None,
        }
    }

    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}

/// A problem in one handler entry (a reply template, a rule, an error's code, a header), with
/// the JSON path to the offending value inside the entry (`reply.message`, `rules[2].when`).
/// The file reader turns it into a [`StartupError::Handler`] at the entry's location.
#[derive(Debug, Clone)]
pub struct EntryError {
    pub path: String,
    pub message: String,
}

/// Every problem of one handler entry: the parts of an entry (its keys, the fields of a reply,
/// the items of a stream, the tests of a rule) are checked independently, so that one run of
/// `check` names them all.
#[derive(Debug, Default)]
pub struct EntryErrors(pub Vec<EntryError>);

impl From<EntryError> for EntryErrors {
    fn from(e: EntryError) -> Self {
        Self(vec![e])
    }
}

impl EntryErrors {
    /// `r`'s value, or `None` with its problems added here.
    pub fn keep<T, E: Into<EntryErrors>>(&mut self, r: Result<T, E>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(e) => {
                self.0.extend(e.into().0);
                None
            }
        }
    }

    pub fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(EntryError {
            path: path.into(),
            message: message.into(),
        });
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Every problem on one line, each as `path: message`, separated by `; `.
    pub fn describe(&self) -> String {
        self.0
            .iter()
            .map(|e| {
                if e.path.is_empty() {
                    e.message.clone()
                } else {
                    format!("{}: {}", e.path, e.message)
                }
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// `value` when no problem was found, else every problem.
    pub fn or<T>(self, value: T) -> Result<T, EntryErrors> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(self)
        }
    }

    /// `make()` when no problem was found (its parts all compiled), else every problem.
    pub fn or_else<T>(self, make: impl FnOnce() -> Option<T>) -> Result<T, EntryErrors> {
        if !self.0.is_empty() {
            return Err(self);
        }
        make().ok_or_else(|| {
            EntryErrors::from(EntryError {
                path: String::new(),
                message: "internal: a part failed without saying why".into(),
            })
        })
    }
}

/// All the startup errors found in one pass, so a user fixes them in one go.
#[derive(Debug, Default)]
pub struct StartupErrors(pub Vec<StartupError>, Seen);

/// The texts of the errors listed, so that [`StartupErrors::push`] finds a repeat at once: a
/// file of a hundred thousand broken rules has as many problems, and comparing each with every
/// other took hours.
#[derive(Debug, Default)]
pub struct Seen {
    texts: std::collections::HashSet<String>,
    /// How many errors of the list are in `texts` (errors may be appended to the list).
    upto: usize,
}

impl StartupErrors {
    /// Adds `e` unless the same problem is listed already (a script that fails to load is
    /// tried once per method it serves, and says the same each time).
    pub fn push(&mut self, e: StartupError) {
        let seen = &mut self.1;
        for known in self.0.get(seen.upto..).unwrap_or_default() {
            seen.texts.insert(known.to_string());
        }
        if seen.texts.insert(e.to_string()) {
            self.0.push(e);
        }
        seen.upto = self.0.len();
    }

    /// Adds each of `other`'s problems as [`Self::push`] does: one that is listed already is
    /// not listed again (each handler file that runs the same script meets the same problem).
    pub fn absorb(&mut self, other: StartupErrors) {
        for e in other.0 {
            self.push(e);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn into_result<T>(self, value: T) -> Result<T, StartupErrors> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(self)
        }
    }
}

impl From<StartupError> for StartupErrors {
    fn from(e: StartupError) -> Self {
        Self(vec![e], Seen::default())
    }
}

impl fmt::Display for StartupErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "error: {}", indented(&e.to_string()))?;
        }
        Ok(())
    }
}

impl std::error::Error for StartupErrors {}

/// Why a call failed. Converted to a [`Status`] in exactly one place (below).
#[derive(Debug)]
pub enum CallError {
    /// The method exists in the protos but no handler file serves it.
    NoHandler { method: Arc<str> },
    /// The path names no method of any loaded service. `methods`: those of the service it
    /// names, when that service is loaded (the method's name is the mistake).
    UnknownMethod {
        path: String,
        methods: Option<Vec<String>>,
    },
    /// A `rules` handler had no rule matching this request.
    NoRuleMatched { method: Arc<str> },
    /// A `script`/`rules`/`error` handler asked for this status on purpose.
    Deliberate(Status),
    /// A response that could not be built (a script returned a wrong value, a conversion failed).
    BadResponse { method: Arc<str>, message: String },
    /// A number in the request does not fit the reply field a handler file copies it into.
    RequestUnfit { method: Arc<str>, message: String },
    /// A script failed at run time.
    Script { message: String },
    /// The script ran past its instruction or time budget.
    ScriptBudget { method: Arc<str>, message: String },
    /// The script ran out of its Lua state's memory.
    ScriptMemory { method: Arc<str>, limit_mib: usize },
    /// The Lua state running the call was replaced, or stopped, before it answered; `why`
    /// says what happened to it (the server log says more).
    ScriptStateLost { method: Arc<str>, why: Arc<str> },
    /// The call ran out of its state's memory while other calls on the state held nearly all
    /// of it (`held_mib` once collected): nothing the call did, so it may be called again.
    ScriptStateFull {
        method: Arc<str>,
        held_mib: usize,
        limit_mib: usize,
    },
    /// The Lua states running the call were closed: a reload replaced them, and more replaced
    /// generations' states were kept for open calls than `--keep-replaced-scripts` allows.
    ScriptsReplaced { method: Arc<str> },
    /// The call outlived its deadline.
    DeadlineExceeded { method: Arc<str> },
    /// The client went away.
    Cancelled,
    /// The request bytes are not a message of the method's input type.
    BadRequest { expected: String, message: String },
    /// Decoding the request would take more memory than `per_limit` × `--max-message-size`.
    RequestTooCostly {
        expected: String,
        field: String,
        cost: usize,
        budget: usize,
        per_limit: usize,
    },
    /// A unary or server-streaming call whose request stream held no message, or more than
    /// one (`sent` says which).
    RequestCount {
        method: Arc<str>,
        sent: &'static str,
    },
    /// The request's content-type is not gRPC.
    NotGrpc { content_type: String },
    /// A gRPC request (its content-type says so) whose HTTP method is not POST.
    NotPost { method: String },
    /// The request's headers (metadata) are over `--max-header-list-size`, counted as HTTP/2
    /// counts them.
    HeadersTooLarge { size: usize, limit: usize },
    /// A response over `--max-message-size`.
    ResponseTooLarge { len: usize, limit: usize },
    /// A script's reply passed `--max-message-size` while it was converted (so it was never
    /// built in full).
    ReplyTooLarge { method: Arc<str>, limit: usize },
    /// A `reply` or `stream` template passed `--max-message-size` while it was rendered (it
    /// copies request fields, maybe many times), so it was never built in full.
    TemplateTooLarge { method: Arc<str>, limit: usize },
    /// A response message that could not be encoded.
    Encode { message: String },
    /// An error already expressed as a status (from tonic's decoder, for instance).
    Transport(Status),
    /// The client's `grpc-timeout` passed before the call ended.
    DeadlinePassed { timeout: std::time::Duration },
    /// A `grpc-timeout` header that is not digits followed by a unit.
    BadTimeout { value: String },
    /// Too many calls in flight; `flag` names the limit to raise.
    Overloaded { limit: usize, flag: &'static str },
    /// The server is shutting down and `--shutdown-timeout` passed before this call ended.
    ShuttingDown,
    /// A gzip-compressed request message inflated past `limit` bytes, which `flag` sets
    /// (`--max-message-size`; none on the admin API).
    InflatedTooLarge {
        limit: usize,
        flag: Option<&'static str>,
    },
    /// A gzip-compressed request message that does not inflate (`reason`, from the inflater).
    Inflate { reason: String },
    /// A message did not fit in the bytes the server holds for a connection (or for all):
    /// requests still arriving and responses the client has not read.
    BufferFull {
        held: usize,
        limit: usize,
        flag: &'static str,
    },
}

/// tonic reports an over-limit incoming message as OUT_OF_RANGE; gRPC says RESOURCE_EXHAUSTED.
const DECODE_TOO_LARGE: &str = "Error, decoded message length too large";

/// tonic's protobuf codec (behind health and reflection) reports a request that does not
/// decode as INTERNAL; it is the client's mistake, INVALID_ARGUMENT, as for every method.
const PROST_DECODE_FAILED: &str = "failed to decode Protobuf message";

/// tonic's message when a compressed request inflates past the limit: RESOURCE_EXHAUSTED as
/// gRPC says, but without the flag that sets the limit.
const INFLATED_TOO_LARGE: &str = "Error decompressing: size limit";

/// tonic's unary entry points (behind health's `Check`) answer a request stream without a
/// message INTERNAL; the gRPC status codes table calls it a cardinality violation,
/// UNIMPLEMENTED, as protoserve's own methods answer it ([`CallError::RequestCount`]).
pub const MISSING_REQUEST: &str = "Missing request message.";

/// Rewrites a tonic status that gRPC specifies differently, or that does not say which flag
/// to raise (see `DECODE_TOO_LARGE`, `INFLATED_TOO_LARGE`, `PROST_DECODE_FAILED` and
/// `MISSING_REQUEST`).
fn normalize_status(status: Status) -> Status {
    if status.metadata().contains_key(CHOSEN_STATUS) {
        return status;
    }
    if status.code() == Code::OutOfRange && status.message().starts_with(DECODE_TOO_LARGE) {
        return Status::resource_exhausted(format!(
            "{}; raise the server's limit with --max-message-size",
            status.message()
        ));
    }
    if status.code() == Code::Internal && status.message().starts_with(PROST_DECODE_FAILED) {
        return Status::invalid_argument(format!(
            "the request is not a valid message of the method's input type ({})",
            status.message()
        ));
    }
    if status.code() == Code::ResourceExhausted
        && status.message().starts_with(INFLATED_TOO_LARGE)
        && !status.message().contains("--max-message-size")
    {
        return Status::resource_exhausted(format!(
            "{}; raise the server's limit with --max-message-size",
            status.message()
        ));
    }
    if status.code() == Code::Internal && status.message() == MISSING_REQUEST {
        return Status::unimplemented(
            "the method takes exactly one request message and the client sent none; send one message, then end the request stream",
        );
    }
    status
}

/// The longest `grpc-message` value sent (bytes, percent-encoded as it goes out), whatever
/// room its block leaves (see [`status_message_room`], which usually leaves less).
/// [`MAX_STATUS_MESSAGE`] bytes of spaces or of anything not ASCII encode to three times as
/// many.
const MAX_ENCODED_STATUS_MESSAGE: usize = 6 * 1024;

/// How many bytes `c` takes in a `grpc-message` value (tonic's percent-encoding: controls,
/// bytes past ASCII, space and `"#%<>`?{}` are sent as `%XX`).
fn encoded_len(c: char) -> usize {
    let mut buf = [0u8; 4];
    c.encode_utf8(&mut buf)
        .bytes()
        .map(|b| {
            if !(0x20..0x7f).contains(&b) || b" \"#%<>`?{}".contains(&b) {
                3
            } else {
                1
            }
        })
        .sum()
}

/// `message` cut so that, percent-encoded, it takes at most `room` bytes, ending in "…" (and
/// saying so, when there is room for that): empty when not even "…" fits.
fn encoded_bounded(message: &str, room: usize) -> String {
    const MORE: &str = "… (message truncated)";
    const SHORT: &str = "…";
    let cost = |text: &str| text.chars().map(encoded_len).sum::<usize>();
    if cost(message) <= room {
        return message.to_owned();
    }
    // The note needs room for some text before it to be worth its bytes.
    let mark = if room >= 4 * cost(MORE) { MORE } else { SHORT };
    let Some(room) = room.checked_sub(cost(mark)) else {
        return String::new();
    };
    let mut used = 0;
    let mut end = 0;
    for (i, c) in message.char_indices() {
        used += encoded_len(c);
        if used > room {
            break;
        }
        end = i + c.len_utf8();
    }
    format!("{}{mark}", &message[..end])
}

/// What a status block may give its `grpc-message` value (bytes, percent-encoded): its
/// entries go out in one header list with the call's metadata (a stream's trailers, or the
/// headers of a Trailers-Only answer, which also carry the response headers), and clients
/// refuse a list past [`MAX_HEADER_BLOCK`](crate::metadata::MAX_HEADER_BLOCK). Everything
/// else in `headers` is counted as HTTP/2 counts it (the status code included, which is
/// always sent), with room for what the server adds to a Trailers-Only answer after this; the
/// message gets what is left, and never more than [`MAX_ENCODED_STATUS_MESSAGE`].
fn status_message_room(headers: &http::HeaderMap) -> usize {
    /// `:status: 200` and `date: Wed, 02 Dec 2026 03:00:00 GMT` (42 and 65 bytes as HTTP/2
    /// counts them), rounded up.
    const ADDED: usize = 128;
    let others = headers
        .iter()
        .filter(|(k, _)| **k != names::GRPC_MESSAGE && k.as_str() != CHOSEN_STATUS)
        .fold(ADDED, |n, (k, v)| {
            n.saturating_add(k.as_str().len() + v.len() + 32)
        });
    let entry = names::GRPC_MESSAGE.as_str().len() + 32;
    crate::metadata::MAX_HEADER_BLOCK
        .saturating_sub(others)
        .saturating_sub(entry)
        .min(MAX_ENCODED_STATUS_MESSAGE)
}

/// Marks a status a handler chose (an `error` entry, a rule's, a script's `grpc.status`) whose
/// code and message happen to be tonic's own for a malformed call: it leaves as chosen, not
/// rewritten. Only such statuses get the mark, and [`normalize_status_headers`] takes it off
/// on the way out, so no client or journal sees it.
pub const CHOSEN_STATUS: &str = "protoserve-chosen-status";

/// `status`, chosen by a handler: marked (see [`CHOSEN_STATUS`]) if it is one the rewrite
/// would change.
pub fn chosen(mut status: Status) -> Status {
    if matches!(
        status.code(),
        Code::OutOfRange | Code::Internal | Code::ResourceExhausted
    ) && normalize_status(status.clone()).message() != status.message()
    {
        status.metadata_mut().insert(
            CHOSEN_STATUS,
            tonic::metadata::MetadataValue::from_static("1"),
        );
    }
    status
}

/// Same rewrite for a status tonic already rendered into a header map: the headers of a
/// Trailers-Only response, or the trailers that end a stream. Other entries are kept. This is
/// where every status with metadata leaves (a script's, an `error` entry's, tonic's own), so
/// the block is held to what clients accept here: the code always goes out, and a message
/// that would make the block too large (see [`status_message_room`]: one of spaces or of text
/// past ASCII, which encode to three bytes each, or one next to kilobytes of metadata) is cut
/// to fit, ending in "…", so the client can still read the status and the trailers.
pub fn normalize_status_headers(headers: &mut http::HeaderMap) {
    // Successful calls carry grpc-status 0: one lookup and out.
    let rewrite = match headers.get(&names::GRPC_STATUS).map(|v| v.as_bytes()) {
        None | Some(b"0") => return,
        Some(b"8") | Some(b"11") | Some(b"13") => true,
        Some(_) => false,
    };
    let room = status_message_room(headers);
    let too_long = headers
        .get(&names::GRPC_MESSAGE)
        .is_some_and(|m| m.len() > room);
    // A status a handler chose is never rewritten; only such a status has the mark, and only
    // when its code is one the rewrite looks at.
    let chosen = rewrite && headers.remove(&names::CHOSEN_STATUS).is_some();
    if (!rewrite || chosen) && !too_long {
        return;
    }
    if let Some(status) = Status::from_header_map(headers) {
        let (code, message) = (status.code(), status.message().to_owned());
        let mut normalized = if chosen {
            status
        } else {
            normalize_status(status)
        };
        // A rewritten message may be longer than the one it replaces.
        let bounded = encoded_bounded(normalized.message(), room);
        let cut = bounded != normalized.message();
        if cut {
            normalized = Status::with_details_and_metadata(
                normalized.code(),
                bounded,
                normalized.details().to_vec().into(),
                normalized.metadata().clone(),
            );
        }
        if cut || normalized.code() != code || normalized.message() != message {
            // An empty message is not written, so the old one must not stay.
            headers.remove(&names::GRPC_MESSAGE);
            let _ = normalized.add_header(headers);
        }
    }
}

/// The longest status message sent (bytes). Messages come from scripts (`error(...)`) and from
/// what a reply held (a field path through a cyclic table); sent whole they would make a
/// `grpc-message` trailer larger than clients accept (16 KiB for hyper's), so the client would
/// see an HTTP/2 error instead of the status.
pub const MAX_STATUS_MESSAGE: usize = 4096;

/// `message` cut to [`MAX_STATUS_MESSAGE`] bytes (on a character boundary), saying so.
pub fn bounded_message(mut message: String) -> String {
    if message.len() <= MAX_STATUS_MESSAGE {
        return message;
    }
    const MORE: &str = "… (message truncated)";
    let mut end = MAX_STATUS_MESSAGE - MORE.len();
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    message.truncate(end);
    message.push_str(MORE);
    message
}

/// `text` cut as [`bounded_message`] cuts it, copying only the part kept: the text may be a
/// script's string of hundreds of megabytes, which the status would cut anyway.
pub fn bounded_str(text: &str) -> String {
    let mut keep = text.len().min(MAX_STATUS_MESSAGE + 4);
    while !text.is_char_boundary(keep) {
        keep -= 1;
    }
    // Cut, the part kept is still longer than the limit, so the mark is added.
    bounded_message(text[..keep].to_owned())
}

/// The same for bytes that may not be UTF-8 (read lossily; a replacement character is never
/// shorter than what it replaces, so a cut text is still marked).
pub fn bounded_lossy(bytes: &[u8]) -> String {
    let keep = bytes.len().min(MAX_STATUS_MESSAGE + 4);
    bounded_message(String::from_utf8_lossy(&bytes[..keep]).into_owned())
}

/// The most of an unknown request path a status names (bytes): a client may send a path of
/// nearly the whole header list, and each `%` in it is sent as three bytes, so echoed whole it
/// would make response headers larger than clients accept.
const SHOWN_PATH: usize = 256;
/// The most of a refused HTTP method a status message names (bytes): a method may be any
/// token, nearly as long as the whole header list.
const SHOWN_METHOD: usize = 32;

/// `text` cut to at most `max` bytes (on a character boundary), marked when cut.
pub fn clipped(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    std::borrow::Cow::Owned(format!("{}…", &text[..end]))
}

/// Bytes a script gave (a string that may be huge, or not UTF-8), as text of at most about
/// `max` bytes for a message, marked when cut.
pub fn clipped_bytes(bytes: &[u8], max: usize) -> String {
    if bytes.len() <= max {
        return String::from_utf8_lossy(bytes).into_owned();
    }
    // A character the cut splits reads as a replacement character.
    format!("{}…", String::from_utf8_lossy(&bytes[..max]))
}

/// `text` with what could disguise a log line escaped, for the log: control characters (C0,
/// DEL, C1: `\n`, `\0`, `\u{1b}`, `\u{85}`…), the Unicode line and paragraph separators
/// (U+2028, U+2029, which some terminals and log viewers break lines at) and the bidirectional
/// controls (U+202A–U+202E, U+2066–U+2069, U+200E, U+200F, U+061C, which reorder what a
/// terminal shows), each as Rust writes it (`\u{2028}`). Text a client or a script chose (an
/// error message, what it prints, metadata) could otherwise start lines that look like the
/// server's own, or make a line read otherwise than it is.
pub fn log_escaped(text: &str) -> std::borrow::Cow<'_, str> {
    escaped_where(text, disguises)
}

/// A path for the log, escaped as [`log_escaped`] escapes text: a file's name is whatever
/// whoever wrote the folder chose.
pub fn log_path(path: &std::path::Path) -> String {
    log_escaped(&path.display().to_string()).into_owned()
}

/// [`log_escaped`], but line breaks (`\n`) and tabs kept: for a message of the server's own
/// that spans lines (a reload's problem with its source excerpt) and quotes project files.
pub fn log_escaped_keeping_lines(text: &str) -> std::borrow::Cow<'_, str> {
    escaped_where(text, |c| c != '\n' && c != '\t' && disguises(c))
}

/// `text` with every line after the first that starts at the margin indented by two spaces,
/// so that only the first line of a problem starts there (as `error:`, or a log line's
/// timestamp), whatever its message holds: a file's name with a line break in it, or a quoted
/// line of a file, cannot pass for a line of its own.
pub fn indented(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.contains(['\n', '\r']) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for (n, line) in text.lines().enumerate() {
        if n > 0 {
            out.push('\n');
            if !line.is_empty() && !line.starts_with(char::is_whitespace) {
                out.push_str("  ");
            }
        }
        out.push_str(line);
    }
    std::borrow::Cow::Owned(out)
}

/// Whether `c` may make a log line look like two, or reorder the text around it.
fn disguises(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}'
                | '\u{2029}'
                | '\u{061c}'
                | '\u{200e}'
                | '\u{200f}'
                | '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
        )
}

fn escaped_where(text: &str, escape: impl Fn(char) -> bool) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(&escape) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if escape(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

impl CallError {
    /// The HTTP response that answers this error before the call reaches a handler:
    /// Trailers-Only with its status, under HTTP 415 for a request that is not gRPC (as the
    /// gRPC over HTTP/2 protocol asks), HTTP 405 for a gRPC request that is not a POST (as
    /// grpc-go answers it) and HTTP 200 otherwise.
    pub fn into_http<B: Default>(self) -> http::Response<B> {
        let http_status = match &self {
            CallError::NotGrpc { .. } => http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
            CallError::NotPost { .. } => http::StatusCode::METHOD_NOT_ALLOWED,
            _ => http::StatusCode::OK,
        };
        let mut resp = Status::from(self).into_http::<B>();
        *resp.status_mut() = http_status;
        resp
    }
}

impl From<CallError> for Status {
    fn from(e: CallError) -> Self {
        match e {
            CallError::NoHandler { method } => Status::unimplemented(format!(
                "{method} is declared in the protos but has no handler: add an entry for it to a file in handlers/"
            )),
            CallError::UnknownMethod { path, methods } => {
                let why = match (methods, path.strip_prefix('/').and_then(|p| p.split_once('/'))) {
                    (Some(methods), Some((service, method))) => format!(
                        "{service} has no method {:?}{}",
                        clipped(method, SHOWN_PATH),
                        crate::suggest::did_you_mean(method, methods.iter().map(String::as_str))
                    ),
                    _ => "no loaded service declares it".to_owned(),
                };
                Status::unimplemented(format!(
                    "unknown method {}: {why}",
                    clipped(&path, SHOWN_PATH)
                ))
            }
            CallError::NoRuleMatched { method } => Status::not_found(format!(
                "no rule of {method} matched the request; add a rule without \"when\" as a fallback"
            )),
            CallError::Deliberate(status) => {
                if status.message().len() <= MAX_STATUS_MESSAGE {
                    status
                } else {
                    Status::with_metadata(
                        status.code(),
                        bounded_message(status.message().to_owned()),
                        status.metadata().clone(),
                    )
                }
            }
            CallError::BadResponse { method, message } => Status::internal(bounded_message(
                format!("{method}: bad response: {message}"),
            )),
            CallError::RequestUnfit { method, message } => {
                Status::invalid_argument(bounded_message(format!("{method}: {message}")))
            }
            CallError::Script { message } => Status::internal(bounded_message(message)),
            CallError::ScriptBudget { method, message } => {
                Status::resource_exhausted(format!("{method}: {message}"))
            }
            CallError::ScriptMemory { method, limit_mib } => Status::resource_exhausted(format!(
                "{method}: script exceeded its memory limit of {limit_mib} MiB; raise it with --script-memory"
            )),
            CallError::ScriptStateLost { method, why } => Status::unavailable(format!(
                "{method}: the script state running this call {why}; call again"
            )),
            CallError::ScriptStateFull {
                method,
                held_mib,
                limit_mib,
            } => Status::unavailable(format!(
                "{method}: the script state running this call was out of memory because of other calls on it ({held_mib} MiB of its {limit_mib} MiB held by them); call again"
            )),
            CallError::ScriptsReplaced { method } => Status::unavailable(format!(
                "{method}: the scripts this call ran on were replaced by a reload; call again"
            )),
            CallError::DeadlineExceeded { method } => {
                Status::deadline_exceeded(format!("{method}: the call's deadline passed"))
            }
            CallError::Cancelled => Status::cancelled("the call was cancelled"),
            CallError::BadRequest { expected, message } => Status::invalid_argument(format!(
                "the request is not a valid {expected} message: {message}"
            )),
            CallError::RequestTooCostly {
                expected,
                field,
                cost,
                budget,
                per_limit,
            } => Status::resource_exhausted(format!(
                "decoding this {expected} would take over {cost} bytes of memory (at {field}), more than {budget} ({per_limit} times --max-message-size); send fewer elements or raise --max-message-size"
            )),
            // The gRPC status codes table: a request cardinality violation is UNIMPLEMENTED.
            CallError::RequestCount { method, sent } => Status::unimplemented(format!(
                "{method} takes exactly one request message and the client sent {sent}; send one message, then end the request stream"
            )),
            // A browser's gRPC-Web client would otherwise be told to send what it cannot.
            CallError::NotGrpc { content_type }
                if content_type
                    .get(..20)
                    .is_some_and(|t| t.eq_ignore_ascii_case("application/grpc-web")) =>
            {
                Status::invalid_argument(format!(
                    "content-type {content_type:?} is gRPC-Web, which this server does not speak: call it with a gRPC client (application/grpc over HTTP/2), or put a gRPC-Web proxy such as Envoy in front of it"
                ))
            }
            CallError::NotGrpc { content_type } => Status::invalid_argument(format!(
                "content-type {content_type:?} is not gRPC; send application/grpc (protobuf encoding)"
            )),
            CallError::NotPost { method } => Status::internal(format!(
                "the request's HTTP method (:method) is {:?}, and a gRPC call must be a POST",
                clipped(&method, SHOWN_METHOD)
            )),
            CallError::HeadersTooLarge { size, limit } => Status::resource_exhausted(format!(
                "the request's headers (metadata) take {size} bytes, over the limit of {limit} bytes; send less metadata, or raise the limit with --max-header-list-size"
            )),
            CallError::ResponseTooLarge { len, limit } => Status::resource_exhausted(format!(
                "the response is {len} bytes, over the limit of {limit} bytes; raise it with --max-message-size"
            )),
            CallError::ReplyTooLarge { method, limit } => Status::resource_exhausted(format!(
                "{method}: the response passed the limit of {limit} bytes while the script's reply \
                 was converted; send less, or raise the limit with --max-message-size"
            )),
            CallError::TemplateTooLarge { method, limit } => Status::resource_exhausted(format!(
                "{method}: the reply passed the limit of {limit} bytes while its template copied \
                 request fields into it; send a smaller request, or raise the limit with \
                 --max-message-size"
            )),
            CallError::Encode { message } => {
                Status::internal(format!("encoding the response failed: {message}"))
            }
            CallError::Transport(status) => normalize_status(status),
            // (A zero timeout, `0S` or `0n`, is said as such, not as Rust writes it: "0ns".)
            CallError::DeadlinePassed { timeout } if timeout.is_zero() => {
                Status::deadline_exceeded(
                    "deadline exceeded: the call came with a grpc-timeout of 0 s, so its deadline \
                     had passed when it arrived",
                )
            }
            CallError::DeadlinePassed { timeout } => Status::deadline_exceeded(format!(
                "deadline exceeded: the call outlived its grpc-timeout of {timeout:?}"
            )),
            CallError::BadTimeout { value } => Status::invalid_argument(format!(
                "malformed grpc-timeout {value:?}: send digits followed by one unit of H, M, S, m, u, n (such as \"250m\")"
            )),
            CallError::Overloaded { limit, flag } => Status::resource_exhausted(format!(
                "too many calls in flight (limit {limit}); retry later, or raise the limit with {flag}"
            )),
            CallError::BufferFull { held, limit, flag } => Status::resource_exhausted(format!(
                "the server already holds {held} bytes of messages (limit {limit}, {flag}): \
                 requests still arriving and responses the client has not read; read the \
                 responses, or raise {flag}"
            )),
            // The words of tonic's decoder, which inflated requests itself before, so a client
            // sees what it saw then (with the flag to raise, as `normalize_status` has it).
            CallError::InflatedTooLarge { limit, flag } => {
                let mut message = format!(
                    "{INFLATED_TOO_LARGE}, of {limit} bytes, exceeded while decompressing message"
                );
                if let Some(flag) = flag {
                    message.push_str(&format!("; raise the server's limit with {flag}"));
                }
                Status::resource_exhausted(message)
            }
            CallError::Inflate { reason } => Status::internal(format!(
                "Error decompressing: {reason}, while sending request"
            )),
            CallError::ShuttingDown => Status::unavailable(
                "the server is shutting down and --shutdown-timeout passed before this call ended",
            ),
        }
    }
}

/// Why the admin API refused a request. Both front ends answer from here: HTTP with a status
/// and a JSON body ([`AdminError::http_status`], [`AdminError::json`]), gRPC with a
/// [`Status`], so the two always agree.
#[derive(Debug)]
pub enum AdminError {
    /// The request is malformed: bad JSON, a bad parameter, a bad `when`.
    BadRequest(String),
    /// The inputs or the handler entry have problems; nothing changed.
    Invalid(Vec<crate::control::Problem>),
    /// No such method, route, call or handler.
    NotFound(String),
    /// The server has an admin token and the request did not carry it.
    Unauthenticated,
    /// A body over the admin API's limit.
    TooLarge { limit: usize },
    /// A journal operation on a server started with `--journal off`.
    JournalOff,
    /// The request took longer than the admin API allows.
    Timeout(std::time::Duration),
    /// The server failed to build its answer.
    Internal(String),
    /// Every connection the admin listener serves has a request in flight (the connection is
    /// refused before any request is read).
    Crowded { connections: usize },
    /// Answers not yet taken by their clients hold so much that this one was dropped.
    Busy {
        answer: usize,
        held: usize,
        limit: usize,
        within: std::time::Duration,
    },
}

impl AdminError {
    pub fn http_status(&self) -> http::StatusCode {
        use http::StatusCode as S;
        match self {
            AdminError::BadRequest(_) | AdminError::Invalid(_) => S::BAD_REQUEST,
            AdminError::NotFound(_) => S::NOT_FOUND,
            AdminError::Unauthenticated => S::UNAUTHORIZED,
            AdminError::TooLarge { .. } => S::PAYLOAD_TOO_LARGE,
            AdminError::JournalOff => S::CONFLICT,
            AdminError::Timeout(_) => S::REQUEST_TIMEOUT,
            AdminError::Internal(_) => S::INTERNAL_SERVER_ERROR,
            AdminError::Busy { .. } | AdminError::Crowded { .. } => S::SERVICE_UNAVAILABLE,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            AdminError::BadRequest(_) => "bad_request",
            AdminError::Invalid(_) => "invalid",
            AdminError::NotFound(_) => "not_found",
            AdminError::Unauthenticated => "unauthenticated",
            AdminError::TooLarge { .. } => "too_large",
            AdminError::JournalOff => "journal_off",
            AdminError::Timeout(_) => "timeout",
            AdminError::Internal(_) => "internal",
            AdminError::Busy { .. } | AdminError::Crowded { .. } => "busy",
        }
    }

    /// The sentence a person reads.
    pub fn message(&self) -> String {
        match self {
            AdminError::BadRequest(m) | AdminError::NotFound(m) | AdminError::Internal(m) => {
                m.clone()
            }
            AdminError::Invalid(problems) => {
                let mut m = format!("{} problem(s); nothing changed", problems.len());
                if problems.len() > MAX_LISTED_PROBLEMS {
                    m.push_str(&format!(
                        " (the first {MAX_LISTED_PROBLEMS} follow)"
                    ));
                }
                for p in problems.iter().take(MAX_LISTED_PROBLEMS) {
                    m.push('\n');
                    m.push_str(&p.message);
                }
                m
            }
            AdminError::Unauthenticated => "this admin API needs its token: send the header `Authorization: Bearer TOKEN` (gRPC: metadata `authorization: Bearer TOKEN`), with the TOKEN given to the server by --admin-token or PROTOSERVE_ADMIN_TOKEN".into(),
            AdminError::TooLarge { limit } => format!("the request body is larger than the admin API accepts ({limit} bytes)"),
            AdminError::JournalOff => "the journal is off (the server was started with --journal off); restart it without that flag to record calls".into(),
            AdminError::Timeout(t) => format!("the request took longer than {t:?}"),
            AdminError::Crowded { connections } => format!(
                "the admin API serves {connections} connections at once, and each has a request in flight; retry once one ends"
            ),
            AdminError::Busy { answer, held, limit, within } => format!(
                "the answer ({answer} bytes) was dropped: answers not yet taken by their clients hold {held} bytes, and the admin API holds at most {limit}; retry once they are read (an answer not taken within {within:?} is dropped with its connection)"
            ),
        }
    }

    /// The JSON body: `{"error": kind, "message": …}`, plus `"problems"` for invalid inputs.
    pub fn json(&self) -> serde_json::Value {
        let mut body = serde_json::json!({"error": self.kind(), "message": self.message()});
        if let AdminError::Invalid(problems) = self {
            let listed = &problems[..problems.len().min(MAX_LISTED_PROBLEMS)];
            body["problems"] = serde_json::to_value(listed).unwrap_or_default();
        }
        body
    }
}

/// The most problems one admin answer lists: a 1 MiB body can hold tens of thousands (a
/// key given twice in every object), and listing each, twice, made answers 70 times the
/// body's size; the count is always given in full.
pub const MAX_LISTED_PROBLEMS: usize = 100;

impl From<crate::control::Refusal> for AdminError {
    fn from(r: crate::control::Refusal) -> Self {
        match r {
            crate::control::Refusal::Invalid { problems } => AdminError::Invalid(problems),
            crate::control::Refusal::NotFound { message } => AdminError::NotFound(message),
        }
    }
}

impl From<AdminError> for Status {
    fn from(e: AdminError) -> Self {
        let message = bounded_message(e.message());
        match e {
            AdminError::BadRequest(_) | AdminError::Invalid(_) => Status::invalid_argument(message),
            AdminError::NotFound(_) => Status::not_found(message),
            AdminError::Unauthenticated => Status::unauthenticated(message),
            AdminError::TooLarge { .. } => Status::resource_exhausted(message),
            AdminError::JournalOff => Status::failed_precondition(message),
            AdminError::Timeout(_) => Status::deadline_exceeded(message),
            AdminError::Internal(_) => Status::internal(message),
            AdminError::Busy { .. } | AdminError::Crowded { .. } => Status::unavailable(message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Line separators and bidi controls are escaped like control characters; a message of the
    /// server's own keeps its line breaks, nothing else.
    #[test]
    fn log_text_escapes_line_separators_and_bidi_controls() {
        assert_eq!(
            log_escaped("a\u{2028}b\u{202e}c\u{2066}d\u{85}e\nf"),
            "a\\u{2028}b\\u{202e}c\\u{2066}d\\u{85}e\\nf"
        );
        assert_eq!(
            log_escaped_keeping_lines("a\u{2029}b\n\tc\u{7f}"),
            "a\\u{2029}b\n\tc\\u{7f}"
        );
        assert!(matches!(
            log_escaped("plain é"),
            std::borrow::Cow::Borrowed(_)
        ));
    }

    /// What [`encoded_bounded`] counts is what tonic sends: a cut message goes out within the
    /// bound, whatever it is made of, and a short one is left alone.
    #[test]
    fn cut_messages_go_out_within_the_bound() {
        for message in [
            " ".repeat(5000),
            "é".repeat(3000),
            "%{}\"#<>`?\u{1}".repeat(700),
            "plain-words".repeat(800),
        ] {
            let cut = encoded_bounded(&message, MAX_ENCODED_STATUS_MESSAGE);
            assert!(cut.len() < message.len(), "{}", &message[..20]);
            let mut headers = http::HeaderMap::new();
            Status::internal(cut).add_header(&mut headers).unwrap();
            let sent = headers["grpc-message"].len();
            assert!(sent <= MAX_ENCODED_STATUS_MESSAGE, "{sent}");
            assert!(sent > MAX_ENCODED_STATUS_MESSAGE - 16, "{sent}");
        }
        assert_eq!(
            encoded_bounded("short one", MAX_ENCODED_STATUS_MESSAGE),
            "short one"
        );
    }
}
