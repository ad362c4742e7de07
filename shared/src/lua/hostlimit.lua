-- Fleet-wide per-host rate limit and pause: GCRA (governor's semantics) on Redis server
-- time, so the clocks of the fetcher machines never matter. Times are microseconds.
--
-- KEYS[1] = the host's theoretical arrival time (TAT), KEYS[2] = the host's "paused
-- until" (set after a 429/503 with Retry-After). Both share the host's hash tag.
--
-- ARGV[1] = 'pause': ARGV[2] = how long. Pauses the host for that long from now (a longer
-- pause already set stays). Returns {1, 0}.
--
-- ARGV[1] = 'acquire': ARGV[2] = emission interval T = 1/rate (0: no rate, only the pause
-- is checked), ARGV[3] = burst tolerance tau, ARGV[4] = the longest wait the caller is
-- willing to sleep. A paused host answers {0, ms until the pause ends}. Otherwise a request
-- conforms at `now` when now >= TAT - tau; if the wait until then is at most ARGV[4], the
-- slot is reserved (TAT advances by T) and the caller sleeps the wait, then fetches
-- without asking again. A longer wait reserves nothing.
-- Returns {1, wait_ms} (granted; sleep wait_ms first, often 0) or {0, wait_ms} (not now).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])

if ARGV[1] == 'pause' then
  local pause = tonumber(ARGV[2])
  local paused = tonumber(redis.call('GET', KEYS[2]) or '0') or 0
  if now + pause > paused then
    redis.call('SET', KEYS[2], string.format('%d', now + pause))
    redis.call('PEXPIRE', KEYS[2], math.ceil(pause / 1000) + 1000)
  end
  return {1, 0}
end

local paused = tonumber(redis.call('GET', KEYS[2]) or '0') or 0
if paused > now then return {0, math.ceil((paused - now) / 1000)} end

local interval = tonumber(ARGV[2])
if interval == 0 then return {1, 0} end
local tolerance = tonumber(ARGV[3])
local max_wait = tonumber(ARGV[4])
local stored = redis.call('GET', KEYS[1])
local tat = now
if stored then tat = math.max(tonumber(stored), now) end
local wait = math.max(tat - tolerance - now, 0)
local wait_ms = math.ceil(wait / 1000)
if wait > max_wait then return {0, wait_ms} end
local new_tat = tat + interval
redis.call('SET', KEYS[1], string.format('%d', new_tat))
redis.call('PEXPIRE', KEYS[1], math.ceil((new_tat - now) / 1000) + 1000)
return {1, wait_ms}
