-- Pre-flight of a handler's effects (used by commit.lua). Redis never rolls back a script's
-- writes, so an entry's effects are checked, all of them, before its first write: syntax and
-- arity, argument values, and every key's type (and, for INCRBY, HINCRBY and ZINCRBY, the
-- current value), against Redis's state overlaid with what the entry's earlier effects would
-- have done. `preflight` returns nil when every effect will apply, else the error Redis would
-- have raised, in Redis's words. docs/adr/008-all-or-nothing-effects.md says what it covers.
-- Must accept exactly what core::Effect::check accepts (syntax) and what the model applies.

local I64_HI, I64_LO = 9223372036, 854775807 -- 2^63 - 1 split at 10^9

-- An integer in Redis's strict syntax (string2ll): as {neg, hi, lo} with |n| = hi * 10^9 + lo,
-- or nil. Doubles hold neither part inexactly.
local function i64(s)
  if type(s) ~= 'string' or #s == 0 or #s > 20 then return nil end
  local neg, digits = false, s
  if string.sub(s, 1, 1) == '-' then neg, digits = true, string.sub(s, 2) end
  if not string.find(digits, '^[0-9]+$') then return nil end
  if #digits > 1 and string.sub(digits, 1, 1) == '0' then return nil end
  if neg and digits == '0' then return nil end
  if #digits > 19 then return nil end
  local hi, lo = 0, tonumber(digits)
  if #digits > 9 then
    hi = tonumber(string.sub(digits, 1, #digits - 9))
    lo = tonumber(string.sub(digits, #digits - 8))
  end
  -- |n| <= 2^63 - 1, or exactly 2^63 when negative.
  if hi > I64_HI or (hi == I64_HI and lo > I64_LO + (neg and 1 or 0)) then return nil end
  return { neg = neg, hi = hi, lo = lo }
end

-- Signed value as two exact doubles: n = sign * (hi * 10^9 + lo).
local function parts(n)
  local s = n.neg and -1 or 1
  return s * n.hi, s * n.lo
end

-- a + b, or nil on i64 overflow; the result as a decimal string.
local function add_i64(a, b)
  local ah, al = parts(a)
  local bh, bl = parts(b)
  local h, l = ah + bh, al + bl
  -- Normalise so h and l share a sign and |l| < 10^9.
  local carry = (l >= 0) and math.floor(l / 1e9) or -math.floor(-l / 1e9)
  h, l = h + carry, l - carry * 1e9
  if h > 0 and l < 0 then h, l = h - 1, l + 1e9 elseif h < 0 and l > 0 then h, l = h + 1, l - 1e9 end
  local mh, ml = math.abs(h), math.abs(l)
  local neg = h < 0 or (h == 0 and l < 0)
  if mh > I64_HI or (mh == I64_HI and ml > I64_LO + (neg and 1 or 0)) then return nil end
  if mh == 0 then return (neg and '-' or '') .. string.format('%d', ml) end
  return (neg and '-' or '') .. string.format('%d%09d', mh, ml)
end

-- A float in the syntax Redis accepts for scores (no hex, no nan), or nil.
local function score(s)
  if type(s) ~= 'string' then return nil end
  local l = string.lower(s)
  if l == 'inf' or l == '+inf' then return math.huge end
  if l == '-inf' then return -math.huge end
  if not (string.find(s, '^[+-]?%d+%.?%d*$') or string.find(s, '^[+-]?%d*%.%d+$')
      or string.find(s, '^[+-]?%d+%.?%d*[eE][+-]?%d+$') or string.find(s, '^[+-]?%d*%.%d+[eE][+-]?%d+$')) then
    return nil
  end
  local v = tonumber(s)
  -- Redis refuses what over- or underflows a double (strtod's ERANGE): inf from digits, or 0
  -- from a mantissa that is not zero.
  if v == nil or v == math.huge or v == -math.huge then return nil end
  if v == 0 and string.find(string.match(s, '^[^eE]*'), '[1-9]') then return nil end
  return v
end

-- Why a score is refused: Redis takes hexadecimal (strtod), effects do not (a narrowing, in
-- Rust's words too); anything else is Redis's own refusal.
local function not_float(s)
  if string.find(s, '^[+-]?0[xX]') then return 'ERR effect option not supported: hexadecimal score ' .. s end
  return 'ERR value is not a valid float'
end

local WRONGTYPE = 'WRONGTYPE Operation against a key holding the wrong kind of value'
local NOT_INT = 'ERR value is not an integer or out of range'
local OVERFLOW = 'ERR increment or decrement would overflow'
-- Whether a TTL of `v` (an i64 table; seconds when `mult` is 1000) overflows the server's
-- clock: Redis refuses it ("invalid expire time") when ms > LLONG_MAX - now.
local function beyond(v, mult, now)
  if v.neg then return false end
  local vh, vl = v.hi, v.lo
  if mult == 1000 then
    if vh > 9223372 or (vh == 9223372 and vl > 36854775) then return true end -- LLONG_MAX / 1000
    vh, vl = vh * 1000 + math.floor(vl / 1e6), (vl % 1e6) * 1000
  end
  local bh, bl = I64_HI - math.floor(now / 1e9), I64_LO - (now % 1e9)
  if bl < 0 then bh, bl = bh - 1, bl + 1e9 end
  return vh > bh or (vh == bh and vl > bl)
end

-- Arguments of one effect at most (Rust: core::MAX_EFFECT_ARGS).
local MAX_EFFECT_ARGS = 7000

-- Keys the pipeline's own scripts write (set by `preflight`): an effect on one of them would
-- be checked against a state the commit itself changes before the effect runs.
local OWNED_EXACT, OWNED_PREFIXES = {}, {}
local function owned(k)
  if OWNED_EXACT[k] then return true end
  for _, p in ipairs(OWNED_PREFIXES) do
    if string.sub(k, 1, #p) == p then return true end
  end
  return false
end

local function arity(name) return "ERR wrong number of arguments for '" .. string.lower(name) .. "' command" end

-- The type each command needs its key to hold (or 'none'), and what it leaves there.
local KEY_TYPE = { HSET = 'hash', HINCRBY = 'hash', HDEL = 'hash', RPUSH = 'list', LPUSH = 'list',
  SADD = 'set', SREM = 'set', ZADD = 'zset', ZINCRBY = 'zset', XADD = 'stream', INCR = 'string',
  INCRBY = 'string' }

-- Per-entry overlay over Redis: key -> { t = type, known = content fully known, v = string
-- value, f = hash fields / zset scores touched so far }.
local function overlay()
  local ov = {}
  local self = {}
  function self.get(k)
    local s = ov[k]
    if not s then
      s = { t = redis.call('TYPE', k)['ok'], known = false, f = {} }
      ov[k] = s
    end
    return s
  end
  function self.reset(k, t)
    ov[k] = { t = t, known = true, f = {} }
    return ov[k]
  end
  return self
end

-- A hash field's value, a set member ('1') or a zset member's score, as the entry's earlier
-- effects left it (false: absent).
local function member(s, key, m)
  local v = s.f[m]
  if v ~= nil then return v end
  if s.known then return false end
  if s.t == 'hash' then v = redis.call('HGET', key, m)
  elseif s.t == 'set' then v = (redis.call('SISMEMBER', key, m) == 1) and '1' or false
  elseif s.t == 'zset' then v = redis.call('ZSCORE', key, m)
  else v = false end
  s.f[m] = v
  return v
end

-- Elements in the aggregate now (read once, then followed through the entry's effects).
local function size(s, key)
  if s.len == nil then
    if s.known then s.len = 0
    elseif s.t == 'hash' then s.len = redis.call('HLEN', key)
    elseif s.t == 'set' then s.len = redis.call('SCARD', key)
    elseif s.t == 'zset' then s.len = redis.call('ZCARD', key)
    else s.len = 0 end
  end
  return s.len
end

-- Sets (v a string) or removes (v false) member `m`, keeping the size.
local function put(s, key, m, v)
  local was = member(s, key, m)
  local n = size(s, key)
  if was and not v then s.len = n - 1 elseif v and not was then s.len = n + 1 end
  s.f[m] = v
end

-- Checks one effect against the overlay and applies its effect on types/values there.
local function check_one(ov, args, now)
  local name = string.upper(tostring(args[1]))
  local n = #args
  local key = args[2]
  local want = KEY_TYPE[name]
  if not (want or name == 'SET' or name == 'DEL' or name == 'PEXPIRE' or name == 'EXPIRE') then
    return 'effect command not allowed: ' .. tostring(args[1])
  end
  if n < 2 then return arity(name) end
  -- Lua's unpack takes about 8,000 values; more would abort the script mid-commit.
  if n > MAX_EFFECT_ARGS then
    return string.format('ERR effect option not supported: %d arguments (at most %d)', n, MAX_EFFECT_ARGS)
  end
  local last_key = (name == 'DEL') and n or 2
  for i = 2, last_key do
    if owned(args[i]) then return 'ERR effect names a key the pipeline owns: ' .. args[i] end
  end
  if name == 'SET' then
    if n < 3 then return arity(name) end
    local nx, xx, ttl = false, false, false
    local i = 4
    while i <= n do
      local o = string.upper(args[i])
      if o == 'NX' and not xx then nx = true
      elseif o == 'XX' and not nx then xx = true
      elseif (o == 'EX' or o == 'PX') and not ttl and i < n then
        local v = i64(args[i + 1])
        local mult = (o == 'EX') and 1000 or 1
        if not v then return NOT_INT end
        if v.neg or (v.hi == 0 and v.lo == 0) or beyond(v, mult, now) then
          return "ERR invalid expire time in 'set' command"
        end
        ttl = true
        i = i + 1
      elseif o == 'KEEPTTL' and not ttl then ttl = true
      elseif (o == 'EX' or o == 'PX' or o == 'KEEPTTL') and ttl then
        return 'ERR effect option not supported: SET with two expire options'
      elseif o == 'GET' or o == 'EXAT' or o == 'PXAT' then return 'ERR effect option not supported: SET ' .. o
      else return 'ERR syntax error' end
      i = i + 1
    end
    local s = ov.get(key)
    local exists = s.t ~= 'none'
    if (nx and exists) or (xx and not exists) then return nil end
    local r = ov.reset(key, 'string')
    r.v = args[3]
    return nil
  elseif name == 'DEL' then
    for i = 2, n do ov.reset(args[i], 'none') end
    return nil
  elseif name == 'PEXPIRE' or name == 'EXPIRE' then
    if n == 4 then
      local o = string.upper(args[4])
      if o == 'NX' or o == 'XX' or o == 'GT' or o == 'LT' then
        return 'ERR effect option not supported: ' .. name .. ' ' .. o
      end
    end
    if n ~= 3 then return (n < 3) and arity(name) or 'ERR syntax error' end
    local v = i64(args[3])
    if not v then return NOT_INT end
    local mult = (name == 'EXPIRE') and 1000 or 1
    local too_negative = mult == 1000 and v.neg and (v.hi > 9223372 or (v.hi == 9223372 and v.lo > 36854775))
    if too_negative or beyond(v, mult, now) then
      return "ERR invalid expire time in '" .. string.lower(name) .. "' command"
    end
    -- A time not in the future deletes the key.
    if v.neg or (v.hi == 0 and v.lo == 0) then ov.reset(key, 'none') end
    return nil
  end
  -- Arity and argument syntax first (Redis checks them before the key's type).
  if name == 'INCR' then
    if n ~= 2 then return arity(name) end
  elseif name == 'INCRBY' then
    if n ~= 3 then return arity(name) end
    if not i64(args[3]) then return NOT_INT end
  elseif name == 'HSET' then
    if n < 4 or (n - 2) % 2 ~= 0 then return arity(name) end
  elseif name == 'HINCRBY' then
    if n ~= 4 then return arity(name) end
    if not i64(args[4]) then return NOT_INT end
  elseif name == 'HDEL' or name == 'RPUSH' or name == 'LPUSH' or name == 'SADD' or name == 'SREM' then
    if n < 3 then return arity(name) end
  elseif name == 'ZADD' then
    if n < 4 then return arity(name) end
    if score(args[3]) == nil and string.find(string.upper(args[3]), '^[A-Z]+$') then
      return 'ERR effect option not supported: ZADD ' .. args[3]
    end
    if (n - 2) % 2 ~= 0 then return 'ERR syntax error' end
    for i = 3, n, 2 do
      if score(args[i]) == nil then return not_float(args[i]) end
    end
  elseif name == 'ZINCRBY' then
    if n ~= 4 then return arity(name) end
    if score(args[3]) == nil then return not_float(args[3]) end
  elseif name == 'XADD' then
    if n < 5 then return arity(name) end
    if args[3] ~= '*' then return 'ERR effect option not supported: XADD ' .. args[3] .. " (effects add with '*')" end
    if (n - 3) % 2 ~= 0 then return arity(name) end
  end
  local s = ov.get(key)
  if s.t ~= 'none' and s.t ~= want then return WRONGTYPE end
  if s.t == 'none' then
    -- Removing from a missing key leaves it missing; anything else creates it.
    if name == 'HDEL' or name == 'SREM' then return nil end
    s = ov.reset(key, want)
  end
  if name == 'INCR' or name == 'INCRBY' then
    local cur = s.v
    if cur == nil then cur = s.known and '0' or redis.call('GET', key) end
    local a = i64(cur)
    if not a then return NOT_INT end
    local r = add_i64(a, i64(name == 'INCR' and '1' or args[3]))
    if not r then return OVERFLOW end
    s.v = r
  elseif name == 'HINCRBY' then
    local cur = member(s, key, args[3])
    local a = i64(cur or '0')
    if not a then return 'ERR hash value is not an integer' end
    local r = add_i64(a, i64(args[4]))
    if not r then return OVERFLOW end
    put(s, key, args[3], r)
  elseif name == 'HSET' then
    for i = 3, n, 2 do put(s, key, args[i], args[i + 1]) end
  elseif name == 'SADD' then
    for i = 3, n do put(s, key, args[i], '1') end
  elseif name == 'HDEL' or name == 'SREM' then
    for i = 3, n do put(s, key, args[i], false) end
    -- An aggregate left empty is deleted.
    if size(s, key) == 0 then ov.reset(key, 'none') end
  elseif name == 'ZINCRBY' then
    local cur = member(s, key, args[4])
    local r = (score(cur or '0') or 0) + score(args[3])
    if r ~= r then return 'ERR resulting score is not a number (NaN)' end
    put(s, key, args[4], string.format('%.17g', r))
  elseif name == 'ZADD' then
    for i = 3, n, 2 do put(s, key, args[i + 1], args[i]) end
  end
  return nil
end

-- How a failing effect is named in a dead-letter reason (the model's `describe` matches it).
local function effect_error(i, n, args, err)
  return string.format('effect %d of %d (%s %s): %s', i, n, string.upper(tostring(args[1])), tostring(args[2] or ''), err)
end

-- nil when every effect of `effects` (a list of argument lists) will apply; else
-- "effect i of n (CMD key): <Redis's error>".
local function preflight(effects, now, ledger_prefix)
  -- The namespace's tag, from the ledger prefix `{ns}:ledger:`.
  local tag = string.sub(ledger_prefix, 1, #ledger_prefix - #'ledger:')
  OWNED_EXACT = { [tag .. 'idx'] = true, [tag .. 'pay'] = true, [tag .. 'events'] = true,
    [tag .. 'dead'] = true, [tag .. 'stats'] = true }
  OWNED_PREFIXES = { ledger_prefix, tag .. 'wb:' }
  local ov = overlay()
  for i, args in ipairs(effects) do
    -- A read the server refuses (an ACL, a key on another node) refuses the entry; it must
    -- not abort the script after earlier entries were written.
    local ok, err = pcall(check_one, ov, args, now)
    if not ok then err = (type(err) == 'table' and err.err) or tostring(err) end
    if err then
      return effect_error(i, #effects, args, err)
    end
  end
  return nil
end
