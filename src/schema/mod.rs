//! Turning `.proto` files and descriptor sets into what the server works from, with no protoc.
//!
//! [`compile`] is the one entry point (startup and every reload call it):
//! 1. find the inputs: every `.proto` under the `--protos` folders and every `--descriptor-set`;
//! 2. if the descriptor cache has an entry for exactly these inputs, use it ([`cache`]);
//! 3. otherwise parse every file and what it imports on every core ([`sources`]), with the
//!    well-known types and the common Google API files bundled ([`bundled`]), link them once
//!    ([`link`]), and write the cache;
//! 4. index the linked files ([`files::Files`]): reflection, listing and health use that;
//! 5. decode the files serving needs into a prost-reflect pool: all of them when the tree is
//!    small, otherwise the services named by handler files and what they import. A pool of all
//!    googleapis would hold about half a gigabyte; its encoded files are 19 MB.
//!
//! Problems found on the way are reported with `file:line:col` ([`diagnose`]).

pub mod bundled;
pub mod cache;
pub mod diagnose;
pub mod editions;
pub mod files;
pub mod link;
pub mod nesting;
pub mod parallel;
pub mod raw;
pub mod sources;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use prost_reflect::DescriptorPool;

use crate::error::{Location, StartupError, StartupErrors};
pub use files::Files;

/// A tree whose linked files encode to at most this many bytes is decoded whole into the pool
/// (about 25 times this in memory); a bigger one only as far as its handlers need.
pub const WHOLE_POOL_BYTES: usize = 2 * 1024 * 1024;

/// What to compile, and how.
#[derive(Debug, Clone, Default)]
pub struct SchemaInputs {
    /// Folders whose `.proto` files are served; each is also an import root.
    pub protos: Vec<PathBuf>,
    /// Further import roots.
    pub import_paths: Vec<PathBuf>,
    /// Encoded `FileDescriptorSet`s whose files are served as they are.
    pub descriptor_sets: Vec<PathBuf>,
    /// Where the descriptor cache lives; `None`: no cache.
    pub cache_dir: Option<PathBuf>,
    /// Services whose descriptors serving needs (those named by handler files); in a big tree
    /// only these and what they import are decoded into the pool.
    pub services: Vec<String>,
}

impl SchemaInputs {
    /// The `.proto` files of `protos`, nothing else, no cache (tests and tools).
    pub fn protos(protos: &[PathBuf]) -> Self {
        Self {
            protos: protos.to_vec(),
            ..Self::default()
        }
    }
}

/// The compiled schema.
#[derive(Debug, Clone)]
pub struct Schema {
    /// The descriptors serving decodes messages with (see [`WHOLE_POOL_BYTES`]).
    pub pool: DescriptorPool,
    /// Every file, linked and encoded, with its indexes: what reflection serves.
    pub files: Arc<Files>,
    /// Whether `pool` holds every file.
    pub whole: bool,
}

impl Schema {
    /// `schema`, or the same files with a pool that also decodes `services` (those of them
    /// that the files declare) when a big tree's pool lacks one: handlers may name other
    /// services after a reload or through the admin API.
    pub fn covering(
        schema: Arc<Schema>,
        services: &[String],
    ) -> Result<Arc<Schema>, StartupErrors> {
        let declared: HashSet<&str> = schema.files.services().iter().map(|s| &*s.name).collect();
        let missing = services
            .iter()
            .any(|s| declared.contains(s.as_str()) && schema.pool.get_service_by_name(s).is_none());
        if schema.whole || !missing {
            return Ok(schema);
        }
        let named: HashSet<&str> = services.iter().map(String::as_str).collect();
        let indexes = schema.files.closure(
            schema
                .files
                .services()
                .iter()
                .filter(|s| named.contains(&*s.name))
                .map(|s| s.file),
        );
        let pool = parallel::on_loading_stack(|| decode_pool(&schema.files, &indexes, None))?;
        Ok(Arc::new(Schema {
            pool,
            files: schema.files.clone(),
            whole: false,
        }))
    }

    pub fn service_count(&self) -> usize {
        self.files.services().len()
    }

    pub fn method_count(&self) -> usize {
        self.files.method_count()
    }
}

/// Compiles `inputs` (see the module docs); every problem found is reported. Runs on a thread
/// with a stack sized for the deepest file accepted ([`parallel::on_loading_stack`]).
pub fn compile(inputs: &SchemaInputs) -> Result<Schema, StartupErrors> {
    parallel::on_loading_stack(|| compile_here(inputs))
}

fn compile_here(inputs: &SchemaInputs) -> Result<Schema, StartupErrors> {
    let started = Instant::now();
    let sources = sources::discover(&inputs.protos)?;
    let set_bytes = sources::read_set_files(&inputs.descriptor_sets)?;
    let key = match &inputs.cache_dir {
        Some(_) => Some(cache::Key::new(inputs, &sources, &set_bytes)?),
        None => None,
    };
    let cached = match (&inputs.cache_dir, &key) {
        (Some(dir), Some(key)) => cache::load(dir, key),
        _ => None,
    };
    let files = match cached {
        Some(files) => {
            tracing::debug!(
                "{} files from the descriptor cache in {:?}",
                files.len(),
                started.elapsed()
            );
            files
        }
        None => {
            let files = compile_sources(inputs, &sources, set_bytes, key.as_ref())?;
            tracing::debug!("{} files compiled in {:?}", files.len(), started.elapsed());
            files
        }
    };
    let files = Arc::new(files);
    let (pool, whole) = serving_pool(&files, inputs, &sources)?;
    tracing::debug!(
        "schema ready in {:?} ({} files in the pool)",
        started.elapsed(),
        pool.files().len()
    );
    Ok(Schema { pool, files, whole })
}

fn compile_sources(
    inputs: &SchemaInputs,
    sources: &[sources::Source],
    set_bytes: Vec<(PathBuf, Vec<u8>)>,
    key: Option<&cache::Key>,
) -> Result<Files, StartupErrors> {
    let started = Instant::now();
    let sets = sources::decode_sets(set_bytes)?;
    let finder = finder(inputs, sources, &sets);
    let gathered = sources::gather(sources, &sets, &finder)?;
    tracing::debug!(
        "{} files parsed in {:?}",
        gathered.inputs.len(),
        started.elapsed()
    );
    let linked = link::link(gathered.inputs).map_err(|e| link_error(&e, &finder))?;
    tracing::debug!("linked at {:?}", started.elapsed());
    let files = Files::from_encoded(linked)
        .map_err(|e| StartupError::Usage(format!("a linked file does not decode: {e}")))?;
    tracing::debug!("indexed at {:?}", started.elapsed());
    if let (Some(dir), Some(key)) = (&inputs.cache_dir, key) {
        let under_protos = |p: &Path| inputs.protos.iter().any(|d| p.starts_with(d));
        let imports: Vec<PathBuf> = gathered
            .disk_files
            .into_iter()
            .filter(|p| !under_protos(p))
            .collect();
        cache::store(dir, key, &files, &imports);
    }
    Ok(files)
}

fn finder(
    inputs: &SchemaInputs,
    sources: &[sources::Source],
    sets: &[(PathBuf, Vec<raw::File>)],
) -> Arc<sources::Finder> {
    let mut set_files = std::collections::HashMap::new();
    for (path, files) in sets {
        for f in files {
            set_files
                .entry(raw::name(&f.name).to_owned())
                .or_insert_with(|| (path.clone(), f.clone()));
        }
    }
    Arc::new(sources::Finder {
        set_files,
        sources: sources
            .iter()
            .map(|s| (s.name.clone(), s.path.clone()))
            .collect(),
        import_paths: inputs.import_paths.clone(),
    })
}

/// A linking problem, located by compiling the file again with protox.
fn link_error(e: &link::LinkError, finder: &Arc<sources::Finder>) -> StartupErrors {
    if !e.file.is_empty() {
        if let Some(found) = diagnose::recompile(&e.file, finder) {
            return found.into();
        }
    }
    let location = finder
        .on_disk(&e.file)
        .map_or_else(|| Location::file(&e.file), Location::file);
    StartupError::Proto {
        location,
        message: e.message.clone(),
        detail: None,
    }
    .into()
}

/// The pool serving decodes with: every file of a small tree, else the services handlers name
/// and what they import.
fn serving_pool(
    files: &Files,
    inputs: &SchemaInputs,
    sources: &[sources::Source],
) -> Result<(DescriptorPool, bool), StartupErrors> {
    let whole = files.encoded_len() <= WHOLE_POOL_BYTES;
    let indexes: Vec<u32> = if whole {
        (0..files.len() as u32).collect()
    } else {
        let named: HashSet<&str> = inputs.services.iter().map(String::as_str).collect();
        files.closure(
            files
                .services()
                .iter()
                .filter(|s| named.contains(&*s.name))
                .map(|s| s.file),
        )
    };
    Ok((
        decode_pool(files, &indexes, Some((inputs, sources)))?,
        whole,
    ))
}

/// The files at `indexes` decoded into a pool; `origin` (the inputs) lets an error point at
/// the file to fix.
fn decode_pool(
    files: &Files,
    indexes: &[u32],
    origin: Option<(&SchemaInputs, &[sources::Source])>,
) -> Result<DescriptorPool, StartupErrors> {
    let finder = || {
        origin.map(|(inputs, sources)| {
            let sets = sources::read_sets(&inputs.descriptor_sets).unwrap_or_default();
            finder(inputs, sources, &sets)
        })
    };
    let locate = |file: &str| -> Location {
        let Some(finder) = finder() else {
            return Location::file(file);
        };
        finder
            .set_files
            .get(file)
            .map(|(p, _)| p.clone())
            .or_else(|| finder.on_disk(file))
            .map_or_else(|| Location::file(file), Location::file)
    };
    if let Some((name, syntax)) = indexes
        .iter()
        .filter_map(|&i| files.get(i))
        .find_map(|f| Some((&f.name, f.unknown_syntax.as_deref()?)))
    {
        return Err(StartupError::Proto {
            location: locate(name),
            message: format!(
                "{name}: syntax {:?} is none protobuf has (\"proto2\", \"proto3\" or \"editions\"); rebuild the descriptor set with protoc or buf",
                crate::error::clipped(syntax, 40)
            ),
            detail: None,
        }
        .into());
    }
    // Editions files are decoded as the proto3 files they encode like.
    let set = files
        .encode_set_with(indexes.iter().copied(), |f| {
            if f.editions {
                editions::to_proto3(&f.bytes).map(Some)
            } else {
                Ok(None)
            }
        })
        .map_err(|e| {
            let file = e.split(':').next().unwrap_or_default().to_owned();
            StartupError::Proto {
                location: locate(&file),
                message: e,
                detail: None,
            }
        })?;
    // prost-reflect panics on some invalid sets (while describing the error); that is reported
    // as an invalid set, not a crash.
    let set_location = || {
        origin
            .and_then(|(inputs, _)| inputs.descriptor_sets.first())
            .map_or_else(|| Location::file("protos"), Location::file)
    };
    let Ok(decoded) = std::panic::catch_unwind(|| DescriptorPool::decode(set.as_slice())) else {
        return Err(StartupError::Proto {
            location: set_location(),
            message: "these descriptors are not valid: the descriptor library failed on them (a file with a syntax it does not know?)".into(),
            detail: None,
        }
        .into());
    };
    decoded.map_err(|e| {
        let file = e.file().unwrap_or_default().to_owned();
        if file.is_empty() {
            // Some of the library's errors name no file (an out-of-range oneof index): the
            // set is all there is to point at.
            return StartupError::Proto {
                location: set_location(),
                message: format!("these descriptors are not valid: {e}; rebuild the descriptor set with protoc or buf"),
                detail: None,
            }
            .into();
        }
        if let Some(finder) = finder() {
            if !file.is_empty() && finder.on_disk(&file).is_some() {
                if let Some(found) = diagnose::recompile(&file, &finder) {
                    return found.into();
                }
            }
        }
        let message = e.to_string();
        // Two files that do not import each other declare one name: point at this file's
        // declaration, as protoc does.
        let located = message
            .strip_prefix("name '")
            .and_then(|m| m.split_once("' is already defined"))
            .and_then(|(name, _)| {
                let path = finder()?.on_disk(&file)?;
                diagnose::locate_name(&path, &file, name)
            });
        let help = "  help: every file of a package shares its names; rename one of the two, or give one file another package";
        StartupError::Proto {
            detail: located.is_some().then(|| help.to_owned()),
            location: located.unwrap_or_else(|| locate(&file)),
            message: format!("{file}: {message}"),
        }
        .into()
    })
    .and_then(|pool| match bad_map_entry(&pool) {
        None => Ok(pool),
        Some((file, message)) => Err(StartupError::Proto {
            location: locate(&file),
            message: format!("{file}: {message}"),
            detail: None,
        }
        .into()),
    })
}

/// The first message marked as a map entry (`option map_entry`) that is not one, with its
/// file: exactly `key = 1`, an integer, bool or string, and `value = 2`, both singular. protoc
/// and protox only make such entries, but a descriptor set may hold anything, and the
/// descriptor library takes a broken entry and fails (panics) on the first message that uses
/// it: a call, its journal record, a rule's test.
fn bad_map_entry(pool: &DescriptorPool) -> Option<(String, String)> {
    use prost_reflect::Kind;
    pool.all_messages()
        .filter(|m| m.is_map_entry())
        .find_map(|m| {
            let field = |number: u32, name: &str| {
                m.get_field(number)
                    .filter(|f| f.name() == name && !f.is_list() && !f.is_map())
            };
            let key_ok = field(1, "key").is_some_and(|k| {
                !matches!(
                    k.kind(),
                    Kind::Double | Kind::Float | Kind::Bytes | Kind::Message(_) | Kind::Enum(_)
                )
            });
            let ok = key_ok && field(2, "value").is_some() && m.fields().len() == 2;
            (!ok).then(|| {
                (
                    m.parent_file().name().to_owned(),
                    format!(
                        "message {} is marked as a map entry (option map_entry) but is not one: a \
                     map entry has exactly two fields, `key = 1` (an integer, bool or string \
                     type) and `value = 2`, neither repeated; rebuild the descriptor set with \
                     protoc or buf",
                        m.full_name()
                    ),
                )
            })
        })
}
