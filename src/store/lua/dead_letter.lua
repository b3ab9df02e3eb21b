-- Move one pending entry to the dead-letter stream, fenced. KEYS: stream, dead, stats.
-- ARGV: group, consumer, entry_id, token, reason. Returns 1 moved, 3 not owner.
local stream, dead, stats = KEYS[1], KEYS[2], KEYS[3]
local group, consumer, id, token, reason = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
if not owns(stream, group, id, consumer, token) then
  count('fenced')
  flush_counts(stats)
  return 3
end
local fields = {}
local e = redis.call('XRANGE', stream, id, id)
if e[1] then fields = e[1][2] end
local args = { 'XADD', dead, '*', 'reason', reason, 'entry', id, 'deliveries', token,
  'consumer', consumer }
for j = 1, #fields, 2 do
  args[#args + 1] = 'f:' .. fields[j]
  args[#args + 1] = fields[j + 1]
end
redis.call(unpack(args))
redis.call('XACK', stream, group, id)
redis.call('XDEL', stream, id)
count('dead_lettered')
flush_counts(stats)
return 1
