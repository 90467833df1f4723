//! Reading the user's input files (protos, handlers, scripts, data) on every (re)load.
//!
//! Only regular files are read: a FIFO named `x.json` would block a reload forever (holding the
//! build lock, so every later reload and runtime-handler change would wait too), and a link to
//! a device such as `/dev/zero` would be read until memory runs out. Such a file is an error
//! naming it instead.
//!
//! Hidden files and folders are not inputs.
//!
//! Text is UTF-8: a leading byte-order mark (which Windows editors write) is dropped, as
//! protoc and most JSON tools do, and a file that is not UTF-8 is reported at the line and
//! column of its first bad byte, like any other mistake in the file.

use std::io;
use std::path::Path;

use crate::error::{Location, StartupError};

/// The UTF-8 byte-order mark.
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// How deep arrays and objects may nest in JSON input: `serde_json`'s recursion limit.
pub const JSON_MAX_DEPTH: usize = 128;

/// Whether `e` is `serde_json`'s recursion limit: the text may be valid JSON, nested deeper than
/// [`JSON_MAX_DEPTH`]. Calling it "not valid JSON" would send the user looking for a mistake
/// that is not there.
pub fn nested_too_deep(e: &serde_json::Error) -> bool {
    e.to_string().starts_with("recursion limit exceeded")
}

/// `bytes` without a leading byte-order mark: text sent rather than read from a file (an admin
/// request's body, often a file sent as it is) is taken as a file's would be.
pub fn without_bom(bytes: &[u8]) -> &[u8] {
    bytes.strip_prefix(BOM).unwrap_or(bytes)
}

/// Whether `path` names a hidden file or folder (`.git`, an editor's `.#x.proto` lock link or
/// `.x.json.swp`). Loading skips them, as the watcher does: Emacs keeps a dangling link named
/// `.#FILE` next to every file with unsaved changes, which would otherwise fail every load.
pub fn is_hidden(path: &Path) -> bool {
    path.file_name()
        .is_some_and(|n| n.as_encoded_bytes().starts_with(b"."))
}

/// The error for a path that exists but is not a regular file (after following links).
fn not_regular() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        "not a regular file (a FIFO, socket or device); make it a plain file or move it out of the folder",
    )
}

/// Checks that `path` is a regular file, or does not exist (the read that follows says so).
pub fn check_regular(path: &Path) -> io::Result<()> {
    match std::fs::metadata(path) {
        Ok(m) if !m.is_file() => Err(not_regular()),
        _ => Ok(()),
    }
}

/// `std::fs::read_to_string`, for regular files only, without a leading byte-order mark.
pub fn read_to_string(path: &Path) -> io::Result<String> {
    check_regular(path)?;
    let bytes = std::fs::read(path)?;
    text(bytes).map_err(|(line, col)| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("not UTF-8 text: the first bad byte is at line {line}, column {col}; save the file as UTF-8"),
        )
    })
}

/// [`read_to_string`] with its problems as a [`StartupError`]: text that is not UTF-8 is
/// reported at `file:line:col` of its first bad byte.
pub fn read_text(path: &Path) -> Result<String, StartupError> {
    check_regular(path).map_err(|e| StartupError::io(path, e))?;
    let bytes = std::fs::read(path).map_err(|e| StartupError::io(path, e))?;
    text(bytes).map_err(|(line, col)| StartupError::Encoding {
        location: Location::at(path, line, col),
        message: "not UTF-8 text".into(),
        hint: Some("save the file as UTF-8".into()),
    })
}

/// The bytes as text without a leading byte-order mark, or the 1-based line and column (in
/// characters) of the first byte that is not UTF-8.
fn text(mut bytes: Vec<u8>) -> Result<String, (usize, usize)> {
    if bytes.starts_with(BOM) {
        bytes.drain(..BOM.len());
    }
    String::from_utf8(bytes).map_err(|e| {
        let good = e.utf8_error().valid_up_to();
        let before = std::str::from_utf8(&e.as_bytes()[..good]).unwrap_or_default();
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let line = before.matches('\n').count() + 1;
        (line, before[line_start..].chars().count() + 1)
    })
}

#[cfg(test)]
mod tests {
    use super::{read_to_string, text};

    #[test]
    fn a_byte_order_mark_is_dropped_and_bad_bytes_are_located() {
        assert_eq!(text(b"\xEF\xBB\xBF{}".to_vec()).unwrap(), "{}");
        assert_eq!(text(b"{}".to_vec()).unwrap(), "{}");
        assert_eq!(text(b"\xFF".to_vec()).unwrap_err(), (1, 1));
        assert_eq!(text(b"a\n\"\xC3\xA9\xFF".to_vec()).unwrap_err(), (2, 3));
        assert_eq!(text(b"a\nb\nxy\xC3(".to_vec()).unwrap_err(), (3, 3));
    }

    #[test]
    fn folders_and_devices_are_refused_and_files_read() {
        let dir = tempfile::tempdir().unwrap();
        let err = read_to_string(dir.path()).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
        #[cfg(unix)]
        {
            let err = read_to_string(std::path::Path::new("/dev/null")).unwrap_err();
            assert!(err.to_string().contains("not a regular file"), "{err}");
        }
        let file = dir.path().join("a.json");
        std::fs::write(&file, "{}").unwrap();
        assert_eq!(read_to_string(&file).unwrap(), "{}");
    }
}
