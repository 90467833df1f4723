//! Reading the user's input files (protos, handlers, scripts, data) on every (re)load.
//!
//! Only regular files are read: a FIFO named `x.json` would block a reload forever (holding the
//! build lock, so every later reload and runtime-handler change would wait too), and a link to
//! a device such as `/dev/zero` would be read until memory runs out. Such a file is an error
//! naming it instead.

use std::io;
use std::path::Path;

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

/// `std::fs::read_to_string`, for regular files only.
pub fn read_to_string(path: &Path) -> io::Result<String> {
    check_regular(path)?;
    std::fs::read_to_string(path)
}

#[cfg(test)]
mod tests {
    use super::read_to_string;

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
