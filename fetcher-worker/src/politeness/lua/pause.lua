-- Pauses a host (after a 429/503 with Retry-After) for `pause` from now, Redis time; a
-- longer pause already set stays.
-- KEYS[1] = the host's "paused until" (microseconds).
-- ARGV[1] = how long (microseconds).
-- Returns {'until', paused until (a string of microseconds)}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local pause = tonumber(ARGV[1])
local paused = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
if now + pause > paused then
  redis.call('SET', KEYS[1], string.format('%d', now + pause))
  redis.call('PEXPIRE', KEYS[1], math.ceil(pause / 1000) + 1000)
  paused = now + pause
end
return {'until', string.format('%d', paused)}
