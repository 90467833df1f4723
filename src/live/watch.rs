//! Reloading when the inputs change on disk, and on SIGHUP.
//!
//! The folders the server reads (`--protos`, `-I`, `--handlers`, `--data`) and the
//! `--descriptor-set` files are watched with `notify`, each folder under them on its own, so
//! that one the server cannot read is reported and every other stays watched (a folder that
//! appears is watched before the reload it sets off reads it); events are debounced, so an editor's
//! save (write, rename, chmod) or a `git checkout` of many files becomes one reload. Only
//! changes count: reading a file (which every reload does) is an event too on Linux, and
//! reacting to it would reload forever. Editors' temporary and backup files are ignored, and so
//! is what is in hidden folders (loading skips them), and the descriptor cache's entries when
//! `--cache-dir` is inside a watched folder (however either is named: through links, with
//! `..`): a reload that writes one would otherwise set off another. A change only under the
//! handler and data folders reuses the compiled protos. Both the watch and SIGHUP are taken
//! before the first generation loads, so that what happens while it loads is not lost.

use std::collections::{HashMap, HashSet};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::{Live, Trigger};
use crate::Options;

/// How long the folders must be quiet before a reload starts.
const QUIET: Duration = Duration::from_millis(150);

/// The longest a change waits for quiet: a folder that never stays quiet for [`QUIET`] (a
/// process rewriting a data file ten times a second) would otherwise hold every reload back
/// for as long as it runs.
const LONGEST_WAIT: Duration = Duration::from_secs(1);

/// Keeps the file watcher running; dropping it stops watching.
pub struct Watching {
    _watcher: Arc<Mutex<RecommendedWatcher>>,
}

/// Watches `live`'s input folders and reloads on change. A folder that does not exist yet (a
/// missing `data/`) is watched once it appears, and one that is replaced (removed or renamed
/// and created again, as `git checkout`, `rsync` or a generator do) is watched again: the
/// parent of each folder is watched too, and before each reload every folder whose identity
/// changed is watched afresh.
///
/// Watching starts before the first generation loads, so that a change made while it loads
/// (seconds, for a big tree) is not missed: the changes wait in [`Changes`] until
/// [`Changes::reload`] is given the live server, and then reload it.
pub fn watch_files(options: &Options) -> Result<(Watching, Changes), String> {
    // A descriptor set is a file: its folder is watched (not recursively, through the
    // parents below) and only events on the file itself count.
    let proto_roots: Vec<PathBuf> = options
        .protos
        .iter()
        .chain(&options.import_paths)
        .chain(&options.descriptor_sets)
        .map(|p| absolute(p))
        .collect();
    let all_roots: Vec<PathBuf> = proto_roots
        .iter()
        .cloned()
        .chain([absolute(&options.handlers), absolute(&options.data)])
        .collect();
    let cache = options.cache_dir.as_deref().map(|dir| CacheDir {
        dir: absolute(dir),
        roots: all_roots.clone(),
    });
    let (tx, rx) = mpsc::unbounded_channel::<Seen>();
    let (roots, protos_roots, looking) = (all_roots.clone(), proto_roots.clone(), cache.clone());
    let watcher = notify::recommended_watcher(move |event: notify::Result<Event>| match event {
        Ok(event) => {
            if event.need_rescan() {
                // The kernel's queue of events overflowed: what changed is unknown, so
                // everything is read again (and every folder watched afresh).
                let _ = tx.send(Seen::everything());
                return;
            }
            if matches!(event.kind, EventKind::Access(_)) {
                return;
            }
            // The parents are watched only to see the folders themselves come and go.
            let created = matches!(event.kind, EventKind::Create(_));
            // A folder removed or renamed away has lost its watch, and one made at its path
            // may have its inode: it is watched afresh whatever its identity.
            let went = matches!(
                event.kind,
                EventKind::Remove(_) | EventKind::Modify(notify::event::ModifyKind::Name(_))
            );
            let made = matches!(
                event.kind,
                EventKind::Create(_) | EventKind::Modify(notify::event::ModifyKind::Name(_))
            );
            let mut seen = Seen::default();
            for path in &event.paths {
                if !about_input(path, &roots) {
                    continue;
                }
                // A folder that appeared is watched before the reload reads it.
                seen.folders |= made && path.is_dir();
                let protos = protos_roots.iter().any(|r| path.starts_with(r));
                match cache.as_ref().map(|c| c.event(path, created)) {
                    Some(ForCache::Own) => {}
                    Some(ForCache::Parent) => seen.parents.push((path.clone(), protos)),
                    Some(ForCache::Unrelated) | None => {
                        seen.changed = true;
                        seen.protos |= protos;
                        if went {
                            seen.gone.push(path.clone());
                        }
                    }
                }
            }
            if !seen.changed && seen.parents.is_empty() {
                return;
            }
            seen.root = event.paths.iter().any(|p| roots.contains(p));
            let _ = tx.send(seen);
        }
        Err(e) => tracing::warn!("watching the input folders: {e}"),
    })
    .map_err(|e| format!("cannot watch the input folders: {e}"))?;
    let watcher = Arc::new(Mutex::new(watcher));
    let mut folders = Folders::new(all_roots);
    {
        let mut w = watcher.lock().unwrap_or_else(|e| e.into_inner());
        folders.watch_parents(&mut w);
        // An input folder that cannot be watched stops serve (--no-watch serves without
        // watching); a folder under one is reported and the rest is watched.
        for failed in folders.resync(&mut w, &Seen::default()) {
            if failed.root {
                return Err(format!(
                    "cannot watch {}: {}",
                    failed.folder.display(),
                    reason(&failed.reason)
                ));
            }
            tracing::warn!("{}", crate::error::log_escaped(&failed.to_string()));
        }
    }
    let changes = Changes {
        rx,
        folders,
        resyncing: watcher.clone(),
        looking,
    };
    Ok((Watching { _watcher: watcher }, changes))
}

/// The changes seen since watching started, until the live server they reload is running.
pub struct Changes {
    rx: mpsc::UnboundedReceiver<Seen>,
    folders: Folders,
    resyncing: Arc<Mutex<RecommendedWatcher>>,
    looking: Option<CacheDir>,
}

impl Changes {
    /// Reloads `live` on every change (debounced), those seen so far first.
    pub fn reload(self, live: Arc<Live>) {
        let Changes {
            mut rx,
            mut folders,
            resyncing,
            looking,
        } = self;
        tokio::spawn(async move {
            while let Some(mut seen) = rx.recv().await {
                // Wait until the folders are quiet, folding every change meanwhile into one reload.
                let give_up = tokio::time::Instant::now() + LONGEST_WAIT;
                loop {
                    let wait =
                        QUIET.min(give_up.saturating_duration_since(tokio::time::Instant::now()));
                    if wait.is_zero() {
                        break;
                    }
                    match tokio::time::timeout(wait, rx.recv()).await {
                        Ok(Some(more)) => seen.add(more),
                        Ok(None) => return,
                        Err(_) => break,
                    }
                }
                // Looking into new folders and watching a folder walk trees: off the async
                // workers.
                let (watcher, cache) = (resyncing.clone(), looking.clone());
                let resynced = tokio::task::spawn_blocking(move || {
                    // By now the watch on a new folder is in place: what was written into it
                    // before is found here, what is written after has its own event.
                    for (folder, protos) in std::mem::take(&mut seen.parents) {
                        if !cache.as_ref().is_some_and(|c| c.made(&folder)) {
                            seen.changed = true;
                            seen.protos |= protos;
                        }
                    }
                    if !seen.changed {
                        return (folders, Vec::new(), seen);
                    }
                    let mut watcher = watcher.lock().unwrap_or_else(|e| e.into_inner());
                    let failed = folders.resync(&mut watcher, &seen);
                    (folders, failed, seen)
                })
                .await;
                let Ok((back, failed, seen)) = resynced else {
                    tracing::error!(
                        "watching the input folders stopped; SIGHUP and the admin API still reload"
                    );
                    return;
                };
                folders = back;
                for e in failed {
                    tracing::warn!("{}", crate::error::log_escaped(&e.to_string()));
                }
                if seen.changed {
                    let _ = live
                        .reload(Trigger::Files {
                            protos: seen.protos,
                        })
                        .await;
                }
            }
        });
    }
}

/// What events say, from one event or folded over the events of one quiet period.
#[derive(Default)]
struct Seen {
    /// Inputs changed.
    changed: bool,
    /// Inputs under a proto folder changed (otherwise the compiled protos are reused).
    protos: bool,
    /// A watched folder itself was created, removed or renamed.
    root: bool,
    /// Folders created on the way to the cache folder, each with whether it is under a proto
    /// folder: inputs unless the cache made them, which is told once the folders are quiet.
    parents: Vec<(PathBuf, bool)>,
    /// Paths removed or renamed under the watched folders.
    gone: Vec<PathBuf>,
    /// A folder was created or renamed into place under the watched folders.
    folders: bool,
}

impl Seen {
    /// Anything may have changed, folders too.
    fn everything() -> Self {
        Self {
            changed: true,
            protos: true,
            root: true,
            folders: true,
            ..Self::default()
        }
    }

    fn add(&mut self, more: Seen) {
        self.changed |= more.changed;
        self.protos |= more.protos;
        self.root |= more.root;
        self.parents.extend(more.parents);
        self.gone.extend(more.gone);
        self.folders |= more.folders;
    }
}

/// What an event on a path is to the descriptor cache.
#[derive(Debug, PartialEq, Eq)]
enum ForCache {
    /// The cache's own doing: an entry written, replaced or pruned, or the cache folder created.
    Own,
    /// A folder created on the way to the cache folder: by the cache for its first entry, or
    /// by someone with inputs in it ([`CacheDir::made`] tells which).
    Parent,
    /// Anything else.
    Unrelated,
}

/// The descriptor cache folder, which may be inside a watched folder (or be one).
///
/// Events name paths as the watched folders were given, and `--cache-dir` may name the same
/// folder another way (through a symbolic link, with `..`, or the other way round), so both
/// are compared as their real paths, found afresh for each event: a link may be switched
/// while serving, and the cache folder may not exist yet.
#[derive(Clone)]
struct CacheDir {
    dir: PathBuf,
    /// The watched folders: never ignored themselves.
    roots: Vec<PathBuf>,
}

impl CacheDir {
    /// What an event on `path` is to the cache.
    fn event(&self, path: &Path, created: bool) -> ForCache {
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            return ForCache::Unrelated;
        };
        if self.roots.iter().any(|r| r == path) {
            return ForCache::Unrelated;
        }
        // The last part is not followed: a link created there is not the folder it points at.
        let path = real(parent).join(name);
        let dir = real(&self.dir);
        if path.parent() == Some(dir.as_path())
            && crate::schema::cache::is_entry(&name.to_string_lossy())
        {
            return ForCache::Own;
        }
        match created {
            true if path == dir => ForCache::Own,
            true if dir.starts_with(&path) => ForCache::Parent,
            _ => ForCache::Unrelated,
        }
    }

    /// Whether the new folder at `folder`, on the way to the cache folder, is the cache's
    /// doing: it holds nothing but the way to the cache folder and the cache's entries (and
    /// hidden files, which loading skips). A folder that went again holds nothing.
    fn made(&self, folder: &Path) -> bool {
        only_the_way_to(&real(folder), &real(&self.dir))
    }
}

/// Whether everything in `folder` (a real path) is the way to `cache`, or an entry of it.
fn only_the_way_to(folder: &Path, cache: &Path) -> bool {
    let entries = match std::fs::read_dir(folder) {
        Ok(entries) => entries,
        Err(e) => return e.kind() == std::io::ErrorKind::NotFound,
    };
    for entry in entries {
        let Ok(entry) = entry else {
            return false;
        };
        let path = entry.path();
        if crate::input::is_hidden(&path) {
            continue;
        }
        if folder == cache {
            if crate::schema::cache::is_entry(&entry.file_name().to_string_lossy()) {
                continue;
            }
            return false;
        }
        // Loading follows links, so this does; only deeper, so a link back up ends here.
        let path = real(&path);
        let deeper = path.starts_with(folder) && path != folder;
        if !(deeper && cache.starts_with(&path) && path.is_dir() && only_the_way_to(&path, cache)) {
            return false;
        }
    }
    true
}

/// The real path of `path`, which need not exist: its nearest existing ancestor with every
/// link resolved, then the rest, with `.` and `..` applied.
fn real(path: &Path) -> PathBuf {
    let mut rest = Vec::new();
    let mut base = path.to_path_buf();
    let mut out = loop {
        if let Ok(found) = std::fs::canonicalize(&base) {
            break found;
        }
        match base.components().next_back() {
            Some(part @ (Component::Normal(_) | Component::CurDir | Component::ParentDir)) => {
                rest.push(part.as_os_str().to_owned());
                base.pop();
            }
            // `/` (or a relative path's start: events name absolute paths).
            _ => break base,
        }
    };
    for part in rest.into_iter().rev() {
        match Path::new(&part).components().next() {
            Some(Component::ParentDir) => {
                out.pop();
            }
            Some(Component::Normal(name)) => out.push(name),
            _ => {}
        }
    }
    out
}

/// The watched folders: each input folder and every folder under it (hidden ones are not
/// inputs), each watched on its own with the identity (device, inode) of the directory its
/// watch is on. One watch per folder, rather than one recursive watch per input folder, so
/// that a folder that cannot be watched (one the server cannot read) is reported and every
/// other folder stays watched.
struct Folders {
    roots: Vec<PathBuf>,
    watched: HashMap<PathBuf, (u64, u64)>,
    /// The folders that could not be watched, so each is reported once until it can be.
    failing: HashSet<PathBuf>,
}

/// A folder that could not be watched.
struct Unwatched {
    folder: PathBuf,
    /// It is an input folder, not a folder under one.
    root: bool,
    reason: notify::Error,
}

impl std::fmt::Display for Unwatched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "cannot watch {}: {} (changes in it are not noticed until it can be; make it readable by the server)",
            self.folder.display(),
            reason(&self.reason)
        )
    }
}

/// A notify error without the paths it appends: the message names the folder already.
fn reason(e: &notify::Error) -> String {
    match &e.kind {
        notify::ErrorKind::Io(io) => io.to_string(),
        notify::ErrorKind::MaxFilesWatch => {
            "the system's limit on watches is reached (raise fs.inotify.max_user_watches)".into()
        }
        other => format!("{other:?}"),
    }
}

impl Folders {
    fn new(roots: Vec<PathBuf>) -> Folders {
        Folders {
            roots,
            watched: HashMap::new(),
            failing: HashSet::new(),
        }
    }

    /// Watches the parent of each folder (not recursively) unless another watched folder
    /// already covers it, so that a folder created, removed or renamed is seen.
    fn watch_parents(&self, watcher: &mut RecommendedWatcher) {
        let mut parents: Vec<&Path> = Vec::new();
        for root in &self.roots {
            let Some(parent) = root.parent() else {
                continue;
            };
            let covered = self.roots.iter().any(|r| parent.starts_with(r));
            if covered || parents.contains(&parent) || !parent.is_dir() {
                continue;
            }
            parents.push(parent);
            if let Err(e) = watcher.watch(parent, RecursiveMode::NonRecursive) {
                tracing::warn!(
                    "cannot watch {} (a new or replaced {} is not noticed): {e}",
                    parent.display(),
                    root.display()
                );
            }
        }
    }

    /// Watches every folder whose directory is not the one watched (new, or replaced since)
    /// and stops watching those that went. When a watched folder itself came or went
    /// (`seen.root`), every folder is watched afresh: one was removed or renamed and created
    /// again, maybe with the inode of the one before; so is every folder at or under a path
    /// removed or renamed. The folders are looked through only when what was seen may have
    /// changed them (or one could not be watched before): a file's change costs nothing here.
    /// Returns the folders that newly cannot be watched; the others are watched all the same.
    fn resync(&mut self, watcher: &mut RecommendedWatcher, seen: &Seen) -> Vec<Unwatched> {
        let (all, gone) = (seen.root, &seen.gone);
        let first = self.watched.is_empty();
        let went = gone
            .iter()
            .any(|g| self.watched.keys().any(|f| f.starts_with(g)));
        if !(first || all || seen.folders || went || !self.failing.is_empty()) {
            return Vec::new();
        }
        let found = folders_under(&self.roots);
        let current: HashMap<&Path, (u64, u64)> =
            found.iter().map(|(p, id)| (p.as_path(), *id)).collect();
        self.watched.retain(|folder, id| {
            let keep = !all
                && !gone.iter().any(|g| folder.starts_with(g))
                && current.get(folder.as_path()) == Some(id);
            if !keep {
                let _ = watcher.unwatch(folder);
            }
            keep
        });
        self.failing.retain(|f| current.contains_key(f.as_path()));
        let mut failed = Vec::new();
        for (folder, id) in found {
            if self.watched.contains_key(&folder) {
                continue;
            }
            match watcher.watch(&folder, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    self.failing.remove(&folder);
                    self.watched.insert(folder, id);
                }
                Err(reason) => {
                    if self.failing.insert(folder.clone()) {
                        let root = self.roots.contains(&folder);
                        failed.push(Unwatched {
                            folder,
                            root,
                            reason,
                        });
                    }
                }
            }
        }
        failed
    }
}

/// Each folder in `roots` and every folder under them, with its identity: links are followed,
/// each folder once (by identity: the first path to it is the one watched), hidden folders are
/// not inputs, and a folder that cannot be listed is there but not looked into. Run before
/// every reload, so it costs a folder one `stat` and one listing, and a file nothing.
fn folders_under(roots: &[PathBuf]) -> Vec<(PathBuf, (u64, u64))> {
    let mut found = Vec::new();
    let mut seen = HashSet::new();
    // The input folders first, each by the path given: events name them so.
    let mut starts = Vec::new();
    for root in roots {
        let Some(id) = identity(root) else {
            continue;
        };
        if seen.insert(folder_key(root, id)) {
            found.push((root.clone(), id));
            starts.push(root);
        }
    }
    // Then depth first in name order, as loading walks: the path kept for a folder reached
    // twice is the one loading keeps.
    for root in starts {
        let mut todo: Vec<PathBuf> = subfolders(root).into_iter().rev().collect();
        while let Some(path) = todo.pop() {
            let Some(id) = identity(&path) else {
                continue;
            };
            if seen.insert(folder_key(&path, id)) {
                todo.extend(subfolders(&path).into_iter().rev());
                found.push((path, id));
            }
        }
    }
    found
}

/// What may be a folder in `dir`, in name order: folders and links, not hidden. A file is not
/// looked at; a folder that cannot be listed holds nothing here.
fn subfolders(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().map_or(true, |t| t.is_dir() || t.is_symlink()))
        .map(|e| e.path())
        .filter(|p| !crate::input::is_hidden(p))
        .collect();
    paths.sort();
    paths
}

/// What tells folders apart: their identity, and where there is none (see [`identity`]) their
/// real path.
fn folder_key(path: &Path, id: (u64, u64)) -> ((u64, u64), Option<PathBuf>) {
    match cfg!(unix) {
        true => (id, None),
        false => (id, std::fs::canonicalize(path).ok()),
    }
}

/// The device and inode of the directory at `path`, if there is one.
#[cfg(unix)]
fn identity(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok().filter(|m| m.is_dir())?;
    Some((m.dev(), m.ino()))
}

#[cfg(not(unix))]
fn identity(path: &Path) -> Option<(u64, u64)> {
    path.is_dir().then_some((0, 0))
}

/// SIGHUPs, taken from the start: the signal's default action ends the process, so one that
/// came while the first generation loads (seconds, for a big tree) killed the server. One
/// that came before [`reload_on_sighup`] runs sets off a reload once serving, which also reads
/// what changed while loading.
pub struct Hangups(#[cfg(unix)] tokio::signal::unix::Signal);

/// Takes SIGHUP over; call it before loading. Needs the runtime.
#[cfg(unix)]
pub fn listen_for_sighup() -> Result<Hangups, String> {
    use tokio::signal::unix::{signal, SignalKind};
    signal(SignalKind::hangup())
        .map(Hangups)
        .map_err(|e| format!("cannot listen for SIGHUP: {e}"))
}

#[cfg(not(unix))]
pub fn listen_for_sighup() -> Result<Hangups, String> {
    Ok(Hangups())
}

/// Reloads on every SIGHUP, for the life of the process.
#[cfg(unix)]
pub fn reload_on_sighup(live: Arc<Live>, hangups: Hangups) {
    let Hangups(mut hup) = hangups;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            let _ = live.reload(Trigger::Signal).await;
        }
    });
}

#[cfg(not(unix))]
pub fn reload_on_sighup(_live: Arc<Live>, _hangups: Hangups) {}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// Whether an event on `path` may be about an input: it is under a watched folder, and neither
/// it nor a folder on the way from there is hidden (loading skips them: a `git commit` in a
/// watched folder writes only under `.git/`) or an editor's file. A symbolic link named `..…`
/// switched into place is an exception: a Kubernetes ConfigMap volume holds each file as a link
/// through `..data`, itself a link to the current version's folder, and an update renames a new
/// `..data` link over the old one, the only event an update makes in the folder. (Emacs's
/// `.#FILE` lock links stay ignored.)
fn about_input(path: &Path, roots: &[PathBuf]) -> bool {
    let hidden = |rest: &Path| {
        rest.components()
            .any(|c| c.as_os_str().as_encoded_bytes().starts_with(b"."))
    };
    let switched_link = || {
        path.file_name()
            .is_some_and(|n| n.as_encoded_bytes().starts_with(b".."))
            && path
                .symlink_metadata()
                .is_ok_and(|m| m.file_type().is_symlink())
            && path.parent().is_some_and(|parent| {
                roots
                    .iter()
                    .any(|r| parent.strip_prefix(r).is_ok_and(|rest| !hidden(rest)))
            })
    };
    roots.iter().any(|r| {
        path.strip_prefix(r)
            .is_ok_and(|rest| !ignored(path) && !hidden(rest))
    }) || switched_link()
}

/// Editors' swap, backup and temporary files, and hidden files.
fn ignored(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    name.starts_with('.')
        || name.ends_with('~')
        || name.ends_with(".swp")
        || name.ends_with(".swx")
        || name.ends_with(".tmp")
        || name.starts_with('#')
}

#[cfg(test)]
mod tests {
    use super::ForCache::{Own, Parent, Unrelated};
    use super::{ignored, real, CacheDir};
    use std::path::{Path, PathBuf};

    #[test]
    fn the_caches_own_files_are_ignored_and_nothing_else() {
        let cache = CacheDir {
            dir: PathBuf::from("/p/protos/cache/x"),
            roots: vec![PathBuf::from("/p/protos"), PathBuf::from("/p/handlers")],
        };
        let event = |p: &str, created: bool| cache.event(Path::new(p), created);
        assert_eq!(event("/p/protos/cache/x/descriptors-0a.bin", false), Own);
        assert_eq!(event("/p/protos/cache/x/descriptors-0a.bin", true), Own);
        assert_eq!(event("/p/protos/cache/x", true), Own);
        // A new folder on the way may hold inputs: looked into once the folders are quiet.
        assert_eq!(event("/p/protos/cache", true), Parent);
        // Anything else in or around it counts: a folder renamed there, a .proto next to it.
        assert_eq!(event("/p/protos/cache", false), Unrelated);
        assert_eq!(event("/p/protos/cache/x/a.proto", true), Unrelated);
        assert_eq!(
            event("/p/protos/cache/x/sub/descriptors-0a.bin", false),
            Unrelated
        );
        assert_eq!(event("/p/protos", true), Unrelated);
        // A cache folder that is a watched folder: only its entries are ignored.
        let cache = CacheDir {
            dir: PathBuf::from("/p/handlers"),
            roots: vec![PathBuf::from("/p/handlers")],
        };
        let event = |p: &str, created: bool| cache.event(Path::new(p), created);
        assert_eq!(event("/p/handlers/descriptors-0a.bin", false), Own);
        assert_eq!(event("/p/handlers", true), Unrelated);
        assert_eq!(event("/p/handlers/h.json", false), Unrelated);
    }

    #[cfg(unix)]
    #[test]
    fn a_new_folder_on_the_way_to_the_cache_is_the_caches_only_if_it_holds_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let top = std::fs::canonicalize(dir.path()).unwrap();
        let cache = CacheDir {
            dir: top.join("protos/gen/sub/cache"),
            roots: vec![top.join("protos")],
        };
        let gen = top.join("protos/gen");
        std::fs::create_dir_all(gen.join("sub/cache")).unwrap();
        std::fs::write(gen.join("sub/cache/descriptors-0a.bin"), b"").unwrap();
        std::fs::write(gen.join("sub/cache/.descriptors-0a.1.tmp"), b"").unwrap();
        std::fs::write(gen.join(".hidden.proto"), b"").unwrap();
        assert!(cache.made(&gen));
        assert!(cache.made(&top.join("protos/gone")));
        // A link back up is not followed round.
        std::os::unix::fs::symlink("..", gen.join("sub/up")).unwrap();
        assert!(!cache.made(&gen));
        std::fs::remove_file(gen.join("sub/up")).unwrap();
        for other in ["a.proto", "sub/a.proto", "sub/cache/a.proto"] {
            std::fs::write(gen.join(other), b"").unwrap();
            assert!(!cache.made(&gen), "{other}");
            std::fs::remove_file(gen.join(other)).unwrap();
        }
        std::fs::create_dir(gen.join("sub/other")).unwrap();
        assert!(!cache.made(&gen));
    }

    #[cfg(unix)]
    #[test]
    fn real_paths_resolve_links_and_dots_of_folders_that_may_not_exist() {
        let dir = tempfile::tempdir().unwrap();
        let top = std::fs::canonicalize(dir.path()).unwrap();
        std::fs::create_dir(top.join("protos")).unwrap();
        std::os::unix::fs::symlink(&top, top.join("alias")).unwrap();
        let want = top.join("protos/cache/x");
        for given in [
            "protos/cache/x",
            "alias/protos/cache/x",
            "alias/protos/../protos/./cache/x",
            "protos/cache/new/../x",
        ] {
            assert_eq!(real(&dir.path().join(given)), want, "{given}");
        }
        assert_eq!(real(Path::new("/")), Path::new("/"));
        // A cache named through the link is recognised in events naming the real folder.
        let cache = CacheDir {
            dir: top.join("alias/protos/cache"),
            roots: vec![top.join("protos")],
        };
        assert_eq!(
            cache.event(&top.join("protos/cache/descriptors-0a.bin"), false),
            Own
        );
        assert_eq!(cache.event(&top.join("protos/cache"), true), Own);
        assert_eq!(
            cache.event(&top.join("protos/cache/a.proto"), false),
            Unrelated
        );
    }

    #[cfg(unix)]
    #[test]
    fn every_folder_is_found_once_hidden_ones_and_files_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let top = dir.path().join("protos");
        for sub in ["a/b", ".git/objects", "c/d"] {
            std::fs::create_dir_all(top.join(sub)).unwrap();
        }
        std::fs::write(top.join("a/x.proto"), b"").unwrap();
        // A link back up, and second paths to folders: each folder once, by the first path
        // depth first in name order, as loading keeps it.
        std::os::unix::fs::symlink("..", top.join("a/up")).unwrap();
        std::os::unix::fs::symlink("../../c", top.join("a/b/to_c")).unwrap();
        std::os::unix::fs::symlink("../a/b", top.join("c/to_b")).unwrap();
        let found: Vec<String> = super::folders_under(std::slice::from_ref(&top))
            .into_iter()
            .map(|(p, _)| p.strip_prefix(&top).unwrap().display().to_string())
            .collect();
        assert_eq!(found, ["", "a", "a/b", "a/b/to_c", "a/b/to_c/d"]);
    }

    #[test]
    fn events_in_hidden_folders_are_not_about_inputs() {
        let roots = [
            PathBuf::from("/p/protos"),
            PathBuf::from("/p/protos/.v/inc"),
        ];
        let about = |p: &str| super::about_input(Path::new(p), &roots);
        assert!(about("/p/protos/a/b.proto"));
        assert!(about("/p/protos"));
        assert!(
            about("/p/protos/.v/inc/x.proto"),
            "a watched folder inside a hidden one"
        );
        assert!(!about("/p/protos/.git/index"));
        assert!(!about("/p/protos/a/.cache/x/b.proto"));
        assert!(!about("/p/protos/.v/other.proto"));
        assert!(!about("/p/other/b.proto"));
    }

    #[test]
    fn editor_files_are_ignored() {
        for p in [
            "a/.x.proto.swp",
            "a/x.json~",
            "a/#x.lua#",
            "a/4913.tmp",
            "a/.hidden",
        ] {
            assert!(ignored(Path::new(p)), "{p}");
        }
        for p in [
            "a/x.proto",
            "handlers/h.json",
            "handlers/s.lua",
            "data/d.json",
        ] {
            assert!(!ignored(Path::new(p)), "{p}");
        }
    }
}
