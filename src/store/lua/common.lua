-- Shared by every script (prepended at load time). Pure functions of Redis state:
-- the capture step is the only place an index entry becomes a stream entry, and the
-- ZREM of the index entry in the same atomic call is the deduplication: whichever
-- listener, sweeper or writer runs it first emits, every other caller finds nothing.

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function fmt(n) return string.format('%d', n) end

-- Must match core::DELETED_WHILE_PENDING.
local DELETED_WHILE_PENDING = 'deleted from the stream while pending (XDEL, XTRIM or MAXLEN by another program); its content is gone'

-- Must match core::event_id: sha1 over "<len>:<key>:<deadline>", first 32 hex digits.
-- `dl` is the deadline's decimal digits.
local function event_id(key, dl)
  return string.sub(redis.sha1hex(#key .. ':' .. key .. ':' .. dl), 1, 32)
end

-- Counters for `{ns}:stats`, summed during the call and written once at the end
-- (`flush_counts`): one HINCRBY per counter per call instead of one per key.
local counts = {}
local function count(field) counts[field] = (counts[field] or 0) + 1 end
local function flush_counts(stats)
  for f, n in pairs(counts) do redis.call('HINCRBY', stats, f, n) end
end

-- Outcome codes (core::CaptureOutcome): 0 nothing to do (untracked, already captured or
-- not due), 1 emitted, 2 deadline moved, 3 persisted (dropped), 4 deleted before deadline.
-- `s` is the key's index score when the caller already has it (the sweeper reads it with the
-- range), else nil and it is looked up.
local function emit(stream, key, s, via, now, p)
  redis.call('XADD', stream, '*', 'k', key, 'd', s, 'id', event_id(key, s), 'via', via, 'c', fmt(now), 'p', p or '')
  count('captured_' .. via)
end

local function capture(idx, pay, stream, stats, key, via, now, s)
  s = s or redis.call('ZSCORE', idx, key)
  if not s then return 0 end
  local dl = tonumber(s)
  -- Scores are integral ms, so ZSCORE's reply is already the decimal digits.
  if string.find(s, '[^0-9]') then s = fmt(dl) end
  -- An `expired` notification names a key that did expire, whatever its state is now.
  local heard = via == 'n'
  -- Touching the key makes Redis apply lazy expiry, so a due key is gone here.
  local pt = redis.call('PEXPIRETIME', key)
  if pt == -2 then
    redis.call('ZREM', idx, key)
    local p = redis.call('HGET', pay, key)
    redis.call('HDEL', pay, key)
    if now < dl then
      if not heard then
        -- The key vanished before its deadline: it was deleted, not expired.
        count('deleted')
        return 4
      end
      -- It expired before its indexed deadline (another program shortened its TTL): the
      -- capture time is the closest bound on the real deadline we have.
      s = fmt(now)
    end
    emit(stream, key, s, via, now, p)
    return 1
  end
  if heard and dl <= now and pt ~= dl then
    -- The indexed generation expired and another program wrote the key again before this
    -- capture: emit the old generation, then follow the new one (its value is not ours).
    emit(stream, key, s, via, now, redis.call('HGET', pay, key))
    if pt == -1 then
      redis.call('ZREM', idx, key)
      redis.call('HDEL', pay, key)
    else
      redis.call('ZADD', idx, pt, key)
      redis.call('HSET', pay, key, '')
    end
    return 1
  end
  if pt == -1 then
    redis.call('ZREM', idx, key)
    redis.call('HDEL', pay, key)
    count('persisted')
    return 3
  elseif pt ~= dl then
    redis.call('ZADD', idx, pt, key)
    return 2
  end
  return 0
end

-- The sweep's capture of due index entries `due` ({key, score, key, score, ...}, from ZRANGE
-- BYSCORE below `now` WITHSCORES): per key the same outcome as capture(idx, pay, stream, stats,
-- key, 's', now, score), with fewer calls. A due key found gone (the usual case) was expired, so
-- it is emitted; the index removals, payload reads and payload removals of all of them are one
-- ZREM, one HMGET and one HDEL. Any other key takes capture()'s own path (it emits nothing for
-- the sweep: a due key still present is moved or persisted). Returns the number emitted.
local function capture_due(idx, pay, stream, stats, due, now)
  local gone, scores = {}, {}
  for i = 1, #due, 2 do
    local key, s = due[i], due[i + 1]
    if redis.call('PEXPIRETIME', key) == -2 then
      gone[#gone + 1] = key
      scores[#scores + 1] = s
    else
      capture(idx, pay, stream, stats, key, 's', now, s)
    end
  end
  -- Lua's unpack takes about 8,000 values: the batched calls go 1,000 keys at a time.
  for from = 1, #gone, 1000 do
    local to = math.min(from + 999, #gone)
    redis.call('ZREM', idx, unpack(gone, from, to))
    local p = redis.call('HMGET', pay, unpack(gone, from, to))
    redis.call('HDEL', pay, unpack(gone, from, to))
    for i = from, to do
      local s = scores[i]
      if string.find(s, '[^0-9]') then s = fmt(tonumber(s)) end
      emit(stream, gone[i], s, 's', now, p[i - from + 1])
    end
  end
  return #gone
end

-- Fence: true when `consumer` still owns pending entry `id` with delivery count `token`.
local function owns(stream, group, id, consumer, token)
  local p = redis.call('XPENDING', stream, group, id, id, 1)
  local e = p[1]
  return e ~= nil and e[2] == consumer and tostring(e[4]) == token
end

-- Appends pending entry `id` (its fields, when it still exists, prefixed `f:`) to the
-- dead-letter stream with `reason`. The caller acks and deletes it.
local function to_dead(stream, dead, id, token, consumer, reason)
  local fields = {}
  local e = redis.call('XRANGE', stream, id, id)
  if e[1] then fields = e[1][2] end
  local args = { 'XADD', dead, '*', 'reason', reason, 'entry', id, 'deliveries', token,
    'consumer', consumer }
  -- At most 3,000 fields are kept (Lua's unpack takes about 8,000 values): a foreign entry
  -- with more is still dead-lettered, with the rest counted.
  local kept = math.min(#fields, 6000)
  for j = 1, kept, 2 do
    args[#args + 1] = 'f:' .. fields[j]
    args[#args + 1] = fields[j + 1]
  end
  if kept < #fields then
    args[#args + 1] = 'fields_not_kept'
    args[#args + 1] = fmt((#fields - kept) / 2)
  end
  redis.call(unpack(args))
end
