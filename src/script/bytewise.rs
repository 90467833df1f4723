//! `string.upper`, `lower`, `reverse`, `utf8.len`, `utf8.offset` and the quoting of
//! `string.format("%q")` on big strings, done in pieces that give way when their call's time
//! slice ends.
//!
//! Why: Lua's own functions walk their string a byte at a time inside one C call, which the
//! instruction hook cannot pause: on a 100 MB string, `upper` held its state for 0.24 s,
//! `reverse` for 0.18 s and `utf8.len` for 0.07 s, and quoting 50 MB of zero bytes took 1.8 s,
//! while every other call on the state waited. From [`BIG`] bytes on, the Lua side
//! (`stdlib.lua`) calls here instead. The work runs through [`super::pausable`], as long
//! pattern matches do, paying for each piece of [`PIECE`] bytes; only the last step of the
//! functions that make a string, making the Lua string from the bytes built, is done in one go
//! (a copy at memory speed, as `..` or `string.sub` make one).
//!
//! The results are Lua's: its `upper` and `lower` use the C library's `toupper` and `tolower`,
//! which change the ASCII letters only in the "C" locale the server runs in (scripts cannot
//! change it), `utf8.len` and `utf8.offset` read as `utf8_decode` and `byteoffset` in Lua 5.4's
//! `lutf8lib.c` do, and quoting escapes as its `addquoted` (`lstrlib.c`) does. The bytes built
//! wait outside Lua's memory, counted as [`Held`], so that they count against the state's
//! memory limit as Lua's own buffer would.

use mlua::{IntoLuaMulti, Lua, MultiValue, Value as LuaValue};

use super::pattern::{MatchError, Pace};
use super::pausable::{self, Held, Job, Progress, Resumed, Work};
use super::stdlib::{self, Fail, Outcome, Room};

/// Strings from this many bytes on are handled here; shorter ones take a fraction of a time
/// slice in Lua's own functions.
pub const BIG: usize = 1 << 16;

/// Bytes done between two payments (a payment may pause the call).
const PIECE: usize = 1 << 16;

/// What is done to the string.
#[derive(Clone, Copy)]
enum Kind {
    Upper,
    Lower,
    Reverse,
    /// `string.format("%q")` of a string: between quotes, with quotes, backslashes, newlines and
    /// control characters escaped as Lua's `addquoted` does.
    Quote,
    /// `utf8.len` of the characters starting in the 0-based byte range `from..end`,
    /// rejecting what is not Unicode when `strict`.
    Utf8Len {
        from: usize,
        end: usize,
        strict: bool,
    },
    /// `utf8.offset`: where character `n` starts, counted from the 0-based byte `at`.
    Utf8Offset {
        n: i64,
        at: usize,
    },
}

/// One operation on one string.
pub struct Bytewise {
    src: mlua::String,
    kind: Kind,
    room: Option<Room>,
}

/// What a [`Bytewise`] ends with, before any Lua value is made of it.
pub enum Done {
    /// The bytes of the new string, and their share of the memory held.
    Text(Vec<u8>, Held),
    /// The number of characters, or the 0-based position of the first byte that does not
    /// start one.
    Length(Result<i64, usize>),
    /// The 0-based position a character starts at, or none.
    Offset(Option<usize>),
}

impl Work for Bytewise {
    type Found = Done;

    fn strings(&self) -> [Option<&mlua::String>; 3] {
        [Some(&self.src), None, None]
    }

    fn run(&self, [src, _, _]: [&[u8]; 3], pace: &dyn Pace) -> Result<Done, MatchError> {
        let piece = if pausable::chunk() == 1 {
            1 << 10
        } else {
            PIECE
        };
        match self.kind {
            Kind::Utf8Len { from, end, strict } => utf8_len(src, from, end, strict, piece, pace),
            Kind::Quote => quote(src, self.room, piece, pace),
            Kind::Utf8Offset { n, at } => utf8_offset(src, n, at, piece, pace),
            kind => {
                if let Some(room) = self.room {
                    // Lua's own functions need as much again (their buffer, then the string).
                    let what = match kind {
                        Kind::Upper => "string.upper",
                        Kind::Lower => "string.lower",
                        _ => "string.reverse",
                    };
                    room.check(src.len().saturating_mul(2) + pausable::held(), what)
                        .map_err(MatchError::Stopped)?;
                }
                let mut held = Held::default();
                held.set(src.len());
                let mut out = Vec::with_capacity(src.len());
                for (i, part) in src.chunks(piece).enumerate() {
                    match kind {
                        Kind::Upper => out.extend(part.iter().map(u8::to_ascii_uppercase)),
                        Kind::Lower => out.extend(part.iter().map(u8::to_ascii_lowercase)),
                        _ => {
                            let end = src.len() - i * piece;
                            out.extend(src[end - part.len()..end].iter().rev())
                        }
                    }
                    pace.pay((part.len() / 8) as u64)?;
                }
                Ok(Done::Text(out, held))
            }
        }
    }
}

/// Lua's `addquoted` (lstrlib.c) of `src`, paying for each piece and checking that the text so
/// far, and Lua's copy of it, fit in the memory the state had left.
fn quote(
    src: &[u8],
    room: Option<Room>,
    piece: usize,
    pace: &dyn Pace,
) -> Result<Done, MatchError> {
    let mut held = Held::default();
    let mut out = Vec::with_capacity(src.len() + src.len() / 8 + 2);
    out.push(b'"');
    for (i, part) in src.chunks(piece).enumerate() {
        for (j, &c) in part.iter().enumerate() {
            match c {
                b'"' | b'\\' | b'\n' => out.extend_from_slice(&[b'\\', c]),
                0..=31 | 127 => {
                    // Lua reads the byte after the string's last one as its terminating NUL.
                    let next = src.get(i * piece + j + 1).copied().unwrap_or(0);
                    let three = next.is_ascii_digit();
                    out.push(b'\\');
                    if three || c >= 100 {
                        out.push(b'0' + c / 100);
                    }
                    if three || c >= 10 {
                        out.push(b'0' + c / 10 % 10);
                    }
                    out.push(b'0' + c % 10);
                }
                _ => out.push(c),
            }
        }
        if out.capacity() != held.bytes() {
            held.set(out.capacity());
        }
        if let Some(room) = room {
            room.check(out.len().saturating_mul(2) + held.others(), "string.format")
                .map_err(MatchError::Stopped)?;
        }
        pace.pay((part.len() / 8) as u64)?;
    }
    out.push(b'"');
    Ok(Done::Text(out, held))
}

/// Lua's `utf8.len` of the characters starting in `src[from..end]` (the last one may run past
/// `end`, as in Lua), paying for each piece.
fn utf8_len(
    src: &[u8],
    from: usize,
    end: usize,
    strict: bool,
    piece: usize,
    pace: &dyn Pace,
) -> Result<Done, MatchError> {
    let mut at = from;
    let mut n: i64 = 0;
    while at < end {
        let stop = end.min(at.saturating_add(piece));
        while at < stop {
            // ASCII runs, eight bytes at a time.
            while at + 8 <= stop {
                let word = u64::from_le_bytes(src[at..at + 8].try_into().unwrap_or([0x80; 8]));
                if word & 0x8080_8080_8080_8080 != 0 {
                    break;
                }
                at += 8;
                n += 8;
            }
            if at >= stop {
                break;
            }
            match decode(src, at, strict) {
                Some(next) => at = next,
                None => return Ok(Done::Length(Err(at))),
            }
            n += 1;
        }
        pace.pay((piece / 8) as u64)?;
    }
    Ok(Done::Length(Ok(n)))
}

/// Lua's `byteoffset` (lutf8lib.c) from the checked 0-based start `at`: where character `n`
/// starts, paying for each piece of bytes walked over.
fn utf8_offset(
    src: &[u8],
    mut n: i64,
    mut at: usize,
    piece: usize,
    pace: &dyn Pace,
) -> Result<Done, MatchError> {
    // A continuation byte; the string's terminating NUL, past its end, is none.
    let cont = |i: usize| src.get(i).is_some_and(|b| b & 0xC0 == 0x80);
    let mut walked = 0usize;
    // One byte walked over: every `piece` of them are paid for.
    let step = |walked: &mut usize| -> Result<(), MatchError> {
        *walked += 1;
        if *walked >= piece {
            *walked = 0;
            pace.pay((piece / 8) as u64)?;
        }
        Ok(())
    };
    if n == 0 {
        while at > 0 && cont(at) {
            at -= 1;
            step(&mut walked)?;
        }
        return Ok(Done::Offset(Some(at)));
    }
    if cont(at) {
        return Err(MatchError::Pattern(
            "initial position is a continuation byte".to_owned(),
        ));
    }
    if n < 0 {
        while n < 0 && at > 0 {
            loop {
                at -= 1;
                step(&mut walked)?;
                if !(at > 0 && cont(at)) {
                    break;
                }
            }
            n += 1;
        }
    } else {
        n -= 1;
        while n > 0 && at < src.len() {
            loop {
                at += 1;
                step(&mut walked)?;
                if !cont(at) {
                    break;
                }
            }
            n -= 1;
        }
    }
    Ok(Done::Offset((n == 0).then_some(at)))
}

/// Where the character starting at `src[at]` ends (the next one's position), or `None` if it
/// is not one: `utf8_decode` of `lutf8lib.c`, which reads a NUL past the string's end.
fn decode(src: &[u8], at: usize, strict: bool) -> Option<usize> {
    const LIMITS: [u32; 6] = [!0, 0x80, 0x800, 0x1_0000, 0x20_0000, 0x400_0000];
    let byte = |i: usize| src.get(i).copied().unwrap_or(0) as u32;
    let mut c = byte(at);
    if c < 0x80 {
        return Some(at + 1);
    }
    let mut res: u32 = 0;
    let mut count = 0usize;
    while c & 0x40 != 0 {
        count += 1;
        let cc = byte(at + count);
        if cc & 0xC0 != 0x80 {
            return None;
        }
        res = (res << 6) | (cc & 0x3F);
        c <<= 1;
    }
    if count > 5 {
        return None;
    }
    res |= (c & 0x7F) << (count * 5);
    if res > 0x7FFF_FFFF || res < LIMITS[count] {
        return None;
    }
    if strict && (res > 0x10_FFFF || (0xD800..=0xDFFF).contains(&res)) {
        return None;
    }
    Some(at + count + 1)
}

/// `core.bytewise(s, kind)`: `string.upper` (0), `lower` (1) or `reverse` (2) of a string, or
/// its `string.format("%q")` (3).
pub fn map(lua: &Lua, (src, kind): (mlua::String, u8)) -> mlua::Result<MultiValue> {
    let kind = match kind {
        0 => Kind::Upper,
        1 => Kind::Lower,
        2 => Kind::Reverse,
        _ => Kind::Quote,
    };
    let room = Room::of(lua)?;
    perform(lua, Bytewise { src, kind, room })
}

/// `u_posrelat` of lutf8lib.c: a 1-based position, a negative one counted from the end of a
/// string `len` bytes long (0 before its start).
fn relative(pos: i64, len: i64) -> i64 {
    if pos >= 0 {
        pos
    } else if pos.unsigned_abs() > len as u64 {
        0
    } else {
        len + pos + 1
    }
}

/// `core.utf8_len(nargs, s, i, j, lax)`: `utf8.len`, with Lua's argument checks.
pub fn utf8_len_args(
    lua: &Lua,
    (nargs, s, i, j, lax): (usize, LuaValue, LuaValue, LuaValue, LuaValue),
) -> mlua::Result<MultiValue> {
    let checked = (|| -> Outcome<Bytewise> {
        let src = stdlib::check_str(lua, &s, 1, nargs, "len")?;
        let len = src.as_bytes().len() as i64;
        let posi = relative(stdlib::opt_int(lua, &i, 2, "len")?.unwrap_or(1), len);
        let posj = relative(stdlib::opt_int(lua, &j, 3, "len")?.unwrap_or(-1), len);
        if !(1 <= posi && posi - 1 <= len) {
            return stdlib::arg_error(2, "len", "initial position out of bounds");
        }
        if posj > len {
            return stdlib::arg_error(3, "len", "final position out of bounds");
        }
        Ok(Bytewise {
            src,
            kind: Kind::Utf8Len {
                from: (posi - 1) as usize,
                end: posj as usize,
                strict: !lax.as_boolean().unwrap_or(!lax.is_nil()),
            },
            room: None,
        })
    })();
    match checked {
        Ok(work) => perform(lua, work),
        Err(fail) => stdlib::respond(lua, Err(fail)),
    }
}

/// `core.utf8_offset(nargs, s, n, i)`: `utf8.offset`, with Lua's argument checks.
pub fn utf8_offset_args(
    lua: &Lua,
    (nargs, s, n, i): (usize, LuaValue, LuaValue, LuaValue),
) -> mlua::Result<MultiValue> {
    let checked = (|| -> Outcome<Bytewise> {
        let src = stdlib::check_str(lua, &s, 1, nargs, "offset")?;
        let len = src.as_bytes().len() as i64;
        let Some(n) = stdlib::opt_int(lua, &n, 2, "offset")? else {
            let got = if nargs < 2 { "no value" } else { "nil" };
            return stdlib::arg_error(2, "offset", &format!("number expected, got {got}"));
        };
        let default = if n >= 0 { 1 } else { len + 1 };
        let pos = stdlib::opt_int(lua, &i, 3, "offset")?.unwrap_or(default);
        let posi = relative(pos, len);
        if !(1 <= posi && posi - 1 <= len) {
            return stdlib::arg_error(3, "offset", "position out of bounds");
        }
        Ok(Bytewise {
            src,
            kind: Kind::Utf8Offset {
                n,
                at: (posi - 1) as usize,
            },
            room: None,
        })
    })();
    match checked {
        Ok(work) => perform(lua, work),
        Err(fail) => stdlib::respond(lua, Err(fail)),
    }
}

/// Runs `work`: its values, or `PENDING` and the job that goes on with it.
fn perform(lua: &Lua, work: Bytewise) -> mlua::Result<MultiValue> {
    match pausable::start(work) {
        Progress::Done(_, result) => stdlib::respond(lua, values(lua, result)),
        Progress::Pending(job) => stdlib::pending(lua, lua.create_userdata(job)?),
    }
}

/// Goes on with a pending job (`core.resume` on one of ours).
pub fn resume(lua: &Lua, job: mlua::AnyUserData) -> mlua::Result<MultiValue> {
    let resumed = job.borrow_mut::<Job<Bytewise>>()?.resume();
    match resumed {
        Resumed::Done(_, result) => stdlib::respond(lua, values(lua, result)),
        Resumed::Suspended => stdlib::pending(lua, job),
        Resumed::Gone => Err(mlua::Error::runtime("this string job has ended")),
    }
}

/// The values Lua gets for what an operation ended with.
fn values(lua: &Lua, result: Result<Done, MatchError>) -> Outcome<MultiValue> {
    match result.map_err(Fail::from)? {
        Done::Text(bytes, held) => {
            let s = lua.create_string(&bytes)?;
            drop(held);
            Ok(s.into_lua_multi(lua)?)
        }
        Done::Length(Ok(n)) => Ok(n.into_lua_multi(lua)?),
        Done::Length(Err(at)) => Ok((LuaValue::Nil, at as i64 + 1).into_lua_multi(lua)?),
        Done::Offset(at) => Ok(at.map(|at| at as i64 + 1).into_lua_multi(lua)?),
    }
}

#[cfg(test)]
mod tests {
    use super::decode;

    #[test]
    fn decoding_follows_lua() {
        // (bytes, strict result, lax result): the next position, or None.
        let cases: &[(&[u8], Option<usize>, Option<usize>)] = &[
            (b"a", Some(1), Some(1)),
            ("é".as_bytes(), Some(2), Some(2)),
            ("€".as_bytes(), Some(3), Some(3)),
            ("😀".as_bytes(), Some(4), Some(4)),
            (b"\x80", None, None),
            (b"\xC0\x80", None, None),            // overlong
            (b"\xED\xA0\x80", None, Some(3)),     // surrogate
            (b"\xF4\x90\x80\x80", None, Some(4)), // past U+10FFFF
            (b"\xF8\x88\x80\x80\x80", None, Some(5)),
            (b"\xFC\x84\x80\x80\x80\x80", None, Some(6)),
            (b"\xFD\xBF\xBF\xBF\xBF\xBF", None, Some(6)), // 0x7FFFFFFF
            (b"\xFE\x80\x80\x80\x80\x80\x80", None, None),
            (b"\xFF\x80\x80\x80\x80\x80\x80\x80", None, None),
            (b"\xE2\x82", None, None), // cut short by the string's end
        ];
        for (bytes, strict, lax) in cases {
            assert_eq!(decode(bytes, 0, true), *strict, "strict {bytes:x?}");
            assert_eq!(decode(bytes, 0, false), *lax, "lax {bytes:x?}");
        }
    }
}
