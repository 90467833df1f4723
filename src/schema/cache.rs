//! The descriptor cache: what linking produced, kept on disk so the next start (or reload) of the
//! same tree reads one file instead of parsing thousands.
//!
//! The key is a hash of protoserve's version and every input: each `.proto` under the
//! `--protos` folders (import name, path, content), each descriptor set (path, content) and the
//! `-I` folders. Files read from `-I` folders are not known before parsing, so an entry lists
//! them with the hash of their content and is stale if one changed. An entry is written to a
//! temporary file and renamed into place, so readers never see half of one; an entry that does
//! not decode, fails its checksum or is stale is ignored with a warning.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use prost::Message as _;
use xxhash_rust::xxh3::{xxh3_128, Xxh3};

use super::files::Files;
use super::sources::Source;
use super::{parallel, SchemaInputs};
use crate::error::StartupError;

const FORMAT: &str = "protoserve-descriptor-cache-1";
/// Entries kept in the folder; older ones are removed when a new one is written.
const KEEP: usize = 8;

/// One cache entry on disk.
#[derive(Clone, PartialEq, prost::Message)]
struct Entry {
    #[prost(string, tag = "1")]
    format: String,
    #[prost(string, tag = "2")]
    version: String,
    #[prost(bytes = "vec", tag = "3")]
    key: Vec<u8>,
    #[prost(message, repeated, tag = "4")]
    imports: Vec<Stamp>,
    /// The linked files as a `FileDescriptorSet`, in dependency order.
    #[prost(bytes = "bytes", tag = "5")]
    set: Bytes,
    #[prost(bytes = "vec", tag = "6")]
    checksum: Vec<u8>,
}

/// A file read from an `-I` folder, and the hash of its content then.
#[derive(Clone, PartialEq, prost::Message)]
struct Stamp {
    #[prost(string, tag = "1")]
    path: String,
    #[prost(bytes = "vec", tag = "2")]
    hash: Vec<u8>,
}

/// The cache folder when none is given: `protoserve/` in the user's cache folder.
pub fn default_dir() -> Option<PathBuf> {
    dirs::cache_dir().map(|d| d.join("protoserve"))
}

/// The key of a set of inputs.
pub struct Key(u128);

impl Key {
    /// `sets` are the descriptor sets' bytes, as read for compiling.
    pub fn new(
        inputs: &SchemaInputs,
        sources: &[Source],
        sets: &[(PathBuf, Vec<u8>)],
    ) -> Result<Self, StartupError> {
        let hashes = parallel::map(sources.iter().collect(), |s| {
            std::fs::read(&s.path)
                .map(|b| xxh3_128(&b))
                .map_err(|e| StartupError::io(&s.path, e))
        });
        let mut h = Xxh3::new();
        let mut field = |b: &[u8]| {
            h.update(&(b.len() as u64).to_le_bytes());
            h.update(b);
        };
        field(FORMAT.as_bytes());
        field(env!("CARGO_PKG_VERSION").as_bytes());
        for d in &inputs.protos {
            field(d.as_os_str().as_encoded_bytes());
        }
        field(b"-I");
        for d in &inputs.import_paths {
            field(d.as_os_str().as_encoded_bytes());
        }
        field(b"sources");
        for (s, hash) in sources.iter().zip(hashes) {
            field(s.name.as_bytes());
            field(s.path.as_os_str().as_encoded_bytes());
            field(&hash?.to_le_bytes());
        }
        field(b"sets");
        for (p, bytes) in sets {
            field(p.as_os_str().as_encoded_bytes());
            field(&xxh3_128(bytes).to_le_bytes());
        }
        Ok(Key(h.digest128()))
    }

    fn file(&self, dir: &Path) -> PathBuf {
        dir.join(format!("descriptors-{:032x}.bin", self.0))
    }
}

/// The cached files for `key`, if a good entry is there.
pub fn load(dir: &Path, key: &Key) -> Option<Files> {
    let path = key.file(dir);
    let bytes = std::fs::read(&path).ok()?;
    let ignore = |why: &str| {
        tracing::warn!(
            "descriptor cache {}: ignored ({why}); compiling the protos",
            path.display()
        );
        None
    };
    let Ok(entry) = Entry::decode(Bytes::from(bytes)) else {
        return ignore("it is corrupt");
    };
    if entry.format != FORMAT || entry.key != key.0.to_le_bytes() {
        return ignore("it is corrupt");
    }
    if entry.version != env!("CARGO_PKG_VERSION") {
        return ignore("it was written by another protoserve version");
    }
    if entry.checksum != xxh3_128(&entry.set).to_le_bytes() {
        return ignore("its checksum does not match");
    }
    for stamp in &entry.imports {
        let now = std::fs::read(&stamp.path).map(|b| xxh3_128(&b).to_le_bytes().to_vec());
        if now.ok().as_deref() != Some(stamp.hash.as_slice()) {
            return ignore(&format!("{} changed", stamp.path));
        }
    }
    match Files::from_encoded_set(entry.set) {
        Ok(files) => Some(files),
        Err(_) => ignore("it is corrupt"),
    }
}

/// Writes the entry for `key` atomically; a failure is a warning (serving goes on).
pub fn store(dir: &Path, key: &Key, files: &Files, imports: &[PathBuf]) {
    if let Err(e) = try_store(dir, key, files, imports) {
        tracing::warn!(
            "descriptor cache {}: not written: {e} (use --cache-dir to pick another folder, or --no-cache)",
            dir.display()
        );
    }
}

fn try_store(
    dir: &Path,
    key: &Key,
    files: &Files,
    imports: &[PathBuf],
) -> Result<(), std::io::Error> {
    std::fs::create_dir_all(dir)?;
    let set = Bytes::from(files.encode_all());
    let mut stamps = Vec::with_capacity(imports.len());
    for p in imports {
        stamps.push(Stamp {
            path: p.to_string_lossy().into_owned(),
            hash: xxh3_128(&std::fs::read(p)?).to_le_bytes().to_vec(),
        });
    }
    let entry = Entry {
        format: FORMAT.into(),
        version: env!("CARGO_PKG_VERSION").into(),
        key: key.0.to_le_bytes().to_vec(),
        imports: stamps,
        checksum: xxh3_128(&set).to_le_bytes().to_vec(),
        set,
    };
    let target = key.file(dir);
    let temp = dir.join(format!(
        ".descriptors-{:032x}.{}.tmp",
        key.0,
        std::process::id()
    ));
    std::fs::write(&temp, entry.encode_to_vec())?;
    if let Err(e) = std::fs::rename(&temp, &target) {
        let _ = std::fs::remove_file(&temp);
        return Err(e);
    }
    prune(dir, &target);
    Ok(())
}

/// Whether a file named `name` in the cache folder is an entry (as written by [`store`]; its
/// temporary file is hidden). The file watcher ignores them when the folder is an input's.
pub fn is_entry(name: &str) -> bool {
    name.starts_with("descriptors-") && name.ends_with(".bin")
}

/// Removes all but the newest entries.
fn prune(dir: &Path, keep: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut found: Vec<(std::time::SystemTime, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter(|e| is_entry(&e.file_name().to_string_lossy()))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    if found.len() <= KEEP {
        return;
    }
    found.sort_by_key(|f| std::cmp::Reverse(f.0));
    for (_, path) in found.into_iter().skip(KEEP) {
        if path != keep {
            let _ = std::fs::remove_file(path);
        }
    }
}
