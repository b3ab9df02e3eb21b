//! Lua 5.1 as Redis embeds it, bound to the model, so the project's scripts run here
//! unchanged (docs/adr/010-lua-in-the-model.md).
//!
//! What Redis gives a script and the model gives too: the globals `KEYS` and `ARGV` (binary
//! strings); `redis.call` (an error is raised as a table `{err = msg}`), `redis.pcall` (the
//! same table returned), `redis.sha1hex`, `redis.error_reply`, `redis.status_reply`,
//! `redis.log` (ignored); the base, `string`, `table` and `math` libraries; `TIME` from the
//! virtual clock (through the model's command dispatcher); time frozen for the call, since the
//! model's clock only moves between calls. The conversions are Redis 7's (`script_lua.c`):
//! command arguments are strings or numbers (numbers as `%.17g`); replies become numbers,
//! strings, `false` for nil, `{ok = s}` for a status, tables for arrays; a script's result
//! converts back with numbers truncated to integers, `false` to nil, `true` to 1, a table with
//! `err` or `ok` to an error or status, other tables to arrays up to their first nil.
//!
//! Not given (the scripts do not use them, and a script that did fails loudly here, never
//! silently): `cjson`, `bit`, `struct`, `cmsgpack`, `redis.setresp`, `redis.set_repl`,
//! `redis.breakpoint`.

use std::collections::HashMap;

use mlua::{Function, Lua, LuaOptions, StdLib, Table, Value as LuaValue, Variadic};

use super::{CmdResult, Model, Reply};

/// Wraps a script's chunk: runs it under `pcall` and says how it ended, so a script error
/// raised as `{err = msg}` (as Redis 7 raises `redis.call` errors) keeps its message.
const RUNNER: &str = r#"
local call = ...
redis = {}
function redis.pcall(...)
  local ok, r = call(...)
  if ok then return r end
  return { err = r }
end
function redis.call(...)
  local ok, r = call(...)
  if ok then return r end
  error({ err = r }, 2)
end
function redis.error_reply(msg) return { err = msg } end
function redis.status_reply(msg) return { ok = msg } end
function redis.log() end
redis.LOG_DEBUG, redis.LOG_VERBOSE, redis.LOG_NOTICE, redis.LOG_WARNING = 0, 1, 2, 3
return function(script)
  local ok, r = pcall(script)
  if ok then return true, r end
  if type(r) == 'table' and r.err then return false, r.err end
  return false, tostring(r)
end
"#;

/// One interpreter with the scripts it has compiled, by their text.
pub(super) struct LuaHost {
    lua: Lua,
    /// The wrapper `RUNNER` returns.
    run: Function,
    compiled: HashMap<(usize, usize), (String, Function)>,
}

impl LuaHost {
    pub(super) fn new() -> mlua::Result<LuaHost> {
        let lua = Lua::new_with(StdLib::TABLE | StdLib::STRING | StdLib::MATH, LuaOptions::default())?;
        let sha1hex = lua
            .create_function(|_, s: mlua::String| Ok(sha1_smol::Sha1::from(&s.as_bytes()[..]).digest().to_string()))?;
        // `call` runs a command on the model `eval` binds for the current script.
        let call = lua.create_function(|lua, args: Variadic<LuaValue>| {
            let model = lua.app_data_ref::<ModelPtr>().expect("bound by eval").0;
            let argv = match args.iter().map(to_arg).collect::<Result<Vec<_>, _>>() {
                Ok(a) => a,
                Err(e) => return Ok((false, LuaValue::String(lua.create_string(e)?))),
            };
            if argv.is_empty() {
                let msg = "Please specify at least one argument for this redis lib call";
                return Ok((false, LuaValue::String(lua.create_string(msg)?)));
            }
            // Safety: `eval` binds the pointer for exactly the length of one script run, during
            // which it holds the model's only borrow (`&mut Model`), and unbinds it after; the
            // dispatcher never calls back into Lua, so there is no second borrow.
            match unsafe { (*model).call(&argv) } {
                Ok(r) => Ok((true, to_lua(lua, &r)?)),
                Err(e) => Ok((false, LuaValue::String(lua.create_string(e)?))),
            }
        })?;
        let run: Function = lua.load(RUNNER).set_name("=model_runner").call(call)?;
        let redis: Table = lua.globals().get("redis")?;
        redis.set("sha1hex", sha1hex)?;
        Ok(LuaHost { lua, run, compiled: HashMap::new() })
    }

    /// The compiled chunk of `source` (compiled once per text, as Redis caches by SHA1).
    fn chunk(&mut self, source: &str) -> CmdResult<Function> {
        let id = (source.as_ptr() as usize, source.len());
        if let Some((text, f)) = self.compiled.get(&id) {
            if text == source {
                return Ok(f.clone());
            }
        }
        let f = self
            .lua
            .load(source)
            .set_name("=user_script")
            .into_function()
            .map_err(|e| format!("ERR Error compiling script (new function): {e}"))?;
        self.compiled.insert(id, (source.to_string(), f.clone()));
        Ok(f)
    }
}

/// The model a script runs on, for `call` (Lua app data while the script runs).
struct ModelPtr(*mut Model);
// Safety: only dereferenced inside `eval`'s script run, on the thread running it.
unsafe impl Send for ModelPtr {}
unsafe impl Sync for ModelPtr {}

/// `EVAL source numkeys keys... args...` on `model`.
pub(super) fn eval(
    host: &mut LuaHost,
    model: &mut Model,
    source: &str,
    keys: &[Vec<u8>],
    args: &[Vec<u8>],
) -> CmdResult<Reply> {
    let chunk = host.chunk(source)?;
    let lua = host.lua.clone();
    let strings = |items: &[Vec<u8>]| -> mlua::Result<Table> {
        let t = lua.create_table_with_capacity(items.len(), 0)?;
        for (i, a) in items.iter().enumerate() {
            t.raw_set(i + 1, lua.create_string(a)?)?;
        }
        Ok(t)
    };
    let lua_err = |e: mlua::Error| format!("ERR model Lua host: {e}");
    lua.globals().set("KEYS", strings(keys).map_err(lua_err)?).map_err(lua_err)?;
    lua.globals().set("ARGV", strings(args).map_err(lua_err)?).map_err(lua_err)?;

    // Bind the model to `call` for this run only: mlua needs 'static callbacks, so `call`
    // reaches the model through a pointer that is unbound before `eval` returns and never
    // outlives the `&mut` borrow it came from.
    lua.set_app_data(ModelPtr(model as *mut Model));
    let ran: mlua::Result<(bool, LuaValue)> = host.run.call(chunk);
    lua.remove_app_data::<ModelPtr>();

    let (ok, value) = ran.map_err(lua_err)?;
    if !ok {
        let msg = match &value {
            LuaValue::String(s) => s.to_string_lossy(),
            other => format!("{other:?}"),
        };
        return Err(script_error(&msg));
    }
    from_lua(&value)
}

/// A script error in Redis's shape: errors that carry a code (`WRONGTYPE ...`, `ERR ...`)
/// keep it, anything else (a Lua runtime error) is an `ERR`.
fn script_error(msg: &str) -> String {
    let code_first = msg.split(' ').next().is_some_and(|w| !w.is_empty() && w.chars().all(|c| c.is_ascii_uppercase()));
    if code_first {
        msg.to_string()
    } else {
        format!("ERR {msg}")
    }
}

/// A command argument: a string, or a number formatted as Redis does (`%.17g`).
fn to_arg(v: &LuaValue) -> Result<Vec<u8>, String> {
    match v {
        LuaValue::String(s) => Ok(s.as_bytes().to_vec()),
        LuaValue::Integer(i) if i.unsigned_abs() < 100_000_000_000_000_000 => Ok(i.to_string().into_bytes()),
        LuaValue::Integer(i) => Ok(g17(*i as f64)),
        LuaValue::Number(n) => Ok(g17(*n)),
        _ => Err("ERR Lua redis lib command arguments must be strings or integers".into()),
    }
}

/// `printf("%.17g", n)`, which is how Redis turns a Lua number argument into a string.
fn g17(n: f64) -> Vec<u8> {
    let mut buf = [0u8; 64];
    // Safety: the buffer is large enough for any %.17g output (at most 24 bytes) and the
    // format takes exactly one double.
    let len = unsafe { libc::snprintf(buf.as_mut_ptr().cast(), buf.len(), c"%.17g".as_ptr(), n) };
    buf[..len.clamp(0, 63) as usize].to_vec()
}

/// A reply as a script sees it.
fn to_lua(lua: &Lua, r: &Reply) -> mlua::Result<LuaValue> {
    Ok(match r {
        Reply::Nil => LuaValue::Boolean(false),
        Reply::Int(i) => LuaValue::Number(*i as f64),
        Reply::Bulk(b) => LuaValue::String(lua.create_string(b)?),
        Reply::Status(s) => {
            let t = lua.create_table()?;
            t.raw_set("ok", s.as_str())?;
            LuaValue::Table(t)
        }
        Reply::Array(items) => {
            let t = lua.create_table_with_capacity(items.len(), 0)?;
            for (i, item) in items.iter().enumerate() {
                t.raw_set(i + 1, to_lua(lua, item)?)?;
            }
            LuaValue::Table(t)
        }
    })
}

/// A script's result as the caller receives it.
fn from_lua(v: &LuaValue) -> CmdResult<Reply> {
    Ok(match v {
        LuaValue::Nil | LuaValue::Boolean(false) => Reply::Nil,
        LuaValue::Boolean(true) => Reply::Int(1),
        LuaValue::Integer(i) => Reply::Int(*i),
        LuaValue::Number(n) => Reply::Int(*n as i64),
        LuaValue::String(s) => Reply::Bulk(s.as_bytes().to_vec()),
        LuaValue::Table(t) => {
            if let Ok(LuaValue::String(e)) = t.raw_get::<LuaValue>("err") {
                return Err(script_error(&e.to_string_lossy()));
            }
            if let Ok(LuaValue::String(s)) = t.raw_get::<LuaValue>("ok") {
                return Ok(Reply::Status(s.to_string_lossy()));
            }
            let mut items = vec![];
            for i in 1.. {
                match t.raw_get::<LuaValue>(i).map_err(|e| format!("ERR {e}"))? {
                    LuaValue::Nil => break,
                    item => items.push(from_lua(&item)?),
                }
            }
            Reply::Array(items)
        }
        other => return Err(format!("ERR a script returned a value Redis cannot reply with: {other:?}")),
    })
}

/// The host a model owns; created on first use, and a clone of the model starts its own
/// (compiled chunks are a cache, not state).
#[derive(Default)]
pub(super) struct LuaSlot(pub(super) Option<LuaHost>);

impl Clone for LuaSlot {
    fn clone(&self) -> Self {
        LuaSlot(None)
    }
}

impl std::fmt::Debug for LuaSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "LuaSlot(ready)" } else { "LuaSlot(empty)" })
    }
}

impl Model {
    /// `EVAL source numkeys keys... args...`: runs a script atomically on the model (it holds
    /// `&mut self` throughout, and the clock does not move during it).
    pub fn eval(&mut self, source: &str, keys: &[Vec<u8>], args: &[Vec<u8>]) -> CmdResult<Reply> {
        let mut slot = std::mem::take(&mut self.lua);
        if slot.0.is_none() {
            slot.0 = Some(LuaHost::new().map_err(|e| format!("ERR model Lua host failed to start: {e}"))?);
        }
        let r = eval(slot.0.as_mut().expect("set above"), self, source, keys, args);
        self.lua = slot;
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Vec<u8> {
        s.as_bytes().to_vec()
    }

    #[test]
    fn conversions_follow_redis() {
        let mut m = Model::new(1_000);
        let r = m.eval("return {1, 2.9, 'x', false, true, {ok='OK'}}", &[], &[]).unwrap();
        // A table converts up to its first nil; false is nil inside an array too.
        assert_eq!(
            r,
            Reply::Array(vec![
                Reply::Int(1),
                Reply::Int(2),
                Reply::Bulk(b("x")),
                Reply::Nil,
                Reply::Int(1),
                Reply::Status("OK".into())
            ])
        );
        assert_eq!(m.eval("return redis.status_reply('PONG')", &[], &[]).unwrap(), Reply::Status("PONG".into()));
        assert_eq!(m.eval("return redis.error_reply('ERR nope')", &[], &[]), Err("ERR nope".into()));
        assert_eq!(m.eval("return {1, nil, 3}", &[], &[]).unwrap(), Reply::Array(vec![Reply::Int(1)]));
    }

    #[test]
    fn keys_argv_call_pcall_and_numbers_as_redis_formats_them() {
        let mut m = Model::new(1_000);
        let src = "redis.call('SET', KEYS[1], ARGV[1]); redis.call('HSET', 'h', 'f', 0.1); \
                   return {redis.call('GET', KEYS[1]), redis.call('HGET', 'h', 'f'), redis.call('GET', 'missing')}";
        let r = m.eval(src, &[b("k")], &[b("v\0bin")]).unwrap();
        // `false` (a nil reply) inside a table is a nil element; only a Lua nil ends the array.
        assert_eq!(r, Reply::Array(vec![Reply::Bulk(b("v\0bin")), Reply::Bulk(b("0.10000000000000001")), Reply::Nil]));
        let r = m.eval("local e = redis.pcall('INCR', 'h'); return e.err", &[], &[]).unwrap();
        assert_eq!(r, Reply::Bulk(b(super::super::WRONGTYPE)));
        // redis.call raises: the script ends with the command's error.
        let err = m.eval("redis.call('INCR', 'h'); return 1", &[], &[]).unwrap_err();
        assert!(err.starts_with("WRONGTYPE"), "{err}");
        let err = m.eval("return redis.call('SET', 'k', {})", &[], &[]).unwrap_err();
        assert!(err.contains("must be strings or integers"), "{err}");
    }

    #[test]
    fn time_is_the_virtual_clock_and_sha1hex_is_sha1() {
        let mut m = Model::new(1_700_000_000_123);
        let r = m.eval("local t = redis.call('TIME'); return {t[1], t[2], redis.sha1hex('abc')}", &[], &[]).unwrap();
        assert_eq!(
            r,
            Reply::Array(vec![
                Reply::Bulk(b("1700000000")),
                Reply::Bulk(b("123000")),
                Reply::Bulk(b("a9993e364706816aba3e25717850c26c9cd0d89d"))
            ])
        );
    }

    #[test]
    fn a_runtime_error_is_an_err_reply_and_globals_are_per_call_inputs() {
        let mut m = Model::new(1_000);
        let err = m.eval("local x = nil; return x.y", &[], &[]).unwrap_err();
        assert!(err.starts_with("ERR "), "{err}");
        assert_eq!(m.eval("return #KEYS + #ARGV", &[b("a")], &[]).unwrap(), Reply::Int(1));
        assert_eq!(m.eval("return #KEYS + #ARGV", &[], &[b("x"), b("y")]).unwrap(), Reply::Int(2));
    }
}
