//! Reloading when the inputs change on disk, and on SIGHUP.
//!
//! The folders the server reads (`--protos`, `-I`, `--handlers`, `--data`) and the
//! `--descriptor-set` files are watched with `notify`; events are debounced, so an editor's
//! save (write, rename, chmod) or a `git checkout` of many files becomes one reload. Only
//! changes count: reading a file (which every reload does) is an event too on Linux, and
//! reacting to it would reload forever. Editors' temporary and backup files are ignored, and
//! so are the descriptor cache's entries when `--cache-dir` is inside a watched folder (however
//! either is named: through links, with `..`): a reload that writes one would otherwise set off
//! another. A change only under the handler
//! and data folders reuses the compiled protos.

use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::{Live, Trigger};

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
pub fn watch_files(live: Arc<Live>) -> Result<Watching, String> {
    let options = live.options();
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
    // Per event: whether it is under a proto folder, and whether it is about a watched folder
    // itself (created, removed, renamed).
    let (tx, mut rx) = mpsc::unbounded_channel::<(bool, bool)>();
    let (roots, protos_roots) = (all_roots.clone(), proto_roots.clone());
    let watcher = notify::recommended_watcher(move |event: notify::Result<Event>| match event {
        Ok(event) => {
            if matches!(event.kind, EventKind::Access(_)) {
                return;
            }
            // The parents are watched only to see the folders themselves come and go.
            let created = matches!(event.kind, EventKind::Create(_));
            let mut relevant = event
                .paths
                .iter()
                .filter(|p| {
                    !ignored(p)
                        && !cache.as_ref().is_some_and(|c| c.written(p, created))
                        && roots.iter().any(|r| p.starts_with(r))
                })
                .peekable();
            if relevant.peek().is_none() {
                return;
            }
            let root = event.paths.iter().any(|p| roots.contains(p));
            let protos = relevant.any(|p| protos_roots.iter().any(|r| p.starts_with(r)));
            let _ = tx.send((protos, root));
        }
        Err(e) => tracing::warn!("watching the input folders: {e}"),
    })
    .map_err(|e| format!("cannot watch the input folders: {e}"))?;
    let watcher = Arc::new(Mutex::new(watcher));
    let mut folders = Folders::new(all_roots);
    {
        let mut w = watcher.lock().unwrap_or_else(|e| e.into_inner());
        folders.watch_parents(&mut w);
        if let Some(e) = folders.resync(&mut w, false) {
            return Err(e);
        }
    }
    let resyncing = watcher.clone();
    tokio::spawn(async move {
        while let Some((mut protos, mut root)) = rx.recv().await {
            // Wait until the folders are quiet, folding every change meanwhile into one reload.
            let give_up = tokio::time::Instant::now() + LONGEST_WAIT;
            loop {
                let wait =
                    QUIET.min(give_up.saturating_duration_since(tokio::time::Instant::now()));
                if wait.is_zero() {
                    break;
                }
                match tokio::time::timeout(wait, rx.recv()).await {
                    Ok(Some((p, r))) => {
                        protos |= p;
                        root |= r;
                    }
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            // Watching a folder walks its tree: off the async workers.
            let watcher = resyncing.clone();
            let resynced = tokio::task::spawn_blocking(move || {
                let mut watcher = watcher.lock().unwrap_or_else(|e| e.into_inner());
                let failed = folders.resync(&mut watcher, root);
                (folders, failed)
            })
            .await;
            let Ok((back, failed)) = resynced else {
                tracing::error!(
                    "watching the input folders stopped; SIGHUP and the admin API still reload"
                );
                return;
            };
            folders = back;
            if let Some(e) = failed {
                tracing::warn!("{e}");
            }
            let _ = live.reload(Trigger::Files { protos }).await;
        }
    });
    Ok(Watching { _watcher: watcher })
}

/// The descriptor cache folder, which may be inside a watched folder (or be one).
///
/// Events name paths as the watched folders were given, and `--cache-dir` may name the same
/// folder another way (through a symbolic link, with `..`, or the other way round), so both
/// are compared as their real paths, found afresh for each event: a link may be switched
/// while serving, and the cache folder may not exist yet.
struct CacheDir {
    dir: PathBuf,
    /// The watched folders: never ignored themselves.
    roots: Vec<PathBuf>,
}

impl CacheDir {
    /// Whether an event on `path` is the cache's own doing: an entry written, replaced or
    /// pruned, or the folder (and its missing parents) created for the first entry.
    fn written(&self, path: &Path, created: bool) -> bool {
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            return false;
        };
        if self.roots.iter().any(|r| r == path) {
            return false;
        }
        // The last part is not followed: a link created there is not the folder it points at.
        let path = real(parent).join(name);
        let dir = real(&self.dir);
        let entry = path.parent() == Some(dir.as_path())
            && crate::schema::cache::is_entry(&name.to_string_lossy());
        let folder = created && dir.starts_with(&path);
        entry || folder
    }
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

/// The watched folders and the identity (device, inode) of the directory each watch is on.
struct Folders {
    roots: Vec<(PathBuf, Option<(u64, u64)>)>,
}

impl Folders {
    fn new(roots: Vec<PathBuf>) -> Folders {
        Folders {
            roots: roots.into_iter().map(|r| (r, None)).collect(),
        }
    }

    /// Watches the parent of each folder (not recursively) unless another watched folder
    /// already covers it, so that a folder created, removed or renamed is seen.
    fn watch_parents(&self, watcher: &mut RecommendedWatcher) {
        let mut parents: Vec<&Path> = Vec::new();
        for (root, _) in &self.roots {
            let Some(parent) = root.parent() else {
                continue;
            };
            let covered = self.roots.iter().any(|(r, _)| parent.starts_with(r));
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

    /// Watches every folder whose directory is not the one watched: new, or replaced since.
    /// `all` watches every folder afresh: one was removed or renamed and created again, maybe
    /// with the inode of the one before. Returns the first folder that cannot be watched.
    fn resync(&mut self, watcher: &mut RecommendedWatcher, all: bool) -> Option<String> {
        let mut failed = None;
        for (root, watched) in &mut self.roots {
            let now = identity(root);
            if now == *watched && !all {
                continue;
            }
            if watched.is_some() {
                let _ = watcher.unwatch(root);
            }
            *watched = None;
            if now.is_none() {
                continue;
            }
            match watcher.watch(root, RecursiveMode::Recursive) {
                Ok(()) => *watched = now,
                Err(e) => {
                    failed.get_or_insert_with(|| format!("cannot watch {}: {e}", root.display()));
                }
            }
        }
        failed
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

/// Reloads on every SIGHUP, for the life of the process.
#[cfg(unix)]
pub fn reload_on_sighup(live: Arc<Live>) -> Result<(), String> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup =
        signal(SignalKind::hangup()).map_err(|e| format!("cannot listen for SIGHUP: {e}"))?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            let _ = live.reload(Trigger::Signal).await;
        }
    });
    Ok(())
}

#[cfg(not(unix))]
pub fn reload_on_sighup(_live: Arc<Live>) -> Result<(), String> {
    Ok(())
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
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
    use super::{ignored, real, CacheDir};
    use std::path::{Path, PathBuf};

    #[test]
    fn the_caches_own_files_are_ignored_and_nothing_else() {
        let cache = CacheDir {
            dir: PathBuf::from("/p/protos/cache/x"),
            roots: vec![PathBuf::from("/p/protos"), PathBuf::from("/p/handlers")],
        };
        let written = |p: &str, created: bool| cache.written(Path::new(p), created);
        assert!(written("/p/protos/cache/x/descriptors-0a.bin", false));
        assert!(written("/p/protos/cache/x/descriptors-0a.bin", true));
        assert!(written("/p/protos/cache/x", true));
        assert!(written("/p/protos/cache", true));
        // Anything else in or around it counts: a folder renamed there, a .proto next to it.
        assert!(!written("/p/protos/cache", false));
        assert!(!written("/p/protos/cache/x/a.proto", true));
        assert!(!written("/p/protos/cache/x/sub/descriptors-0a.bin", false));
        assert!(!written("/p/protos", true));
        // A cache folder that is a watched folder: only its entries are ignored.
        let cache = CacheDir {
            dir: PathBuf::from("/p/handlers"),
            roots: vec![PathBuf::from("/p/handlers")],
        };
        assert!(cache.written(Path::new("/p/handlers/descriptors-0a.bin"), false));
        assert!(!cache.written(Path::new("/p/handlers"), true));
        assert!(!cache.written(Path::new("/p/handlers/h.json"), false));
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
        assert!(cache.written(&top.join("protos/cache/descriptors-0a.bin"), false));
        assert!(cache.written(&top.join("protos/cache"), true));
        assert!(!cache.written(&top.join("protos/cache/a.proto"), false));
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
