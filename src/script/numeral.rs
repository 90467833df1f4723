//! Long strings read as numbers (`tonumber`, and string arithmetic such as `s + 1`), in pieces
//! that give way when their call's time slice ends.
//!
//! Why: Lua reads a numeral inside one C call (`luaO_str2num`, then the C library's `strtod`),
//! which the instruction hook cannot pause: 100 MB of digits held the state for about 0.1 s, and
//! `tonumber(s, base)` walks its string the same way. From [`super::bytewise::BIG`] bytes on,
//! the Lua side (`stdlib.lua`) calls here instead, and the work runs through
//! [`super::pausable`] as long pattern matches do, paying for each piece.
//!
//! How the result stays Lua's: without a base, the string is read here only to make a short
//! numeral that Lua reads exactly as it would have read the long one, and Lua's own
//! `tonumber` (or arithmetic) then reads that. Spaces around it go, and so do leading zeros. A
//! decimal numeral keeps its first [`DECIMAL_DIGITS`] significant digits and, when any digit
//! after them is not zero, one more `1`; an exponent makes up for the digits dropped. A value
//! exactly between two floats has at most 767 significant digits, so on which side of every such
//! value the numeral lies is kept, and with it the float `strtod` rounds to. Hexadecimal floats
//! keep [`HEX_DIGITS`] digits in the same way (a float has 53 bits). A hexadecimal integer
//! wraps around as Lua's does, so only its value modulo 2^64 is kept; a decimal one without
//! point or exponent is kept whole when it is short enough for Lua to read as an integer, and
//! as a float otherwise, as Lua reads one that overflows. A string that is not a numeral in
//! Lua's grammar becomes the empty string, which no conversion accepts. With a base, the
//! integer is computed here, as `tonumber`'s loop computes it.

use mlua::{IntoLuaMulti, Lua, MultiValue};

use super::pattern::{MatchError, Pace};
use super::pausable::{self, Job, Progress, Resumed, Work};
use super::stdlib::{self, Outcome};

/// Bytes read between two payments (a payment may pause the call).
const PIECE: usize = 1 << 16;

/// Significant digits a long decimal float keeps (767 decide its rounding).
const DECIMAL_DIGITS: usize = 800;

/// Significant digits a long hexadecimal float keeps (14 decide its rounding).
const HEX_DIGITS: usize = 32;

/// Decimal integers with at most this many significant digits are handed on whole, so that Lua
/// decides whether they fit in an integer (from 20 digits on none does).
const INTEGER_DIGITS: usize = 24;

/// An exponent's size past which no float changes (the numeral is 0 or infinite whatever
/// digits it has).
const EXPONENT_CAP: i64 = 1 << 40;

/// Reading a long string as a number.
pub struct Numeral {
    src: mlua::String,
    /// `None`: Lua's numerals; `Some(b)`: `tonumber(s, b)`'s digits in base `b` (2 to 36).
    base: Option<u32>,
}

/// What a [`Numeral`] ends with.
pub enum Read {
    /// A short numeral Lua reads as it reads the long one (empty: not a numeral).
    Short(Vec<u8>),
    /// `tonumber(s, base)`: the integer, or none.
    Integer(Option<i64>),
}

impl Work for Numeral {
    type Found = Read;

    fn strings(&self) -> [Option<&mlua::String>; 3] {
        [Some(&self.src), None, None]
    }

    fn run(&self, [src, _, _]: [&[u8]; 3], pace: &dyn Pace) -> Result<Read, MatchError> {
        let piece = if pausable::chunk() == 1 {
            1 << 10
        } else {
            PIECE
        };
        let mut reader = Reader {
            src,
            at: 0,
            paid: 0,
            piece,
            pace,
        };
        match self.base {
            None => Ok(Read::Short(short_numeral(&mut reader)?.unwrap_or_default())),
            Some(base) => Ok(Read::Integer(in_base(&mut reader, base)?)),
        }
    }
}

/// A cursor over the string that pays for every piece it moves past. Past the end it reads
/// NUL, as C reads the string's terminator; a NUL inside the string stops every reading there
/// too, and the string is then no numeral (Lua wants the whole length read).
struct Reader<'a> {
    src: &'a [u8],
    at: usize,
    /// Up to where the bytes are paid for.
    paid: usize,
    piece: usize,
    pace: &'a dyn Pace,
}

impl<'a> Reader<'a> {
    fn peek(&self) -> u8 {
        self.peek_at(0)
    }

    fn peek_at(&self, ahead: usize) -> u8 {
        self.src.get(self.at + ahead).copied().unwrap_or(0)
    }

    /// Moves one byte on, paying when a piece is passed.
    fn bump(&mut self) -> Result<(), MatchError> {
        self.at += 1;
        if self.at - self.paid >= self.piece {
            self.paid = self.at;
            self.pace.pay((self.piece / 8) as u64)?;
        }
        Ok(())
    }

    /// The bytes from here that `pred` accepts, up to the end of the piece being read (so one
    /// run is at most a piece; an empty one means the next byte is not accepted), moving past
    /// them.
    fn run(&mut self, pred: impl Fn(u8) -> bool) -> Result<&'a [u8], MatchError> {
        let limit = (self.paid + self.piece).min(self.src.len());
        let start = self.at;
        let len = self.src[start..limit]
            .iter()
            .take_while(|&&c| pred(c))
            .count();
        self.at += len;
        if self.at - self.paid >= self.piece {
            self.paid = self.at;
            self.pace.pay((self.piece / 8) as u64)?;
        }
        Ok(&self.src[start..self.at])
    }

    /// Skips what C's `isspace` calls space in the "C" locale (Lua's `lisspace` agrees).
    fn skip_spaces(&mut self) -> Result<(), MatchError> {
        let space = |c: u8| matches!(c, b' ' | b'\t' | b'\n' | 0x0B | 0x0C | b'\r');
        while !self.run(space)?.is_empty() {}
        Ok(())
    }

    /// Whether everything was read: trailing spaces, then the end (not a NUL inside).
    fn ends_here(&mut self) -> Result<bool, MatchError> {
        self.skip_spaces()?;
        Ok(self.at == self.src.len())
    }

    /// A sign: whether it is negative.
    fn sign(&mut self) -> Result<bool, MatchError> {
        match self.peek() {
            b'-' => self.bump().map(|()| true),
            b'+' => self.bump().map(|()| false),
            _ => Ok(false),
        }
    }

    /// A `strtod` exponent after its letter: an optional sign and at least one decimal digit,
    /// capped; `None` (nothing read) when there is no digit.
    fn exponent(&mut self) -> Result<Option<i64>, MatchError> {
        let start = self.at;
        let negative = matches!(self.peek_at(1), b'-');
        let digits_at = if matches!(self.peek_at(1), b'-' | b'+') {
            2
        } else {
            1
        };
        if !self.peek_at(digits_at).is_ascii_digit() {
            return Ok(None);
        }
        for _ in 0..digits_at {
            self.bump()?;
        }
        let mut e: i64 = 0;
        while self.peek().is_ascii_digit() {
            e = (e * 10 + i64::from(self.peek() - b'0')).min(EXPONENT_CAP);
            self.bump()?;
        }
        debug_assert!(self.at > start);
        Ok(Some(if negative { -e } else { e }))
    }
}

/// The significant digits of a numeral's mantissa, as far as they matter.
struct Digits {
    /// Up to `keep` of them, as characters.
    kept: Vec<u8>,
    keep: usize,
    /// How many there are (leading zeros are not significant).
    count: u64,
    /// Whether a digit after the kept ones is not zero.
    sticky: bool,
}

impl Digits {
    fn new(keep: usize) -> Self {
        Self {
            kept: Vec::new(),
            keep,
            count: 0,
            sticky: false,
        }
    }

    /// Takes the next digits.
    fn push(&mut self, mut run: &[u8]) {
        if self.count == 0 {
            let zeros = run.iter().take_while(|&&c| c == b'0').count();
            run = &run[zeros..];
        }
        self.count += run.len() as u64;
        let room = self.keep - self.kept.len();
        let (kept, rest) = run.split_at(room.min(run.len()));
        self.kept.extend_from_slice(kept);
        if !self.sticky && rest.iter().any(|&c| c != b'0') {
            self.sticky = true;
        }
    }

    /// The digits to write and the power of the radix's digit weight they stand for: the
    /// mantissa is `digits * radix^shift` (before the fraction and exponent are applied).
    fn written(mut self) -> (Vec<u8>, i64) {
        if self.kept.is_empty() {
            return (vec![b'0'], 0);
        }
        if self.sticky {
            self.kept.push(b'1');
        }
        let shift = self.count as i64 - self.kept.len() as i64;
        (self.kept, shift)
    }
}

/// Lua's reading of a numeral (`l_str2int`, then `l_str2d` with `strtod`) made short: the
/// numeral to hand on, or `None` when the string is not one.
fn short_numeral(r: &mut Reader<'_>) -> Result<Option<Vec<u8>>, MatchError> {
    r.skip_spaces()?;
    let negative = r.sign()?;
    let hex = r.peek() == b'0' && matches!(r.peek_at(1), b'x' | b'X');
    if hex {
        r.bump()?;
        r.bump()?;
    }
    let radix_digit = |c: u8| {
        if hex {
            c.is_ascii_hexdigit()
        } else {
            c.is_ascii_digit()
        }
    };
    let mut digits = Digits::new(if hex { HEX_DIGITS } else { DECIMAL_DIGITS });
    // A hexadecimal integer's value as Lua's loop makes it, wrapping around.
    let mut wrapped: u64 = 0;
    let mut any = false;
    loop {
        let run = r.run(radix_digit)?;
        if run.is_empty() {
            break;
        }
        digits.push(run);
        if hex {
            // Sixteen more digits shift every earlier one out of 64 bits.
            if run.len() >= 16 {
                wrapped = 0;
            }
            for &c in &run[run.len().saturating_sub(16)..] {
                let d = (c as char).to_digit(16).unwrap_or(0);
                wrapped = wrapped.wrapping_mul(16).wrapping_add(u64::from(d));
            }
        }
        any = true;
    }
    let mut fraction: u64 = 0;
    let point = r.peek() == b'.';
    if point {
        r.bump()?;
        loop {
            let run = r.run(radix_digit)?;
            if run.is_empty() {
                break;
            }
            digits.push(run);
            fraction += run.len() as u64;
            any = true;
        }
    }
    if !any {
        return Ok(None);
    }
    let mut exponent = None;
    if matches!(r.peek(), b'e' | b'E') && !hex || matches!(r.peek(), b'p' | b'P') && hex {
        match r.exponent()? {
            Some(e) => exponent = Some(e),
            // `strtod` stops before the letter, which is then left over.
            None => return Ok(None),
        }
    }
    if !r.ends_here()? {
        return Ok(None);
    }
    let mut out = Vec::with_capacity(DECIMAL_DIGITS + 32);
    if negative {
        out.push(b'-');
    }
    let float = point || exponent.is_some();
    if hex {
        out.extend_from_slice(b"0x");
        if !float {
            out.extend_from_slice(format!("{wrapped:x}").as_bytes());
            return Ok(Some(out));
        }
        let (kept, shift) = digits.written();
        out.extend_from_slice(&kept);
        // Each hexadecimal digit is four bits.
        let e = exponent.unwrap_or(0) + 4 * (shift - fraction as i64);
        out.extend_from_slice(format!("p{e}").as_bytes());
        return Ok(Some(out));
    }
    if !float && digits.count as usize <= INTEGER_DIGITS {
        let (kept, _) = digits.written();
        out.extend_from_slice(&kept);
        return Ok(Some(out));
    }
    let (kept, shift) = digits.written();
    out.extend_from_slice(&kept);
    let e = exponent.unwrap_or(0) + shift - fraction as i64;
    out.extend_from_slice(format!("e{e}").as_bytes());
    Ok(Some(out))
}

/// `tonumber(s, base)`'s reading (`b_str2int` in lbaselib.c): the integer, wrapping around as
/// Lua's does, or `None` when the string is not one in that base.
fn in_base(r: &mut Reader<'_>, base: u32) -> Result<Option<i64>, MatchError> {
    r.skip_spaces()?;
    let negative = r.sign()?;
    if !r.peek().is_ascii_alphanumeric() {
        return Ok(None);
    }
    let mut n: u64 = 0;
    loop {
        let run = r.run(|c| c.is_ascii_alphanumeric())?;
        if run.is_empty() {
            break;
        }
        for &c in run {
            let digit = if c.is_ascii_digit() {
                u32::from(c - b'0')
            } else {
                u32::from(c.to_ascii_uppercase() - b'A') + 10
            };
            if digit >= base {
                return Ok(None);
            }
            n = n
                .wrapping_mul(u64::from(base))
                .wrapping_add(u64::from(digit));
        }
    }
    if !r.ends_here()? {
        return Ok(None);
    }
    let n = if negative { 0u64.wrapping_sub(n) } else { n };
    Ok(Some(n as i64))
}

/// `core.numeral(s)`: a short numeral Lua reads as it reads `s` (empty when `s` is none).
pub fn shorten(lua: &Lua, src: mlua::String) -> mlua::Result<MultiValue> {
    perform(lua, Numeral { src, base: None })
}

/// `core.numeral_base(s, base)`: `tonumber(s, base)` for a base from 2 to 36.
pub fn in_base_of(lua: &Lua, (src, base): (mlua::String, u32)) -> mlua::Result<MultiValue> {
    if !(2..=36).contains(&base) {
        return Err(mlua::Error::runtime("base out of range"));
    }
    perform(
        lua,
        Numeral {
            src,
            base: Some(base),
        },
    )
}

/// Runs `work`: its value, or `PENDING` and the job that goes on with it.
fn perform(lua: &Lua, work: Numeral) -> mlua::Result<MultiValue> {
    match pausable::start(work) {
        Progress::Done(_, result) => stdlib::respond(lua, values(lua, result)),
        Progress::Pending(job) => stdlib::pending(lua, lua.create_userdata(job)?),
    }
}

/// Goes on with a pending job (`core.resume` on one of ours).
pub fn resume(lua: &Lua, job: mlua::AnyUserData) -> mlua::Result<MultiValue> {
    let resumed = job.borrow_mut::<Job<Numeral>>()?.resume();
    match resumed {
        Resumed::Done(_, result) => stdlib::respond(lua, values(lua, result)),
        Resumed::Suspended => stdlib::pending(lua, job),
        Resumed::Gone => Err(mlua::Error::runtime("this numeral job has ended")),
    }
}

/// The value Lua gets.
fn values(lua: &Lua, result: Result<Read, MatchError>) -> Outcome<MultiValue> {
    match result? {
        Read::Short(bytes) => Ok(lua.create_string(&bytes)?.into_lua_multi(lua)?),
        Read::Integer(n) => Ok(n.into_lua_multi(lua)?),
    }
}

#[cfg(test)]
mod tests {
    use super::{in_base, short_numeral, Reader};
    use crate::script::pattern::{MatchError, Pace};

    struct Free;
    impl Pace for Free {
        fn pay(&self, _: u64) -> Result<(), MatchError> {
            Ok(())
        }
    }

    /// A reader of `s` in pieces of 4 bytes, paid for free.
    fn reader(s: &str) -> Reader<'_> {
        Reader {
            src: s.as_bytes(),
            at: 0,
            paid: 0,
            piece: 4,
            pace: &Free,
        }
    }

    fn short(s: &str) -> Option<String> {
        let out = short_numeral(&mut reader(s)).ok()?;
        out.map(|b| String::from_utf8(b).unwrap_or_default())
    }

    #[test]
    fn numerals_are_made_short_as_lua_reads_them() {
        let cases: &[(&str, Option<&str>)] = &[
            ("  0042 ", Some("42")),
            ("-0", Some("-0")),
            ("+7", Some("7")),
            ("1.50", Some("150e-2")),
            (".5", Some("5e-1")),
            ("5.", Some("5e0")),
            ("-0.0", Some("-0e-1")),
            ("1e5", Some("1e5")),
            ("1E-5", Some("1e-5")),
            ("0x10", Some("0x10")),
            ("-0XfF", Some("-0xff")),
            ("0x1p4", Some("0x1p4")),
            ("0x.8", Some("0x8p-4")),
            ("0x1.8P+1", Some("0x18p-3")),
            ("0x", None),
            ("0x.p1", None),
            (".", None),
            ("", None),
            ("  ", None),
            ("-", None),
            ("- 1", None),
            ("1e", None),
            ("1e+", None),
            ("0x1p", None),
            ("1 2", None),
            ("1\x002", None),
            ("inf", None),
            ("nan", None),
            ("1f", None),
            ("0x1e", Some("0x1e")),
            ("1p5", None),
            ("0x1e5", Some("0x1e5")),
        ];
        for (s, want) in cases {
            assert_eq!(short(s).as_deref(), *want, "{s:?}");
        }
    }

    #[test]
    fn long_numerals_keep_what_decides_their_value() {
        // 900 digits: 800 kept, a sticky 1 for the non-zero ones after them.
        let s = format!("1{}", "2".repeat(899));
        let want = format!("1{}1e99", "2".repeat(799));
        assert_eq!(short(&s).as_deref(), Some(want.as_str()));
        // Zeros after the kept digits need no sticky digit.
        let s = format!("{}{}", "3".repeat(800), "0".repeat(100));
        let want = format!("{}e100", "3".repeat(800));
        assert_eq!(short(&s).as_deref(), Some(want.as_str()));
        // A hexadecimal integer wraps around: its last sixteen digits.
        let s = format!("0x{}", "f".repeat(40));
        assert_eq!(short(&s).as_deref(), Some("0xffffffffffffffff"));
        // A long exponent is capped.
        assert_eq!(
            short(&format!("1e{}", "9".repeat(50))).as_deref(),
            Some("1e1099511627776")
        );
    }

    #[test]
    fn integers_in_a_base_wrap_as_lua_computes_them() {
        let read = |s: &str, base| in_base(&mut reader(s), base).ok().flatten();
        assert_eq!(read(" ff ", 16), Some(255));
        assert_eq!(read("-Zz", 36), Some(-(35 * 36 + 35)));
        assert_eq!(read("12", 2), None);
        assert_eq!(read("", 10), None);
        assert_eq!(read("- 1", 10), None);
        assert_eq!(read("1.0", 10), None);
        assert_eq!(read(&"1".repeat(70), 2), Some(-1));
    }
}
