-- Fenced, atomic commit of a batch. KEYS: stream, stats.
-- ARGV: group, consumer, ledger_prefix, bucket_ms, retention_ms, safety, n, then per entry:
--   entry_id, token, event_id, deadline, n_effects, then per effect: n_args, args...
-- Per entry result: 1 committed, 2 duplicate suppressed (acked, no effects), 3 not owner.
-- `safety` is "fence,ledger" in production; the test-only switches drop either word to
-- prove that the simulator and chaos scenarios catch what each one prevents.
local stream, stats = KEYS[1], KEYS[2]
local group, consumer, prefix = ARGV[1], ARGV[2], ARGV[3]
local bucket_ms, retention = tonumber(ARGV[4]), tonumber(ARGV[5])
local fence = string.find(ARGV[6], 'fence', 1, true) ~= nil
local ledger = string.find(ARGV[6], 'ledger', 1, true) ~= nil
local n = tonumber(ARGV[7])
local pos = 8
local out = {}
local allowed = { SET=1, HSET=1, HINCRBY=1, INCRBY=1, INCR=1, RPUSH=1, LPUSH=1, SADD=1,
  ZADD=1, XADD=1, DEL=1, PEXPIRE=1, EXPIRE=1, ZINCRBY=1, HDEL=1, SREM=1 }
for i = 1, n do
  local id, token, eid, dl = ARGV[pos], ARGV[pos + 1], ARGV[pos + 2], tonumber(ARGV[pos + 3])
  local neff = tonumber(ARGV[pos + 4])
  pos = pos + 5
  local effects_at = pos
  for _ = 1, neff do pos = pos + 1 + tonumber(ARGV[pos]) end
  if fence and not owns(stream, group, id, consumer, token) then
    out[i] = 3
    redis.call('HINCRBY', stats, 'fenced', 1)
  else
    local bucket = math.floor(dl / bucket_ms)
    local lk = prefix .. fmt(bucket)
    if ledger and redis.call('SADD', lk, eid) == 0 then
      out[i] = 2
      redis.call('HINCRBY', stats, 'duplicates_suppressed', 1)
    else
      redis.call('PEXPIREAT', lk, fmt((bucket + 1) * bucket_ms + retention))
      local p = effects_at
      for _ = 1, neff do
        local na = tonumber(ARGV[p])
        local args = {}
        for j = 1, na do args[j] = ARGV[p + j] end
        if not allowed[string.upper(args[1])] then
          return redis.error_reply('effect command not allowed: ' .. tostring(args[1]))
        end
        redis.call(unpack(args))
        p = p + 1 + na
      end
      out[i] = 1
      redis.call('HINCRBY', stats, 'committed', 1)
    end
    redis.call('XACK', stream, group, id)
    redis.call('XDEL', stream, id)
  end
end
return out
