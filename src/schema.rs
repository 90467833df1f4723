//! Turning `.proto` files into a [`DescriptorPool`] with protox, at startup, with no protoc.
//!
//! Every `.proto` below each `--protos` folder is compiled; each of those folders and every
//! `-I/--import-path` is an import root, and `google/protobuf/*.proto` comes built in with protox.
//! Source info is kept so later errors can point into a file, and the encoded descriptor set is
//! kept too: it is exactly what server reflection hands to clients.

use std::path::{Path, PathBuf};

use miette::Diagnostic;
use prost_reflect::DescriptorPool;

use crate::error::{Location, StartupError};

/// The compiled schema: the pool the server works from and its encoded form for reflection.
#[derive(Debug, Clone)]
pub struct Schema {
    pub pool: DescriptorPool,
    pub encoded: Vec<u8>,
    /// The files found under the `--protos` folders, relative to their folder.
    pub files: Vec<PathBuf>,
}

/// Compiles every `.proto` under `proto_dirs`, resolving imports in `proto_dirs` then `import_paths`.
pub fn compile(proto_dirs: &[PathBuf], import_paths: &[PathBuf]) -> Result<Schema, StartupError> {
    let mut files = Vec::new();
    for dir in proto_dirs {
        if !dir.is_dir() {
            return Err(StartupError::Usage(format!(
                "--protos {}: not a folder (point --protos at the folder that holds your .proto files)",
                dir.display()
            )));
        }
        collect_protos(dir, &mut files)?;
    }
    files.sort();
    files.dedup();

    let includes: Vec<&Path> = proto_dirs
        .iter()
        .chain(import_paths.iter())
        .map(PathBuf::as_path)
        .collect();
    let on_disk = |mut e: StartupError| {
        if let StartupError::Proto { location, .. } = &mut e {
            if let Some(path) = includes
                .iter()
                .map(|d| d.join(&location.path))
                .find(|p| p.is_file())
            {
                location.path = path;
            }
        }
        e
    };
    let mut compiler = protox::Compiler::new(includes.iter().copied())
        .map_err(|e| on_disk(proto_error(&e, None)))?;
    compiler.include_imports(true).include_source_info(true);
    for file in &files {
        compiler
            .open_file(file)
            .map_err(|e| on_disk(proto_error(&e, Some(file))))?;
    }
    tracing::debug!("protox parsed and checked {} files", files.len());
    // The compiler's pool is already checked; its encoded form is what reflection serves.
    let pool = compiler.descriptor_pool();
    let encoded = compiler.encode_file_descriptor_set();
    let files = files
        .iter()
        .map(|f| {
            proto_dirs
                .iter()
                .find_map(|d| f.strip_prefix(d).ok())
                .map_or_else(|| f.clone(), Path::to_path_buf)
        })
        .collect();
    Ok(Schema {
        pool,
        encoded,
        files,
    })
}

fn collect_protos(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), StartupError> {
    let entries = std::fs::read_dir(dir).map_err(|e| StartupError::io(dir, e))?;
    let mut paths: Vec<PathBuf> = entries
        .map(|e| {
            e.map(|e| e.path())
                .map_err(|err| StartupError::io(dir, err))
        })
        .collect::<Result<_, _>>()?;
    paths.sort();
    for path in paths {
        if path.is_dir() {
            collect_protos(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "proto") {
            out.push(path);
        }
    }
    Ok(())
}

/// Renders a protox error as `path:line:col: message`, followed by miette's source excerpt.
fn proto_error(err: &protox::Error, opened: Option<&Path>) -> StartupError {
    let location = diagnostic_location(err).unwrap_or_else(|| {
        Location::file(
            err.file()
                .map(PathBuf::from)
                .or_else(|| opened.map(Path::to_path_buf))
                .unwrap_or_else(|| PathBuf::from("protos")),
        )
    });
    let mut message = err.to_string();
    if let Some(help) = err.help() {
        message.push_str(&format!(" (help: {help})"));
    }
    let mut detail = String::new();
    let handler =
        miette::GraphicalReportHandler::new_themed(miette::GraphicalTheme::unicode_nocolor());
    if handler.render_report(&mut detail, err).is_err() || err.source_code().is_none() {
        detail.clear();
    }
    StartupError::Proto {
        location,
        message,
        detail: (!detail.trim().is_empty()).then_some(detail),
    }
}

/// The first labelled span of a diagnostic, as a 1-based `file:line:col`.
pub(crate) fn diagnostic_location(diag: &dyn Diagnostic) -> Option<Location> {
    let source = diag.source_code()?;
    let label = diag.labels()?.next()?;
    let contents = source.read_span(label.inner(), 0, 0).ok()?;
    let name = contents.name().map(str::to_owned)?;
    Some(Location::at(
        name,
        contents.line() + 1,
        contents.column() + 1,
    ))
}
