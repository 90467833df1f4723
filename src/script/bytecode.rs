//! Reads Lua 5.4 binary chunks (`string.dump` / `lua_dump` output) far enough to find upvalue
//! assignments, with the line and the variable's name.
//!
//! Why: a function created while a script loads keeps its upvalues for as long as the server
//! runs, so `counter = counter + 1` on a module-level local (an `OP_SETUPVAL`) writes a cell
//! every call shares. Freezing tables cannot stop that; reading the bytecode at startup can.
//! Only what that check needs is decoded: the prototype tree, its code, its upvalue
//! descriptors, and the debug info (line numbers, upvalue names). The layout follows Lua 5.4's
//! `ldump.c`.

use std::fmt;

/// `UpValue[B] := R[A]`.
const OP_SETUPVAL: u32 = 10;
/// A `lineinfo` entry meaning "see `abslineinfo`".
const ABSLINEINFO: i8 = -0x80;

/// One function prototype.
#[derive(Debug, Default, Clone)]
pub struct Proto {
    /// The chunk name (`@handlers/x.lua`), inherited from the parent when the dump omits it.
    pub source: String,
    pub line_defined: u32,
    pub code: Vec<u32>,
    pub upvalues: Vec<Upvalue>,
    pub protos: Vec<Proto>,
    line_info: Vec<i8>,
    abs_line_info: Vec<(u32, u32)>,
}

/// Where a prototype's upvalue comes from when a closure of it is created.
#[derive(Debug, Default, Clone)]
pub struct Upvalue {
    /// A local of the enclosing function (true) or one of its upvalues (false).
    pub in_stack: bool,
    /// The register or the enclosing function's upvalue index.
    pub index: u8,
    /// The variable's name (empty when the chunk was stripped).
    pub name: String,
}

/// Why a dump could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DumpError(pub String);

impl fmt::Display for DumpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unreadable Lua bytecode: {}", self.0)
    }
}

impl std::error::Error for DumpError {}

/// An upvalue assignment that writes state shared by every call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedWrite {
    /// Chunk name without the leading `@`.
    pub source: String,
    pub line: u32,
    /// The variable (`_ENV` for a reassigned environment).
    pub name: String,
}

impl Proto {
    /// The line of instruction `pc` (as `luaG_getfuncline` computes it); 0 without debug info.
    pub fn line_of(&self, pc: usize) -> u32 {
        if self.line_info.is_empty() {
            return 0;
        }
        let (mut base_pc, mut line) = match self
            .abs_line_info
            .iter()
            .rev()
            .find(|(p, _)| (*p as usize) <= pc)
        {
            Some(&(p, l)) => (p as i64, i64::from(l)),
            None => (-1, i64::from(self.line_defined)),
        };
        while base_pc < pc as i64 {
            base_pc += 1;
            match self.line_info.get(base_pc as usize) {
                Some(&d) if d != ABSLINEINFO => line += i64::from(d),
                _ => {}
            }
        }
        u32::try_from(line).unwrap_or(0)
    }

    /// Every `OP_SETUPVAL` that writes an upvalue cell created before this function was: all of
    /// this prototype's own upvalues (it is a function that exists already), and those of nested
    /// prototypes that resolve, through their upvalue descriptors, to one of them.
    pub fn shared_writes(&self) -> Vec<SharedWrite> {
        let mut out = Vec::new();
        let shared = vec![true; self.upvalues.len()];
        self.collect_shared_writes(&shared, &mut out);
        out
    }

    fn collect_shared_writes(&self, shared: &[bool], out: &mut Vec<SharedWrite>) {
        for (pc, &ins) in self.code.iter().enumerate() {
            if ins & 0x7F != OP_SETUPVAL {
                continue;
            }
            let b = ((ins >> 16) & 0xFF) as usize;
            if shared.get(b).copied().unwrap_or(false) {
                let name = self
                    .upvalues
                    .get(b)
                    .map(|u| u.name.clone())
                    .filter(|n| !n.is_empty())
                    .unwrap_or_else(|| "?".to_owned());
                out.push(SharedWrite {
                    source: self
                        .source
                        .strip_prefix('@')
                        .unwrap_or(&self.source)
                        .to_owned(),
                    line: self.line_of(pc),
                    name,
                });
            }
        }
        for child in &self.protos {
            let child_shared: Vec<bool> = child
                .upvalues
                .iter()
                .map(|u| !u.in_stack && shared.get(usize::from(u.index)).copied().unwrap_or(false))
                .collect();
            child.collect_shared_writes(&child_shared, out);
        }
    }
}

/// Parses a whole binary chunk: the header, then the main prototype.
pub fn parse(bytes: &[u8]) -> Result<Proto, DumpError> {
    let mut r = Reader { bytes, pos: 0 };
    r.header()?;
    let _closure_upvalues = r.byte()?;
    r.function("", 0)
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn fail<T>(&self, what: &str) -> Result<T, DumpError> {
        Err(DumpError(format!("{what} at byte {}", self.pos)))
    }

    fn take(&mut self, n: usize) -> Result<&[u8], DumpError> {
        match self.pos.checked_add(n) {
            Some(end) if end <= self.bytes.len() => {
                let s = &self.bytes[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            _ => self.fail("truncated"),
        }
    }

    fn byte(&mut self) -> Result<u8, DumpError> {
        Ok(self.take(1)?[0])
    }

    /// `dumpSize`: 7 bits a byte, most significant first, the last byte has bit 7 set.
    fn size(&mut self) -> Result<usize, DumpError> {
        let mut x: usize = 0;
        loop {
            let b = self.byte()?;
            x = match x.checked_mul(128) {
                Some(v) => v | usize::from(b & 0x7F),
                None => return self.fail("size overflows"),
            };
            if b & 0x80 != 0 {
                return Ok(x);
            }
        }
    }

    fn int(&mut self) -> Result<u32, DumpError> {
        let n = self.size()?;
        match u32::try_from(n) {
            Ok(v) => Ok(v),
            Err(_) => self.fail("int out of range"),
        }
    }

    /// A count of items each at least `min_bytes` long, checked against what is left.
    fn count(&mut self, min_bytes: usize) -> Result<usize, DumpError> {
        let n = self.size()?;
        if n.saturating_mul(min_bytes) > self.bytes.len() - self.pos {
            return self.fail("count larger than the chunk");
        }
        Ok(n)
    }

    fn string(&mut self) -> Result<Option<String>, DumpError> {
        let n = self.size()?;
        if n == 0 {
            return Ok(None);
        }
        let s = self.take(n - 1)?;
        Ok(Some(String::from_utf8_lossy(s).into_owned()))
    }

    fn header(&mut self) -> Result<(), DumpError> {
        if self.take(4)? != b"\x1bLua" {
            return self.fail("not a Lua binary chunk");
        }
        if self.byte()? != 0x54 {
            return self.fail("not Lua 5.4 bytecode");
        }
        if self.byte()? != 0 {
            return self.fail("unknown bytecode format");
        }
        if self.take(6)? != b"\x19\x93\r\n\x1a\n" {
            return self.fail("corrupted header");
        }
        let sizes = self.take(3)?;
        if sizes != [4, 8, 8] {
            return self.fail("unexpected instruction or number sizes");
        }
        // LUAC_INT (0x5678) and LUAC_NUM (370.5) in native order.
        if self.take(8)? != 0x5678i64.to_ne_bytes() {
            return self.fail("integer format mismatch");
        }
        if self.take(8)? != 370.5f64.to_ne_bytes() {
            return self.fail("float format mismatch");
        }
        Ok(())
    }

    fn function(&mut self, parent_source: &str, depth: usize) -> Result<Proto, DumpError> {
        if depth > 200 {
            return self.fail("functions nested too deeply");
        }
        let source = self.string()?.unwrap_or_else(|| parent_source.to_owned());
        let line_defined = self.int()?;
        let _last_line = self.int()?;
        let _params_vararg_stack = self.take(3)?;
        let n = self.count(4)?;
        let mut code = Vec::with_capacity(n);
        for chunk in self.take(n * 4)?.chunks_exact(4) {
            code.push(u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]));
        }
        let n = self.count(1)?;
        for _ in 0..n {
            match self.byte()? {
                0x00 | 0x01 | 0x11 => {}
                0x03 | 0x13 => {
                    self.take(8)?;
                }
                0x04 | 0x14 => {
                    self.string()?;
                }
                _ => return self.fail("unknown constant type"),
            }
        }
        let n = self.count(3)?;
        let mut upvalues = Vec::with_capacity(n);
        for _ in 0..n {
            let d = self.take(3)?;
            upvalues.push(Upvalue {
                in_stack: d[0] != 0,
                index: d[1],
                name: String::new(),
            });
        }
        let n = self.count(1)?;
        let mut protos = Vec::with_capacity(n);
        for _ in 0..n {
            protos.push(self.function(&source, depth + 1)?);
        }
        let n = self.count(1)?;
        let line_info = self.take(n)?.iter().map(|&b| b as i8).collect();
        let n = self.count(2)?;
        let mut abs_line_info = Vec::with_capacity(n);
        for _ in 0..n {
            abs_line_info.push((self.int()?, self.int()?));
        }
        let n = self.count(3)?;
        for _ in 0..n {
            self.string()?;
            self.int()?;
            self.int()?;
        }
        let n = self.count(1)?;
        for i in 0..n {
            let name = self.string()?.unwrap_or_default();
            if let Some(u) = upvalues.get_mut(i) {
                u.name = name;
            }
        }
        Ok(Proto {
            source,
            line_defined,
            code,
            upvalues,
            protos,
            line_info,
            abs_line_info,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mlua::{Function, Lua};

    fn dump_of(lua: &Lua, src: &str, name: &str) -> Proto {
        let env = lua.globals();
        lua.load(src).set_name("@test.lua").exec().unwrap();
        let f: Function = env.get(name).unwrap();
        parse(&f.dump(false)).unwrap()
    }

    fn writes(src: &str, name: &str) -> Vec<(u32, String)> {
        let lua = Lua::new();
        dump_of(&lua, src, name)
            .shared_writes()
            .into_iter()
            .map(|w| {
                assert_eq!(w.source, "test.lua");
                (w.line, w.name)
            })
            .collect()
    }

    #[test]
    fn module_local_assigned_in_a_function_is_found_with_line_and_name() {
        let src = "local counter = 0\n\nfunction f()\n  local x = 1\n  counter = counter + x\n  return counter\nend\n";
        assert_eq!(writes(src, "f"), vec![(5, "counter".to_owned())]);
    }

    #[test]
    fn locals_and_tables_are_not_upvalue_writes() {
        let src = "local t = {}\nfunction f(req)\n  local n = 0\n  n = n + 1\n  t.x = n\n  g = 1\n  return n\nend\n";
        assert!(writes(src, "f").is_empty());
    }

    #[test]
    fn nested_closure_over_a_call_local_is_fine() {
        let src = "function f()\n  local n = 0\n  local function inc() n = n + 1 end\n  inc()\n  return n\nend\n";
        assert!(writes(src, "f").is_empty());
    }

    #[test]
    fn nested_closure_over_a_module_local_is_found() {
        let src = "local hits = 0\nfunction f()\n  local function inc()\n    hits = hits + 1\n  end\n  inc()\nend\n";
        assert_eq!(writes(src, "f"), vec![(4, "hits".to_owned())]);
    }

    #[test]
    fn reassigning_env_is_found() {
        let src = "function f()\n  _ENV = {}\nend\n";
        assert_eq!(writes(src, "f"), vec![(2, "_ENV".to_owned())]);
    }

    #[test]
    fn lines_stay_right_past_absolute_line_entries() {
        // Long functions and big line jumps use abslineinfo entries.
        let mut src = String::from("local c = 0\nfunction f()\n  local v = 0\n");
        for i in 0..300 {
            src.push_str(&format!("  v = v + {i}\n"));
        }
        src.push_str(&"\n".repeat(200));
        src.push_str("  c = 1\nend\n");
        let want = src.lines().position(|l| l == "  c = 1").unwrap() as u32 + 1;
        assert_eq!(writes(&src, "f"), vec![(want, "c".to_owned())]);
    }

    #[test]
    fn bad_chunks_are_errors_not_panics() {
        let lua = Lua::new();
        let good = dump_of(&lua, "function f() return 1 end", "f");
        assert!(good.protos.is_empty());
        let f: Function = lua.globals().get("f").unwrap();
        let bytes = f.dump(false);
        for cut in 0..bytes.len() {
            assert!(parse(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        assert!(parse(b"not bytecode").is_err());
        let mut bad = bytes.clone();
        bad[4] = 0x53;
        assert!(parse(&bad).is_err());
    }

    #[test]
    fn stripped_chunks_still_find_writes_without_names() {
        let lua = Lua::new();
        lua.load("local c = 0\nfunction f() c = 1 end")
            .exec()
            .unwrap();
        let f: Function = lua.globals().get("f").unwrap();
        let p = parse(&f.dump(true)).unwrap();
        let w = p.shared_writes();
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].name, "?");
        assert_eq!(w[0].line, 0);
    }
}
