//! Reloading when the inputs change on disk, and on SIGHUP.
//!
//! The folders the server reads (`--protos`, `-I`, `--handlers`, `--data`) and the
//! `--descriptor-set` files are watched with `notify`; events are debounced, so an editor's
//! save (write, rename, chmod) or a `git checkout` of many files becomes one reload. Only
//! changes count: reading a file (which every reload does) is an event too on Linux, and
//! reacting to it would reload forever. Editors' temporary and backup files are ignored, and
//! so are the descriptor cache's entries when `--cache-dir` is inside a watched folder: a
//! reload that writes one would otherwise set off another. A change only under the handler
//! and data folders reuses the compiled protos.

use std::path::{Path, PathBuf};
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
struct CacheDir {
    dir: PathBuf,
    /// The watched folders: never ignored themselves.
    roots: Vec<PathBuf>,
}

impl CacheDir {
    /// Whether an event on `path` is the cache's own doing: an entry written, replaced or
    /// pruned, or the folder (and its missing parents) created for the first entry.
    fn written(&self, path: &Path, created: bool) -> bool {
        let entry = path.parent() == Some(self.dir.as_path())
            && path
                .file_name()
                .is_some_and(|n| crate::schema::cache::is_entry(&n.to_string_lossy()));
        let folder = created && self.dir.starts_with(path) && !self.roots.iter().any(|r| r == path);
        entry || folder
    }
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
    use super::{ignored, CacheDir};
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
