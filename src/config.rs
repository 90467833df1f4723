//! Handler files (`handlers/*.json`) → typed specs → handlers validated against the pool.
//!
//! ```json
//! { "service": "helloworld.Greeter",
//!   "methods": { "SayHello": { "reply": { "message": "Hello, {{name}}!" } } } }
//! ```
//! Everything a file says is checked here, once: the service and method exist, every field and
//! placeholder exists and has the right type, the kind suits the method's shape. Problems come
//! back as [`StartupError`]s naming the file, the line of the entry and the entry itself.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use prost_reflect::DescriptorPool;
use serde::Deserialize;
use serde_json::{Map, Value as Json};

use crate::error::{Location, StartupError, StartupErrors};
use crate::handler::declarative::{Action, ActionKind, Declarative, Responder};
use crate::handler::error::{ErrorAction, ErrorSpec};
use crate::handler::reply::ReplyAction;
use crate::handler::rules::Rule;
use crate::handler::stream::StreamAction;
use crate::handler::{echo, Around, Handler, HandlerTable, MethodInfo, Origin};
use crate::jsonpos;
use crate::matcher::Condition;
use crate::metadata::parse_pairs;
use crate::regexes::Regexes;
use crate::script::{ScriptRef, ScriptSetupError, Scripts};
use crate::suggest::did_you_mean;
use crate::template::{EntryError, EntryErrors};

/// One handler file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandlerFile {
    pub service: String,
    pub methods: Map<String, Json>,
}

/// A method entry, a rule, or both: which keys are allowed where is checked in code. It
/// borrows the parts it compiles from the file's JSON (a `stream` may hold a million items).
#[derive(Debug, Default)]
pub struct EntrySpec<'a> {
    pub when: Option<&'a Json>,
    pub reply: Option<&'a Json>,
    pub error: Option<ErrorSpec>,
    pub stream: Option<&'a [Json]>,
    pub rules: Option<&'a [Json]>,
    pub script: Option<String>,
    pub function: Option<String>,
    pub delay_ms: Option<u64>,
    pub headers: BTreeMap<String, String>,
    /// The kinds of answer given (`reply`, `error`, `stream`, `echo`, `rules`), in the order
    /// written, readable or not.
    pub kinds: Vec<&'static str>,
}

/// The keys of an entry or a rule.
const ENTRY_KEYS: &[&str] = &[
    "when", "reply", "error", "stream", "echo", "rules", "script", "function", "delay_ms",
    "headers",
];

/// Handlers added at run time through the admin API, by `package.Service/Method`: the same JSON
/// a handler file has under `"methods"`, laid over the files' handlers.
pub type RuntimeHandlers = BTreeMap<String, RuntimeEntry>;

/// One runtime handler's entry, with the text it was sent as when it came as text (an HTTP
/// body): its problems are then located in that text by line and column, as a file's are.
#[derive(Debug, Clone)]
pub struct RuntimeEntry {
    pub entry: Json,
    pub text: Option<Arc<str>>,
}

/// The name runtime handler `method`'s problems are reported under, in place of a file name.
pub fn runtime_source(method: &str) -> PathBuf {
    PathBuf::from(format!("runtime handler {method}"))
}

/// A script entry waiting for its generation's Lua states, which start once every entry is read.
pub struct PendingScript {
    pub found: ScriptRef,
    pub around: Around,
    pub origin: Origin,
}

/// What reading the handler entries leaves for the builder: script entries by method path.
pub type PendingScripts = HashMap<Arc<str>, PendingScript>;

/// A built entry: declarative handlers are complete; scripts wait for their engine.
enum Built {
    Ready(Arc<dyn Handler>),
    Script(ScriptRef),
}

/// The problems of one entry (each part of it is checked, so there may be several), or one
/// with a file it points to.
enum BuildError {
    Entry(EntryErrors),
    Startup(StartupError),
}

impl From<EntryError> for BuildError {
    fn from(e: EntryError) -> Self {
        BuildError::Entry(e.into())
    }
}

impl From<EntryErrors> for BuildError {
    fn from(e: EntryErrors) -> Self {
        BuildError::Entry(e)
    }
}

/// Reads every `*.json` in `dir` and installs the handlers into `table`.
/// The services the handler files in `dir` name, read leniently before the schema is compiled
/// (a big tree decodes only these into its pool); [`load_handlers`] reports any problem.
pub fn named_services(dir: &Path) -> Vec<String> {
    #[derive(Deserialize)]
    struct Service {
        service: String,
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json") && !crate::input::is_hidden(p))
        .filter_map(|p| crate::input::read_to_string(&p).ok())
        .filter_map(|b| serde_json::from_str::<Service>(&b).ok())
        .map(|s| s.service)
        .collect()
}

pub fn load_handlers(
    dir: &Path,
    pool: &DescriptorPool,
    table: &mut HandlerTable,
    scripts: &mut Scripts<'_>,
    pending: &mut PendingScripts,
    regexes: &mut Regexes,
) -> Result<(), StartupErrors> {
    let mut errors = StartupErrors::default();
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "json") && !crate::input::is_hidden(p))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(StartupError::Usage(format!(
                "--handlers {}: no such folder (create it, or point --handlers at the folder with your handler files)",
                dir.display()
            ))
            .into())
        }
        Err(_) if dir.exists() && !dir.is_dir() => {
            return Err(StartupError::Usage(format!(
                "--handlers {}: not a folder (point --handlers at the folder with your handler files)",
                dir.display()
            ))
            .into())
        }
        Err(e) => return Err(StartupError::io(dir, e).into()),
    };
    files.sort();
    let mut served_by: HashMap<Arc<str>, PathBuf> = HashMap::new();
    for file in files {
        if let Err(e) = load_file(
            &file,
            pool,
            table,
            scripts,
            pending,
            regexes,
            &mut served_by,
        ) {
            errors.absorb(e);
        }
    }
    errors.into_result(())
}

fn load_file(
    file: &Path,
    pool: &DescriptorPool,
    table: &mut HandlerTable,
    scripts: &mut Scripts<'_>,
    pending: &mut PendingScripts,
    regexes: &mut Regexes,
    served_by: &mut HashMap<Arc<str>, PathBuf>,
) -> Result<(), StartupErrors> {
    let text = crate::input::read_text(file)?;
    // A key given twice is refused: which of the two was meant cannot be known, and the parsed
    // file holds only one. The rest of the file is still read (with the one it holds), so
    // its other problems are listed in the same pass.
    let mut errors = StartupErrors::default();
    for duplicate in crate::jsonkeys::duplicates(&text) {
        errors.push(duplicate.handler_error(file));
    }
    let problem = |e: serde_json::Error| {
        let (message, hint) = if crate::input::nested_too_deep(&e) {
            (
                format!(
                    "arrays and objects nested more than {} deep (the most a handler file may nest)",
                    crate::input::JSON_MAX_DEPTH
                ),
                "nest its values less deeply".to_owned(),
            )
        } else {
            (
                crate::input::json_error_message(&e),
                "a handler file is {\"service\": \"pkg.Service\", \"methods\": {\"Method\": {…}}}"
                    .to_owned(),
            )
        };
        let (line, col) = crate::input::json_error_at(text.as_bytes(), &e);
        StartupError::Handler {
            location: Location::at(file, line, col),
            entry: String::new(),
            message,
            hint: Some(hint),
        }
    };
    let parsed = serde_json::from_str::<HandlerFile>(&text).map_err(problem);
    let parsed = match parsed {
        Ok(parsed) => parsed,
        // A second "service" or "methods", which serde names without the first's place, is
        // listed already; serde stopped there, so the rest is read as plain JSON (which takes
        // repeats) for a mistake after it.
        Err(StartupError::Handler { message, .. })
            if !errors.is_empty() && message.starts_with("duplicate field `") =>
        {
            if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(&text) {
                errors.push(problem(e));
            }
            return Err(errors);
        }
        Err(e) => {
            errors.push(e);
            return Err(errors);
        }
    };
    let repeats = errors;
    let Some(service) = pool.get_service_by_name(&parsed.service) else {
        let names: Vec<String> = pool.services().map(|s| s.full_name().to_owned()).collect();
        let (line, col) = locate_key(&text, "service");
        let mut errors = repeats;
        errors.push(StartupError::Handler {
            location: Location::at(file, line, col),
            entry: parsed.service.clone(),
            message: format!(
                "unknown service \"{}\"{}",
                parsed.service,
                did_you_mean(&parsed.service, names.iter().map(String::as_str))
            ),
            hint: Some(format!(
                "services loaded from the protos: {}",
                names.join(", ")
            )),
        });
        return Err(errors);
    };
    // Problems are located once every entry is read: one pass over the text finds them all.
    let mut found: Vec<(&str, Found)> = Vec::new();
    for (method_name, entry) in &parsed.methods {
        let entry_name = format!("{}/{}", service.full_name(), method_name);
        if !service.methods().any(|m| m.name() == method_name) {
            let names: Vec<String> = service.methods().map(|m| m.name().to_owned()).collect();
            found.push((
                method_name,
                Found::AtMethod(StartupError::Handler {
                    location: Location::file(file),
                    entry: entry_name,
                    message: format!(
                        "{} has no method \"{method_name}\"{}",
                        service.full_name(),
                        did_you_mean(method_name, names.iter().map(String::as_str))
                    ),
                    hint: Some(format!(
                        "add the rpc to the service in the .proto, or use one of: {}",
                        names.join(", ")
                    )),
                }),
            ));
            continue;
        }
        let path = format!("/{entry_name}");
        let Some(info) = table.info(&path) else {
            continue;
        };
        if let Some(previous) = served_by.get(&info.path) {
            found.push((
                method_name,
                Found::AtMethod(StartupError::Handler {
                    location: Location::file(file),
                    entry: entry_name,
                    message: format!("already has a handler in {}", previous.display()),
                    hint: Some("keep one handler per method".into()),
                }),
            ));
            continue;
        }
        served_by.insert(info.path.clone(), file.to_path_buf());
        let origin = Origin::File(file.into());
        if let Err(e) = install(entry, &info, origin, table, scripts, pending, regexes) {
            found.push((method_name, Found::Entry(e, entry_name)));
        }
    }
    let full_path = |method: &str, path: &str| {
        if path.is_empty() {
            format!("methods.{method}")
        } else {
            format!("methods.{method}.{path}")
        }
    };
    let mut paths = Vec::new();
    for (method, f) in &found {
        paths.push(full_path(method, ""));
        if let Found::Entry(BuildError::Entry(problems), _) = f {
            paths.extend(problems.0.iter().map(|e| full_path(method, &e.path)));
        }
    }
    let positions = jsonpos::Positions::find(&text, paths.iter().map(String::as_str));
    let mut errors = repeats;
    for (method, f) in found {
        let at = |path: &str| {
            let (line, col) = positions
                .of(&full_path(method, path))
                .unwrap_or_else(|| locate_key(&text, method));
            Location::at(file, line, col)
        };
        match f {
            Found::AtMethod(mut e) => {
                if let StartupError::Handler { location, .. } = &mut e {
                    *location = at("");
                }
                errors.push(e);
            }
            Found::Entry(e, entry_name) => {
                // In the order they appear in the file.
                let mut located = e.located(at, entry_name);
                located.sort_by_key(|e| e.location().map(|l| (l.line, l.col)));
                for e in located {
                    errors.push(e);
                }
            }
        }
    }
    errors.into_result(())
}

/// A problem of one method entry, before it is located in its file.
enum Found {
    /// At the method's key.
    AtMethod(StartupError),
    /// Inside the entry (named by the `String`), each at its own path.
    Entry(BuildError, String),
}

/// Lays the runtime handlers over the table: each replaces whatever the files set for its
/// method. Problems name the entry as `runtime handler package.Service/Method`.
pub fn load_runtime(
    entries: &RuntimeHandlers,
    pool: &DescriptorPool,
    table: &mut HandlerTable,
    scripts: &mut Scripts<'_>,
    pending: &mut PendingScripts,
    regexes: &mut Regexes,
) -> Result<(), StartupErrors> {
    let mut errors = StartupErrors::default();
    for (name, runtime) in entries {
        let location = Location::file(runtime_source(name));
        let info = match runtime_method(pool, table, name) {
            Ok(info) => info,
            Err(message) => {
                errors.push(StartupError::Handler {
                    location,
                    entry: String::new(),
                    message,
                    // The admin API checked the name when the handler was put, so the
                    // method has gone from the protos since.
                    hint: Some(format!(
                        "the protos no longer declare it: add the rpc back, or remove this handler (DELETE /v1/handlers/{name} on the admin API, or POST /v1/reset)"
                    )),
                });
                continue;
            }
        };
        if let Err(e) = install(
            &runtime.entry,
            &info,
            Origin::Runtime,
            table,
            scripts,
            pending,
            regexes,
        ) {
            let Some(text) = runtime.text.as_deref() else {
                for e in e.located(|_| location.clone(), String::new()) {
                    errors.push(e);
                }
                continue;
            };
            // Sent as text: each problem at its own line and column in it, in their order.
            let positions = jsonpos::Positions::find(text, e.paths());
            let start = text_start(text);
            let at = |path: &str| {
                let (line, col) = positions.of(path).unwrap_or(start);
                Location::at(&location.path, line, col)
            };
            let mut located = e.located(at, String::new());
            located.sort_by_key(|e| e.location().map(|l| (l.line, l.col)));
            for e in located {
                errors.push(e);
            }
        }
    }
    errors.into_result(())
}

/// The 1-based line and column of the first character of `text` that is not white space.
fn text_start(text: &str) -> (usize, usize) {
    crate::input::position(text.as_bytes(), text.len() - text.trim_start().len())
}

/// The method a runtime entry names, or why it names none (with the closest names).
pub fn runtime_method(
    pool: &DescriptorPool,
    table: &HandlerTable,
    name: &str,
) -> Result<Arc<MethodInfo>, String> {
    let Some((service_name, method_name)) = name.rsplit_once('/') else {
        return Err(format!("\"{name}\" is not package.Service/Method"));
    };
    let Some(service) = pool.get_service_by_name(service_name) else {
        let names: Vec<String> = pool.services().map(|s| s.full_name().to_owned()).collect();
        return Err(format!(
            "unknown service \"{service_name}\"{}",
            did_you_mean(service_name, names.iter().map(String::as_str))
        ));
    };
    table.info(&format!("/{name}")).ok_or_else(|| {
        let names: Vec<String> = service.methods().map(|m| m.name().to_owned()).collect();
        format!(
            "{service_name} has no method \"{method_name}\"{}",
            did_you_mean(method_name, names.iter().map(String::as_str))
        )
    })
}

/// Builds one entry and puts it in the table (scripts: in `pending`, for their engine).
fn install(
    entry: &Json,
    info: &Arc<MethodInfo>,
    origin: Origin,
    table: &mut HandlerTable,
    scripts: &mut Scripts<'_>,
    pending: &mut PendingScripts,
    regexes: &mut Regexes,
) -> Result<(), BuildError> {
    let (built, around) = build_handler(entry, info, scripts, regexes)?;
    match built {
        Built::Ready(handler) => {
            let (least, limit) = (handler.least_message_size(), scripts.max_message_size());
            if least > limit {
                // Every call that sends it would fail: refused here, as `check` would.
                return Err(EntryError {
                    path: String::new(),
                    message: format!(
                        "a reply of this entry is at least {least} bytes encoded, over \
                         --max-message-size ({limit} bytes): every call that sends it would \
                         fail; make it smaller, or raise --max-message-size"
                    ),
                }
                .into());
            }
            pending.remove(&info.path);
            table.set_handler(&info.path, handler, around, origin);
        }
        Built::Script(found) => {
            pending.insert(
                info.path.clone(),
                PendingScript {
                    found,
                    around,
                    origin,
                },
            );
        }
    }
    Ok(())
}

impl BuildError {
    /// The paths inside the entry of the problems that have one.
    fn paths(&self) -> impl Iterator<Item = &str> {
        let problems = match self {
            BuildError::Entry(errors) => errors.0.as_slice(),
            BuildError::Startup(_) => &[],
        };
        problems.iter().map(|e| e.path.as_str())
    }

    /// As startup errors, each at the location `at` gives for its path inside the entry and
    /// naming the entry (and the key inside it).
    fn located(self, at: impl Fn(&str) -> Location, entry_name: String) -> Vec<StartupError> {
        match self {
            BuildError::Startup(e) => vec![e],
            BuildError::Entry(errors) => errors
                .0
                .into_iter()
                .map(|e| StartupError::Handler {
                    location: at(&e.path),
                    entry: match (entry_name.is_empty(), e.path.is_empty()) {
                        (_, true) => entry_name.clone(),
                        (true, false) => e.path,
                        (false, false) => format!("{entry_name}: {}", e.path),
                    },
                    message: e.message,
                    hint: None,
                })
                .collect(),
        }
    }
}

fn build_handler(
    entry: &Json,
    info: &Arc<MethodInfo>,
    scripts: &mut Scripts<'_>,
    regexes: &mut Regexes,
) -> Result<(Built, Around), BuildError> {
    let mut problems = EntryErrors::default();
    let Some(spec) = parse_spec(entry, "", &mut problems) else {
        return Err(problems.into());
    };
    if spec.when.is_some() {
        problems.push("when", "\"when\" belongs inside a rule of \"rules\"");
    }
    // A single reply/error/stream/echo keeps delay_ms and headers itself (the delay goes before
    // every message); next to "rules" or "script" the router applies them around the handler.
    let around = if spec.script.is_some() || spec.rules.is_some() {
        let delay = problems.keep(delay(spec.delay_ms, "delay_ms"));
        let headers = problems.keep(parse_pairs(&spec.headers, "headers"));
        delay.zip(headers).map(|(delay, headers)| Around {
            delay,
            headers: Arc::new(headers),
        })
    } else {
        Some(Around::default())
    };
    let Some(script) = spec.script.as_deref() else {
        let handler = build_declarative(&spec, info, &mut problems, regexes);
        return match (handler, around) {
            (Some(handler), Some(around)) if problems.is_empty() => {
                Ok((Built::Ready(handler), around))
            }
            _ => Err(problems.into()),
        };
    };
    for other in &spec.kinds {
        problems.push(
            "",
            format!("\"script\" cannot be combined with \"{other}\""),
        );
    }
    let Some(around) = around.filter(|_| problems.is_empty()) else {
        return Err(problems.into());
    };
    let function = spec.function.as_deref().unwrap_or(info.descriptor.name());
    let found = scripts.add(script, function, info).map_err(|e| match e {
        ScriptSetupError::Entry(m) => tmpl_err("script", &m).into(),
        ScriptSetupError::Script(e) => BuildError::Startup(e),
    })?;
    Ok((Built::Script(found), around))
}

/// A declarative entry's handler; its problems go to `problems`. Each rule of a `rules` list
/// is checked, and each part of every rule, so that one run of `check` names them all.
fn build_declarative(
    spec: &EntrySpec,
    info: &Arc<MethodInfo>,
    problems: &mut EntryErrors,
    regexes: &mut Regexes,
) -> Option<Arc<dyn Handler>> {
    if spec.function.is_some() {
        problems.push("function", "\"function\" goes with \"script\"");
    }
    if spec.kinds.contains(&"rules") {
        for other in spec.kinds.iter().filter(|k| **k != "rules") {
            problems.push(
                "",
                format!("\"rules\" cannot be combined with \"{other}\"; put it in a rule"),
            );
        }
        let rules = spec.rules.unwrap_or_default();
        if rules.is_empty() && spec.rules.is_some() {
            problems.push("rules", "give at least one rule");
        }
        let mut compiled = Vec::with_capacity(rules.len());
        // The entry's headers go out in the same header block as each rule's.
        let around = crate::metadata::sent_size(&spec.headers);
        for (i, rule) in rules.iter().enumerate() {
            compiled.extend(build_rule(
                rule,
                info,
                &format!("rules[{i}]"),
                around,
                problems,
                regexes,
            ));
        }
        let complete = spec.rules.is_some() && compiled.len() == rules.len() && !rules.is_empty();
        return complete.then(|| {
            let handler: Arc<dyn Handler> = Arc::new(Declarative::new(Responder::Rules(compiled)));
            handler
        });
    }
    let action = build_action(spec, info, "", 0, problems)?;
    Some(Arc::new(Declarative::new(Responder::Single(Box::new(
        action,
    )))))
}

/// One rule of a `rules` list at `path`: its condition and its action, each checked; problems
/// go to `problems`.
fn build_rule(
    rule: &Json,
    info: &Arc<MethodInfo>,
    path: &str,
    around: usize,
    problems: &mut EntryErrors,
    regexes: &mut Regexes,
) -> Option<Rule> {
    let spec = parse_spec(rule, path, problems)?;
    let mut fine = true;
    for (key, given) in [
        ("rules", spec.kinds.contains(&"rules")),
        ("script", spec.script.is_some()),
        ("function", spec.function.is_some()),
    ] {
        if given {
            fine = false;
            problems.push(
                join(path, key),
                format!("a rule answers with reply, error, stream or echo, not \"{key}\""),
            );
        }
    }
    let when = match spec.when {
        Some(w) => problems
            .keep(Condition::compile(
                w,
                &info.input,
                &join(path, "when"),
                regexes,
            ))
            .map(Some),
        None => Some(None),
    };
    let action = if spec.kinds.contains(&"rules") {
        None
    } else {
        build_action(&spec, info, path, around, problems)
    };
    Some(Rule {
        when: when?,
        action: action?,
    })
    .filter(|_| fine)
}

/// `path.key`, or `key` at the top of an entry.
fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// Reads an entry or a rule: every key that is unknown or of the wrong type goes to
/// `problems`, and the rest is read, so that its own problems are found too.
fn parse_spec<'a>(json: &'a Json, path: &str, problems: &mut EntryErrors) -> Option<EntrySpec<'a>> {
    let Json::Object(obj) = json else {
        problems.push(path, "an entry is an object such as {\"reply\": {…}}");
        return None;
    };
    let mut spec = EntrySpec::default();
    for (key, value) in obj {
        let at = join(path, key);
        // `null` leaves a key unset, as if it were not there.
        if value.is_null() && ENTRY_KEYS.contains(&key.as_str()) {
            continue;
        }
        if let Some(kind) = ["reply", "error", "stream", "echo", "rules"]
            .into_iter()
            .find(|k| k == key)
        {
            spec.kinds.push(kind);
        }
        match key.as_str() {
            "when" => spec.when = Some(value),
            "reply" => spec.reply = Some(value),
            "error" => spec.error = ErrorSpec::parse(value, &at, problems),
            "stream" => match value {
                Json::Array(items) => spec.stream = Some(items),
                _ => problems.push(at, "\"stream\" takes an array of responses"),
            },
            "echo" => match value {
                Json::Bool(true) => {}
                Json::Object(o) if o.is_empty() => {}
                _ => problems.push(at, "\"echo\" takes {} (it has no options)"),
            },
            "rules" => match value {
                Json::Array(items) => spec.rules = Some(items),
                _ => problems.push(at, "\"rules\" takes an array of rules"),
            },
            "script" | "function" => match value {
                Json::String(text) if key == "script" => spec.script = Some(text.clone()),
                Json::String(text) => spec.function = Some(text.clone()),
                _ => problems.push(at, format!("\"{key}\" takes a string")),
            },
            "delay_ms" => match value.as_u64() {
                Some(ms) => spec.delay_ms = Some(ms),
                None => problems.push(
                    at,
                    format!(
                        "\"delay_ms\" takes a whole number of milliseconds from 0 to {MAX_DELAY_MS}"
                    ),
                ),
            },
            "headers" => match serde_json::from_value(value.clone()) {
                Ok(headers) => spec.headers = headers,
                Err(_) => problems.push(
                    at,
                    "\"headers\" takes an object of strings, such as {\"x-mock\": \"1\"}",
                ),
            },
            other => problems.push(
                at,
                format!(
                    "unknown key {other:?}{}; an entry takes {}",
                    did_you_mean(other, ENTRY_KEYS.iter().copied()),
                    ENTRY_KEYS.join(", ")
                ),
            ),
        }
    }
    Some(spec)
}

/// The action of an entry or a rule; its problems go to `problems`.
/// `around` is the size of the entry's headers sent with this action's (see
/// [`check_one_block`]).
fn build_action(
    spec: &EntrySpec,
    info: &MethodInfo,
    path: &str,
    around: usize,
    problems: &mut EntryErrors,
) -> Option<Action> {
    // Every kind given is checked, even when there are several; a kind whose value could not
    // be read is reported already, and still counts as given.
    let mut kinds: Vec<Option<ActionKind>> = spec
        .kinds
        .iter()
        .map(|kind| match *kind {
            "reply" => spec.reply.and_then(|reply| {
                problems
                    .keep(ReplyAction::compile(reply, info, &join(path, "reply")))
                    .map(ActionKind::Reply)
            }),
            "error" => spec.error.as_ref().and_then(|e| {
                problems
                    .keep(ErrorAction::compile(e, info, &join(path, "error")))
                    .map(ActionKind::Error)
            }),
            "stream" => spec.stream.and_then(|items| {
                problems
                    .keep(StreamAction::compile(items, info, &join(path, "stream")))
                    .map(ActionKind::Stream)
            }),
            "echo" => problems
                .keep(echo::check(info, &join(path, "echo")))
                .map(|()| ActionKind::Echo),
            _ => None,
        })
        .collect();
    let kind = match spec.kinds.as_slice() {
        [_] => kinds.pop().flatten(),
        [] => {
            problems.push(path, "say how to answer: \"reply\", \"error\", \"stream\", \"echo\", \"rules\" or \"script\"");
            None
        }
        many => {
            problems.push(path, format!("choose one of {}", many.join(", ")));
            None
        }
    };
    let headers = problems.keep(parse_pairs(&spec.headers, &join(path, "headers")));
    let headers = headers.filter(|_| check_one_block(spec, path, around, problems));
    let delay = problems.keep(delay(spec.delay_ms, &join(path, "delay_ms")));
    Some(Action {
        kind: kind?,
        delay: delay?,
        headers: headers?,
    })
}

/// Whether what one action sends in one header block fits it: the entry's headers (`around`
/// bytes, next to `rules`), the action's and, for an error (a Trailers-Only answer), its
/// metadata. Each list is checked on its own by [`parse_pairs`]; together they could pass the
/// limit, and a client refuses the block instead of reading the reply or status.
fn check_one_block(
    spec: &EntrySpec,
    path: &str,
    around: usize,
    problems: &mut EntryErrors,
) -> bool {
    use crate::metadata::{sent_size, MAX_HEADER_BLOCK, MAX_SENT_METADATA, PROTOCOL_ENTRIES};
    let own = sent_size(&spec.headers);
    let error = spec.error.as_ref().map_or(0, |e| sent_size(&e.metadata));
    let parts = [around, own, error];
    let total = parts.iter().fold(0usize, |n, p| n.saturating_add(*p));
    // A list past the limit by itself is reported by parse_pairs.
    if total <= MAX_SENT_METADATA || parts.iter().any(|p| *p > MAX_SENT_METADATA) {
        return true;
    }
    // Placed at the action's own list (the entry's alone fits).
    let at = if own > 0 {
        join(path, "headers")
    } else {
        join(path, "error.metadata")
    };
    problems.push(
        at,
        format!(
            "this action's headers ({own} bytes), the entry's ({around}) and the error's metadata \
             ({error}) go out in one header block of {total} bytes; at most \
             {MAX_SENT_METADATA} bytes are sent, since clients refuse header lists past \
             {MAX_HEADER_BLOCK} and the protocol's own entries take up to {PROTOCOL_ENTRIES} of \
             them; send fewer or shorter entries"
        ),
    );
    false
}

/// The longest `delay_ms`: a day is far past any test's patience, and keeps timer arithmetic
/// far from overflowing.
const MAX_DELAY_MS: u64 = 24 * 60 * 60 * 1000;

fn delay(ms: Option<u64>, path: &str) -> Result<Option<Duration>, EntryError> {
    match ms {
        Some(ms) if ms > MAX_DELAY_MS => Err(tmpl_err(
            path,
            &format!("{ms} ms is more than a day; give at most {MAX_DELAY_MS}"),
        )),
        other => Ok(other.map(Duration::from_millis)),
    }
}

fn tmpl_err(path: &str, message: &str) -> EntryError {
    EntryError {
        path: path.to_owned(),
        message: message.to_owned(),
    }
}

/// The 1-based line and column of the first `"key":` in a JSON text, or (0, 0).
pub fn locate_key(text: &str, key: &str) -> (usize, usize) {
    let needle = format!("\"{key}\"");
    let mut from = 0;
    while let Some(pos) = text[from..].find(&needle) {
        let at = from + pos;
        let after = text[at + needle.len()..].trim_start();
        if after.starts_with(':') {
            return crate::input::position(text.as_bytes(), at);
        }
        from = at + needle.len();
    }
    (0, 0)
}
