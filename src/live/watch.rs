//! Reloading when the inputs change on disk, and on SIGHUP.
//!
//! The folders the server reads (`--protos`, `-I`, `--handlers`, `--data`) are watched with
//! `notify`; events are debounced, so an editor's save (write, rename, chmod) or a `git
//! checkout` of many files becomes one reload. Only changes count: reading a file (which every
//! reload does) is an event too on Linux, and reacting to it would reload forever. Editors'
//! temporary and backup files are ignored. A change only under the handler and data folders
//! reuses the compiled protos.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::{Live, Trigger};

/// How long the folders must be quiet before a reload starts.
const QUIET: Duration = Duration::from_millis(150);

/// Keeps the file watcher running; dropping it stops watching.
pub struct Watching {
    _watcher: RecommendedWatcher,
}

/// Watches `live`'s input folders and reloads on change. Folders that do not exist (a missing
/// `data/`) are skipped.
pub fn watch_files(live: Arc<Live>) -> Result<Watching, String> {
    let options = live.options();
    let proto_roots: Vec<PathBuf> = options
        .protos
        .iter()
        .chain(&options.import_paths)
        .map(|p| absolute(p))
        .collect();
    let other_roots = [absolute(&options.handlers), absolute(&options.data)];
    let (tx, mut rx) = mpsc::unbounded_channel::<bool>();
    let roots = proto_roots.clone();
    let mut watcher =
        notify::recommended_watcher(move |event: notify::Result<Event>| match event {
            Ok(event) => {
                if matches!(event.kind, EventKind::Access(_)) {
                    return;
                }
                let mut relevant = event.paths.iter().filter(|p| !ignored(p)).peekable();
                if relevant.peek().is_none() {
                    return;
                }
                let protos = relevant.any(|p| roots.iter().any(|r| p.starts_with(r)));
                let _ = tx.send(protos);
            }
            Err(e) => tracing::warn!("watching the input folders: {e}"),
        })
        .map_err(|e| format!("cannot watch the input folders: {e}"))?;
    for dir in proto_roots.iter().chain(other_roots.iter()) {
        if dir.is_dir() {
            watcher
                .watch(dir, RecursiveMode::Recursive)
                .map_err(|e| format!("cannot watch {}: {e}", dir.display()))?;
        }
    }
    tokio::spawn(async move {
        while let Some(mut protos) = rx.recv().await {
            // Wait until the folders are quiet, folding every change meanwhile into one reload.
            loop {
                match tokio::time::timeout(QUIET, rx.recv()).await {
                    Ok(Some(more)) => protos |= more,
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            let _ = live.reload(Trigger::Files { protos }).await;
        }
    });
    Ok(Watching { _watcher: watcher })
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
    use super::ignored;
    use std::path::Path;

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
