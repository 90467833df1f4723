//! Turning a problem found while loading into an error a person can act on: `file:line:col`, the
//! message, and a source excerpt.
//!
//! The fast path keeps no source positions, so when it finds a problem the file concerned is
//! compiled again with protox (which keeps them and checks everything protoc checks), reading
//! imports the same way loading does: bundled files, descriptor sets, then the folders.

use std::path::{Path, PathBuf};

use miette::Diagnostic;

use std::sync::Arc;

use super::sources::{Finder, Provider};
use crate::error::{Location, StartupError};

/// Renders a protox or protox-parse error as `path:line:col: message`, with miette's excerpt.
/// `on_disk` maps the import name in the error to the file's path.
pub fn proto_error(
    err: &(dyn Diagnostic + Send + Sync + 'static),
    fallback_file: &Path,
    on_disk: &dyn Fn(&str) -> Option<PathBuf>,
) -> StartupError {
    let mut location = diagnostic_location(err)
        .or_else(|| end_of_file(err))
        .unwrap_or_else(|| Location::file(fallback_file));
    if let Some(path) = location.path.to_str().and_then(on_disk) {
        location.path = path;
    }
    let mut message = err.to_string();
    if let Some(help) = err.help() {
        message.push_str(&format!(" (help: {help})"));
    }
    let mut detail = String::new();
    let handler =
        miette::GraphicalReportHandler::new_themed(miette::GraphicalTheme::unicode_nocolor());
    // Without a label the excerpt is the message again, and nothing of the file.
    if handler.render_report(&mut detail, err).is_err()
        || err.source_code().is_none()
        || err.labels().is_none()
    {
        detail.clear();
    }
    StartupError::Proto {
        location,
        message,
        detail: (!detail.trim().is_empty()).then_some(detail),
    }
}

/// The first labelled span of a diagnostic, as a 1-based `file:line:col` (the column in
/// characters, as every column the product reports; miette counts bytes).
pub(crate) fn diagnostic_location(diag: &dyn Diagnostic) -> Option<Location> {
    let source = diag.source_code()?;
    let label = diag.labels()?.next()?;
    let contents = source.read_span(label.inner(), 0, 0).ok()?;
    let name = contents.name().map(str::to_owned)?;
    let bytes = contents.column();
    let col = match label.offset().checked_sub(bytes) {
        Some(start) if bytes > 0 => {
            let before = source.read_span(&(start, bytes).into(), 0, 0).ok()?;
            crate::input::column(before.data())
        }
        _ => 1,
    };
    Some(Location::at(name, contents.line() + 1, col))
}

/// Where a file that stops too early stops: the parser reports the end of the file without a
/// position, but a file cut short (a half-written save the watcher reloads, a missing `}`)
/// must still be named at a line and column. That is just past the last thing written, where
/// what is missing goes.
fn end_of_file(diag: &dyn Diagnostic) -> Option<Location> {
    if !diag.to_string().ends_with(REACHED_END) {
        return None;
    }
    let source = diag.source_code()?;
    let whole = source.read_span(&(0, 0).into(), 0, usize::MAX).ok()?;
    let name = whole.name().map(str::to_owned)?;
    let text = whole.data();
    let (line, col) = crate::input::position(text, text.trim_ascii_end().len());
    Some(Location::at(name, line, col))
}

/// How the parser ends the message of a file that stops before a declaration is complete.
const REACHED_END: &str = "but reached end of file";

/// Reads imports for protox the way loading resolves them.
struct Resolver(Arc<Finder>);

impl protox::file::FileResolver for Resolver {
    fn open_file(&self, name: &str) -> Result<protox::file::File, protox::Error> {
        match self.0.find(name) {
            // Read as loading reads it (no byte-order mark), so positions agree.
            Some(Provider::Disk(path)) => match crate::input::read_to_string(&path) {
                Ok(text) => protox::file::File::from_source(name, &text),
                Err(e) => Err(protox::Error::new(format!("{}: {e}", path.display()))),
            },
            Some(Provider::Source(text)) => protox::file::File::from_source(name, text),
            Some(Provider::Linked(bytes)) => {
                protox::file::File::decode_file_descriptor_proto(bytes.as_slice())
                    .map_err(|e| protox::Error::new(e.to_string()))
            }
            None => Err(protox::Error::file_not_found(name)),
        }
    }
}

/// Compiles `name` (and what it imports) with protox; its first error, if it finds one.
pub fn recompile(name: &str, finder: &Arc<Finder>) -> Option<StartupError> {
    let mut compiler = protox::Compiler::with_file_resolver(Resolver(finder.clone()));
    compiler.include_source_info(true);
    match compiler.open_file(name) {
        Ok(_) => None,
        Err(e) => Some(proto_error(&e, Path::new(name), &|n| finder.on_disk(n))),
    }
}

/// Where the file at `path` (import name `name`) declares `full_name`: the name of a message,
/// enum, service or extension (`pkg.Outer.Inner`), or the package statement when the package
/// is, or lies under, that name. Used when two files that do not import each other declare
/// one name: compiling either alone finds nothing to point at.
pub fn locate_name(path: &Path, name: &str, full_name: &str) -> Option<Location> {
    let text = crate::input::read_to_string(path).ok()?;
    let parsed = protox_parse::parse(name, &text).ok()?;
    let element = element_path(&parsed, full_name)?;
    let found = locate(path, name, &element);
    (found.line > 0).then_some(found)
}

/// The `SourceCodeInfo` path of the declaration of `full_name` in `file`.
fn element_path(file: &prost_types::FileDescriptorProto, full_name: &str) -> Option<Vec<i32>> {
    let package = file.package();
    if !package.is_empty()
        && (package == full_name
            || package
                .strip_prefix(full_name)
                .is_some_and(|r| r.starts_with('.')))
    {
        return Some(vec![2]);
    }
    let rest = if package.is_empty() {
        full_name
    } else {
        full_name.strip_prefix(package)?.strip_prefix('.')?
    };
    let named = |names: Vec<&str>, field: i32| {
        names
            .iter()
            .position(|n| *n == rest)
            .map(|i| vec![field, i as i32, 1])
    };
    file.message_type
        .iter()
        .enumerate()
        .find_map(|(i, m)| in_message(m, rest, vec![4, i as i32]))
        .or_else(|| named(file.enum_type.iter().map(|e| e.name()).collect(), 5))
        .or_else(|| named(file.service.iter().map(|s| s.name()).collect(), 6))
        .or_else(|| named(file.extension.iter().map(|x| x.name()).collect(), 7))
}

/// The path of `rest` (a name relative to the scope `message` is declared in) inside
/// `message`, whose own path is `at`.
fn in_message(
    message: &prost_types::DescriptorProto,
    rest: &str,
    mut at: Vec<i32>,
) -> Option<Vec<i32>> {
    if rest == message.name() {
        at.push(1);
        return Some(at);
    }
    let inner = rest.strip_prefix(message.name())?.strip_prefix('.')?;
    let child = |field: i32, i: usize| {
        let mut p = at.clone();
        p.extend([field, i as i32]);
        p
    };
    let with_name = |field: i32, i: usize| {
        let mut p = child(field, i);
        p.push(1);
        p
    };
    message
        .nested_type
        .iter()
        .enumerate()
        .find_map(|(i, m)| in_message(m, inner, child(3, i)))
        .or_else(|| {
            let i = message.enum_type.iter().position(|e| e.name() == inner)?;
            Some(with_name(4, i))
        })
        .or_else(|| {
            let i = message.extension.iter().position(|x| x.name() == inner)?;
            Some(with_name(6, i))
        })
}

/// Where an element of a file is (`path` as in `SourceCodeInfo`), found by parsing it again.
pub fn locate(path: &Path, name: &str, element: &[i32]) -> Location {
    let Ok(text) = crate::input::read_to_string(path) else {
        return Location::file(path);
    };
    let Ok(parsed) = protox_parse::parse(name, &text) else {
        return Location::file(path);
    };
    parsed
        .source_code_info
        .iter()
        .flat_map(|i| i.location.iter())
        .find(|l| l.path == element)
        .and_then(|l| {
            let line = usize::try_from(*l.span.first()?).ok()? + 1;
            let col = usize::try_from(*l.span.get(1)?).ok()? + 1;
            let col = crate::input::in_characters(text.as_bytes(), line, col);
            Some(Location::at(path, line, col))
        })
        .unwrap_or_else(|| Location::file(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn located(text: &str) -> StartupError {
        let err = protox_parse::parse("cut.proto", text).unwrap_err();
        proto_error(&err, Path::new("cut.proto"), &|_| None)
    }

    #[test]
    fn a_file_cut_short_is_located_after_its_last_word() {
        let text = "syntax = \"proto3\";\nservice S {\n  /* é */ rpc Go (A) returns\n\n";
        let StartupError::Proto {
            location,
            message,
            detail,
        } = located(text)
        else {
            panic!("not a proto error");
        };
        assert_eq!((location.line, location.col), (3, 29), "{message}");
        assert!(message.ends_with(REACHED_END), "{message}");
        assert_eq!(
            detail, None,
            "an excerpt without a label repeats the message"
        );
    }

    #[test]
    fn a_file_of_one_line_cut_short_is_on_that_line() {
        let StartupError::Proto { location, .. } = located("message A {") else {
            panic!("not a proto error");
        };
        assert_eq!((location.line, location.col), (1, 12));
    }
}
