//! `echo`: the request back, for methods whose input and output are the same message type
//! (each incoming message, for bidi).

use super::MethodInfo;
use crate::template::TemplateError;

/// Checks at startup that echoing is possible for this method.
pub fn check(info: &MethodInfo, path: &str) -> Result<(), TemplateError> {
    if info.input.full_name() != info.output.full_name() {
        return Err(TemplateError {
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
