-- Adopt keys written by other programs: each named key that has a TTL goes into the deadline
-- index with its deadline, from then on captured exactly once like a tracked key. KEYS: idx,
-- pay, stream, stats, key1..keyN. Idempotent: a key already indexed with its deadline is left
-- as it is. An indexed key whose state changed is first settled by capture() as a sweep would
-- settle it (a new deadline moves its entry, a removed TTL drops it, a vanished key is emitted
-- or, before its deadline, dropped as deleted). No value is copied (the payload is empty).
-- ARGV[1]: the namespace's own key prefix `{ns}:`; its keys (index, ledgers, batch records)
-- are never adopted, whatever the pattern. Returns {adopted, moved}.
local idx, pay, stream, stats = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local now = now_ms()
local adopted, moved = 0, 0
for i = 5, #KEYS do
  local key = KEYS[i]
  local s = redis.call('ZSCORE', idx, key)
  if s then
    if capture(idx, pay, stream, stats, key, 'w', now, s) == 2 then moved = moved + 1 end
  else
    local pt = -1
    if string.sub(key, 1, #ARGV[1]) ~= ARGV[1] then pt = redis.call('PEXPIRETIME', key) end
    if pt >= 0 then
      redis.call('ZADD', idx, pt, key)
      adopted = adopted + 1
      count('adopted')
    end
  end
end
flush_counts(stats)
return {adopted, moved}
