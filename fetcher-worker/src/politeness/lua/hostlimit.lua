-- Fleet-wide per-host rate limit and pause: GCRA (governor's semantics) on Redis server
-- time, so the clocks of the fetcher machines never matter. Times are microseconds.
--
-- KEYS[1] = the host's theoretical arrival time (TAT), KEYS[2] = the host's "paused
-- until" (set after a 429/503 with Retry-After), KEYS[3] = the host's adaptive (AIMD) rate
-- factor: a hash {f = factor of the configured rate, at = when set, cut = last cut},
-- KEYS[4] = the host's queue horizon (the next turn to give, see 'acquire'). All share the
-- host's hash tag.
--
-- AIMD: the factor recovers additively, `recovery` per second since `at`, up to 1; a
-- 'throttle' (a 429) halves the recovered factor, at the floor at least, at most once per
-- `spacing`. Absent, the factor is 1.
--
-- ARGV[1] = 'pause': ARGV[2] = how long. Pauses the host for that long from now (a longer
-- pause already set stays). Returns {1, paused until}.
--
-- ARGV[1] = 'acquire': ARGV[2] = emission interval T = 1/rate (0: no rate, only the pause
-- is checked), ARGV[3] = burst tolerance tau, ARGV[4] = the longest wait the caller is
-- willing to sleep, ARGV[5] = the AIMD recovery per second (0 or absent: no AIMD, the
-- configured interval as is; otherwise the interval is divided by the factor), ARGV[6] =
-- the caller's turn (below), 0 for none. A paused host answers {0, ms until the pause
-- ends, factor, the caller's turn}. Otherwise a request conforms at `now` when
-- now >= TAT - tau; if the wait until then is at most ARGV[4], the slot is reserved (TAT
-- advances by T) and the caller sleeps the wait, then fetches without asking again. A
-- longer wait reserves no slot.
--
-- Turns (KEYS[4], the host's queue horizon): a caller that gets no slot is given a turn,
-- the horizon's time (at least the next conforming time), and the horizon moves on by T,
-- so callers put aside one after another are told to come back one interval apart, in
-- order, instead of all coming back together and asking again and again. While turns are
-- outstanding (the horizon is ahead of the next slot) a caller without a turn queues behind
-- them rather than take a slot. A caller with a turn not yet come is told to come back at
-- it; one whose turn has passed and finds no slot keeps it and comes back at the next
-- conforming time. While the host is paused, turns start at the pause's end. A turn is an
-- estimate, not a reservation.
--
-- Returns {1, wait_ms, factor in millionths} (granted; sleep wait_ms first, often 0) or
-- {0, wait_ms, factor in millionths, turn} (not now; come back in wait_ms; the turn to
-- carry, 0 for none).
--
-- ARGV[1] = 'throttle': ARGV[2] = floor factor, ARGV[3] = recovery per second, ARGV[4] =
-- the least time between two cuts. Returns {1, factor in millionths}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])

-- The AIMD factor now, recovered since it was set, and the time of the last cut.
local function factor_now(recovery)
  local f, at, cut = unpack(redis.call('HMGET', KEYS[3], 'f', 'at', 'cut'))
  if not f then return 1, 0 end
  local recovered = tonumber(f) + recovery * (now - tonumber(at)) / 1000000
  return math.min(1, recovered), tonumber(cut) or 0
end

if ARGV[1] == 'throttle' then
  local floor = tonumber(ARGV[2])
  local recovery = tonumber(ARGV[3])
  local factor, cut = factor_now(recovery)
  if now - cut >= tonumber(ARGV[4]) then
    factor = math.max(floor, factor / 2)
    redis.call('HSET', KEYS[3], 'f', string.format('%.6f', factor), 'at',
      string.format('%d', now), 'cut', string.format('%d', now))
    redis.call('PEXPIRE', KEYS[3], math.ceil((1 - factor) / recovery * 1000) + 1000)
  end
  return {1, math.floor(factor * 1000000 + 0.5)}
end

if ARGV[1] == 'pause' then
  local pause = tonumber(ARGV[2])
  local paused = tonumber(redis.call('GET', KEYS[2]) or '0') or 0
  if now + pause > paused then
    redis.call('SET', KEYS[2], string.format('%d', now + pause))
    redis.call('PEXPIRE', KEYS[2], math.ceil(pause / 1000) + 1000)
    paused = now + pause
  end
  return {1, string.format('%d', paused)}
end

local interval = tonumber(ARGV[2])
local factor = 1
local recovery = tonumber(ARGV[5] or '0') or 0
if interval > 0 and recovery > 0 then
  factor = factor_now(recovery)
  interval = math.ceil(interval / factor)
end
local ppm = math.floor(factor * 1000000 + 0.5)
local turn = tonumber(ARGV[6] or '0') or 0

local horizon = tonumber(redis.call('GET', KEYS[4]) or '0') or 0

-- The next turn from the horizon, at `from` at the earliest; the horizon moves on by T.
local function next_turn(from)
  local given = math.max(horizon, from)
  horizon = given + interval
  redis.call('SET', KEYS[4], string.format('%d', horizon))
  redis.call('PEXPIRE', KEYS[4], math.ceil((horizon - now) / 1000) + 1000)
  return {0, math.ceil((given - now) / 1000), ppm, string.format('%d', given)}
end

local paused = tonumber(redis.call('GET', KEYS[2]) or '0') or 0
if paused > now then
  -- A host with a rate hands out turns from the end of the pause, so its tasks do not all
  -- come back the moment it ends.
  if interval > 0 and turn < paused then return next_turn(paused) end
  return {0, math.ceil((math.max(turn, paused) - now) / 1000), ppm, string.format('%d', turn)}
end
if interval == 0 then return {1, 0, ppm} end

local tolerance = tonumber(ARGV[3])
local max_wait = tonumber(ARGV[4])
local stored = redis.call('GET', KEYS[1])
local tat = now
if stored then tat = math.max(tonumber(stored), now) end
local wait = math.max(tat - tolerance - now, 0)
local next_slot = now + wait

-- A turn not yet come, with no slot now: come back at the turn, keeping it.
if wait > max_wait and turn >= next_slot then
  return {0, math.ceil((turn - now) / 1000), ppm, string.format('%d', turn)}
end
-- A caller without a turn does not take a slot ahead of the tasks given turns.
local queued = turn == 0 and horizon > next_slot
if wait <= max_wait and not queued then
  local new_tat = tat + interval
  redis.call('SET', KEYS[1], string.format('%d', new_tat))
  redis.call('PEXPIRE', KEYS[1], math.ceil((new_tat - now) / 1000) + 1000)
  return {1, math.ceil(wait / 1000), ppm}
end
-- A turn that has passed, with no slot: come back when the host next conforms, keeping
-- it (the turn still puts the caller ahead of those without one).
if turn > 0 then
  return {0, math.ceil(wait / 1000), ppm, string.format('%d', turn)}
end
-- No slot: the next turn from the horizon.
return next_turn(next_slot)
