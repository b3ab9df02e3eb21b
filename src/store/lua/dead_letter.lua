-- Move one pending entry to the dead-letter stream, fenced. KEYS: stream, dead, stats.
-- ARGV: group, consumer, entry_id, token, reason. Returns 1 moved, 3 not owner.
local stream, dead, stats = KEYS[1], KEYS[2], KEYS[3]
local group, consumer, id, token, reason = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
if not owns(stream, group, id, consumer, token) then
  count('fenced')
  flush_counts(stats)
  return 3
end
to_dead(stream, dead, id, token, consumer, reason)
redis.call('XACK', stream, group, id)
redis.call('XDEL', stream, id)
count('dead_lettered')
flush_counts(stats)
return 1
