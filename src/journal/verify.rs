//! `verify`: did the client make the calls it should have?
//!
//! ```json
//! {"method": "helloworld.Greeter/SayHello",
//!  "when": {"request": {"name": "Ann"}, "metadata": {"x-user": "alice"}},
//!  "exactly": 1}
//! ```
//! `when` is the language of rules ([`Condition`]); a call matches when its metadata passes and
//! some request message of the call passes (a stream matches if any of its messages does).
//! The count is `exactly`, or `at_least` and/or `at_most`; without one, at least one call must
//! match. A verify that fails says how many calls matched, and shows the calls that came
//! closest with the conditions each one failed, so a test failure explains itself. Only those
//! calls are explained ([`Closest`]): the journal may hold ten thousand calls that all missed.

use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use prost_reflect::{DynamicMessage, MessageDescriptor};
use serde_json::{json, Map, Value as Json};
use tonic::metadata::MetadataMap;

use super::render::{message_json_within, RenderBudget};
use super::{Call, CallView, Direction, Journal};
use crate::codec::DECODED_PER_ENCODED;
use crate::matcher::Condition;
use crate::regexes::Regexes;
use crate::wire;

const KEYS: &[&str] = &["method", "when", "exactly", "at_least", "at_most", "show"];
/// Closest misses shown when nothing says otherwise, and the most that can be asked for.
const DEFAULT_SHOWN: usize = 5;
const MAX_SHOWN: usize = 50;
/// Failed conditions said for each near miss; more are counted.
const SHOWN_FAILURES: usize = 20;
/// Ids of matching calls listed in an answer.
const MAX_IDS: usize = 100;
/// Records copied out of the journal at a time.
const SCAN_CHUNK: usize = 256;

/// A verify request, checked.
#[derive(Debug)]
pub struct Verify {
    pub method: String,
    when: Json,
    count: Count,
    show: usize,
}

/// How many calls must match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Count {
    pub at_least: u64,
    pub at_most: Option<u64>,
}

impl Count {
    fn holds(&self, n: u64) -> bool {
        n >= self.at_least && self.at_most.is_none_or(|m| n <= m)
    }

    fn json(&self) -> Json {
        match self.at_most {
            Some(m) if m == self.at_least => json!({"exactly": m}),
            Some(m) if self.at_least == 0 => json!({"at_most": m}),
            Some(m) => json!({"at_least": self.at_least, "at_most": m}),
            None => json!({"at_least": self.at_least}),
        }
    }

    fn text(&self) -> String {
        let calls = |n: u64| if n == 1 { "call" } else { "calls" };
        match self.at_most {
            Some(m) if m == self.at_least => format!("exactly {m} {}", calls(m)),
            Some(m) if self.at_least == 0 => format!("at most {m} {}", calls(m)),
            Some(m) => format!("between {} and {m} calls", self.at_least),
            None => format!("at least {} {}", self.at_least, calls(self.at_least)),
        }
    }
}

impl Verify {
    /// Checks the shape of a verify request (the method's existence and the `when` are
    /// checked by [`Verify::run`] against the method's descriptors).
    pub fn parse(body: &Json) -> Result<Verify, String> {
        let Json::Object(obj) = body else {
            return Err("a verify is an object such as {\"method\": \"pkg.Service/Method\", \"when\": {…}, \"exactly\": 1}".into());
        };
        for key in obj.keys() {
            if !KEYS.contains(&key.as_str()) {
                return Err(format!(
                    "unknown key {key:?}{}; a verify has {}",
                    crate::suggest::did_you_mean(key, KEYS.iter().copied()),
                    KEYS.join(", ")
                ));
            }
        }
        let method = match obj.get("method") {
            Some(Json::String(m)) if !m.trim().is_empty() => {
                m.trim().trim_start_matches('/').to_owned()
            }
            _ => return Err("give \"method\": \"package.Service/Method\"".into()),
        };
        let when = match obj.get("when") {
            None | Some(Json::Null) => Json::Object(Map::new()),
            Some(w) => w.clone(),
        };
        let number = |key: &str| -> Result<Option<u64>, String> {
            match obj.get(key) {
                None | Some(Json::Null) => Ok(None),
                Some(Json::Number(n)) => n
                    .as_u64()
                    .map(Some)
                    .ok_or_else(|| format!("\"{key}\" must be a whole number ≥ 0, not {n}")),
                // The proto3 JSON form of 64-bit numbers, as the gRPC front end passes them.
                Some(Json::String(s)) => s
                    .parse()
                    .map(Some)
                    .map_err(|_| format!("\"{key}\" must be a whole number ≥ 0, not {s:?}")),
                Some(other) => Err(format!("\"{key}\" must be a whole number ≥ 0, not {other}")),
            }
        };
        let (exactly, at_least, at_most) =
            (number("exactly")?, number("at_least")?, number("at_most")?);
        let count = match (exactly, at_least, at_most) {
            (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
                return Err("give \"exactly\", or \"at_least\" and/or \"at_most\", not both".into())
            }
            (Some(n), None, None) => Count {
                at_least: n,
                at_most: Some(n),
            },
            (None, None, None) => Count {
                at_least: 1,
                at_most: None,
            },
            (None, lo, hi) => {
                let lo = lo.unwrap_or(0);
                if hi.is_some_and(|hi| hi < lo) {
                    return Err(format!(
                        "\"at_most\" ({}) is less than \"at_least\" ({lo})",
                        hi.unwrap_or(0)
                    ));
                }
                Count {
                    at_least: lo,
                    at_most: hi,
                }
            }
        };
        let show = match number("show")? {
            None => DEFAULT_SHOWN,
            Some(n) => usize::try_from(n).unwrap_or(MAX_SHOWN).min(MAX_SHOWN),
        };
        Ok(Verify {
            method,
            when,
            count,
            show,
        })
    }

    /// Runs the verify against the journal. `input` is the method's request type in the
    /// current generation; a `when` that does not fit it is refused with the same message a
    /// rule would get. `given_up` is raised when nobody waits for the answer any more: the run
    /// stops at the next call it would check (a `when` can be costly to check, and a journal
    /// holds up to `--journal-calls` calls of many messages each).
    pub fn run(
        &self,
        journal: &Journal,
        input: &MessageDescriptor,
        given_up: &AtomicBool,
    ) -> Result<Json, String> {
        let condition = Condition::compile(&self.when, input, "when", &mut Regexes::default())
            .map_err(|e| e.describe())?;
        let mut conditions = Conditions {
            when: &self.when,
            current: (input.clone(), condition),
            others: Vec::new(),
        };
        let mut matched: Vec<u64> = Vec::new();
        let mut misses = Closest::new(self.show);
        let mut to_method = 0u64;
        // Newest first: of the misses that fail as many conditions, the most recent is shown,
        // so an older one that fails as many is not even explained.
        let mut cursor = 0;
        loop {
            let chunk = journal.chunk(cursor, true, SCAN_CHUNK);
            let Some(last) = chunk.last() else { break };
            cursor = last.id;
            if given_up.load(Ordering::Relaxed) {
                return Err("the verify was given up: nobody waits for its answer".into());
            }
            for record in &chunk {
                let Some(log) = record.snapshot_if(|log| log.method_name() == self.method) else {
                    continue;
                };
                to_method += 1;
                match judge(record, &log, &mut conditions, &misses, given_up) {
                    Judgement::Match => matched.push(record.id),
                    Judgement::Miss(miss) => misses.offer(miss),
                    Judgement::Far => {}
                }
            }
            if chunk.len() < SCAN_CHUNK {
                break;
            }
        }
        if given_up.load(Ordering::Relaxed) {
            return Err("the verify was given up: nobody waits for its answer".into());
        }
        matched.reverse();
        let count = matched.len() as u64;
        let ok = self.count.holds(count);
        let mut out = Map::new();
        out.insert("ok".into(), json!(ok));
        out.insert("method".into(), json!(self.method));
        out.insert("expected".into(), self.count.json());
        out.insert("count".into(), json!(count));
        out.insert("calls_to_method".into(), json!(to_method));
        let shown_ids: Vec<u64> = matched.iter().rev().take(MAX_IDS).rev().copied().collect();
        out.insert("matched".into(), json!(shown_ids));
        let mut message = format!(
            "expected {} to {} matching the conditions, found {count}",
            self.count.text(),
            self.method
        );
        if to_method == 0 {
            message.push_str(&format!(
                "; the journal has no calls to {} ({} calls journaled)",
                self.method,
                journal.stats().calls
            ));
        } else if !ok && count > 0 && self.count.at_most.is_some_and(|m| count > m) {
            let ids: Vec<String> = shown_ids.iter().map(u64::to_string).collect();
            message.push_str(&format!(" (calls {})", ids.join(", ")));
        }
        let evicted = journal.stats().evicted;
        if evicted > 0 {
            out.insert(
                "note".into(),
                json!(format!("the journal dropped {evicted} older calls to stay within its bounds; they are not counted")),
            );
        }
        if !ok && count < self.count.at_least {
            let misses = misses.misses;
            if let Some(closest) = misses.first() {
                message.push_str(&format!(
                    "; closest: call {} ({})",
                    closest.id,
                    closest.failed.join("; ")
                ));
            }
            // One read's budget for all the requests shown: a near miss's request is left out
            // once they would pass it (fifty misses of 3 MB requests made a 150 MB answer,
            // past what the admin API holds for a client, so it was refused every time).
            let mut budget = RenderBudget::default();
            out.insert(
                "near_misses".into(),
                Json::Array(misses.into_iter().map(|m| m.json(&mut budget)).collect()),
            );
        }
        out.insert("message".into(), json!(message));
        Ok(Json::Object(out))
    }
}

/// The compiled `when`, for the current request type and for the types of calls recorded
/// under earlier generations.
struct Conditions<'a> {
    when: &'a Json,
    current: (MessageDescriptor, Condition),
    /// Few: one per generation the journal still has calls of.
    others: Vec<(MessageDescriptor, Result<Condition, String>)>,
}

impl Conditions<'_> {
    fn for_input(&mut self, input: &MessageDescriptor) -> Result<&Condition, String> {
        if *input == self.current.0 {
            return Ok(&self.current.1);
        }
        // A call recorded before a reload decodes with that generation's descriptors.
        let i = match self.others.iter().position(|(d, _)| d == input) {
            Some(i) => i,
            None => {
                let compiled = Condition::compile(self.when, input, "when", &mut Regexes::default()).map_err(|e| {
                    format!("the conditions do not fit this call's request type (the protos changed since): {}", e.describe())
                });
                self.others.push((input.clone(), compiled));
                self.others.len() - 1
            }
        };
        self.others[i].1.as_ref().map_err(Clone::clone)
    }
}

enum Judgement {
    Match,
    /// A miss among the closest so far, explained.
    Miss(Miss),
    /// A miss farther than the closest kept so far: it is not shown, so not explained.
    Far,
}

/// The calls that came closest to matching, closest first: fewest failed conditions, then
/// the most recent. Only as many as are shown are kept, and only these are explained: every
/// call to the method may be a miss, and explaining each one (every condition it failed, with
/// the values wanted) could cost as much as the `when`'s text per call.
struct Closest {
    show: usize,
    misses: Vec<Miss>,
}

impl Closest {
    fn new(show: usize) -> Self {
        Closest {
            show,
            misses: Vec::with_capacity(show),
        }
    }

    /// Where a miss of call `id` with `failures` failed conditions ranks among those kept.
    fn rank(&self, failures: usize, id: u64) -> usize {
        let key = (failures, std::cmp::Reverse(id));
        self.misses
            .partition_point(|kept| (kept.failures, std::cmp::Reverse(kept.id)) <= key)
    }

    /// A miss of call `id` with `failures` failed conditions, explained by `explain` (the
    /// failures said, and the request that came closest) if it ranks among the closest so far.
    fn judge(
        &self,
        id: u64,
        failures: usize,
        explain: impl FnOnce() -> (Vec<String>, Option<(MessageDescriptor, Bytes)>),
    ) -> Judgement {
        if self.rank(failures, id) >= self.show {
            return Judgement::Far;
        }
        let (mut failed, request) = explain();
        if failed.len() > SHOWN_FAILURES {
            let more = failed.len() - SHOWN_FAILURES;
            failed.truncate(SHOWN_FAILURES);
            failed.push(format!("… and {more} more"));
        }
        Judgement::Miss(Miss {
            id,
            failures,
            failed,
            request,
        })
    }

    /// Keeps `miss` if it is among the closest so far.
    fn offer(&mut self, miss: Miss) {
        let at = self.rank(miss.failures, miss.id);
        if at < self.show {
            self.misses.insert(at, miss);
            self.misses.truncate(self.show);
        }
    }
}

/// A call that did not match, with what failed.
struct Miss {
    id: u64,
    /// How many conditions it failed.
    failures: usize,
    /// The failed conditions, said for a person (the first [`SHOWN_FAILURES`]).
    failed: Vec<String>,
    /// The request message that came closest, with its type.
    request: Option<(MessageDescriptor, Bytes)>,
}

impl Miss {
    /// The miss as JSON, its request (when it came closest and decodes) rendered within what
    /// `budget` has left.
    fn json(self, budget: &mut RenderBudget) -> Json {
        let mut out = Map::new();
        out.insert("id".into(), json!(self.id));
        out.insert("failed".into(), json!(self.failed));
        let rendered = self.request.map(|(desc, bytes)| {
            let mut own = budget.clone();
            let r = message_json_within(Some(&desc), &bytes, &mut own);
            (r, own)
        });
        match rendered {
            Some((Ok(request), own)) if !own.refused() => {
                *budget = own;
                out.insert("request".into(), request);
            }
            Some((_, own)) if own.refused() => {
                out.insert(
                    "request_left_out".into(),
                    json!("the near misses' requests shown so far take what one answer may"),
                );
            }
            _ => {}
        }
        Json::Object(out)
    }
}

/// The request message that speaks for a call that did not match: the one with the fewest
/// failed conditions, or the first that could not be decoded while none could.
enum Speaker {
    Undecodable(String),
    Message {
        failures: usize,
        message: DynamicMessage,
        bytes: Bytes,
    },
}

impl Speaker {
    fn failures(&self) -> usize {
        match self {
            Speaker::Undecodable(_) => 1,
            Speaker::Message { failures, .. } => *failures,
        }
    }
}

/// Whether `record`'s call matches; a miss is explained if it is among the `closest`. Stops
/// (a `Far` miss) when `given_up` is raised: a stream may hold a million request messages.
fn judge(
    record: &Call,
    log: &CallView,
    conditions: &mut Conditions<'_>,
    closest: &Closest,
    given_up: &AtomicBool,
) -> Judgement {
    let id = record.id;
    // A call of a method no handler served in a big tree (UNIMPLEMENTED, its service never
    // decoded) was recorded without descriptors: its request is read with the verify's.
    let input = match &log.method {
        Some(info) => info.input.clone(),
        None => conditions.current.0.clone(),
    };
    let condition = match conditions.for_input(&input) {
        Ok(c) => c,
        Err(e) => return closest.judge(id, 1, || (vec![e], None)),
    };
    let metadata = MetadataMap::from_headers(log.metadata.clone());
    let metadata_failures = condition.failed_metadata(&metadata);
    if !condition.tests_fields() {
        return if metadata_failures == 0 {
            Judgement::Match
        } else {
            closest.judge(id, metadata_failures, || {
                (condition.explain_metadata(&metadata), None)
            })
        };
    }
    let mut speaker: Option<Speaker> = None;
    for (i, frame) in log
        .frames
        .iter()
        .filter(|f| f.direction == Direction::Request)
        .enumerate()
    {
        if given_up.load(Ordering::Relaxed) {
            return Judgement::Far;
        }
        let message = match decode_bounded(&input, &frame.bytes) {
            Ok(m) => m,
            Err(e) => {
                if speaker.is_none() {
                    speaker = Some(Speaker::Undecodable(format!("request {i}: {e}")));
                }
                continue;
            }
        };
        let failures = condition.failed_fields(&message);
        if failures == 0 {
            return if metadata_failures == 0 {
                Judgement::Match
            } else {
                closest.judge(id, metadata_failures, || {
                    (
                        condition.explain_metadata(&metadata),
                        Some((input.clone(), frame.bytes.clone())),
                    )
                })
            };
        }
        if speaker.as_ref().is_none_or(|s| failures < s.failures()) {
            speaker = Some(Speaker::Message {
                failures,
                message,
                bytes: frame.bytes.clone(),
            });
        }
    }
    let failures = metadata_failures + speaker.as_ref().map_or(1, Speaker::failures);
    closest.judge(id, failures, || {
        let mut failed = condition.explain_metadata(&metadata);
        match speaker {
            None => {
                failed.push("the call has no request message".into());
                (failed, None)
            }
            Some(Speaker::Undecodable(why)) => {
                failed.push(why);
                (failed, None)
            }
            Some(Speaker::Message { message, bytes, .. }) => {
                failed.extend(condition.explain_fields(&message));
                (failed, Some((input.clone(), bytes)))
            }
        }
    })
}

/// A recorded request decoded for a `when`, unless decoding it would take more than
/// [`DECODED_PER_ENCODED`] times its size (as a request to a handler is held to): a verify runs
/// over every call to the method.
fn decode_bounded(desc: &MessageDescriptor, bytes: &Bytes) -> Result<DynamicMessage, String> {
    let budget = bytes
        .len()
        .saturating_mul(DECODED_PER_ENCODED)
        .saturating_add(64 * 1024);
    if wire::may_exceed(bytes.len(), budget) {
        let mut cost = wire::Cost::new(budget);
        match wire::check(bytes, desc, &mut cost) {
            Ok(()) => {}
            Err(wire::Invalid::Malformed(e)) => {
                return Err(format!("not a valid {}: {e}", desc.full_name()))
            }
            Err(wire::Invalid::TooCostly { cost, .. }) => {
                return Err(format!(
                    "not checked: decoding this {} would take over {cost} bytes of memory, more than {DECODED_PER_ENCODED} times its size",
                    desc.full_name()
                ))
            }
        }
    }
    DynamicMessage::decode(desc.clone(), bytes.as_ref())
        .map_err(|e| format!("not a valid {}: {e}", desc.full_name()))
}
