-- track(key): register an existing key that has a TTL. KEYS: idx, pay, stream, stats, key.
-- Returns its deadline, -1 if it has no TTL, -2 if it does not exist.
local idx, pay, stream, stats, key = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
capture(idx, pay, stream, stats, key, 'w', now_ms())
flush_counts(stats)
local dl = redis.call('PEXPIRETIME', key)
if dl < 0 then return dl end
local value = ''
if redis.call('TYPE', key)['ok'] == 'string' then value = redis.call('GET', key) end
redis.call('ZADD', idx, dl, key)
redis.call('HSET', pay, key, value)
return dl
