//! Replies encoded straight off the Lua stack, for the common case.
//!
//! Why: the plain encoder ([`super::encode`]) reads a reply through mlua's handles: every key
//! and every string or table value it meets becomes a registry reference, made and dropped, and
//! walking a table goes through a Rust callback per entry. For a small reply that was most of
//! what encoding cost. This path reads the same tables with Lua's raw C API (`lua_next`,
//! `lua_rawget`, `lua_tolstring` on strings), keeping the values it needs on the stack.
//!
//! It only ever says "done" or "not mine": anything unusual (a wrong type, an unknown key, a
//! field given twice, a list with a stray key, a value out of range, a reply over the size
//! limit, a stack that cannot grow) makes it give up, and the plain encoder runs from the start
//! and reports the problem with its usual message. So both paths give the same bytes for every
//! reply this one finishes (the property tests compare them), and every error is the plain
//! encoder's. The work is charged to the call's budget as the plain encoder charges it, and
//! once only: when the plain encoder takes over, it reads the same tables in the same order
//! and is charged only for what it reads past where this one stopped, so a reply costs the
//! same whichever path encodes it.
//!
//! Every C function used here neither raises a Lua error nor runs a collection (so no
//! metamethod or finalizer runs either): `lua_next` with a key taken from the same table, raw
//! reads, type tests, and `lua_tolstring` only on values that are strings. The one that may
//! allocate, `lua_checkstack`, grows the stack with Lua's emergency collection switched off
//! and says 0 instead of raising when it cannot (at the memory limit or the stack's), which
//! hands the reply to the plain encoder.

#![allow(unsafe_code)]

use std::ffi::{c_int, c_void};

use mlua::{ffi, Lua, Value as LuaValue};
use smallvec::SmallVec;

use super::convert::ConvertError;
use super::encode::{Encoder, Num, MAX_DEPTH};
use super::plan::{FieldPlan, MsgId, Scalar, Shape, Type, END_GROUP, LEN, START_GROUP};

/// Why the stack path stopped: the plain encoder must take over, or the call was stopped.
pub enum Miss {
    Plain,
    Stopped(ConvertError),
}

type Step = std::result::Result<(), Miss>;

/// Stack slots asked for before each push of up to this many values.
const ROOM: c_int = 4;

impl Encoder<'_> {
    /// `value` as a whole reply of type `msg`, read off the stack: `Ok(true)` with the bytes in
    /// `self.out`; `Ok(false)` if the plain encoder must run instead (with `self.out` emptied
    /// and the reading done so far counted as paid for);
    /// an error only if the call was stopped meanwhile.
    pub fn reply_from_stack(
        &mut self,
        lua: &Lua,
        value: &LuaValue,
        msg: MsgId,
    ) -> Result<bool, ConvertError> {
        if !matches!(value, LuaValue::Table(_)) {
            return Ok(false);
        }
        lua.exec_raw_lua(|raw| {
            let l = raw.state();
            // SAFETY: `l` is the state mlua runs on now; the stack is put back as found.
            unsafe {
                let top = ffi::lua_gettop(l);
                if ffi::lua_checkstack(l, ROOM) == 0 || raw.push_value(value).is_err() {
                    ffi::lua_settop(l, top);
                    self.out.clear();
                    return Ok(false);
                }
                let done = self.reply_at(l, top + 1, msg);
                ffi::lua_settop(l, top);
                done
            }
        })
    }

    /// [`Self::reply_from_stack`] for the value at stack slot `idx` (absolute) of `l`, the
    /// running thread of this encoder's state.
    ///
    /// # Safety
    /// `l` must be running (the state's main thread or a coroutine of it, inside a call
    /// into Rust) and `idx` a valid absolute slot; the stack is left as found.
    pub unsafe fn reply_at(
        &mut self,
        l: *mut ffi::lua_State,
        idx: c_int,
        msg: MsgId,
    ) -> Result<bool, ConvertError> {
        // SAFETY: by the caller's promise; `message` pops what it pushes.
        let outcome = unsafe {
            let top = ffi::lua_gettop(l);
            let done = Stack { l, enc: self }.message(idx, msg, 0);
            ffi::lua_settop(l, top);
            done
        };
        match outcome {
            Ok(()) if self.check(0).is_ok() => Ok(true),
            Ok(()) | Err(Miss::Plain) => {
                self.restart();
                Ok(false)
            }
            Err(Miss::Stopped(e)) => Err(e),
        }
    }
}

/// Whether the value at slot `idx` of `l` is a frozen table.
///
/// # Safety
/// `l` must be running and have room for two more values; `idx` a valid absolute slot.
pub unsafe fn is_frozen_at(l: *mut ffi::lua_State, idx: c_int) -> bool {
    // SAFETY: by the caller's promise; raw reads only, and the stack is put back.
    unsafe {
        if ffi::lua_getmetatable(l, idx) == 0 {
            return false;
        }
        ffi::lua_pushlightuserdata(l, frozen_key());
        let frozen = ffi::lua_rawget(l, -2) == ffi::LUA_TTABLE;
        ffi::lua_settop(l, -3);
        frozen
    }
}

/// The encoder with the state whose stack holds the reply.
struct Stack<'e, 'p> {
    l: *mut ffi::lua_State,
    enc: &'e mut Encoder<'p>,
}

/// The key under which frozen tables keep their contents (see [`super::freeze`]).
fn frozen_key() -> *mut c_void {
    match super::freeze::frozen_key() {
        LuaValue::LightUserData(p) => p.0,
        _ => std::ptr::null_mut(),
    }
}

impl Stack<'_, '_> {
    fn room(&self, n: c_int) -> Step {
        // SAFETY: growing the stack raises no error; 0 means it could not grow.
        if unsafe { ffi::lua_checkstack(self.l, n) } == 0 {
            return Err(Miss::Plain);
        }
        Ok(())
    }

    fn spend(&mut self, units: u64) -> Step {
        self.enc.spend(units).map_err(|e| match e {
            e @ ConvertError::Stopped(_) => Miss::Stopped(e),
            _ => Miss::Plain,
        })
    }

    fn check(&self, more: usize) -> Step {
        self.enc.check(more).map_err(|_| Miss::Plain)
    }

    /// Pushes what the table at `idx` is read from: a frozen table's hidden contents, or the
    /// table itself (its metatable otherwise ignored, as the plain encoder does). Returns the
    /// pushed slot.
    unsafe fn contents(&self, idx: c_int) -> c_int {
        let l = self.l;
        // SAFETY (whole block): the caller made room for two values; raw reads only.
        unsafe {
            if ffi::lua_getmetatable(l, idx) != 0 {
                ffi::lua_pushlightuserdata(l, frozen_key());
                if ffi::lua_rawget(l, -2) == ffi::LUA_TTABLE {
                    ffi::lua_rotate(l, -2, 1);
                    ffi::lua_settop(l, -2);
                    return ffi::lua_gettop(l);
                }
                ffi::lua_settop(l, -3);
            }
            ffi::lua_pushvalue(l, idx);
            ffi::lua_gettop(l)
        }
    }

    /// The table at stack slot `idx` as message `msg`.
    unsafe fn message(&mut self, idx: c_int, msg: MsgId, depth: usize) -> Step {
        let l = self.l;
        if depth > MAX_DEPTH {
            return Err(Miss::Plain);
        }
        let plans = self.enc.plans();
        let plan = plans.message(msg);
        // SAFETY (whole block): each push below is preceded by `room`; the keys handed to
        // `lua_next` are the ones it returned for the same table.
        unsafe {
            if ffi::lua_type(l, idx) != ffi::LUA_TTABLE {
                return Err(Miss::Plain);
            }
            self.room(ROOM)?;
            let base = ffi::lua_gettop(l);
            let t = self.contents(idx);
            // (field index, stack slot of its value), values kept below the iteration's key.
            let mut set: SmallVec<[(u16, c_int); 8]> = SmallVec::new();
            ffi::lua_pushnil(l);
            while ffi::lua_next(l, t) != 0 {
                if ffi::lua_type(l, -2) != ffi::LUA_TSTRING {
                    return Err(Miss::Plain);
                }
                let mut len = 0usize;
                let p = ffi::lua_tolstring(l, -2, &mut len);
                let name = std::slice::from_raw_parts(p as *const u8, len);
                let Some(index) = plan.by_name(name) else {
                    return Err(Miss::Plain);
                };
                let f = &plan.fields[usize::from(index)];
                for (other, _) in &set {
                    if *other == index
                        || (f.oneof.is_some() && plan.fields[usize::from(*other)].oneof == f.oneof)
                    {
                        return Err(Miss::Plain);
                    }
                }
                // The value stays, below the key `lua_next` goes on from.
                ffi::lua_rotate(l, -2, 1);
                set.push((index, ffi::lua_gettop(l) - 1));
                self.room(ROOM)?;
            }
            self.spend(1 + set.len() as u64)?;
            set.sort_unstable_by_key(|(i, _)| *i);
            for (index, slot) in &set {
                self.field(&plan.fields[usize::from(*index)], *slot, depth)?;
            }
            ffi::lua_settop(l, base);
        }
        Ok(())
    }

    unsafe fn field(&mut self, f: &FieldPlan, slot: c_int, depth: usize) -> Step {
        let l = self.l;
        // SAFETY (whole block): as in `message`.
        unsafe {
            match f.shape {
                Shape::Single => match f.ty {
                    Type::Message(m) => self.nested(f.number, f.group, slot, m, depth),
                    Type::Scalar(s) => self.single(f.number, slot, s, f.presence),
                },
                Shape::List { packed } => {
                    if ffi::lua_type(l, slot) != ffi::LUA_TTABLE {
                        return Err(Miss::Plain);
                    }
                    self.room(ROOM)?;
                    let base = ffi::lua_gettop(l);
                    let t = self.contents(slot);
                    let len = ffi::lua_rawlen(l, t) as usize;
                    self.check(len)?;
                    self.only_sequence(t, len)?;
                    match f.ty {
                        Type::Scalar(s) if packed && s.packable() && len > 0 => {
                            self.enc.put_tag(f.number, LEN);
                            let start = self.enc.begin_len();
                            for i in 1..=len {
                                ffi::lua_rawgeti(l, t, i as ffi::lua_Integer);
                                let n = self.number(-1, s)?;
                                ffi::lua_settop(l, -2);
                                self.enc.put_number(n, s);
                            }
                            self.enc.end_len(start).map_err(|_| Miss::Plain)?;
                        }
                        Type::Scalar(s) => {
                            for i in 1..=len {
                                ffi::lua_rawgeti(l, t, i as ffi::lua_Integer);
                                let item = ffi::lua_gettop(l);
                                self.single(f.number, item, s, true)?;
                                ffi::lua_settop(l, -2);
                            }
                        }
                        Type::Message(m) => {
                            for i in 1..=len {
                                ffi::lua_rawgeti(l, t, i as ffi::lua_Integer);
                                let item = ffi::lua_gettop(l);
                                self.nested(f.number, f.group, item, m, depth)?;
                                ffi::lua_settop(l, -2);
                            }
                        }
                    }
                    ffi::lua_settop(l, base);
                    Ok(())
                }
                Shape::Map {
                    key,
                    value,
                    key_presence,
                    value_presence,
                } => {
                    if ffi::lua_type(l, slot) != ffi::LUA_TTABLE {
                        return Err(Miss::Plain);
                    }
                    self.room(ROOM)?;
                    let base = ffi::lua_gettop(l);
                    let t = self.contents(slot);
                    ffi::lua_pushnil(l);
                    while ffi::lua_next(l, t) != 0 {
                        let (k, v) = (ffi::lua_gettop(l) - 1, ffi::lua_gettop(l));
                        self.check(2)?;
                        self.enc.put_tag(f.number, LEN);
                        let start = self.enc.begin_len();
                        self.single(1, k, key, key_presence)?;
                        match value {
                            Type::Scalar(s) => self.single(2, v, s, value_presence)?,
                            Type::Message(m) => self.nested(2, false, v, m, depth)?,
                        }
                        self.enc.end_len(start).map_err(|_| Miss::Plain)?;
                        ffi::lua_settop(l, -2);
                        self.room(ROOM)?;
                    }
                    ffi::lua_settop(l, base);
                    Ok(())
                }
            }
        }
    }

    /// Whether the table at `t` holds exactly the keys `1..=len` (a hole or a stray key: the
    /// plain encoder explains it).
    unsafe fn only_sequence(&self, t: c_int, len: usize) -> Step {
        let l = self.l;
        let mut seen = 0usize;
        // SAFETY: as in `message`; two slots are free for the key and value.
        unsafe {
            ffi::lua_pushnil(l);
            while ffi::lua_next(l, t) != 0 {
                if ffi::lua_isinteger(l, -2) == 0 {
                    return Err(Miss::Plain);
                }
                let k = ffi::lua_tointegerx(l, -2, std::ptr::null_mut());
                if k < 1 || k as u64 > len as u64 {
                    return Err(Miss::Plain);
                }
                seen += 1;
                ffi::lua_settop(l, -2);
            }
        }
        if seen != len {
            return Err(Miss::Plain);
        }
        Ok(())
    }

    unsafe fn nested(
        &mut self,
        number: u32,
        group: bool,
        slot: c_int,
        msg: MsgId,
        depth: usize,
    ) -> Step {
        // SAFETY: as in `message`.
        if unsafe { ffi::lua_type(self.l, slot) } != ffi::LUA_TTABLE {
            return Err(Miss::Plain);
        }
        self.check(2)?;
        if group {
            self.enc.put_tag(number, START_GROUP);
            // SAFETY: as in `message`.
            unsafe { self.message(slot, msg, depth + 1)? };
            self.enc.put_tag(number, END_GROUP);
            return Ok(());
        }
        self.enc.put_tag(number, LEN);
        let start = self.enc.begin_len();
        // SAFETY: as in `message`.
        unsafe { self.message(slot, msg, depth + 1)? };
        self.enc.end_len(start).map_err(|_| Miss::Plain)
    }

    /// One scalar at `slot` as field `number`; left out at its default unless `always`.
    unsafe fn single(&mut self, number: u32, slot: c_int, s: Scalar, always: bool) -> Step {
        let l = self.l;
        if let Scalar::String | Scalar::Bytes = s {
            // SAFETY: a string's bytes stay put while it is on the stack.
            let bytes = unsafe {
                if ffi::lua_type(l, slot) != ffi::LUA_TSTRING {
                    return Err(Miss::Plain);
                }
                let mut len = 0usize;
                let p = ffi::lua_tolstring(l, slot, &mut len);
                std::slice::from_raw_parts(p as *const u8, len)
            };
            if s == Scalar::String && std::str::from_utf8(bytes).is_err() {
                return Err(Miss::Plain);
            }
            if bytes.is_empty() && !always {
                return Ok(());
            }
            let len = bytes.len();
            self.check(
                prost::encoding::key_len(number)
                    + prost::encoding::encoded_len_varint(len as u64)
                    + len,
            )?;
            self.enc.put_tag(number, LEN);
            self.enc.put_varint(len as u64);
            self.enc.out.extend_from_slice(bytes);
            return Ok(());
        }
        // SAFETY: as in `message`.
        let n = unsafe { self.number(slot, s)? };
        if !always && self.enc.is_default(n, s) {
            return Ok(());
        }
        self.enc.put_tag(number, s.wire_type());
        self.enc.put_number(n, s);
        Ok(())
    }

    /// A number, boolean or enum of kind `s` at `slot`, by the plain encoder's rules.
    unsafe fn number(&self, slot: c_int, s: Scalar) -> std::result::Result<Num, Miss> {
        let l = self.l;
        // SAFETY: type tests and reads of numbers, booleans and strings raise no error.
        unsafe {
            let ty = ffi::lua_type(l, slot);
            let int = || -> Option<i64> {
                if ty != ffi::LUA_TNUMBER {
                    return None;
                }
                if ffi::lua_isinteger(l, slot) != 0 {
                    return Some(ffi::lua_tointegerx(l, slot, std::ptr::null_mut()));
                }
                let f = ffi::lua_tonumberx(l, slot, std::ptr::null_mut());
                (f.fract() == 0.0 && (-9.2e18..=9.2e18).contains(&f)).then_some(f as i64)
            };
            let float = || -> Option<f64> {
                (ty == ffi::LUA_TNUMBER).then(|| ffi::lua_tonumberx(l, slot, std::ptr::null_mut()))
            };
            let n = match s {
                Scalar::Bool if ty == ffi::LUA_TBOOLEAN => {
                    Num::Bool(ffi::lua_toboolean(l, slot) != 0)
                }
                Scalar::Double => float().map(Num::F64).ok_or(Miss::Plain)?,
                // From an integer straight to f32, as the plain encoder rounds it.
                Scalar::Float if ffi::lua_isinteger(l, slot) != 0 => {
                    Num::F32(ffi::lua_tointegerx(l, slot, std::ptr::null_mut()) as f32)
                }
                Scalar::Float => float().map(|f| Num::F32(f as f32)).ok_or(Miss::Plain)?,
                Scalar::Int32 | Scalar::Sint32 | Scalar::Sfixed32 => {
                    let n = int().ok_or(Miss::Plain)?;
                    Num::Int(i64::from(i32::try_from(n).map_err(|_| Miss::Plain)?))
                }
                Scalar::Uint32 | Scalar::Fixed32 => {
                    let n = int().ok_or(Miss::Plain)?;
                    Num::Int(i64::from(u32::try_from(n).map_err(|_| Miss::Plain)?))
                }
                Scalar::Int64
                | Scalar::Sint64
                | Scalar::Sfixed64
                | Scalar::Uint64
                | Scalar::Fixed64 => Num::Int(int().ok_or(Miss::Plain)?),
                Scalar::Enum(e) if ty == ffi::LUA_TSTRING => {
                    let mut len = 0usize;
                    let p = ffi::lua_tolstring(l, slot, &mut len);
                    let name = std::slice::from_raw_parts(p as *const u8, len);
                    let number = self.enc.plans().enumeration(e).number(name);
                    Num::Int(i64::from(number.ok_or(Miss::Plain)?))
                }
                Scalar::Enum(_) => {
                    let n = int().ok_or(Miss::Plain)?;
                    Num::Int(i64::from(i32::try_from(n).map_err(|_| Miss::Plain)?))
                }
                Scalar::Bool | Scalar::String | Scalar::Bytes => return Err(Miss::Plain),
            };
            Ok(n)
        }
    }
}
