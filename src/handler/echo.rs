//! `echo`: the request back, for methods whose input and output are the same message type
//! (each incoming message, for bidi).

use super::MethodInfo;
use crate::template::EntryError;

/// Checks at startup that echoing is possible for this method.
pub fn check(info: &MethodInfo, path: &str) -> Result<(), EntryError> {
    if info.input.full_name() != info.output.full_name() {
        return Err(EntryError {
            path: path.to_owned(),
            message: format!(
                "\"echo\" needs the same input and output type, but {} takes {} and returns {}; use \"reply\" with \"{{{{field}}}}\" copies instead",
                info.name,
                info.input.full_name(),
                info.output.full_name()
            ),
        });
    }
    Ok(())
}
