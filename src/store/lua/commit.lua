-- Fenced, atomic commit of a batch, possibly from several consumers of one process (group
-- commit). KEYS: stream, stats.
-- ARGV: group, ledger_prefix, bucket_ms, retention_ms, safety, n, then per entry:
--   entry_id, consumer, token, event_id, deadline, n_effects, then per effect: n_args, args...
-- Per entry result: 1 committed, 2 duplicate suppressed (acked, no effects), 3 not owner.
-- `safety` is "fence,ledger" in production; the test-only switches drop either word to
-- prove that the simulator and chaos scenarios catch what each one prevents.
local stream, stats = KEYS[1], KEYS[2]
local group, prefix = ARGV[1], ARGV[2]
local bucket_ms, retention = tonumber(ARGV[3]), tonumber(ARGV[4])
local fence = string.find(ARGV[5], 'fence', 1, true) ~= nil
local ledger = string.find(ARGV[5], 'ledger', 1, true) ~= nil
local n = tonumber(ARGV[6])
-- Must match core::EFFECT_COMMANDS.
local allowed = { SET=1, HSET=1, HINCRBY=1, INCRBY=1, INCR=1, RPUSH=1, LPUSH=1, SADD=1,
  ZADD=1, XADD=1, DEL=1, PEXPIRE=1, EXPIRE=1, ZINCRBY=1, HDEL=1, SREM=1 }

-- First pass: parse and validate everything, so a bad request changes nothing.
local entries = {}
local pos = 7
for i = 1, n do
  local e = { id = ARGV[pos], consumer = ARGV[pos + 1], token = ARGV[pos + 2], eid = ARGV[pos + 3],
    dl = tonumber(ARGV[pos + 4]), effects = {} }
  local neff = tonumber(ARGV[pos + 5])
  pos = pos + 6
  for _ = 1, neff do
    local na = tonumber(ARGV[pos])
    local args = {}
    for j = 1, na do args[j] = ARGV[pos + j] end
    if not allowed[string.upper(tostring(args[1]))] then
      return redis.error_reply('effect command not allowed: ' .. tostring(args[1]))
    end
    e.effects[#e.effects + 1] = args
    pos = pos + 1 + na
  end
  entries[i] = e
end

local out = {}
local expiring = {}
local done = {}
for i, e in ipairs(entries) do
  if fence and not owns(stream, group, e.id, e.consumer, e.token) then
    out[i] = 3
    count('fenced')
  else
    local bucket = math.floor(e.dl / bucket_ms)
    local lk = prefix .. fmt(bucket)
    if ledger and redis.call('SADD', lk, e.eid) == 0 then
      out[i] = 2
      count('duplicates_suppressed')
    else
      if ledger and not expiring[lk] then
        -- Once per bucket per call: the set expires `retention` after its bucket ends.
        expiring[lk] = true
        redis.call('PEXPIREAT', lk, fmt((bucket + 1) * bucket_ms + retention))
      end
      for _, args in ipairs(e.effects) do redis.call(unpack(args)) end
      out[i] = 1
      count('committed')
    end
    done[#done + 1] = e.id
  end
end
if #done > 0 then
  -- One XACK and one XDEL for the whole batch.
  redis.call('XACK', stream, group, unpack(done))
  redis.call('XDEL', stream, unpack(done))
end
flush_counts(stats)
return out
