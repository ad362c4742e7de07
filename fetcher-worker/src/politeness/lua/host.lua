-- Shared by the per-host scripts (concatenated in front of acquire.lua and throttle.lua):
-- Redis server time, so the clocks of the fetcher machines never matter (microseconds),
-- and a host's adaptive (AIMD) rate factor.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])

-- The factor in `rate_key` (a hash {f = factor of the configured rate, at = when set,
-- cut = last cut}) now, recovered additively by `recovery` per second since `at`, up to 1;
-- and the time of the last cut. Absent, the factor is 1.
local function factor_now(rate_key, recovery)
  local f, at, cut = unpack(redis.call('HMGET', rate_key, 'f', 'at', 'cut'))
  if not f then return 1, 0 end
  local recovered = tonumber(f) + recovery * (now - tonumber(at)) / 1000000
  return math.min(1, recovered), tonumber(cut) or 0
end
