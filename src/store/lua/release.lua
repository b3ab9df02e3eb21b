-- Release entries this consumer holds but will not process (graceful shutdown): mark them
-- idle for `idle_ms` so the next XAUTOCLAIM by any consumer picks them up at once.
-- KEYS: stream. ARGV: group, consumer, idle_ms, id1..idN. Returns how many were released.
local stream, group, consumer, idle = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
local n = 0
for i = 4, #ARGV do
  local p = redis.call('XPENDING', stream, group, ARGV[i], ARGV[i], 1)
  if p[1] and p[1][2] == consumer then
    redis.call('XCLAIM', stream, group, consumer, 0, ARGV[i], 'IDLE', idle, 'JUSTID')
    n = n + 1
  end
end
return n
