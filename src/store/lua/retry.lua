-- Take another delivery of an entry this consumer still holds (a retry after a handler
-- error): XCLAIM to itself, which bumps the delivery count, the fencing token.
-- KEYS: stream. ARGV: group, consumer, entry_id, token. Returns the new token, or -1 when
-- the entry is no longer held with that token.
local stream, group, consumer, id, token = KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if not owns(stream, group, id, consumer, token) then return -1 end
redis.call('XCLAIM', stream, group, consumer, 0, id)
return tonumber(token) + 1
