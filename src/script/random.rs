//! `math.random` and `math.randomseed` with a generator per call.
//!
//! Why: Lua keeps one generator per state, and every call on a state used it. A call that
//! seeded it (`math.randomseed(42)`) decided what the calls after it drew, which is state
//! carried from one call into the next; and calls paused and resumed in turn drew from one
//! sequence, so no seed could make a call's values reproducible.
//!
//! Each call now has a generator of its own, made at its first draw: from the seed the scripts
//! set while loading, when they set one (then every call draws the same sequence), or else from
//! a fresh random seed (also after `math.randomseed()` with no seed while loading).
//! `math.randomseed` in a call seeds that call's generator only. While scripts load, one
//! generator per state serves, and its seed is the one calls start from.
//!
//! The generator is Lua 5.4's own (xoshiro256**, with Lua's seeding, float conversion and
//! integer projection), so a seed gives the numbers it gives in Lua, and the argument errors
//! are Lua's.

use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use mlua::{IntoLuaMulti, Lua, MultiValue, Value as LuaValue};

use super::hook::LOADING;
use super::slice;
use super::stdlib::type_name;

/// Lua 5.4's xoshiro256** state.
#[derive(Clone, Copy, Debug)]
pub struct Generator([u64; 4]);

impl Generator {
    /// Seeded as `math.randomseed(n1, n2)` seeds Lua's.
    pub fn seeded(n1: i64, n2: i64) -> Self {
        let mut g = Generator([n1 as u64, 0xff, n2 as u64, 0]);
        for _ in 0..16 {
            g.next();
        }
        g
    }

    fn next(&mut self) -> u64 {
        let [s0, s1, s2, s3] = self.0;
        let s2 = s2 ^ s0;
        let s3 = s3 ^ s1;
        self.0 = [s0 ^ s3, s1 ^ s2, s2 ^ (s1 << 17), s3.rotate_left(45)];
        s1.wrapping_mul(5).rotate_left(7).wrapping_mul(9)
    }

    /// `ran` projected into [0, n], drawing again while it falls outside (Lua's `project`).
    fn project(&mut self, mut ran: u64, n: u64) -> u64 {
        if n & n.wrapping_add(1) == 0 {
            return ran & n;
        }
        let mut lim = n;
        lim |= lim >> 1;
        lim |= lim >> 2;
        lim |= lim >> 4;
        lim |= lim >> 8;
        lim |= lim >> 16;
        lim |= lim >> 32;
        loop {
            ran &= lim;
            if ran <= n {
                return ran;
            }
            ran = self.next();
        }
    }
}

/// A call's generator, made at its first draw. Only the thread running the call's state
/// touches it, so relaxed atomics do (a call record is shared with the network thread).
#[derive(Default)]
pub struct CallGenerator {
    state: [AtomicU64; 4],
    made: AtomicBool,
}

impl CallGenerator {
    fn get(&self) -> Option<Generator> {
        if !self.made.load(Ordering::Relaxed) {
            return None;
        }
        Some(Generator(
            self.state.each_ref().map(|s| s.load(Ordering::Relaxed)),
        ))
    }

    fn set(&self, g: Generator) {
        for (s, v) in self.state.iter().zip(g.0) {
            s.store(v, Ordering::Relaxed);
        }
        self.made.store(true, Ordering::Relaxed);
    }
}

/// Two seeds no one can guess, for a generator no script seeded.
fn fresh_seeds() -> (i64, i64) {
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let state = RandomState::new();
    let n = COUNT.fetch_add(1, Ordering::Relaxed);
    (
        state.hash_one(n) as i64,
        state.hash_one(n ^ 0x9e37_79b9_7f4a_7c15) as i64,
    )
}

/// The generator of a state while its scripts load, and the seed they set, if any.
struct LoadTime {
    generator: Generator,
    seeds: Option<(i64, i64)>,
}

/// Gives `lua` its load-time generator (call before scripts load).
pub fn install(lua: &Lua) {
    let (a, b) = fresh_seeds();
    lua.set_app_data(LoadTime {
        generator: Generator::seeded(a, b),
        seeds: None,
    });
}

/// What `f` is about to do to the generator [`with_generator`] runs it on.
enum Seeding {
    /// Draw from it.
    No,
    /// Seed it with seeds a script gave: while loading, the ones calls start from.
    Given((i64, i64)),
    /// Seed it afresh (`math.randomseed()`): while loading, calls start from fresh seeds again,
    /// each its own, rather than all from the one random seed this state drew.
    Fresh,
}

/// Runs `f` on the generator of the running call (made now if this is its first draw), or on
/// the state's load-time generator when no call runs (see [`Seeding`]).
fn with_generator<R>(lua: &Lua, seeding: Seeding, f: impl FnOnce(&mut Generator) -> R) -> R {
    slice::with_running_call(|call| match call.filter(|c| &*c.method != LOADING) {
        Some(call) => {
            let mut generator = call.random.get().unwrap_or_else(|| {
                let seeds = lua
                    .app_data_ref::<LoadTime>()
                    .and_then(|l| l.seeds)
                    .unwrap_or_else(fresh_seeds);
                Generator::seeded(seeds.0, seeds.1)
            });
            let r = f(&mut generator);
            call.random.set(generator);
            r
        }
        None => match lua.app_data_mut::<LoadTime>() {
            Some(mut load_time) => {
                match seeding {
                    Seeding::No => {}
                    Seeding::Given(seeds) => load_time.seeds = Some(seeds),
                    Seeding::Fresh => load_time.seeds = None,
                }
                f(&mut load_time.generator)
            }
            None => {
                let (a, b) = fresh_seeds();
                f(&mut Generator::seeded(a, b))
            }
        },
    })
}

/// Why an argument was refused, as Lua words it (after "bad argument #N to 'F' (").
type ArgError = (usize, String);

/// `luaL_checkinteger`.
fn integer(lua: &Lua, v: &LuaValue, arg: usize) -> Result<i64, ArgError> {
    match v {
        LuaValue::Integer(i) => Ok(*i),
        LuaValue::Number(_) | LuaValue::String(_) => match lua.coerce_integer(v.clone()) {
            Ok(Some(i)) => Ok(i),
            _ if matches!(lua.coerce_number(v.clone()), Ok(Some(_))) => {
                Err((arg, "number has no integer representation".to_owned()))
            }
            _ => Err((arg, format!("number expected, got {}", type_name(v)))),
        },
        other => Err((arg, format!("number expected, got {}", type_name(other)))),
    }
}

/// `math.random(...)` with `nargs` arguments: its value, or Lua's error message. As in Lua, a
/// value is drawn first, even for arguments that turn out wrong.
fn random(lua: &Lua, nargs: usize, m: &LuaValue, n: &LuaValue) -> Result<LuaValue, String> {
    let bad = |(arg, what): ArgError| format!("bad argument #{arg} to 'random' ({what})");
    with_generator(lua, Seeding::No, |g| {
        let rv = g.next();
        let (low, up) = match nargs {
            0 => return Ok(LuaValue::Number(to_float(rv))),
            1 => {
                let up = integer(lua, m, 1).map_err(bad)?;
                if up == 0 {
                    return Ok(LuaValue::Integer(rv as i64));
                }
                (1, up)
            }
            2 => (
                integer(lua, m, 1).map_err(bad)?,
                integer(lua, n, 2).map_err(bad)?,
            ),
            _ => return Err("wrong number of arguments".to_owned()),
        };
        if low > up {
            return Err(bad((1, "interval is empty".to_owned())));
        }
        let p = g.project(rv, (up as u64).wrapping_sub(low as u64));
        Ok(LuaValue::Integer(p.wrapping_add(low as u64) as i64))
    })
}

/// A float in [0, 1) from the high 53 bits of `rv` (Lua's `I2d`).
fn to_float(rv: u64) -> f64 {
    (rv >> 11) as f64 * (0.5 / (1u64 << 52) as f64)
}

/// `math.randomseed(...)` with `nargs` arguments: the two seeds, or Lua's error message.
fn randomseed(lua: &Lua, nargs: usize, m: &LuaValue, n: &LuaValue) -> Result<(i64, i64), String> {
    let bad = |(arg, what): ArgError| format!("bad argument #{arg} to 'randomseed' ({what})");
    let seeds = if nargs == 0 {
        fresh_seeds()
    } else {
        let n1 = integer(lua, m, 1).map_err(bad)?;
        let n2 = if n.is_nil() {
            0
        } else {
            integer(lua, n, 2).map_err(bad)?
        };
        (n1, n2)
    };
    let seeding = if nargs == 0 {
        Seeding::Fresh
    } else {
        Seeding::Given(seeds)
    };
    with_generator(lua, seeding, |g| *g = Generator::seeded(seeds.0, seeds.1));
    Ok(seeds)
}

/// `core.random(nargs, m, n)` and `core.randomseed(nargs, m, n)` for the Lua side, which
/// raises the error message at its caller: `random` gives its value, or nil and the message
/// (a draw is never nil); `randomseed` gives the two seeds, or `fail` and the message.
pub fn functions(lua: &Lua, fail: mlua::Table) -> mlua::Result<(mlua::Function, mlua::Function)> {
    let random = lua.create_function(|lua, (nargs, m, n): (usize, LuaValue, LuaValue)| {
        Ok(random(lua, nargs, &m, &n))
    })?;
    let randomseed = lua.create_function(
        move |lua, (nargs, m, n): (usize, LuaValue, LuaValue)| -> mlua::Result<MultiValue> {
            match randomseed(lua, nargs, &m, &n) {
                Ok(seeds) => seeds.into_lua_multi(lua),
                Err(message) => (fail.clone(), message).into_lua_multi(lua),
            }
        },
    )?;
    Ok((random, randomseed))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same draws and errors as Lua's own functions, seed for seed.
    #[test]
    fn draws_what_lua_draws_for_a_seed() {
        const DRAWS: &str = r##"
            local out = {}
            local function add(...) for i = 1, select("#", ...) do out[#out + 1] = tostring((select(i, ...))) end end
            for _, seed in ipairs({ {7}, {7, 3}, {-1, math.mininteger}, {0}, {"12"}, {2.0} }) do
              add(math.randomseed(table.unpack(seed)))
              for _ = 1, 20 do
                add(math.random(), math.random(10), math.random(-5, 5), math.random(0),
                  math.random(1, math.maxinteger), math.random(math.mininteger, math.maxinteger),
                  math.random(3, 3), math.random(1000000007), math.random(-(1 << 40), 1 << 40))
              end
            end
            local P = table.pack
            for _, args in ipairs({ P(2, 1), P(1.5), P("x"), P(1, 2, 3), P({}), P(nil), P(1, 2.5),
                P("7"), P(0 / 0), P(math.maxinteger, math.mininteger), P(true) }) do
              add(select(2, pcall(math.random, table.unpack(args, 1, args.n))))
            end
            for _, args in ipairs({ P(1.5), P("x"), P(1, 2.5), P(nil), P(1, nil), P(1, 2, 3) }) do
              add(select(2, pcall(math.randomseed, table.unpack(args, 1, args.n))))
            end
            -- Through pcall Lua names a library function by its global name.
            return (table.concat(out, "\n"):gsub("to 'math%.", "to '"))
        "##;
        let lua_own = Lua::new();
        let want: String = lua_own.load(DRAWS).eval().unwrap();
        let ours = Lua::new();
        super::super::stdlib::install(&ours).unwrap();
        let got: String = ours.load(DRAWS).eval().unwrap();
        for (i, (w, g)) in want.lines().zip(got.lines()).enumerate() {
            assert_eq!(w, g, "line {i}");
        }
        assert_eq!(want.lines().count(), got.lines().count());
    }

    /// Unseeded generators differ (each call's is seeded afresh).
    #[test]
    fn fresh_seeds_differ() {
        let a = fresh_seeds();
        let b = fresh_seeds();
        assert_ne!(a, b);
    }
}
