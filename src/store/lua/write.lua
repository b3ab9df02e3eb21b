-- set_with_ttl for a batch. KEYS: idx, pay, stream, stats, key1..keyN.
-- ARGV: ttl_ms1, value1, ttl_ms2, value2, ...  Returns the deadlines (PEXPIRETIME).
local idx, pay, stream, stats = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local now = now_ms()
local out = {}
for i = 5, #KEYS do
  local key = KEYS[i]
  local ttl = ARGV[(i - 5) * 2 + 1]
  local value = ARGV[(i - 5) * 2 + 2]
  -- A previous generation that already expired is captured before it is overwritten.
  capture(idx, pay, stream, stats, key, 'w', now)
  -- An absolute deadline from the server clock: exactly what PEXPIRETIME will report.
  local dl = now + tonumber(ttl)
  redis.call('SET', key, value, 'PXAT', fmt(dl))
  redis.call('ZADD', idx, dl, key)
  redis.call('HSET', pay, key, value)
  out[#out + 1] = dl
end
flush_counts(stats)
return out
