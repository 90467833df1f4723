//! Reading the journal: filters (method, status, metadata, time range) and paging.
//!
//! Both front ends of the admin API hand a query over as name/value pairs (the HTTP query
//! string, or the gRPC request's fields), so one parser checks them all. A page token is the
//! id of the last call of the page before: ids only grow, so a page starts with one binary
//! search however deep it is, and calls that left the journal meanwhile are simply skipped.

use std::time::{Duration, SystemTime};

use http::HeaderName;
use serde_json::{json, Value as Json};

use super::render::{call_json_from, RenderBudget, View};
use super::Journal;
use crate::metadata::code_number;

/// Calls on a page when the query does not say.
pub const DEFAULT_PAGE_SIZE: usize = 50;
/// The most calls on one page.
pub const MAX_PAGE_SIZE: usize = 1000;
/// Records copied out of the journal at a time while scanning.
const SCAN_CHUNK: usize = 256;

const KEYS: &[&str] = &[
    "method",
    "status",
    "metadata",
    "since",
    "until",
    "page_size",
    "page_token",
    "order",
    "view",
];

/// Which calls to list, and how.
#[derive(Debug, Clone)]
pub struct Query {
    method: Option<String>,
    status: Option<StatusFilter>,
    metadata: Vec<(HeaderName, String)>,
    since: Option<SystemTime>,
    until: Option<SystemTime>,
    page_size: usize,
    after: u64,
    newest_first: bool,
    view: View,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StatusFilter {
    Code(i32),
    InProgress,
}

impl Default for Query {
    fn default() -> Self {
        Self {
            method: None,
            status: None,
            metadata: Vec::new(),
            since: None,
            until: None,
            page_size: DEFAULT_PAGE_SIZE,
            after: 0,
            newest_first: false,
            view: View::Full,
        }
    }
}

impl Query {
    /// Parses `name=value` pairs; an unknown name or a bad value is refused with a message
    /// saying what is accepted. `metadata` may repeat (`key=value` each, all must hold).
    pub fn parse(pairs: &[(String, String)]) -> Result<Query, String> {
        let mut q = Query::default();
        let mut seen: Vec<&str> = Vec::new();
        for (key, value) in pairs {
            let Some(&known) = KEYS.iter().find(|k| **k == key.as_str()) else {
                return Err(format!(
                    "unknown query parameter {key:?}{}; use {}",
                    crate::suggest::did_you_mean(key, KEYS.iter().copied()),
                    KEYS.join(", ")
                ));
            };
            if known != "metadata" {
                if seen.contains(&known) {
                    return Err(format!("{known} is given twice; give it once"));
                }
                seen.push(known);
            }
            let value = value.trim();
            match known {
                "method" => {
                    q.method = (!value.is_empty()).then(|| value.trim_start_matches('/').to_owned())
                }
                "status" => q.status = parse_status(value)?,
                "metadata" => q.metadata.push(parse_metadata(value)?),
                "since" => q.since = parse_time(value, "since")?,
                "until" => q.until = parse_time(value, "until")?,
                "page_size" => {
                    let n: usize = value.parse().map_err(|_| {
                        format!("page_size {value:?} is not a number; give 1 to {MAX_PAGE_SIZE}")
                    })?;
                    q.page_size = if n == 0 {
                        DEFAULT_PAGE_SIZE
                    } else {
                        n.min(MAX_PAGE_SIZE)
                    };
                }
                "page_token" => {
                    q.after = if value.is_empty() {
                        0
                    } else {
                        value.parse().map_err(|_| {
                            format!("page_token {value:?} is not a token this server gave; pass next_page_token from the previous page")
                        })?
                    }
                }
                "order" => {
                    q.newest_first = match value {
                        "" | "oldest" | "oldest_first" => false,
                        "newest" | "newest_first" => true,
                        other => {
                            return Err(format!(
                                "order {other:?}: use \"oldest\" (the default) or \"newest\""
                            ))
                        }
                    }
                }
                "view" => {
                    q.view = match value {
                        "" | "full" => View::Full,
                        "summary" => View::Summary,
                        other => {
                            return Err(format!(
                                "view {other:?}: use \"full\" (the default) or \"summary\""
                            ))
                        }
                    }
                }
                _ => {}
            }
        }
        if let (Some(since), Some(until)) = (q.since, q.until) {
            if until <= since {
                return Err("until must be later than since".into());
            }
        }
        Ok(q)
    }

    /// The `method` filter: a method (`package.Service/Method`) or a service.
    pub fn method(&self) -> Option<&str> {
        self.method.as_deref()
    }

    /// A query for the first call of `method` (a method or a service), whatever else it did.
    pub fn any_call_of(method: &str) -> Query {
        Query {
            method: Some(method.to_owned()),
            page_size: 1,
            view: View::Summary,
            ..Query::default()
        }
    }

    /// One page of matching calls: `{"calls": [...], "next_page_token": "…"}` (the token only
    /// when the page is full; pass it back for the next page).
    ///
    /// A page's messages are rendered within one [`RenderBudget`]: a call whose messages would
    /// not fit in what is left starts the next page instead (a page always has at least one
    /// call; within it, a message that does not fit is shown as its bytes).
    pub fn run(&self, journal: &Journal) -> Json {
        let mut calls = Vec::new();
        let mut cursor = self.after;
        let mut last = None;
        let mut budget = RenderBudget::default();
        let mut cut = false;
        'scan: loop {
            let chunk = journal.chunk(cursor, self.newest_first, SCAN_CHUNK);
            let Some(end) = chunk.last() else { break };
            cursor = end.id;
            for record in &chunk {
                let log = record.snapshot_if(|log| self.matches(record, log));
                let Some(log) = log else { continue };
                let call = call_json_from(record, &log, self.view, &mut budget);
                if budget.refused() && !calls.is_empty() {
                    // Rendered again, with a budget of its own, on the next page.
                    cut = true;
                    break 'scan;
                }
                calls.push(call);
                last = Some(record.id);
                if calls.len() == self.page_size {
                    break 'scan;
                }
            }
            if chunk.len() < SCAN_CHUNK {
                break;
            }
        }
        let mut out = serde_json::Map::new();
        let full = calls.len() == self.page_size || cut;
        out.insert("calls".into(), Json::Array(calls));
        if let (true, Some(last)) = (full, last) {
            out.insert("next_page_token".into(), json!(last.to_string()));
        }
        Json::Object(out)
    }

    fn matches(&self, record: &super::Call, log: &super::LogRef<'_>) -> bool {
        if let Some(want) = &self.method {
            let name = log.method_name();
            let same = name == want
                || (name.len() > want.len()
                    && name.starts_with(want.as_str())
                    && name.as_bytes()[want.len()] == b'/');
            if !same {
                return false;
            }
        }
        let status_ok = match self.status {
            None => true,
            Some(StatusFilter::InProgress) => !log.is_done(),
            Some(StatusFilter::Code(code)) => log.status().map(|(c, _)| c) == Some(code),
        };
        if !status_ok {
            return false;
        }
        if self.since.is_some_and(|t| record.started_at() < t)
            || self.until.is_some_and(|t| record.started_at() >= t)
        {
            return false;
        }
        self.metadata
            .iter()
            .all(|(key, value)| log.has_metadata(key.as_str(), value.as_bytes()))
    }
}

fn parse_status(value: &str) -> Result<Option<StatusFilter>, String> {
    match value {
        "" => Ok(None),
        "in_progress" | "IN_PROGRESS" | "running" => Ok(Some(StatusFilter::InProgress)),
        other => code_number(other)
            .map(|c| Some(StatusFilter::Code(c)))
            .ok_or_else(|| {
                format!("status {other:?} is not a gRPC status; use a name such as OK or NOT_FOUND, a number 0-16, or in_progress")
            }),
    }
}

fn parse_metadata(value: &str) -> Result<(HeaderName, String), String> {
    let Some((key, v)) = value.split_once('=') else {
        return Err(format!(
            "metadata {value:?}: write key=value, such as metadata=x-user=alice"
        ));
    };
    let key = HeaderName::from_bytes(key.trim().to_ascii_lowercase().as_bytes())
        .map_err(|_| format!("metadata {value:?}: {:?} is not a metadata key", key.trim()))?;
    Ok((key, v.to_owned()))
}

/// An RFC 3339 time (`2024-05-01T12:00:00Z`, any `±HH:MM` offset, fractions and a missing `Z`
/// allowed) or milliseconds since the Unix epoch.
pub fn parse_time(value: &str, what: &str) -> Result<Option<SystemTime>, String> {
    if value.is_empty() {
        return Ok(None);
    }
    if let Ok(ms) = value.parse::<u64>() {
        return Ok(SystemTime::UNIX_EPOCH.checked_add(Duration::from_millis(ms)));
    }
    let bad = |e: &dyn std::fmt::Display| {
        format!("{what} {value:?} is not a time ({e}); write RFC 3339 such as 2024-05-01T12:00:00Z, or milliseconds since 1970")
    };
    // humantime reads UTC only: the offset is taken off here and applied after.
    let (local, offset) = split_offset(value);
    let local = humantime::parse_rfc3339_weak(local).map_err(|e| bad(&e))?;
    let utc = if offset >= 0 {
        local.checked_sub(Duration::from_secs(offset.unsigned_abs()))
    } else {
        local.checked_add(Duration::from_secs(offset.unsigned_abs()))
    };
    utc.map(Some)
        .ok_or_else(|| bad(&"out of range after its offset"))
}

/// `2024-05-01T12:00:00+02:00` -> (`2024-05-01T12:00:00`, 7200 s); a `Z` or no offset is 0.
fn split_offset(value: &str) -> (&str, i64) {
    let b = value.as_bytes();
    if b.len() > 6 && value.is_char_boundary(b.len() - 6) {
        let (time, off) = value.split_at(b.len() - 6);
        let o = off.as_bytes();
        let digits = |r: std::ops::Range<usize>| {
            off.get(r)
                .filter(|d| d.bytes().all(|c| c.is_ascii_digit()))
                .and_then(|d| d.parse::<i64>().ok())
        };
        if matches!(o[0], b'+' | b'-') && o[3] == b':' && (time.contains('T') || time.contains('t'))
        {
            if let (Some(h), Some(m)) = (digits(1..3), digits(4..6)) {
                let secs = h * 3600 + m * 60;
                return (time, if o[0] == b'-' { -secs } else { secs });
            }
        }
    }
    (value, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
        items
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn refuses_what_it_does_not_know_with_a_useful_message() {
        let e = Query::parse(&pairs(&[("methd", "x")])).unwrap_err();
        assert!(e.contains("did you mean \"method\""), "{e}");
        let e = Query::parse(&pairs(&[("status", "NOTFOUND")])).unwrap_err();
        assert!(e.contains("not a gRPC status"), "{e}");
        let e = Query::parse(&pairs(&[("page_token", "abc")])).unwrap_err();
        assert!(e.contains("next_page_token"), "{e}");
        let e = Query::parse(&pairs(&[("metadata", "novalue")])).unwrap_err();
        assert!(e.contains("key=value"), "{e}");
        let e = Query::parse(&pairs(&[("since", "yesterday")])).unwrap_err();
        assert!(e.contains("RFC 3339"), "{e}");
        let e = Query::parse(&pairs(&[("view", "full"), ("view", "summary")])).unwrap_err();
        assert!(e.contains("twice"), "{e}");
    }

    #[test]
    fn reads_any_rfc3339_offset() {
        let at = |v: &str| parse_time(v, "since").unwrap().unwrap();
        let utc = at("1970-01-01T01:00:00Z");
        assert_eq!(at("1970-01-01T00:00:00-01:00"), utc);
        assert_eq!(at("1970-01-01T03:30:00+02:30"), utc);
        assert_eq!(at("1970-01-01T01:00:00+00:00"), utc);
        assert_eq!(at("1970-01-01T01:00:00"), utc);
    }

    #[test]
    fn accepts_every_documented_form() {
        let q = Query::parse(&pairs(&[
            ("method", "/a.B/C"),
            ("status", "not_found"),
            ("metadata", "X-User=alice=b"),
            ("since", "2024-05-01T12:00:00.5Z"),
            ("until", "1800000000000"),
            ("page_size", "100000"),
            ("order", "newest"),
            ("view", "summary"),
        ]))
        .unwrap();
        assert_eq!(q.method.as_deref(), Some("a.B/C"));
        assert_eq!(q.status, Some(StatusFilter::Code(5)));
        assert_eq!(q.metadata[0].0.as_str(), "x-user");
        assert_eq!(q.metadata[0].1, "alice=b");
        assert_eq!(q.page_size, MAX_PAGE_SIZE);
        assert!(q.newest_first);
        assert_eq!(q.view, View::Summary);
    }
}
