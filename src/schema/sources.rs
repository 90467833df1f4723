//! Finding the files to load and parsing them, in parallel on every core.
//!
//! The files to serve are every `.proto` under the `--protos` folders plus every file of the
//! `--descriptor-set`s. An import is looked up in this order: the bundled files (well-known types,
//! `google/api`, `google/rpc`, `google/type`), the descriptor sets, the `--protos` folders, the
//! `-I` folders. So a vendored copy of a bundled file is never compiled: the bundled one is used,
//! and a copy that declares something else draws a warning.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use prost::Message as _;
use prost_types::FileDescriptorProto;

use super::link::Input;
use super::{bundled, diagnose, nesting, parallel, raw};
use crate::error::{Location, StartupError, StartupErrors};

/// A `.proto` under a `--protos` folder.
#[derive(Debug, Clone)]
pub struct Source {
    /// Its import name: the path below its folder, with `/`.
    pub name: String,
    pub path: PathBuf,
}

/// Where a file comes from.
pub enum Provider {
    Disk(PathBuf),
    /// Bundled source text.
    Source(&'static str),
    /// An encoded, already linked `FileDescriptorProto` (well-known types, descriptor sets).
    Linked(Vec<u8>),
}

/// Every `.proto` under `dirs`, by import name; a name found in two folders is taken from the
/// first, with a warning.
pub fn discover(dirs: &[PathBuf]) -> Result<Vec<Source>, StartupError> {
    let mut out: Vec<Source> = Vec::new();
    let mut seen: HashMap<String, PathBuf> = HashMap::new();
    for dir in dirs {
        if !dir.is_dir() {
            return Err(StartupError::Usage(format!(
                "--protos {}: not a folder (point --protos at the folder that holds your .proto files)",
                dir.display()
            )));
        }
        let mut found = Vec::new();
        walk(dir, dir, &mut found, &mut HashSet::new())?;
        found.sort_by(|a, b| a.name.cmp(&b.name));
        for s in found {
            if let Some(first) = seen.get(&s.name) {
                tracing::warn!(
                    "{}: ignored: {} has the same import name {:?} and comes first",
                    crate::error::log_path(&s.path),
                    crate::error::log_path(first),
                    s.name
                );
                continue;
            }
            seen.insert(s.name.clone(), s.path.clone());
            out.push(s);
        }
    }
    Ok(out)
}

/// Collects the `.proto` files under `dir`. Symbolic links are followed, but a folder already
/// walked (through a link back up the tree, or a second link to it) is skipped with a warning:
/// two links to `.` would otherwise make the walk exponential in the depth the kernel allows.
fn walk(
    root: &Path,
    dir: &Path,
    out: &mut Vec<Source>,
    walked: &mut HashSet<PathBuf>,
) -> Result<(), StartupError> {
    let real = std::fs::canonicalize(dir).map_err(|e| StartupError::io(dir, e))?;
    if !walked.insert(real.clone()) {
        tracing::warn!(
            "{}: ignored: it is {}, which is read already (a symbolic link loop?)",
            crate::error::log_path(dir),
            crate::error::log_path(&real)
        );
        return Ok(());
    }
    let unreadable = |source| StartupError::Folder {
        path: dir.to_path_buf(),
        under: root.to_path_buf(),
        source,
    };
    let entries = std::fs::read_dir(dir).map_err(unreadable)?;
    let mut paths = Vec::new();
    for entry in entries {
        paths.push(entry.map_err(unreadable)?.path());
    }
    // The first of two paths to one folder is the one kept, whatever order the disk lists.
    paths.sort();
    for path in paths {
        if crate::input::is_hidden(&path) {
            continue;
        }
        if path.is_dir() {
            walk(root, &path, out, walked)?;
        } else if path.extension().is_some_and(|e| e == "proto") {
            let Ok(rel) = path.strip_prefix(root) else {
                continue;
            };
            crate::input::check_regular(&path).map_err(|e| StartupError::io(&path, e))?;
            let name = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy())
                .collect::<Vec<_>>()
                .join("/");
            out.push(Source { name, path });
        }
    }
    Ok(())
}

/// The descriptor sets, read and decoded: (set path, its files).
pub fn read_sets(paths: &[PathBuf]) -> Result<Vec<(PathBuf, Vec<raw::File>)>, StartupError> {
    decode_sets(read_set_files(paths)?)
}

/// Each descriptor set's bytes, read once: the cache key hashes them and compiling decodes
/// the same bytes, since a set given as a pipe (`<(buf build -o -)`) can be read only once.
pub fn read_set_files(paths: &[PathBuf]) -> Result<Vec<(PathBuf, Vec<u8>)>, StartupError> {
    paths
        .iter()
        .map(|p| Ok((p.clone(), read_set_file(p)?)))
        .collect()
}

/// The most bytes read from one descriptor set: a protobuf message is smaller than 2 GiB, and a
/// source without end (`/dev/zero`, `<(yes)`) would otherwise take all the memory there is.
const MAX_SET_BYTES: u64 = (2 << 30) - 1;

/// One set's bytes; a path that is missing, a folder or a device is named with its flag.
fn read_set_file(path: &Path) -> Result<Vec<u8>, StartupError> {
    let wrong = match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => "a folder, not a file",
        Ok(m) if is_device(&m) => "a device, not a file",
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => "no such file",
        _ => {
            let mut bytes = Vec::new();
            std::fs::File::open(path)
                .and_then(|f| {
                    std::io::Read::read_to_end(
                        &mut std::io::Read::take(f, MAX_SET_BYTES + 1),
                        &mut bytes,
                    )
                })
                .map_err(|e| StartupError::io(path, e))?;
            if bytes.len() as u64 <= MAX_SET_BYTES {
                return Ok(bytes);
            }
            "2 GiB or more, larger than any protobuf message"
        }
    };
    Err(StartupError::Usage(format!(
        "--descriptor-set {}: {wrong} (point --descriptor-set at a FileDescriptorSet written by `buf build -o FILE.binpb` or `protoc --include_imports --descriptor_set_out=FILE.binpb`)",
        path.display()
    )))
}

/// Whether `m` is a character or block device (a pipe or a regular file is read).
#[cfg(unix)]
fn is_device(m: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::FileTypeExt as _;
    m.file_type().is_char_device() || m.file_type().is_block_device()
}

#[cfg(not(unix))]
fn is_device(_: &std::fs::Metadata) -> bool {
    false
}

/// How many messages deep a descriptor set's files may nest messages (`nested_type`): the
/// decoder's recursion limit counts the set and the file too, and the innermost of one more
/// level could hold nothing (not even a field) and still decode.
pub const MAX_SET_MESSAGES: usize = crate::wire::RECURSION_LIMIT as usize - 2;

/// How many names of a too deep chain of messages a refusal shows, at each end.
const SHOWN_CHAIN_ENDS: usize = 3;

/// Read descriptor sets, decoded: (set path, its files).
pub fn decode_sets(
    read: Vec<(PathBuf, Vec<u8>)>,
) -> Result<Vec<(PathBuf, Vec<raw::File>)>, StartupError> {
    read.into_iter()
        .map(|(p, bytes)| {
            let set = raw::FileSet::decode(bytes.as_slice()).map_err(|e| {
                // prost names every field on the way down: a line of kilobytes that ends in
                // "recursion limit reached", for a set that is well formed but nested deeper
                // than protobuf decoders go. Rebuilding it would not help; flattening does.
                if e.to_string().ends_with("recursion limit reached") {
                    if let Some(deep) = nesting::too_deep_messages(&bytes, MAX_SET_MESSAGES) {
                        return too_deep_messages(&p, &deep);
                    }
                    return StartupError::Usage(format!(
                        "--descriptor-set {}: messages are nested deeper than protobuf decoders accept ({} levels, counting the set and the file); declare some of the nested messages at the top level of their file",
                        p.display(),
                        crate::wire::RECURSION_LIMIT
                    ));
                }
                StartupError::Usage(format!(
                    "--descriptor-set {}: not a FileDescriptorSet ({e}); write one with `buf build -o FILE.binpb` or `protoc --include_imports --descriptor_set_out=FILE.binpb`",
                    p.display()
                ))
            })?;
            // protoc and buf never write a set without files; reading one is a mistake, most
            // often a pipe read a second time (on reload): it would serve nothing at all.
            if set.file.is_empty() {
                return Err(StartupError::Usage(format!(
                    "--descriptor-set {}: holds no files; write the set to a regular file with `buf build -o FILE.binpb` (a pipe such as <(buf build -o -) can be read only once, so a reload finds it empty)",
                    p.display()
                )));
            }
            // The text of an uninterpreted option is parsed later, by a parser that recurses
            // once per level (see `nesting`).
            for file in &set.file {
                if let Some(option) = nesting::too_deep_option(file) {
                    return Err(StartupError::Usage(format!(
                        "--descriptor-set {}: {}: the value of option {option} nests too deep: braces, brackets and angle brackets may nest at most {} levels deep",
                        p.display(),
                        raw::name(&file.name),
                        nesting::MAX_NESTING
                    )));
                }
            }
            Ok((p, set.file))
        })
        .collect()
}

/// The refusal of the set at `path` for `deep`: the file, the top-level message, the chain of
/// messages down to the first too deep (its middle left out: it can be 99 names long) and the
/// limit.
fn too_deep_messages(path: &Path, deep: &nesting::DeepMessages) -> StartupError {
    let chain = &deep.chain;
    let last = chain.last().map_or("", String::as_str);
    // Each name is its parent's plus one part: the chain reads as the innermost's parts.
    let parts: Vec<&str> = chain
        .iter()
        .zip(std::iter::once("").chain(chain.iter().map(String::as_str)))
        .map(|(name, parent)| {
            name.strip_prefix(parent)
                .map_or(name.as_str(), |rest| rest.trim_start_matches('.'))
        })
        .collect();
    let shown = if parts.len() > 2 * SHOWN_CHAIN_ENDS {
        format!(
            "{}.….{}",
            parts[..SHOWN_CHAIN_ENDS].join("."),
            parts[parts.len() - SHOWN_CHAIN_ENDS..].join(".")
        )
    } else {
        last.to_owned()
    };
    StartupError::Usage(format!(
        "--descriptor-set {}: {}: message {} nests messages more than {MAX_SET_MESSAGES} levels deep ({shown} is level {}), more than protobuf decoders accept ({} levels, counting the set and the file); declare some of the nested messages at the top level of their file",
        path.display(),
        deep.file,
        chain.first().map_or("", String::as_str),
        chain.len(),
        crate::wire::RECURSION_LIMIT
    ))
}

/// Looks files up by import name.
pub struct Finder {
    pub set_files: HashMap<String, (PathBuf, raw::File)>,
    pub sources: HashMap<String, PathBuf>,
    pub import_paths: Vec<PathBuf>,
}

impl Finder {
    pub fn find(&self, name: &str) -> Option<Provider> {
        if let Some(p) = bundled::find(name) {
            return Some(p);
        }
        if let Some((_, f)) = self.set_files.get(name) {
            return Some(Provider::Linked(f.encode_to_vec()));
        }
        if let Some(path) = self.sources.get(name) {
            return Some(Provider::Disk(path.clone()));
        }
        self.import_paths
            .iter()
            .map(|d| d.join(name))
            .find(|p| p.is_file())
            .map(Provider::Disk)
    }

    /// The file on disk behind an import name, for messages.
    pub fn on_disk(&self, name: &str) -> Option<PathBuf> {
        if bundled::is_bundled(name) {
            return None;
        }
        match self.find(name) {
            Some(Provider::Disk(p)) => Some(p),
            _ => None,
        }
    }
}

/// Everything gathered: the inputs of the linker in dependency order and the disk files read
/// (for the cache's manifest).
pub struct Gathered {
    pub inputs: Vec<Input>,
    pub disk_files: Vec<PathBuf>,
}

/// Parses every file to serve and everything they import.
pub fn gather(
    sources: &[Source],
    sets: &[(PathBuf, Vec<raw::File>)],
    finder: &Finder,
) -> Result<Gathered, StartupErrors> {
    let mut loaded: HashMap<String, Input> = HashMap::new();
    let mut disk_files = Vec::new();
    let mut errors = StartupErrors::default();
    let mut wanted: Vec<(String, Option<String>)> = Vec::new(); // (name, importer)
                                                                // Files of descriptor sets are served as they are.
    for (path, files) in sets {
        for f in files {
            let name = raw::name(&f.name).to_owned();
            if loaded.contains_key(&name) {
                continue;
            }
            let input = Input::linked(f.encode_to_vec().into()).map_err(|e| {
                StartupError::Usage(format!("{}: {name}: bad descriptor: {e}", path.display()))
            })?;
            loaded.insert(name, input);
        }
    }
    for s in sources {
        if finder.set_files.contains_key(&s.name) {
            tracing::warn!(
                "{}: ignored: a --descriptor-set already has {}",
                crate::error::log_path(&s.path),
                crate::error::log_escaped(&s.name)
            );
            continue;
        }
        if bundled::is_bundled(&s.name) {
            check_vendored(s);
        }
        wanted.push((s.name.clone(), None));
    }
    // Imports of the descriptor sets' files must be found too.
    for (path, files) in sets {
        for f in files {
            for d in &f.dependency {
                if !loaded.contains_key(d) && finder.find(d).is_none() {
                    errors.push(StartupError::Proto {
                        location: Location::file(path),
                        message: format!(
                            "{} imports \"{d}\", which this descriptor set lacks and no --protos folder, -I folder or bundled file provides",
                            raw::name(&f.name)
                        ),
                        detail: Some(
                            "  help: build the set with its imports: `buf build -o FILE.binpb` includes them; protoc needs --include_imports"
                                .into(),
                        ),
                    });
                } else if !loaded.contains_key(d) {
                    wanted.push((d.clone(), Some(raw::name(&f.name).to_owned())));
                }
            }
        }
    }
    let mut queued: HashSet<String> = loaded.keys().cloned().collect();
    while !wanted.is_empty() {
        let batch: Vec<(String, Option<String>, Provider)> = std::mem::take(&mut wanted)
            .into_iter()
            .filter(|(n, _)| queued.insert(n.clone()))
            .filter_map(|(name, importer)| match finder.find(&name) {
                Some(p) => Some((name, importer, p)),
                None => {
                    errors.push(missing_import(&name, importer.as_deref(), finder));
                    None
                }
            })
            .collect();
        for (_, _, p) in &batch {
            if let Provider::Disk(path) = p {
                disk_files.push(path.clone());
            }
        }
        let parsed = parallel::map(batch, |(name, _, provider)| {
            let input = load(&name, provider);
            (name, input)
        });
        for (name, input) in parsed {
            match input {
                Ok(input) => {
                    for d in input.dependencies() {
                        if !queued.contains(d) {
                            wanted.push((d.clone(), Some(name.clone())));
                        }
                    }
                    loaded.insert(name, input);
                }
                Err(e) => errors.push(e),
            }
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let inputs = dependency_order(loaded, finder)?;
    Ok(Gathered { inputs, disk_files })
}

fn missing_import(name: &str, importer: Option<&str>, finder: &Finder) -> StartupError {
    let Some(importer) = importer else {
        return StartupError::Usage(format!("{name}: not found"));
    };
    let location = match finder.on_disk(importer) {
        Some(path) => {
            let index = crate::input::read_to_string(&path)
                .ok()
                .and_then(|t| protox_parse::parse(importer, &t).ok())
                .and_then(|f| f.dependency.iter().position(|d| d == name));
            match index {
                Some(i) => diagnose::locate(&path, importer, &[3, i as i32]),
                None => Location::file(path),
            }
        }
        None => Location::file(importer),
    };
    StartupError::Proto {
        location,
        message: format!(
            "import \"{name}\" was not found in the --protos folders, the -I folders, the descriptor sets or the bundled files"
        ),
        detail: Some(
            "  help: add the folder that holds it with -I (imports are relative to that folder), or pass a descriptor set that has it"
                .into(),
        ),
    }
}

/// Parses (or decodes) one file.
fn load(name: &str, provider: Provider) -> Result<Input, StartupError> {
    match provider {
        Provider::Linked(bytes) => Input::linked(bytes.into())
            .map_err(|e| StartupError::Usage(format!("{name}: bad descriptor: {e}"))),
        Provider::Source(text) => parse(name, text, Path::new(name)),
        Provider::Disk(path) => {
            let text = crate::input::read_text(&path)?;
            parse(name, &text, &path)
        }
    }
}

fn parse(name: &str, text: &str, path: &Path) -> Result<Input, StartupError> {
    if let Some(at) = nesting::too_deep(text) {
        let (line, col) = crate::input::position(text.as_bytes(), at);
        return Err(StartupError::Proto {
            location: Location::at(path, line, col),
            message: format!(
                "{name} nests too deep here: braces, brackets and angle brackets (message bodies, option values, lists) may nest at most {max} levels deep",
                max = nesting::MAX_NESTING
            ),
            detail: Some(
                "  help: flatten the option value or the declarations; no real schema nests this deep".into(),
            ),
        });
    }
    match protox_parse::parse(name, text) {
        Ok(f) => Ok(Input::source(f)),
        Err(e) => {
            if let Some((line, col)) = edition_statement(text) {
                return Err(StartupError::Proto {
                    location: Location::at(path, line, col),
                    message: format!(
                        "{name} is written in a protobuf edition, which protoserve cannot compile from source yet"
                    ),
                    detail: Some(format!(
                        "  help: compile it to a descriptor set and pass that instead: `buf build -o schema.binpb` (or `protoc --include_imports --descriptor_set_out=schema.binpb {name}`), then `protoserve --descriptor-set schema.binpb`; move {name} out of the --protos folders"
                    )),
                });
            }
            Err(diagnose::proto_error(&e, path, &|_| {
                Some(path.to_path_buf())
            }))
        }
    }
}

/// The `edition = "…";` statement that opens a file, as 1-based (line, column).
pub fn edition_statement(text: &str) -> Option<(usize, usize)> {
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b' ' | b'\t' | b'\r' | b'\n' => i += 1,
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i + 1 < bytes.len() && !(bytes[i] == b'*' && bytes[i + 1] == b'/') {
                    i += 1;
                }
                i += 2;
            }
            _ => break,
        }
    }
    let rest = text.get(i..)?;
    let after = rest.strip_prefix("edition")?;
    if !after.trim_start().starts_with('=') {
        return None;
    }
    Some(crate::input::position(text.as_bytes(), i))
}

/// Warns when a vendored copy of a bundled file declares something the bundled one does not
/// (other names or numbers); the bundled one is used either way.
fn check_vendored(source: &Source) {
    let Some(bundled) = bundled::proto(&source.name) else {
        return;
    };
    let differs = match crate::input::read_to_string(&source.path)
        .ok()
        .and_then(|t| protox_parse::parse(&source.name, &t).ok())
    {
        Some(vendored) => shape(&vendored) != shape(&bundled),
        None => true,
    };
    if differs {
        tracing::warn!(
            "{}: this copy of {} differs from the one protoserve bundles; the bundled one is used (delete the copy, or update protoserve if the copy is newer)",
            crate::error::log_path(&source.path),
            source.name
        );
    } else {
        tracing::debug!(
            "{}: same as the bundled {}",
            source.path.display(),
            source.name
        );
    }
}

/// What a file declares, for comparing copies: every name with its number and type.
fn shape(f: &FileDescriptorProto) -> Vec<String> {
    fn last(t: &str) -> &str {
        t.rsplit('.').next().unwrap_or(t)
    }
    fn message(scope: &str, m: &prost_types::DescriptorProto, out: &mut Vec<String>) {
        let name = format!("{scope}.{}", m.name());
        for x in &m.field {
            out.push(format!(
                "{name}.{} {} {:?} {:?} {}",
                x.name(),
                x.number(),
                x.label(),
                x.r#type.map(|_| x.r#type()),
                last(x.type_name())
            ));
        }
        for n in &m.nested_type {
            message(&name, n, out);
        }
        for e in &m.enum_type {
            for v in &e.value {
                out.push(format!("{name}.{}.{} {}", e.name(), v.name(), v.number()));
            }
        }
    }
    let mut out = Vec::new();
    for m in &f.message_type {
        message(f.package(), m, &mut out);
    }
    for e in &f.enum_type {
        for v in &e.value {
            out.push(format!("{}.{} {}", e.name(), v.name(), v.number()));
        }
    }
    for s in &f.service {
        for m in &s.method {
            out.push(format!(
                "{}.{} {} {}",
                s.name(),
                m.name(),
                last(m.input_type()),
                last(m.output_type())
            ));
        }
    }
    out.sort();
    out
}

/// The loaded files in dependency order; an import cycle is an error that names it.
fn dependency_order(
    mut loaded: HashMap<String, Input>,
    finder: &Finder,
) -> Result<Vec<Input>, StartupErrors> {
    let mut names: Vec<String> = loaded.keys().cloned().collect();
    names.sort();
    let mut state: HashMap<&str, u8> = HashMap::new(); // 1 on the path, 2 done
    let mut order: Vec<String> = Vec::with_capacity(names.len());
    for start in &names {
        if state.contains_key(start.as_str()) {
            continue;
        }
        let mut path: Vec<(&str, usize)> = vec![(start.as_str(), 0)];
        state.insert(start, 1);
        while let Some((name, next)) = path.last_mut() {
            let deps = loaded.get(*name).map_or(&[][..], |i| i.dependencies());
            if let Some(dep) = deps.get(*next) {
                let import = *next;
                *next += 1;
                let Some((dep, _)) = loaded.get_key_value(dep.as_str()) else {
                    continue;
                };
                match state.get(dep.as_str()) {
                    None => {
                        state.insert(dep, 1);
                        path.push((dep, 0));
                    }
                    Some(1) => {
                        let from = path.iter().position(|(n, _)| *n == dep).unwrap_or(0);
                        let cycle: Vec<&str> = path[from..]
                            .iter()
                            .map(|(n, _)| *n)
                            .chain([dep.as_str()])
                            .collect();
                        let first = path[path.len() - 1].0;
                        // At the import statement that closes the circle.
                        let location = finder.on_disk(first).map_or_else(
                            || Location::file(first),
                            |p| diagnose::locate(&p, first, &[3, import as i32]),
                        );
                        return Err(StartupErrors::from(StartupError::Proto {
                            location,
                            message: format!("import cycle: {}", cycle.join(" -> ")),
                            detail: Some(
                                "  help: protobuf files may not import each other in a circle; move the shared definitions to a file both import"
                                    .into(),
                            ),
                        }));
                    }
                    _ => {}
                }
            } else {
                state.insert(name, 2);
                order.push((*name).to_owned());
                path.pop();
            }
        }
    }
    Ok(order
        .into_iter()
        .filter_map(|n| loaded.remove(&n))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::edition_statement;

    #[test]
    fn the_edition_statement_is_found_after_comments_only() {
        assert_eq!(edition_statement("edition = \"2023\";"), Some((1, 1)));
        assert_eq!(
            edition_statement("// c\n/* block\n */  edition=\"2024\";"),
            Some((3, 6))
        );
        assert_eq!(
            edition_statement("syntax = \"proto3\";\nedition = 1;"),
            None
        );
        assert_eq!(edition_statement("editions = 1;"), None);
        assert_eq!(edition_statement("/* unterminated"), None);
        assert_eq!(edition_statement(""), None);
    }
}
