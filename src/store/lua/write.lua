-- set_with_ttl for a batch. KEYS: idx, pay, stream, stats, key1..keyN [, batch record].
-- ARGV: ttl_ms1, value1, ttl_ms2, value2, ... [, batch record PX].  Returns the deadlines
-- (PEXPIRETIME).
-- With a batch record (an odd ARGV count: the record's PX comes after the pairs), the batch
-- is applied at most once: a caller whose reply was lost repeats the call with the same
-- record key and gets the deadlines of the first call back, nothing written again. Without
-- one, the script is exactly the plain batch write (model/scripts.rs mirrors that form).
local idx, pay, stream, stats = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local last, record = #KEYS, nil
if #ARGV % 2 == 1 then
  last = #KEYS - 1
  record = KEYS[#KEYS]
  local done = redis.call('GET', record)
  if done then
    local out = {}
    for d in string.gmatch(done, '%d+') do out[#out + 1] = tonumber(d) end
    if #out ~= last - 4 then
      return redis.error_reply('ERR batch record ' .. record .. ' holds ' .. #out ..
        ' deadlines, the batch has ' .. (last - 4) .. ' keys: batch id reused')
    end
    return out
  end
end
local now = now_ms()
local out = {}
local text = {}
-- Per key one SET; the index and payload writes of 1,000 keys at a time are one ZADD and one
-- HSET, and their index scores one ZMSCORE (Lua's unpack takes about 8,000 values).
for from = 5, last, 1000 do
  local to = math.min(from + 999, last)
  local keys = {}
  for i = from, to do keys[#keys + 1] = KEYS[i] end
  local scores = redis.call('ZMSCORE', idx, unpack(keys))
  local zadd, hset = { 'ZADD', idx }, { 'HSET', pay }
  local seen = {}
  for j, key in ipairs(keys) do
    local i = from + j - 1
    local ttl = ARGV[(i - 5) * 2 + 1]
    local value = ARGV[(i - 5) * 2 + 2]
    -- A previous generation that already expired is captured before it is overwritten (a
    -- key named twice in the batch: its first write is the second's previous generation, not
    -- due, so there is nothing to capture).
    if scores[j] and not seen[key] then capture(idx, pay, stream, stats, key, 'w', now, scores[j]) end
    seen[key] = true
    -- An absolute deadline from the server clock: exactly what PEXPIRETIME will report.
    local dl = now + tonumber(ttl)
    redis.call('SET', key, value, 'PXAT', fmt(dl))
    zadd[#zadd + 1] = dl
    zadd[#zadd + 1] = key
    hset[#hset + 1] = key
    hset[#hset + 1] = value
    out[#out + 1] = dl
    text[#text + 1] = fmt(dl)
  end
  redis.call(unpack(zadd))
  redis.call(unpack(hset))
end
flush_counts(stats)
if record then
  redis.call('SET', record, table.concat(text, ','), 'PX', ARGV[#ARGV])
end
return out
