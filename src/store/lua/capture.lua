-- Capture a batch of keys named by expired notifications. KEYS: idx, pay, stream, stats,
-- key1..keyN. ARGV[1]: path tag. Returns {emitted, moved, dropped}.
local idx, pay, stream, stats = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local now = now_ms()
local emitted, moved, dropped = 0, 0, 0
for i = 5, #KEYS do
  local r = capture(idx, pay, stream, stats, KEYS[i], ARGV[1], now)
  if r == 1 then emitted = emitted + 1 elseif r == 2 then moved = moved + 1
  elseif r >= 3 then dropped = dropped + 1 end
end
flush_counts(stats)
return {emitted, moved, dropped}
