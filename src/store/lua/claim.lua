-- Reclaim: XAUTOCLAIM entries idle past the claim timeout to `consumer`, and, in the same
-- atomic step, record every pending entry the stream no longer holds (deleted by XDEL, XTRIM
-- or MAXLEN while pending: XAUTOCLAIM drops them from the PEL and names them in its third
-- element) in the dead-letter stream and the `deleted_while_pending` count. Never silent.
-- KEYS: stream, dead, stats. ARGV: group, consumer, min_idle_ms, cursor, count.
-- Returns XAUTOCLAIM's reply: { next cursor, claimed entries, deleted ids }.
local stream, dead, stats = KEYS[1], KEYS[2], KEYS[3]
local group, consumer = ARGV[1], ARGV[2]
local r = redis.call('XAUTOCLAIM', stream, group, consumer, ARGV[3], ARGV[4], 'COUNT', ARGV[5])
local deleted = r[3] or {}
for _, id in ipairs(deleted) do
  redis.call('XADD', dead, '*', 'reason', DELETED_WHILE_PENDING, 'entry', id, 'claimer', consumer)
  count('deleted_while_pending')
end
flush_counts(stats)
return r
