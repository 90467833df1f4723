//! Data sets: every `data/*.json`, parsed once at startup and handed to scripts as frozen Lua
//! tables (`data.route_guide_db` is `data/route_guide_db.json`; see `script::sandbox`).
//!
//! A malformed file stops startup with `file:line:col`, like any other file the user wrote; one
//! too big for a script state's memory limit is reported with its name and the limit.
//!
//! What is kept is each file's text, checked, and shared by every state: a state builds its
//! tables straight from it (`script::sandbox`). A parsed `serde_json::Value` is about 14 times
//! the size of its file, and keeping one (plus the copy the script pool took to build
//! replacement states) made a 7 MB file cost 200 MB more than its Lua tables.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value as Json;

use crate::error::{Location, StartupError, StartupErrors};

/// Data sets by name (the file stem); clones share the texts.
#[derive(Debug, Default, Clone)]
pub struct DataSets {
    /// Each set's JSON text, known to parse.
    pub sets: BTreeMap<String, Arc<str>>,
    /// The folder they came from, for messages.
    pub dir: PathBuf,
}

impl DataSets {
    /// Loads every `*.json` in `dir`; a folder that does not exist holds no data.
    pub fn load(dir: &Path) -> Result<Self, StartupErrors> {
        let mut sets = BTreeMap::new();
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Self {
                    sets,
                    dir: dir.to_path_buf(),
                })
            }
            Err(e) => return Err(StartupError::io(dir, e).into()),
        };
        let mut files: Vec<_> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "json") && !crate::input::is_hidden(p))
            .collect();
        files.sort();
        let mut errors = StartupErrors::default();
        for file in files {
            let Some(name) = file.file_stem().and_then(|s| s.to_str()).map(str::to_owned) else {
                continue;
            };
            let text = match crate::input::read_text(&file) {
                Ok(t) => t,
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            };
            // Parsed once here for its errors (the same a state's conversion would meet), then
            // dropped.
            match serde_json::from_str::<Json>(&text) {
                Ok(_) => {
                    sets.insert(name, Arc::from(text));
                }
                // Valid JSON nested deeper than the reader goes: saying "not valid JSON" would
                // send the user looking for a mistake that is not there.
                Err(e) if crate::input::nested_too_deep(&e) => {
                    let (line, col) = crate::input::json_error_at(text.as_bytes(), &e);
                    errors.push(StartupError::Data {
                        location: Location::at(&file, line, col),
                        message: format!(
                            "arrays and objects nested more than {} deep (the most data sets may nest)",
                            crate::input::JSON_MAX_DEPTH
                        ),
                        hint: Some(format!("scripts see this file as data.{name}; nest its values less deeply")),
                    })
                }
                Err(e) => errors.push(StartupError::Data {
                    location: {
                        let (line, col) = crate::input::json_error_at(text.as_bytes(), &e);
                        Location::at(&file, line, col)
                    },
                    message: format!("not valid JSON: {}", crate::input::json_error_message(&e)),
                    hint: Some(format!("scripts see this file as data.{name}; fix the JSON or move the file out of the data folder")),
                }),
            }
        }
        errors.into_result(Self {
            sets,
            dir: dir.to_path_buf(),
        })
    }
}
