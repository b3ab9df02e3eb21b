-- Adopt keys written by other programs: each named key that has a TTL goes into the deadline
-- index with its deadline, from then on captured exactly once like a tracked key. KEYS: idx,
-- pay, stream, stats, key1..keyN. Idempotent: a key already indexed with its deadline is left
-- as it is. An indexed key whose state changed is first settled by capture() as a sweep would
-- settle it (a new deadline moves its entry, a removed TTL drops it, a vanished key is emitted
-- or, before its deadline, dropped as deleted). No value is copied (the payload is empty).
-- ARGV[1]: the namespace's own key prefix `{ns}:`; its keys (index, ledgers, batch records,
-- its own tracked workload keys) are never adopted or touched, whatever the pattern. ARGV[2]: the value copy's bound in bytes (0: no
-- copy): a string value of at most that many bytes is copied into the payload hash at
-- adoption and again whenever the key is named while it stays indexed (a later `SET ...
-- KEEPTTL`, a new TTL), so the event carries the value Redis deletes before it publishes
-- `expired`; a longer value, or another type, is not copied (empty payload: never a stale
-- value; this applies to a key tracked through the library that matches a pattern too). Returns
-- {adopted, moved}.
local idx, pay, stream, stats = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local copy_max = tonumber(ARGV[2])
local now = now_ms()

-- The payload of an indexed key that still exists: its value when copied, else empty.
local function copy_value(key)
  local v = ''
  if redis.call('TYPE', key)['ok'] == 'string' and redis.call('STRLEN', key) <= copy_max then
    v = redis.call('GET', key)
  end
  redis.call('HSET', pay, key, v)
end

local adopted, moved = 0, 0
for i = 5, #KEYS do
  local key = KEYS[i]
  local own = string.sub(key, 1, #ARGV[1]) == ARGV[1]
  local s = not own and redis.call('ZSCORE', idx, key)
  if s then
    local r = capture(idx, pay, stream, stats, key, 'w', now, s)
    if r == 2 then moved = moved + 1 end
    if copy_max > 0 and (r == 0 or r == 2) then copy_value(key) end
  else
    local pt = -1
    if not own then pt = redis.call('PEXPIRETIME', key) end
    if pt >= 0 then
      redis.call('ZADD', idx, pt, key)
      if copy_max > 0 then copy_value(key) end
      adopted = adopted + 1
      count('adopted')
    end
  end
end
flush_counts(stats)
return {adopted, moved}
