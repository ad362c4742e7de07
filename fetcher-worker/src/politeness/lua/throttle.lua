-- A 429 from a host with AIMD: halves its rate factor (see host.lua), at the floor at least,
-- at most once per `spacing`.
-- KEYS[1] = the host's rate factor hash.
-- ARGV[1] = floor factor, ARGV[2] = recovery per second, ARGV[3] = the least time between
-- two cuts (microseconds).
-- Returns {'factor_ppm', the factor now in millionths}.
local floor = tonumber(ARGV[1])
local recovery = tonumber(ARGV[2])
local factor, cut = factor_now(KEYS[1], recovery)
if now - cut >= tonumber(ARGV[3]) then
  factor = math.max(floor, factor / 2)
  redis.call('HSET', KEYS[1], 'f', string.format('%.6f', factor), 'at',
    string.format('%d', now), 'cut', string.format('%d', now))
  redis.call('PEXPIRE', KEYS[1], math.ceil((1 - factor) / recovery * 1000) + 1000)
end
return {'factor_ppm', math.floor(factor * 1000000 + 0.5)}
