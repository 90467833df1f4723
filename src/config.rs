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
use crate::matcher::Condition;
use crate::metadata::parse_pairs;
use crate::script::{ScriptRef, ScriptSetupError, Scripts};
use crate::suggest::did_you_mean;
use crate::template::EntryError;

/// One handler file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandlerFile {
    pub service: String,
    pub methods: Map<String, Json>,
}

/// A method entry, a rule, or both: which keys are allowed where is checked in code.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntrySpec {
    pub when: Option<Json>,
    pub reply: Option<Json>,
    pub error: Option<ErrorSpec>,
    pub stream: Option<Vec<Json>>,
    pub echo: Option<Json>,
    pub rules: Option<Vec<Json>>,
    pub script: Option<String>,
    pub function: Option<String>,
    pub delay_ms: Option<u64>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// Handlers added at run time through the admin API, by `package.Service/Method`: the same JSON
/// a handler file has under `"methods"`, laid over the files' handlers.
pub type RuntimeHandlers = BTreeMap<String, Json>;

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

/// The problems of one entry (every rule of a `rules` list is checked, so there may be
/// several), or one with a file it points to.
enum BuildError {
    Entry(Vec<EntryError>),
    Startup(StartupError),
}

impl From<EntryError> for BuildError {
    fn from(e: EntryError) -> Self {
        BuildError::Entry(vec![e])
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
        Err(e) => return Err(StartupError::io(dir, e).into()),
    };
    files.sort();
    let mut served_by: HashMap<Arc<str>, PathBuf> = HashMap::new();
    for file in files {
        if let Err(mut e) = load_file(&file, pool, table, scripts, pending, &mut served_by) {
            errors.0.append(&mut e.0);
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
    served_by: &mut HashMap<Arc<str>, PathBuf>,
) -> Result<(), StartupErrors> {
    let text = crate::input::read_text(file)?;
    let parsed: HandlerFile = serde_json::from_str(&text).map_err(|e| StartupError::Handler {
        location: Location::at(file, e.line(), e.column()),
        entry: String::new(),
        message: e.to_string(),
        hint: Some(
            "a handler file is {\"service\": \"pkg.Service\", \"methods\": {\"Method\": {…}}}"
                .into(),
        ),
    })?;
    let Some(service) = pool.get_service_by_name(&parsed.service) else {
        let names: Vec<String> = pool.services().map(|s| s.full_name().to_owned()).collect();
        let (line, col) = locate_key(&text, "service");
        return Err(StartupError::Handler {
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
        }
        .into());
    };
    let mut errors = StartupErrors::default();
    for (method_name, entry) in &parsed.methods {
        let (line, col) = locate_key(&text, method_name);
        let location = Location::at(file, line, col);
        let entry_name = format!("{}/{}", service.full_name(), method_name);
        if !service.methods().any(|m| m.name() == method_name) {
            let names: Vec<String> = service.methods().map(|m| m.name().to_owned()).collect();
            errors.push(StartupError::Handler {
                location,
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
            });
            continue;
        }
        let path = format!("/{entry_name}");
        let Some(info) = table.info(&path) else {
            continue;
        };
        if let Some(previous) = served_by.get(&info.path) {
            errors.push(StartupError::Handler {
                location,
                entry: entry_name,
                message: format!("already has a handler in {}", previous.display()),
                hint: Some("keep one handler per method".into()),
            });
            continue;
        }
        served_by.insert(info.path.clone(), file.to_path_buf());
        let origin = Origin::File(file.into());
        if let Err(e) = install(entry, &info, origin, table, scripts, pending) {
            for e in e.located(location, entry_name) {
                errors.push(e);
            }
        }
    }
    errors.into_result(())
}

/// Lays the runtime handlers over the table: each replaces whatever the files set for its
/// method. Problems name the entry as `runtime handler package.Service/Method`.
pub fn load_runtime(
    entries: &RuntimeHandlers,
    pool: &DescriptorPool,
    table: &mut HandlerTable,
    scripts: &mut Scripts<'_>,
    pending: &mut PendingScripts,
) -> Result<(), StartupErrors> {
    let mut errors = StartupErrors::default();
    for (name, entry) in entries {
        let location = Location::file(format!("runtime handler {name}"));
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
        if let Err(e) = install(entry, &info, Origin::Runtime, table, scripts, pending) {
            for e in e.located(location, String::new()) {
                errors.push(e);
            }
        }
    }
    errors.into_result(())
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
) -> Result<(), BuildError> {
    let (built, around) = build_handler(entry, info, scripts)?;
    match built {
        Built::Ready(handler) => {
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
    /// As startup errors at `location`, each naming the entry (and the key inside it).
    fn located(self, location: Location, entry_name: String) -> Vec<StartupError> {
        match self {
            BuildError::Startup(e) => vec![e],
            BuildError::Entry(errors) => errors
                .into_iter()
                .map(|e| StartupError::Handler {
                    location: location.clone(),
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
) -> Result<(Built, Around), BuildError> {
    let spec: EntrySpec = parse_spec(entry, "")?;
    if spec.when.is_some() {
        return Err(tmpl_err("when", "\"when\" belongs inside a rule of \"rules\"").into());
    }
    // A single reply/error/stream/echo keeps delay_ms and headers itself (the delay goes before
    // every message); next to "rules" or "script" the router applies them around the handler.
    let around = if spec.script.is_some() || spec.rules.is_some() {
        Around {
            delay: delay(spec.delay_ms, "delay_ms")?,
            headers: parse_pairs(&spec.headers, "headers")?,
        }
    } else {
        Around::default()
    };
    let Some(script) = spec.script.as_deref() else {
        let handler = build_declarative(&spec, info).map_err(BuildError::Entry)?;
        return Ok((Built::Ready(handler), around));
    };
    if let Some(other) = action_keys(&spec).first() {
        return Err(tmpl_err(
            "",
            &format!("\"script\" cannot be combined with \"{other}\""),
        )
        .into());
    }
    let function = spec.function.as_deref().unwrap_or(info.descriptor.name());
    let found = scripts.add(script, function, info).map_err(|e| match e {
        ScriptSetupError::Entry(m) => tmpl_err("script", &m).into(),
        ScriptSetupError::Script(e) => BuildError::Startup(e),
    })?;
    Ok((Built::Script(found), around))
}

/// A declarative entry's handler, or every problem it has: each rule of a `rules` list is
/// checked, so that one run of `check` names them all.
fn build_declarative(
    spec: &EntrySpec,
    info: &Arc<MethodInfo>,
) -> Result<Arc<dyn Handler>, Vec<EntryError>> {
    if spec.function.is_some() {
        return Err(vec![tmpl_err(
            "function",
            "\"function\" goes with \"script\"",
        )]);
    }
    if let Some(rules) = &spec.rules {
        if let Some(other) = action_keys(spec).into_iter().find(|k| *k != "rules") {
            return Err(vec![tmpl_err(
                "",
                &format!("\"rules\" cannot be combined with \"{other}\"; put it in a rule"),
            )]);
        }
        if rules.is_empty() {
            return Err(vec![tmpl_err("rules", "give at least one rule")]);
        }
        let mut compiled = Vec::with_capacity(rules.len());
        let mut errors = Vec::new();
        for (i, rule) in rules.iter().enumerate() {
            match build_rule(rule, info, &format!("rules[{i}]")) {
                Ok(rule) => compiled.push(rule),
                Err(e) => errors.extend(e),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        return Ok(Arc::new(Declarative::new(Responder::Rules(compiled))));
    }
    let action = build_action(spec, info, "").map_err(|e| vec![e])?;
    Ok(Arc::new(Declarative::new(Responder::Single(Box::new(
        action,
    )))))
}

/// One rule of a `rules` list at `path`: its condition and its action, each checked.
fn build_rule(rule: &Json, info: &Arc<MethodInfo>, path: &str) -> Result<Rule, Vec<EntryError>> {
    let spec: EntrySpec = parse_spec(rule, path).map_err(|e| vec![e])?;
    if spec.rules.is_some() || spec.script.is_some() || spec.function.is_some() {
        return Err(vec![tmpl_err(
            path,
            "a rule answers with reply, error, stream or echo",
        )]);
    }
    let when = spec
        .when
        .as_ref()
        .map(|w| Condition::compile(w, &info.input, &format!("{path}.when")))
        .transpose();
    let action = build_action(&spec, info, path);
    match (when, action) {
        (Ok(when), Ok(action)) => Ok(Rule { when, action }),
        (when, action) => Err(when.err().into_iter().chain(action.err()).collect()),
    }
}

fn parse_spec(json: &Json, path: &str) -> Result<EntrySpec, EntryError> {
    if !json.is_object() {
        return Err(tmpl_err(
            path,
            "an entry is an object such as {\"reply\": {…}}",
        ));
    }
    serde_json::from_value(json.clone()).map_err(|e| tmpl_err(path, &e.to_string()))
}

fn action_keys(spec: &EntrySpec) -> Vec<&'static str> {
    let mut keys = Vec::new();
    if spec.reply.is_some() {
        keys.push("reply");
    }
    if spec.error.is_some() {
        keys.push("error");
    }
    if spec.stream.is_some() {
        keys.push("stream");
    }
    if spec.echo.is_some() {
        keys.push("echo");
    }
    if spec.rules.is_some() {
        keys.push("rules");
    }
    keys
}

fn build_action(spec: &EntrySpec, info: &MethodInfo, path: &str) -> Result<Action, EntryError> {
    let join = |key: &str| {
        if path.is_empty() {
            key.to_owned()
        } else {
            format!("{path}.{key}")
        }
    };
    let keys = action_keys(spec);
    let kind = match keys.as_slice() {
        ["reply"] => ActionKind::Reply(ReplyAction::compile(spec.reply.as_ref().unwrap_or(&Json::Null), info, &join("reply"))?),
        ["error"] => match &spec.error {
            Some(e) => ActionKind::Error(ErrorAction::compile(e, info, &join("error"))?),
            None => unreachable_kind()?,
        },
        ["stream"] => ActionKind::Stream(StreamAction::compile(spec.stream.as_deref().unwrap_or_default(), info, &join("stream"))?),
        ["echo"] => {
            echo::check(info, &join("echo"))?;
            ActionKind::Echo
        }
        [] => {
            return Err(tmpl_err(path, "say how to answer: \"reply\", \"error\", \"stream\", \"echo\", \"rules\" or \"script\""))
        }
        many => return Err(tmpl_err(path, &format!("choose one of {}", many.join(", ")))),
    };
    let headers = parse_pairs(&spec.headers, &join("headers"))?;
    Ok(Action {
        kind,
        delay: delay(spec.delay_ms, &join("delay_ms"))?,
        headers,
    })
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

fn unreachable_kind() -> Result<ActionKind, EntryError> {
    Err(tmpl_err("", "internal: action kind without its value"))
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
            let before = &text[..at];
            let line = before.matches('\n').count() + 1;
            let col = at - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            return (line, col);
        }
        from = at + needle.len();
    }
    (0, 0)
}
