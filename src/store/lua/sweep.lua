-- Capture due index entries, using the server's clock. KEYS: idx, pay, stream, stats.
-- ARGV[1]: batch limit. Returns {emitted, examined, next_deadline or -1, now}.
local idx, pay, stream, stats = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local now = now_ms()
-- A key expires once the clock is past its deadline, so only scores below `now` are due.
local due = redis.call('ZRANGE', idx, '-inf', '(' .. fmt(now), 'BYSCORE', 'LIMIT', 0, tonumber(ARGV[1]), 'WITHSCORES')
local emitted = capture_due(idx, pay, stream, stats, due, now)
local first = redis.call('ZRANGE', idx, 0, 0, 'WITHSCORES')
local nxt = -1
if first[2] then nxt = tonumber(first[2]) end
flush_counts(stats)
return {emitted, #due / 2, nxt, now}
