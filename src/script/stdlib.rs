//! Bounded replacements for the parts of Lua's standard library that can run long in C.
//!
//! The instruction hook only runs between Lua instructions, so one call into a C library
//! function (`string.rep("x", 1e9)`, `table.move(t, 1, math.maxinteger - 1, 1)`, a
//! backtracking `string.find`) would run to its end however long that takes, past the call's
//! budget, deadline and cancellation. [`install`] swaps these functions, inside the real
//! `string`, `table` and `utf8` tables (so `("x"):find` uses them too) and in the globals:
//!
//! - `find`, `match`, `gmatch` and `gsub` use [`super::pattern`], which charges its steps, and
//!   go on as a job that the hook can pause between two resumes when they run past their
//!   call's time slice ([`super::pausable`]).
//! - Functions that call script code back (`table.sort` with its comparator and `__lt`,
//!   `__index`, `__newindex`; `string.gsub` with a function or a table; `tostring`,
//!   `string.format("%s")` and `print` with a `__tostring`; `table.concat`, `table.unpack`,
//!   `table.insert`, `table.remove`, `table.move`, `ipairs` and `os.time` with an `__index`,
//!   `__newindex`, `__len` or `__eq`; `math.min`/`max` with an `__lt`; string arithmetic with the
//!   other operand's metamethod) run their loops in Lua (`stdlib.lua`): script code called from
//!   C cannot be paused, so a long comparator would keep every other call on the state waiting.
//!   Written in Lua, the hook pauses them at each time slice like any script. Arguments that
//!   run no script code (plain values, tables without a metatable, frozen tables, whose `__len`
//!   is marked by [`configure`]) still go to Lua's own C function at once.
//! - Functions whose work grows with their input (copying, converting, shifting or sorting
//!   many bytes or elements) first charge that work to the call, then run Lua's own C version;
//!   a call over budget stops before the work starts. Small inputs skip the charge (the
//!   instruction hook already bounds them).
//! - A string result larger than the memory the state has left fails at once.
//!
//! Every charge checks the call's time budget, deadline and cancellation. When instructions are
//! counted (`--script-instructions`), costs are in instructions: a pattern step or a value
//! pushed is one, eight bytes copied or converted are one; at a budget of 1e8 that is under a
//! second of C work.

use std::cell::Cell;

use mlua::{
    AnyUserData, ChunkMode, Function, IntoLuaMulti, Lua, MultiValue, Table, Value as LuaValue,
    Variadic,
};

use super::pattern::{self, Capture, Captures, MatchError, Matcher, Pace};
use super::pausable::{self, Job, Progress, Resumed};
use super::{hook, slice};

/// Work below this is settled in one charge with later work, not charged on its own.
const CHUNK: u64 = pattern::CHUNK;
/// Results smaller than this need no memory check.
const ROOM_CHECK: usize = 1 << 20;

thread_local! {
    /// Work done on this thread but not charged yet (less than [`CHUNK`]).
    static DEBT: Cell<u64> = const { Cell::new(0) };
}

/// Adds `units` of work; charges the running call once a chunk has added up.
pub fn spend(units: u64) -> mlua::Result<()> {
    DEBT.with(|d| {
        let total = d.get().saturating_add(units);
        if total >= CHUNK {
            d.set(0);
            slice::charge(total)
        } else {
            d.set(total);
            Ok(())
        }
    })
}

/// Fails with a memory error if a `bytes`-long result cannot fit in what the state has left.
fn check_room(lua: &Lua, bytes: usize, what: &str) -> mlua::Result<()> {
    if bytes < ROOM_CHECK {
        return Ok(());
    }
    if let Some(room) = Room::of(lua)? {
        room.check(bytes, what)?;
    }
    Ok(())
}

/// A failure inside a library function.
pub(super) enum Fail {
    /// An error Lua's own function would raise, as its message (raised as a string).
    Lua(String),
    /// Out of budget, deadline, cancelled, out of memory, or an error from a called function.
    Hard(mlua::Error),
}

impl From<mlua::Error> for Fail {
    fn from(e: mlua::Error) -> Self {
        Fail::Hard(e)
    }
}

impl From<MatchError> for Fail {
    fn from(e: MatchError) -> Self {
        match e {
            MatchError::Pattern(m) => Fail::Lua(m),
            MatchError::Stopped(e) => Fail::Hard(e),
            // `pausable::start` runs an overrun search again; no other pace overruns.
            MatchError::Overran => Fail::Hard(mlua::Error::runtime(
                "a pattern search overran its time slice where it could not pause",
            )),
        }
    }
}

pub(super) type Outcome<T> = Result<T, Fail>;

/// The name `luaL_typename` gives a value.
pub(super) fn type_name(v: &LuaValue) -> &'static str {
    match v {
        LuaValue::Nil => "nil",
        LuaValue::Boolean(_) => "boolean",
        LuaValue::Integer(_) | LuaValue::Number(_) => "number",
        LuaValue::String(_) => "string",
        LuaValue::Table(_) => "table",
        LuaValue::Function(_) => "function",
        LuaValue::Thread(_) => "thread",
        _ => "userdata",
    }
}

pub(super) fn arg_error<T>(arg: usize, fname: &str, what: &str) -> Outcome<T> {
    Err(Fail::Lua(format!(
        "bad argument #{arg} to '{fname}' ({what})"
    )))
}

/// The type Lua names in "got …": "no value" for an argument past the last one given.
fn arg_type(v: &LuaValue, arg: usize, nargs: usize) -> &'static str {
    if arg > nargs {
        "no value"
    } else {
        type_name(v)
    }
}

/// `luaL_checklstring`: a string, or a number as a string.
pub(super) fn check_str(
    lua: &Lua,
    v: &LuaValue,
    arg: usize,
    nargs: usize,
    fname: &str,
) -> Outcome<mlua::String> {
    match v {
        LuaValue::String(s) => Ok(s.clone()),
        LuaValue::Integer(_) | LuaValue::Number(_) => match lua.coerce_string(v.clone())? {
            Some(s) => Ok(s),
            None => arg_error(arg, fname, "string expected, got number"),
        },
        other => arg_error(
            arg,
            fname,
            &format!("string expected, got {}", arg_type(other, arg, nargs)),
        ),
    }
}

/// `luaL_optinteger`.
pub(super) fn opt_int(lua: &Lua, v: &LuaValue, arg: usize, fname: &str) -> Outcome<Option<i64>> {
    match v {
        LuaValue::Nil => Ok(None),
        LuaValue::Integer(i) => Ok(Some(*i)),
        LuaValue::Number(_) | LuaValue::String(_) => match lua.coerce_integer(v.clone()) {
            Ok(Some(i)) => Ok(Some(i)),
            _ if matches!(lua.coerce_number(v.clone()), Ok(Some(_))) => {
                arg_error(arg, fname, "number has no integer representation")
            }
            _ => arg_error(
                arg,
                fname,
                &format!("number expected, got {}", type_name(v)),
            ),
        },
        other => arg_error(
            arg,
            fname,
            &format!("number expected, got {}", type_name(other)),
        ),
    }
}

/// An integer argument if it is one (or converts to one); `None` otherwise.
fn as_int(lua: &Lua, v: &LuaValue) -> Option<i64> {
    match v {
        LuaValue::Integer(i) => Some(*i),
        LuaValue::Number(_) | LuaValue::String(_) => lua.coerce_integer(v.clone()).ok().flatten(),
        _ => None,
    }
}

/// A string (or number) argument's length, if it is one.
fn str_len(lua: &Lua, v: &LuaValue) -> Option<usize> {
    match v {
        LuaValue::String(s) => Some(s.as_bytes().len()),
        LuaValue::Integer(_) | LuaValue::Number(_) => lua
            .coerce_string(v.clone())
            .ok()
            .flatten()
            .map(|s| s.as_bytes().len()),
        _ => None,
    }
}

/// `posrelatI` of lstrlib.c: a 1-based start position, clipped to at least 1.
fn start_pos(pos: i64, len: usize) -> usize {
    if pos > 0 {
        pos as usize
    } else if pos == 0 || pos.unsigned_abs() > len as u64 {
        1
    } else {
        len - pos.unsigned_abs() as usize + 1
    }
}

/// `getendpos` of lstrlib.c: a 1-based end position clipped to `0..=len`.
fn end_pos(pos: i64, len: usize) -> usize {
    if pos > len as i64 {
        len
    } else if pos >= 0 {
        pos as usize
    } else if pos.unsigned_abs() > len as u64 {
        0
    } else {
        len - pos.unsigned_abs() as usize + 1
    }
}

/// A pattern operation: its strings, what it does, and how its result is given to Lua. It
/// runs through [`pausable`], first straight away, and again where it can pause if its call's
/// time slice ends meanwhile.
struct Search {
    /// The subject.
    src: mlua::String,
    /// The pattern (or the plain text a plain `find` looks for).
    pat: mlua::String,
    /// `gsub`'s replacement string, if it has one.
    repl: Option<mlua::String>,
    /// Where the pattern starts in `pat`: 1 past a `^` that anchors it, else 0.
    pat_from: usize,
    op: Op,
}

/// What a [`Search`] does.
enum Op {
    /// `string.find` (`find`) or `string.match`: the first match from `init` (only there when
    /// `anchor`).
    First {
        init: usize,
        anchor: bool,
        find: bool,
    },
    /// `string.find` of plain text from `init`.
    Plain { init: usize },
    /// The next match at `at` or after (only at `at` when `anchor`) that does not end at
    /// `last`: a step of `gmatch` (`all`) or of `gsub` with a function or table (`all`: every
    /// capture for a function, else the first for a table).
    Next {
        at: usize,
        last: Option<usize>,
        anchor: bool,
        all: bool,
    },
    /// `string.gsub` with a replacement string, `max_n` replacements at most; `room` is the
    /// memory the state had left when it started, which the result must fit in.
    Replace {
        max_n: i64,
        anchor: bool,
        room: Option<Room>,
    },
}

/// What a [`Search`] found, before any Lua value is made of it.
enum Found {
    /// A match's span and captures, or none.
    Match(Option<(usize, usize, Captures)>),
    /// Where plain text was found, or nowhere.
    At(Option<usize>),
    /// `gsub`'s text so far (the rest of the subject is added to it when values are made),
    /// where the rest starts, and the number of replacements.
    Replaced { out: Vec<u8>, at: usize, n: i64 },
}

/// Steps a [`Search`] counted but did not pay, paid when its values are made.
struct Searched {
    found: Found,
    unpaid: u64,
}

impl pausable::Work for Search {
    type Found = Searched;

    /// The subject, the pattern and the replacement string, if any.
    fn strings(&self) -> [Option<&mlua::String>; 3] {
        [Some(&self.src), Some(&self.pat), self.repl.as_ref()]
    }

    fn run(&self, [src, pat, repl]: [&[u8]; 3], pace: &dyn Pace) -> Result<Searched, MatchError> {
        let pat = &pat[self.pat_from..];
        if let Op::Plain { init } = self.op {
            let found = pattern::find_plain(src, pat, init, pace)?;
            return Ok(Searched {
                found: Found::At(found),
                unpaid: 0,
            });
        }
        let mut m = Matcher::new(src, pat, pace, pausable::chunk());
        let found = match &self.op {
            Op::First { init, anchor, .. } => Found::Match(
                m.find(*init, *anchor)?
                    .map(|(start, end)| (start, end, m.captures())),
            ),
            Op::Next {
                at, last, anchor, ..
            } => {
                let mut at = *at;
                loop {
                    if at > src.len() {
                        break Found::Match(None);
                    }
                    match m.match_here(at)? {
                        Some(e) if Some(e) != *last => {
                            break Found::Match(Some((at, e, m.captures())));
                        }
                        _ if at < src.len() && !anchor => at += 1,
                        _ => break Found::Match(None),
                    }
                }
            }
            Op::Replace {
                max_n,
                anchor,
                room,
            } => replace(&mut m, src, repl, *max_n, *anchor, *room)?,
            Op::Plain { .. } => unreachable!("handled above"),
        };
        Ok(Searched {
            found,
            unpaid: m.uncharged(),
        })
    }
}

/// The memory a state had left, and its limit, when an operation started.
#[derive(Clone, Copy)]
pub(super) struct Room {
    left: usize,
    limit: usize,
}

impl Room {
    /// What `lua` has left now; `None` without a memory limit.
    pub(super) fn of(lua: &Lua) -> mlua::Result<Option<Room>> {
        // mlua has no getter for the limit: read it by swapping it out and back.
        let limit = lua.set_memory_limit(0).unwrap_or(0);
        if limit == 0 {
            return Ok(None);
        }
        lua.set_memory_limit(limit)?;
        Ok(Some(Room {
            left: limit.saturating_sub(lua.used_memory()),
            limit,
        }))
    }

    /// Fails with a memory error if a `bytes`-long result of `what` does not fit.
    pub(super) fn check(self, bytes: usize, what: &str) -> mlua::Result<()> {
        if bytes <= self.left {
            return Ok(());
        }
        const MIB: usize = 1 << 20;
        Err(mlua::Error::MemoryError(format!(
            "not enough memory: {what} would make {} MiB, and the state has {} MiB left of its \
             {} MiB limit (--script-memory)",
            bytes.div_ceil(MIB),
            self.left / MIB,
            self.limit / MIB
        )))
    }
}

/// `gsub`'s loop with a replacement string: the text up to where it stopped, where it stopped,
/// and the number of replacements.
fn replace(
    m: &mut Matcher<'_>,
    src: &[u8],
    repl: &[u8],
    max_n: i64,
    anchor: bool,
    room: Option<Room>,
) -> Result<Found, MatchError> {
    let mut out: Vec<u8> = Vec::new();
    let mut held = pausable::Held::default();
    let mut at = 0;
    let mut last = None;
    let mut n: i64 = 0;
    while n < max_n {
        let before = out.len();
        match m.match_here(at)? {
            Some(e) if Some(e) != last => {
                n += 1;
                add_template(m, src, at, e, repl, &mut out)?;
                at = e;
                last = Some(e);
            }
            _ if at < src.len() => {
                out.push(src[at]);
                at += 1;
            }
            _ => break,
        }
        m.add_work((out.len() - before) as u64 / 8)?;
        if out.capacity() != held.bytes() {
            held.set(out.capacity());
        }
        if let Some(room) = room.filter(|_| out.len() >= ROOM_CHECK) {
            room.check(out.len() + held.others(), "string.gsub")
                .map_err(MatchError::Stopped)?;
        }
        if anchor {
            break;
        }
    }
    Ok(Found::Replaced { out, at, n })
}

/// Appends a replacement string, expanding `%0`–`%9` and `%%`.
fn add_template(
    m: &mut Matcher<'_>,
    src: &[u8],
    s: usize,
    e: usize,
    template: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), MatchError> {
    let mut rest = template;
    while let Some(i) = memchr::memchr(b'%', rest) {
        out.extend_from_slice(&rest[..i]);
        let c = rest.get(i + 1).copied().unwrap_or(0);
        match c {
            b'%' => out.push(b'%'),
            b'0' => out.extend_from_slice(&src[s..e]),
            b'1'..=b'9' => match m.capture((c - b'1') as usize, s, e)? {
                Capture::Span(a, b) => out.extend_from_slice(&src[a..b]),
                Capture::Position(p) => out.extend_from_slice(p.to_string().as_bytes()),
            },
            _ => {
                return Err(MatchError::Pattern(
                    "invalid use of '%' in replacement string".to_owned(),
                ))
            }
        }
        rest = rest.get(i + 2..).unwrap_or(&[]);
    }
    out.extend_from_slice(rest);
    Ok(())
}

/// Capture `i` of a match `s..e` of `src` as a Lua value, paying for the bytes it copies.
fn capture_value(
    lua: &Lua,
    caps: &Captures,
    src: &[u8],
    i: usize,
    s: usize,
    e: usize,
) -> Outcome<LuaValue> {
    Ok(match caps.get(i, s, e)? {
        Capture::Position(p) => LuaValue::Integer(p as i64),
        Capture::Span(a, b) => {
            spend((b - a) as u64 / 8)?;
            LuaValue::String(lua.create_string(&src[a..b])?)
        }
    })
}

/// Every capture of a match (the whole match if there are none and `whole`).
fn push_captures(
    lua: &Lua,
    caps: &Captures,
    src: &[u8],
    (s, e): (usize, usize),
    whole: bool,
    out: &mut Vec<LuaValue>,
) -> Outcome<()> {
    for i in 0..caps.count(whole) {
        out.push(capture_value(lua, caps, src, i, s, e)?);
    }
    Ok(())
}

impl Search {
    /// The values the Lua side gets for what was found.
    fn values(&self, lua: &Lua, searched: Searched) -> Outcome<MultiValue> {
        spend(searched.unpaid)?;
        let src = self.src.as_bytes();
        let mut out = Vec::new();
        match (searched.found, &self.op) {
            (Found::Match(None), Op::Next { .. }) => {}
            (Found::Match(None), _) | (Found::At(None), _) => out.push(LuaValue::Nil),
            (Found::At(Some(at)), _) => {
                let len = self.pat.as_bytes().len();
                out.push(LuaValue::Integer(at as i64 + 1));
                out.push(LuaValue::Integer((at + len) as i64));
            }
            (Found::Match(Some((s, e, caps))), Op::First { find: true, .. }) => {
                out.push(LuaValue::Integer(s as i64 + 1));
                out.push(LuaValue::Integer(e as i64));
                push_captures(lua, &caps, &src, (s, e), false, &mut out)?;
            }
            (Found::Match(Some((s, e, caps))), Op::Next { all, .. }) => {
                out.push(LuaValue::Integer(s as i64));
                out.push(LuaValue::Integer(e as i64));
                if *all {
                    push_captures(lua, &caps, &src, (s, e), true, &mut out)?;
                } else {
                    out.push(capture_value(lua, &caps, &src, 0, s, e)?);
                }
            }
            (Found::Match(Some((s, e, caps))), _) => {
                push_captures(lua, &caps, &src, (s, e), true, &mut out)?;
            }
            (Found::Replaced { mut out, at, n }, _) => {
                let text = if n > 0 {
                    out.extend_from_slice(&src[at..]);
                    spend(out.len() as u64 / 8)?;
                    lua.create_string(&out)?
                } else {
                    self.src.clone()
                };
                return Ok((text, n).into_lua_multi(lua)?);
            }
        }
        Ok(MultiValue::from_vec(out))
    }
}

/// Runs `search`: its values, or, when it runs past its call's time slice, `PENDING` and the
/// job that goes on with it (the Lua side resumes it with `core.resume`).
fn perform(lua: &Lua, search: Search) -> mlua::Result<MultiValue> {
    match pausable::start(search) {
        Progress::Done(search, result) => respond(lua, ended(lua, &search, result)),
        Progress::Pending(job) => pending(lua, lua.create_userdata(job)?),
    }
}

/// What an ended search gives Lua.
fn ended(lua: &Lua, search: &Search, result: Result<Searched, MatchError>) -> Outcome<MultiValue> {
    search.values(lua, result?)
}

/// `PENDING, job`.
pub(super) fn pending(lua: &Lua, job: AnyUserData) -> mlua::Result<MultiValue> {
    let marker: Table = lua.named_registry_value(PENDING_KEY)?;
    (marker, job).into_lua_multi(lua)
}

/// `core.resume(job)`: goes on with a pending search.
fn resume(lua: &Lua, job: AnyUserData) -> mlua::Result<MultiValue> {
    if job.is::<Job<super::bytewise::Bytewise>>() {
        return super::bytewise::resume(lua, job);
    }
    if job.is::<Job<super::numeral::Numeral>>() {
        return super::numeral::resume(lua, job);
    }
    let resumed = job.borrow_mut::<Job<Search>>()?.resume();
    match resumed {
        Resumed::Done(search, result) => respond(lua, ended(lua, &search, result)),
        Resumed::Suspended => pending(lua, job),
        Resumed::Gone => Err(mlua::Error::runtime("this pattern job has ended")),
    }
}

/// `string.find` (`find == true`) and `string.match`: the search, or `None` when the start
/// is past the subject's end (the answer is `nil`).
fn find_aux(
    lua: &Lua,
    (nargs, s, p, init, plain): (usize, LuaValue, LuaValue, LuaValue, LuaValue),
    find: bool,
) -> Outcome<Option<Search>> {
    let fname = if find { "find" } else { "match" };
    let src = check_str(lua, &s, 1, nargs, fname)?;
    let pat = check_str(lua, &p, 2, nargs, fname)?;
    let len = src.as_bytes().len();
    let init = start_pos(opt_int(lua, &init, 3, fname)?.unwrap_or(1), len) - 1;
    if init > len {
        return Ok(None);
    }
    let p = pat.as_bytes();
    if find && (plain.as_boolean().unwrap_or(!plain.is_nil()) || pattern::is_plain(&p)) {
        drop(p);
        return Ok(Some(Search {
            src,
            pat,
            repl: None,
            pat_from: 0,
            op: Op::Plain { init },
        }));
    }
    let anchor = p.first() == Some(&b'^');
    drop(p);
    Ok(Some(Search {
        src,
        pat,
        repl: None,
        pat_from: usize::from(anchor),
        op: Op::First { init, anchor, find },
    }))
}

/// `string.gmatch`'s checked arguments for the Lua side's iterator: the subject and the
/// pattern as strings (which the iterator passes to [`gmatch_next`] at each step), the 0-based
/// position to start at, the subject's length, and whether no call is running (scripts are
/// loading: the iterator is noted, see [`LOAD_TIME_ITERATORS_KEY`]).
///
/// The iterator holds the strings as Lua values, not as mlua handles in a Rust closure: each
/// handle takes a slot of mlua's reference stack for as long as the iterator lives, and a
/// script keeping half a million iterators filled it (mlua panics when it is full).
fn gmatch_prepare(
    lua: &Lua,
    (nargs, s, p, init): (usize, LuaValue, LuaValue, LuaValue),
) -> Outcome<MultiValue> {
    let s = check_str(lua, &s, 1, nargs, "gmatch")?;
    let p = check_str(lua, &p, 2, nargs, "gmatch")?;
    let len = s.as_bytes().len();
    let init = start_pos(opt_int(lua, &init, 3, "gmatch")?.unwrap_or(1), len) - 1;
    let loading = no_call_running();
    Ok((s, p, init.min(len + 1), len, loading).into_lua_multi(lua)?)
}

/// Whether no call is running: scripts are loading (a `string.gmatch` iterator made now is
/// noted, see [`LOAD_TIME_ITERATORS_KEY`]).
fn no_call_running() -> bool {
    slice::with_running_call(|call| call.is_none_or(|call| &*call.method == hook::LOADING))
}

/// Whether `f` is a `string.gmatch` iterator made while scripts loaded: its position would be
/// shared by every call if a script kept it (the freezer reports those).
pub fn is_load_time_iterator(lua: &Lua, f: &Function) -> mlua::Result<bool> {
    let made: Option<Table> = lua.named_registry_value(LOAD_TIME_ITERATORS_KEY)?;
    match made {
        Some(made) => made.raw_get(f),
        None => Ok(false),
    }
}

/// The arguments of `string.gsub`, checked in Lua's order: the subject and the pattern (as
/// strings), the replacement string (`None` for a table or a function) and the most
/// replacements to make.
type GsubArgs = (mlua::String, mlua::String, Option<mlua::String>, i64);

fn gsub_args(
    lua: &Lua,
    (nargs, s, p, repl, max_n): (usize, LuaValue, LuaValue, LuaValue, LuaValue),
) -> Outcome<GsubArgs> {
    let s = check_str(lua, &s, 1, nargs, "gsub")?;
    let p = check_str(lua, &p, 2, nargs, "gsub")?;
    let len = s.as_bytes().len();
    let max_n = opt_int(lua, &max_n, 4, "gsub")?.unwrap_or(len as i64 + 1);
    let repl = match &repl {
        LuaValue::String(r) => Some(r.clone()),
        LuaValue::Integer(_) | LuaValue::Number(_) => lua.coerce_string(repl.clone())?,
        LuaValue::Table(_) | LuaValue::Function(_) => None,
        other => {
            return arg_error(
                3,
                "gsub",
                &format!(
                    "string/function/table expected, got {}",
                    arg_type(other, 3, nargs)
                ),
            )
        }
    };
    Ok((s, p, repl, max_n))
}

/// `string.gsub` with a replacement string. A table or a function goes to the Lua side (see
/// [`gsub_prepare`]), which calls it from Lua, where the instruction hook can pause it.
fn gsub(lua: &Lua, args: (usize, LuaValue, LuaValue, LuaValue, LuaValue)) -> Outcome<Search> {
    let (src, pat, repl, max_n) = gsub_args(lua, args)?;
    let Some(repl) = repl else {
        return Err(Fail::Lua(
            "string.gsub: a table or function replacement is handled in Lua".to_owned(),
        ));
    };
    let anchor = pat.as_bytes().first() == Some(&b'^');
    Ok(Search {
        src,
        pat,
        repl: Some(repl),
        pat_from: usize::from(anchor),
        op: Op::Replace {
            max_n,
            anchor,
            room: Room::of(lua)?,
        },
    })
}

/// `string.gsub` with a table or a function, its checked arguments for the Lua loop: the
/// subject and the pattern as strings, the most replacements to make, whether the pattern is
/// anchored. (A replacement string gets the same checks and error messages from [`gsub`].)
fn gsub_prepare(
    lua: &Lua,
    args: (usize, LuaValue, LuaValue, LuaValue, LuaValue),
) -> Outcome<MultiValue> {
    let (s, p, _, max_n) = gsub_args(lua, args)?;
    let anchor = p.as_bytes().first() == Some(&b'^');
    Ok((s, p, max_n, anchor).into_lua_multi(lua)?)
}

/// One step of `string.gsub`'s loop for the Lua side: the next match at byte offset `at` or
/// after (only at `at` if the pattern is anchored) that does not end at `last` (an empty match
/// right after the previous one, which Lua skips), as its 0-based start, its end, then what
/// the replacement gets: every capture (the whole match if none) when `all`, else the first.
/// Nothing when there is no further match.
fn gsub_next((s, p, at, last, all): (mlua::String, mlua::String, i64, i64, bool)) -> Search {
    let len = s.as_bytes().len();
    let anchor = p.as_bytes().first() == Some(&b'^');
    Search {
        src: s,
        pat: p,
        repl: None,
        pat_from: usize::from(anchor),
        op: Op::Next {
            at: usize::try_from(at).unwrap_or(0).min(len),
            last: usize::try_from(last).ok(),
            anchor,
            all,
        },
    }
}

/// One step of a `string.gmatch` iterator for the Lua side: the next match at byte offset `at`
/// or after (`at` past the end: none) that does not end at `last`, as its 0-based start, its
/// end, and its captures (the whole match if none). Nothing when there is no further match.
/// The pattern is not anchored: as in Lua, a `^` in it is an ordinary character.
fn gmatch_next(s: mlua::String, p: mlua::String, at: i64, last: i64) -> Search {
    Search {
        src: s,
        pat: p,
        repl: None,
        pat_from: 0,
        op: Op::Next {
            at: usize::try_from(at).unwrap_or(0),
            last: usize::try_from(last).ok(),
            anchor: false,
            all: true,
        },
    }
}

/// Turns a [`Fail::Lua`] into the `FAIL, message` pair the Lua side raises as a string.
pub(super) fn respond(lua: &Lua, r: Outcome<MultiValue>) -> mlua::Result<MultiValue> {
    match r {
        Ok(v) => Ok(v),
        Err(Fail::Lua(message)) => {
            let fail: Table = lua.named_registry_value(FAIL_KEY)?;
            (fail, message).into_lua_multi(lua)
        }
        Err(Fail::Hard(e)) => Err(e),
    }
}

const FAIL_KEY: &str = "protoserve.stdlib.fail";
/// The marker a pattern function returns (with its job) when it goes on as a job.
const PENDING_KEY: &str = "protoserve.stdlib.pending";
/// A weak-keyed table of the `string.gmatch` iterators made while no call ran.
const LOAD_TIME_ITERATORS_KEY: &str = "protoserve.stdlib.load_time_iterators";

/// `string.rep`: charges the result's bytes (and the copy loop), refuses results that cannot
/// fit in memory. False when the result is empty, which C would still loop `n` times to build.
fn rep_cost(lua: &Lua, (s, n, sep): (LuaValue, LuaValue, LuaValue)) -> mlua::Result<bool> {
    let (Some(l), Some(n)) = (str_len(lua, &s), as_int(lua, &n)) else {
        return Ok(true);
    };
    let lsep = if sep.is_nil() {
        0
    } else {
        match str_len(lua, &sep) {
            Some(l) => l,
            None => return Ok(true),
        }
    };
    if n <= 0 {
        return Ok(true);
    }
    if l + lsep == 0 {
        return Ok(false);
    }
    let n = n as u64;
    let total = (l as u64).checked_mul(n).and_then(|a| {
        (lsep as u64)
            .checked_mul(n - 1)
            .and_then(|b| a.checked_add(b))
    });
    let Some(total) = total.filter(|&t| t <= i64::MAX as u64) else {
        return Ok(true); // Lua's own "resulting string too large"
    };
    check_room(
        lua,
        usize::try_from(total).unwrap_or(usize::MAX),
        "string.rep",
    )?;
    spend(n / 4 + total / 8)?;
    Ok(true)
}

/// A result of `bytes` bytes about to be built (e.g. by `table.concat`): refuses one that
/// cannot fit in memory, charges the bytes.
fn bytes_cost(lua: &Lua, (bytes, what): (i64, mlua::String)) -> mlua::Result<()> {
    let bytes = bytes.max(0) as u64;
    check_room(
        lua,
        usize::try_from(bytes).unwrap_or(usize::MAX),
        &what.to_string_lossy(),
    )?;
    spend(bytes / 8)
}

/// `string.format`: the format's length (each directive may write ~100 bytes) and the string
/// arguments' bytes.
fn format_cost(_: &Lua, args: Variadic<LuaValue>) -> mlua::Result<()> {
    let mut units = 0u64;
    for (k, v) in args.iter().enumerate() {
        if let LuaValue::String(s) = v {
            let len = s.as_bytes().len() as u64;
            units += if k == 0 { len * 2 } else { len / 4 };
        }
    }
    spend(units)
}

/// `string.pack`: the format (each option writes at most 16 bytes, `cN` writes N), the string
/// arguments' bytes.
fn pack_cost(lua: &Lua, args: Variadic<LuaValue>) -> mlua::Result<()> {
    let mut bytes = 0u64;
    if let Some(LuaValue::String(f)) = args.first() {
        let f = f.as_bytes();
        bytes += 16 * f.len() as u64;
        bytes = bytes.saturating_add(c_sizes(&f));
    }
    for v in args.iter().skip(1) {
        if let LuaValue::String(s) = v {
            bytes += s.as_bytes().len() as u64;
        }
    }
    check_room(
        lua,
        usize::try_from(bytes).unwrap_or(usize::MAX),
        "string.pack",
    )?;
    spend(bytes / 8)
}

/// The sum of the sizes of a pack format's `cN` options.
fn c_sizes(f: &[u8]) -> u64 {
    let mut total = 0u64;
    let mut k = 0;
    while k < f.len() {
        if f[k] == b'c' {
            let mut n = 0u64;
            k += 1;
            while k < f.len() && f[k].is_ascii_digit() {
                n = n.saturating_mul(10).saturating_add(u64::from(f[k] - b'0'));
                k += 1;
            }
            total = total.saturating_add(n);
        } else {
            k += 1;
        }
    }
    total
}

/// Ranges of `string.byte` / `string.sub` / `utf8.codepoint` / `utf8.len`: charges the number
/// of bytes (or values) the range spans, shifted right by `shift`.
fn span_cost(
    lua: &Lua,
    (kind, len, i, j): (mlua::String, usize, LuaValue, LuaValue),
) -> mlua::Result<()> {
    let kind = kind.as_bytes();
    let int = |v: &LuaValue, default: i64| {
        if v.is_nil() {
            Some(default)
        } else {
            as_int(lua, v)
        }
    };
    let (start, end, shift) = match &*kind {
        b"byte" => {
            let Some(i) = int(&i, 1) else { return Ok(()) };
            let start = start_pos(i, len);
            let Some(j) = int(&j, start as i64) else {
                return Ok(());
            };
            (start, end_pos(j, len), 0)
        }
        b"sub" => {
            let (Some(i), Some(j)) = (int(&i, 1), int(&j, -1)) else {
                return Ok(());
            };
            (start_pos(i, len), end_pos(j, len), 3)
        }
        b"codepoint" | b"len" => {
            let u = |p: i64| -> usize {
                if p >= 0 {
                    p as usize
                } else if p.unsigned_abs() > len as u64 {
                    0
                } else {
                    len - p.unsigned_abs() as usize + 1
                }
            };
            let default_j = if &*kind == b"len" { -1 } else { 0 };
            let Some(i) = int(&i, 1) else { return Ok(()) };
            let Some(j) = int(&j, if default_j == 0 { i } else { default_j }) else {
                return Ok(());
            };
            (u(i), u(j).min(len), if &*kind == b"len" { 2 } else { 0 })
        }
        _ => return Ok(()),
    };
    if end >= start {
        spend(((end - start + 1) as u64) >> shift)?;
    }
    Ok(())
}

/// Elements `table.sort` compares for `n` items: about n·log2(n).
fn sort_cost(_: &Lua, n: i64) -> mlua::Result<()> {
    if n > 1 {
        let n = n as u64;
        spend(n.saturating_mul(u64::from(64 - n.leading_zeros())))?;
    }
    Ok(())
}

/// Replaces the long-running library functions in `lua`'s `string`, `table`, `utf8`, `os` and
/// base libraries with bounded ones (see the module docs). Call before anything else captures
/// them.
pub fn install(lua: &Lua) -> mlua::Result<()> {
    install_with(lua, true)
}

/// [`install`] with every pattern call going to the Rust matcher (for testing it against Lua).
#[doc(hidden)]
pub fn install_matcher_only(lua: &Lua) -> mlua::Result<()> {
    install_with(lua, false)
}

/// Worst-case matcher steps a pattern call may take in Lua's own matcher without a charge.
const FREE_WORK: i64 = 1024;
/// ... and with its worst case charged up front (a quarter unit per step). Above it, Rust.
const CHARGED_WORK: i64 = 1 << 16;

/// The most values one `table.unpack` returns; more fail with "too many results to unpack",
/// the count and this limit (past a million, where Lua's own unpack fails too, in Lua's words
/// alone). Lua's own bound is the stack's million slots, but the values sit
/// on the stack twice on their way out of the library's wrapper (see `stdlib.lua`), so from
/// about half a million they ended in a bare "stack overflow".
pub const MAX_UNPACK: i64 = 400_000;

fn install_with(lua: &Lua, fast_paths: bool) -> mlua::Result<()> {
    let fail = lua.create_table()?;
    lua.set_named_registry_value(FAIL_KEY, fail.clone())?;
    let core = lua.create_table()?;
    core.raw_set(
        "spend",
        lua.create_function(|_, units: i64| spend(units.max(0) as u64))?,
    )?;
    let pending_marker = lua.create_table()?;
    lua.set_named_registry_value(PENDING_KEY, pending_marker.clone())?;
    core.raw_set("PENDING", pending_marker)?;
    core.raw_set("max_unpack", MAX_UNPACK)?;
    // Marks the coroutines where script code runs that Lua's own function would call from C.
    core.raw_set("barrier", super::barrier::install(lua)?)?;
    core.raw_set("resume", lua.create_function(resume)?)?;
    core.raw_set("bytewise", lua.create_function(super::bytewise::map)?)?;
    core.raw_set(
        "utf8_len",
        lua.create_function(super::bytewise::utf8_len_args)?,
    )?;
    core.raw_set(
        "utf8_offset",
        lua.create_function(super::bytewise::utf8_offset_args)?,
    )?;
    core.raw_set("numeral", lua.create_function(super::numeral::shorten)?)?;
    core.raw_set(
        "numeral_base",
        lua.create_function(super::numeral::in_base_of)?,
    )?;
    core.raw_set(
        "bytewise_from",
        if fast_paths { super::bytewise::BIG } else { 0 },
    )?;
    for (name, find) in [("find", true), ("match", false)] {
        core.raw_set(
            name,
            lua.create_function(move |lua, args| match find_aux(lua, args, find) {
                Ok(Some(search)) => perform(lua, search),
                Ok(None) => LuaValue::Nil.into_lua_multi(lua),
                Err(fail) => respond(lua, Err(fail)),
            })?,
        )?;
    }
    let load_time_iterators = lua.create_table()?;
    let weak_keys = lua.create_table()?;
    weak_keys.raw_set("__mode", "k")?;
    load_time_iterators.set_metatable(Some(weak_keys))?;
    lua.set_named_registry_value(LOAD_TIME_ITERATORS_KEY, load_time_iterators.clone())?;
    core.raw_set("load_time_iterators", load_time_iterators)?;
    core.raw_set(
        "loading",
        lua.create_function(|_, ()| Ok(no_call_running()))?,
    )?;
    core.raw_set(
        "gmatch_prepare",
        lua.create_function(|lua, args| respond(lua, gmatch_prepare(lua, args)))?,
    )?;
    core.raw_set(
        "gmatch_next",
        lua.create_function(
            |lua, (s, p, at, last): (mlua::String, mlua::String, i64, i64)| {
                perform(lua, gmatch_next(s, p, at, last))
            },
        )?,
    )?;
    core.raw_set(
        "gsub",
        lua.create_function(|lua, args| match gsub(lua, args) {
            Ok(search) => perform(lua, search),
            Err(fail) => respond(lua, Err(fail)),
        })?,
    )?;
    core.raw_set(
        "gsub_prepare",
        lua.create_function(|lua, args| respond(lua, gsub_prepare(lua, args)))?,
    )?;
    core.raw_set(
        "gsub_next",
        lua.create_function(|lua, args| perform(lua, gsub_next(args)))?,
    )?;
    let (random, randomseed) = super::random::functions(lua, fail.clone())?;
    core.raw_set("random", random)?;
    core.raw_set("randomseed", randomseed)?;
    super::random::install(lua);
    // Raised again by the Lua side for a memory error it caught (see `table.sort` there).
    core.raw_set(
        "memory_error",
        lua.create_function(|_, ()| -> mlua::Result<()> {
            Err(mlua::Error::MemoryError("not enough memory".into()))
        })?,
    )?;
    // Small pattern calls whose worst case is provably small go to Lua's own matcher: it is
    // faster on tiny inputs than crossing into Rust.
    let (free, charged) = if fast_paths {
        (FREE_WORK, CHARGED_WORK)
    } else {
        (-1, -1)
    };
    core.raw_set("free_work", free)?;
    core.raw_set("charged_work", charged)?;
    core.raw_set("rep_cost", lua.create_function(rep_cost)?)?;
    core.raw_set("bytes_cost", lua.create_function(bytes_cost)?)?;
    core.raw_set("format_cost", lua.create_function(format_cost)?)?;
    core.raw_set("pack_cost", lua.create_function(pack_cost)?)?;
    core.raw_set("span_cost", lua.create_function(span_cost)?)?;
    core.raw_set("sort_cost", lua.create_function(sort_cost)?)?;
    // A table's metatable as it is, past any `__metatable` field: where the Lua side looks for
    // the metamethods that would run script code.
    core.raw_set(
        "metatable",
        lua.create_function(|_, v: LuaValue| {
            Ok(match v {
                LuaValue::Table(t) => t.metatable(),
                _ => None,
            })
        })?,
    )?;
    // Stripped of line information, so errors Lua's C functions raise inside a wrapper carry
    // no position in this chunk.
    let glue = lua
        .load(GLUE)
        .set_name("=stdlib")
        .into_function()?
        .dump(true);
    let configure: Function = lua
        .load(glue)
        .set_name("=stdlib")
        .set_mode(ChunkMode::Binary)
        .call((fail, core))?;
    lua.set_named_registry_value(CONFIGURE_KEY, configure)
}

const CONFIGURE_KEY: &str = "protoserve.stdlib.configure";

/// Tells the replacements that `len`, the `__len` of frozen tables, runs no script code
/// (`table.concat`, `table.unpack` and friends then keep Lua's own C function for those tables),
/// and hands them `debug.getmetatable`, which reads a metatable faster than a Rust function.
pub fn configure(lua: &Lua, len: &Function, raw_getmetatable: &Function) -> mlua::Result<()> {
    let configure: Function = lua.named_registry_value(CONFIGURE_KEY)?;
    configure.call((len, raw_getmetatable))
}

/// The Lua side: fast paths for small inputs, charges for big ones, then Lua's own function.
/// Each original is called through a local of its own name, so Lua's "bad argument #1 to
/// 'rep'" messages keep their names.
const GLUE: &str = include_str!("stdlib.lua");

#[cfg(test)]
mod tests {
    use mlua::Lua;

    /// Each iterator held its subject and pattern as mlua handles in a Rust closure, two slots
    /// of mlua's reference stack for as long as it lived: a script keeping half a million of
    /// them (260 MiB, under a larger `--script-memory`) made mlua panic, which took its state
    /// down with every call on it.
    #[test]
    fn kept_gmatch_iterators_do_not_fill_the_reference_stack() {
        let lua = Lua::new();
        super::install(&lua).unwrap();
        let kept = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            lua.load(
                r#"
                local s, t = ("ab "):rep(400), {}
                for i = 1, 520000 do t[i] = s:gmatch("%a+") end
                return #t .. " " .. t[520000]()
                "#,
            )
            .eval::<String>()
            .map_err(|e| e.to_string())
        }));
        assert_eq!(kept.ok(), Some(Ok("520000 ab".to_owned())));
    }
}
