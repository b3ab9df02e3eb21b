-- Fenced, atomic commit of a batch, possibly from several consumers of one process (group
-- commit). KEYS: stream, stats, dead.
-- ARGV: group, ledger_prefix, bucket_ms, retention_ms, safety, n, then per entry:
--   entry_id, consumer, token, event_id, deadline, n_effects, then per effect: n_args, args...
-- Per entry result: 1 committed, 2 duplicate suppressed (acked, no effects), 3 not owner,
-- {4, reason}: its effects cannot all apply, so nothing of it was written and it was moved to
-- the dead-letter stream with the reason (Redis's own error), {5, reason}: an effect failed
-- after the pre-flight passed (a case it does not cover): the earlier effects stay written,
-- the id stays in the ledger, and it was dead-lettered as partially applied.
-- Each entry stands alone: one entry's failure never fails another's commit.
-- `safety` is "fence,ledger" in production; the test-only switches drop either word to
-- prove that the simulator and chaos scenarios catch what each one prevents.
local stream, stats, dead = KEYS[1], KEYS[2], KEYS[3]
local group, prefix = ARGV[1], ARGV[2]
local bucket_ms, retention = tonumber(ARGV[3]), tonumber(ARGV[4])
local fence = string.find(ARGV[5], 'fence', 1, true) ~= nil
local ledger = string.find(ARGV[5], 'ledger', 1, true) ~= nil
local n = tonumber(ARGV[6])

local entries = {}
local pos = 7
for i = 1, n do
  local e = { id = ARGV[pos], consumer = ARGV[pos + 1], token = ARGV[pos + 2], eid = ARGV[pos + 3],
    dl = tonumber(ARGV[pos + 4]), effects = {} }
  local neff = tonumber(ARGV[pos + 5])
  pos = pos + 6
  for _ = 1, neff do
    local na = tonumber(ARGV[pos])
    local args = {}
    for j = 1, na do args[j] = ARGV[pos + j] end
    e.effects[#e.effects + 1] = args
    pos = pos + 1 + na
  end
  entries[i] = e
end

-- Moves entry `e` to the dead-letter stream with `reason`; its result is {code, reason}.
local function refuse(e, code, reason, counter)
  to_dead(stream, dead, e.id, e.token, e.consumer, reason)
  count(counter)
  count('dead_lettered')
  return { code, reason }
end

local now = now_ms()
local out = {}
local extended = {}
local done = {}
for i, e in ipairs(entries) do
  if fence and not owns(stream, group, e.id, e.consumer, e.token) then
    out[i] = 3
    count('fenced')
  else
    local bucket = math.floor(e.dl / bucket_ms)
    local lk = prefix .. fmt(bucket)
    if ledger and redis.call('SISMEMBER', lk, e.eid) == 1 then
      out[i] = 2
      count('duplicates_suppressed')
    else
      -- Entries are checked and applied one after another, so each is checked against what
      -- the earlier ones really wrote.
      local err = preflight(e.effects, now, prefix)
      if err then
        out[i] = refuse(e, 4, 'effects cannot apply, nothing was written: ' .. err, 'effects_refused')
      else
        if ledger then
          redis.call('SADD', lk, e.eid)
          if not extended[lk] then
            -- Remembered at least `retention` after this commit, and after its bucket ends:
            -- a late commit must never set an expiry in the past (that deletes the set).
            extended[lk] = true
            local want = math.max((bucket + 1) * bucket_ms + retention, now + retention)
            local cur = redis.call('PEXPIRETIME', lk)
            if cur < want then redis.call('PEXPIREAT', lk, fmt(want)) end
          end
        end
        local failed
        for j, args in ipairs(e.effects) do
          local r = redis.pcall(unpack(args))
          if type(r) == 'table' and r.err then
            failed = effect_error(j, #e.effects, args, r.err)
            break
          end
        end
        if failed then
          local why = 'PARTIALLY APPLIED (the pre-flight missed this; earlier effects stay written): ' .. failed
          out[i] = refuse(e, 5, why, 'effects_partial')
        else
          out[i] = 1
          count('committed')
        end
      end
    end
    done[#done + 1] = e.id
  end
end
-- One XACK and one XDEL per 1,000 entries (Lua's unpack takes about 8,000 values).
for from = 1, #done, 1000 do
  local to = math.min(from + 999, #done)
  redis.call('XACK', stream, group, unpack(done, from, to))
  redis.call('XDEL', stream, unpack(done, from, to))
end
flush_counts(stats)
return out
