//! Data sets: every `data/*.json`, parsed once at startup and handed to scripts as frozen Lua
//! tables (`data.route_guide_db` is `data/route_guide_db.json`; see `script::sandbox`).
//!
//! A malformed file stops startup with `file:line:col`, like any other file the user wrote; one
//! too big for a script state's memory limit is reported with its name and the limit.
//!
//! What is kept is each file's text, checked, and shared by every state: a state builds its
//! tables straight from it (`script::sandbox`). A parsed `serde_json::Value` is about 14 times
//! the size of its file, and keeping one (plus the copy the script pool took to build
//! replacement states) made a 7 MB file cost 200 MB more than its Lua tables. Checking a file
//! builds nothing either ([`Checked`]): it reads every value as building a tree would (numbers
//! in range, strings' escapes, the nesting limit), so it fails where that would, and keeps none.
//! It also refuses a key given twice in one object, which a tree (and a script's table) would
//! hold once without a word ([`crate::jsonkeys`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

use crate::error::{Location, StartupError, StartupErrors};
use crate::jsonkeys::{Key, KeySet};

/// Data sets by name (the file stem); clones share the texts.
#[derive(Debug, Default, Clone)]
pub struct DataSets {
    /// Each set's JSON text, known to parse.
    pub sets: BTreeMap<String, Arc<str>>,
    /// The folder they came from, for messages.
    pub dir: PathBuf,
    /// Set when the folder had errors (reported on their own), so no set was loaded: a script
    /// reading one then fails with [`NOT_LOADED`], which is no problem of its own.
    pub unloaded: bool,
}

/// What a script that reads a data set is told when the data folder had errors; errors saying
/// it are left out of the list, which holds the data errors themselves.
pub const NOT_LOADED: &str = "data sets were not loaded: the data folder has errors";

impl DataSets {
    /// No data sets, because loading those in `dir` failed.
    pub fn unloaded(dir: &Path) -> Self {
        Self {
            sets: BTreeMap::new(),
            dir: dir.to_path_buf(),
            unloaded: true,
        }
    }
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
                    unloaded: false,
                })
            }
            Err(e) => return Err(StartupError::io(dir, e).into()),
        };
        let paths: Vec<_> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        let mut files: Vec<_> = paths
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "json") && !crate::input::is_hidden(p))
            .cloned()
            .collect();
        files.sort();
        warn_of_nested_sets(dir, &paths);
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
            match serde_json::from_str::<Checked>(&text) {
                Ok(_) => {
                    sets.insert(name, Arc::from(text));
                }
                // A key given twice: every repeat, each with the place of its first, and the
                // first mistake after them, if any, as a handler file's are listed (the check
                // stopped at the first repeat, and fixing it would only show the next).
                Err(e) if crate::jsonkeys::is_duplicate(&e) => {
                    let duplicates = crate::jsonkeys::duplicates(&text);
                    for duplicate in &duplicates {
                        errors.push(duplicate.data_error(&file));
                    }
                    if duplicates.is_empty() {
                        let (line, col) = crate::input::json_error_at(text.as_bytes(), &e);
                        errors.push(StartupError::Data {
                            location: Location::at(&file, line, col),
                            message: crate::input::json_error_message(&e),
                            hint: Some("keep each key once in its object".into()),
                        });
                    }
                    if let Err(e) = serde_json::from_str::<Checked<false>>(&text) {
                        errors.push(not_json(&file, &name, &text, &e));
                    }
                }
                Err(e) => errors.push(not_json(&file, &name, &text, &e)),
            }
        }
        errors.into_result(Self {
            sets,
            dir: dir.to_path_buf(),
            unloaded: false,
        })
    }
}

/// The problem of data set `name` (the file `file`, holding `text`) that `e` says is no JSON, or
/// nested deeper than the reader goes.
fn not_json(file: &Path, name: &str, text: &str, e: &serde_json::Error) -> StartupError {
    let (line, col) = crate::input::json_error_at(text.as_bytes(), e);
    let location = Location::at(file, line, col);
    // Valid JSON nested deeper than the reader goes: saying "not valid JSON" would send the
    // user looking for a mistake that is not there.
    if crate::input::nested_too_deep(e) {
        return StartupError::Data {
            location,
            message: format!(
                "arrays and objects nested more than {} deep (the most data sets may nest)",
                crate::input::JSON_MAX_DEPTH
            ),
            hint: Some(format!(
                "scripts see this file as data.{name}; nest its values less deeply"
            )),
        };
    }
    StartupError::Data {
        location,
        message: format!("not valid JSON: {}", crate::input::json_error_message(e)),
        hint: Some(format!(
            "scripts see this file as data.{name}; fix the JSON or move the file out of the data folder"
        )),
    }
}

/// Says which `.json` files sit in subfolders of the data folder, where no data set is read
/// from: a user who put `data/geo/points.json` would otherwise find `data.points` missing
/// with no word of why.
fn warn_of_nested_sets(dir: &Path, paths: &[PathBuf]) {
    for folder in paths
        .iter()
        .filter(|p| p.is_dir() && !crate::input::is_hidden(p))
    {
        let Ok(inside) = std::fs::read_dir(folder) else {
            continue;
        };
        let mut nested: Vec<_> = inside
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension().is_some_and(|e| e == "json")
                    && p.is_file()
                    && !crate::input::is_hidden(p)
            })
            .collect();
        if nested.is_empty() {
            continue;
        }
        nested.sort();
        let first = nested[0].strip_prefix(dir).unwrap_or(&nested[0]);
        tracing::warn!(
            "{}: {} .json file(s) in this folder, such as {}, are not data sets: data sets are \
             the .json files directly in {} (move them up to be read)",
            crate::error::log_path(folder),
            nested.len(),
            crate::error::log_path(first),
            crate::error::log_path(dir)
        );
    }
}

/// A JSON value read in full and kept nowhere: what parsing a file into a tree would accept
/// and refuse, at the same line and column, without the tree (see the module's docs), and a
/// key given twice in an object refused besides (unless `KEYS` is false: the check that looks
/// on past the repeats for the next mistake).
pub struct Checked<const KEYS: bool = true>;

impl<'de, const KEYS: bool> Deserialize<'de> for Checked<KEYS> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(CheckedVisitor::<KEYS>)
    }
}

struct CheckedVisitor<const KEYS: bool>;

impl<'de, const KEYS: bool> Visitor<'de> for CheckedVisitor<KEYS> {
    type Value = Checked<KEYS>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Checked<KEYS>, E> {
        Ok(Checked)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Checked<KEYS>, E> {
        Ok(Checked)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Checked<KEYS>, E> {
        Ok(Checked)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Checked<KEYS>, E> {
        Ok(Checked)
    }

    fn visit_str<E>(self, _: &str) -> Result<Checked<KEYS>, E> {
        Ok(Checked)
    }

    fn visit_unit<E>(self) -> Result<Checked<KEYS>, E> {
        Ok(Checked)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Checked<KEYS>, A::Error> {
        while seq.next_element::<Checked<KEYS>>()?.is_some() {}
        Ok(Checked)
    }

    /// A key the object has already is an error ([`crate::jsonkeys`]): one set per object, so
    /// the check costs one insertion per key.
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Checked<KEYS>, A::Error> {
        let mut keys = KeySet::default();
        while let Some(key) = map.next_key::<Key<'de>>()? {
            if KEYS {
                keys.insert(key)?;
            }
            map.next_value::<Checked<KEYS>>()?;
        }
        Ok(Checked)
    }
}

#[cfg(test)]
mod tests {
    use super::Checked;

    /// Checking a text accepts and refuses what parsing it into a tree does, at the same place.
    #[test]
    fn checking_agrees_with_parsing_into_a_tree() {
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        let texts = [
            r#"{"a": [1, -2, 3.5, 1e308, true, null, "x\u00e9\n"], "b": {}}"#,
            r#"[18446744073709551615, -9223372036854775808, 0.0, -0]"#,
            "1e400",
            "-1e400",
            r#"{"a": 1,}"#,
            r#"{"a" 1}"#,
            r#"["\ud800"]"#,
            r#"["\ud800\udc00"]"#,
            "[1, 2",
            "",
            "  \n [NaN]",
            r#""\x""#,
            &deep,
            "[1] [2]",
        ];
        for text in texts {
            let tree = serde_json::from_str::<serde_json::Value>(text).map_err(|e| e.to_string());
            let checked = serde_json::from_str::<Checked>(text).map_err(|e| e.to_string());
            assert_eq!(tree.map(|_| ()), checked.map(|_| ()), "{text:?}");
        }
    }

    /// A key given twice in one object (decoded: `"\u0061"` is `a`) stops the check; the same
    /// key in two objects does not.
    #[test]
    fn a_key_given_twice_in_one_object_is_refused() {
        for text in [r#"{"a": 1, "a": 2}"#, r#"[{"b": {"a": 1, "\u0061": [2]}}]"#] {
            let e = serde_json::from_str::<Checked>(text)
                .map(|_| ())
                .unwrap_err();
            assert!(crate::jsonkeys::is_duplicate(&e), "{text}: {e}");
            assert_eq!(
                e.to_string(),
                format!(
                    "duplicate key \"a\" at line 1 column {}",
                    text.rfind(':').unwrap()
                ),
                "{text}"
            );
        }
        let fine = r#"[{"a": 1, "b": {"a": 2}}, {"a": 3}, "a", {"A": 1, "a": 1}]"#;
        assert!(serde_json::from_str::<Checked>(fine).is_ok());
    }
}
