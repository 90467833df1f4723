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

/// The 1-based column of what follows `before`, the start of a line: columns count characters
/// (Unicode scalar values; a tab is one), in every file and message, whatever the parser
/// counts. Bytes that are not UTF-8 count as a decoder shows them: one character per bad
/// sequence.
pub fn column(before: &[u8]) -> usize {
    let chars = match std::str::from_utf8(before) {
        Ok(text) => text.chars().count(),
        Err(_) => String::from_utf8_lossy(before).chars().count(),
    };
    chars + 1
}

/// The 1-based line and column (see [`column`]) of the byte at `at` in `text`.
pub fn position(text: &[u8], at: usize) -> (usize, usize) {
    let at = at.min(text.len());
    let start = text[..at]
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(0, |i| i + 1);
    let line = text[..start].iter().filter(|b| **b == b'\n').count() + 1;
    (line, column(&text[start..at]))
}

/// The column in characters (see [`column`]) of the 1-based `byte_column` of the 1-based
/// `line` of `text`, as a parser that counts bytes reports it; 0 (no column) stays 0.
pub fn in_characters(text: &[u8], line: usize, byte_column: usize) -> usize {
    if line == 0 || byte_column == 0 {
        return byte_column;
    }
    let mut start = 0;
    for _ in 1..line {
        match text[start..].iter().position(|b| *b == b'\n') {
            Some(i) => start += i + 1,
            None => return byte_column,
        }
    }
    let mut at = (start + byte_column - 1).min(text.len());
    // The start of the character the byte belongs to.
    while at > start && text.get(at).is_some_and(|b| b & 0xC0 == 0x80) {
        at -= 1;
    }
    column(&text[start..at])
}

/// Where a `serde_json` error in `text` is, as a 1-based line and column in characters
/// (`serde_json` counts bytes); `(line, 0)` when it names no column.
pub fn json_error_at(text: &[u8], e: &serde_json::Error) -> (usize, usize) {
    (e.line(), in_characters(text, e.line(), e.column()))
}

/// A `serde_json` error's message without the line and column it ends with (in bytes): the
/// problem's location says where, in characters.
pub fn json_error_message(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    match text.strip_suffix(&suffix) {
        Some(message) => message.to_owned(),
        None => text,
    }
}

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

/// Checks that every folder under `root` (itself included; hidden folders are not inputs) can
/// be listed. Links are followed, each real folder once. A folder the server cannot read is a
/// problem for `check` as for `serve`: what it holds would otherwise be left out without a
/// word, and the watcher could not see changes in it. A `root` that does not exist is not
/// looked into (the loaders say whether that is fine).
pub fn check_folders(root: &Path) -> Result<(), StartupError> {
    let mut seen = std::collections::HashSet::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        let Ok(real) = std::fs::canonicalize(&dir) else {
            continue;
        };
        if !seen.insert(real) {
            continue;
        }
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(_) if !dir.is_dir() => continue,
            Err(source) => {
                return Err(StartupError::Folder {
                    path: dir,
                    under: root.to_path_buf(),
                    source,
                })
            }
        };
        for entry in entries {
            let path = match entry {
                Ok(entry) => entry.path(),
                Err(source) => {
                    return Err(StartupError::Folder {
                        path: dir,
                        under: root.to_path_buf(),
                        source,
                    })
                }
            };
            if !is_hidden(&path) && path.is_dir() {
                todo.push(path);
            }
        }
    }
    Ok(())
}

/// The error for a path that exists but is not a regular file (after following links).
fn not_regular(meta: &std::fs::Metadata) -> io::Error {
    let what = if meta.is_dir() {
        "a directory, not a file; rename it or move it out of the folder"
    } else {
        "not a regular file (a FIFO, socket or device); make it a plain file or move it out of the folder"
    };
    io::Error::new(io::ErrorKind::InvalidInput, what)
}

/// Checks that `path` is a regular file, or does not exist (the read that follows says so).
pub fn check_regular(path: &Path) -> io::Result<()> {
    match std::fs::metadata(path) {
        Ok(m) if !m.is_file() => Err(not_regular(&m)),
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
        (line, column(&before.as_bytes()[line_start..]))
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
    fn columns_count_characters() {
        use super::{json_error_at, json_error_message, position};
        let text = "{\n\t\"é日本\" x\n}";
        let x = text.find('x').unwrap();
        assert_eq!(position(text.as_bytes(), x), (2, 8));
        assert_eq!(position(text.as_bytes(), 0), (1, 1));
        let e = serde_json::from_str::<serde_json::Value>(text).unwrap_err();
        assert_eq!((e.line(), e.column()), (2, 13), "serde_json counts bytes");
        assert_eq!(json_error_at(text.as_bytes(), &e), (2, 8));
        assert_eq!(json_error_message(&e), "expected `:`");
        // Not UTF-8: one character per bad sequence.
        assert_eq!(position(b"\xff\xfeab", 3), (1, 4));
        let e = serde_json::from_str::<serde_json::Value>("").unwrap_err();
        assert_eq!(json_error_at(b"", &e), (1, 0));
    }

    #[test]
    fn folders_and_devices_are_refused_and_files_read() {
        let dir = tempfile::tempdir().unwrap();
        let err = read_to_string(dir.path()).unwrap_err();
        assert!(err.to_string().contains("a directory, not a file"), "{err}");
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
