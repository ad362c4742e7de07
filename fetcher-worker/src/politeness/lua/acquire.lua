-- Asks for one request to a host: fleet-wide GCRA (governor's semantics) on Redis server
-- time (see host.lua), its pause, and its queue of turns. Times are microseconds.
--
-- KEYS[1] = the host's theoretical arrival time (TAT), KEYS[2] = its "paused until",
-- KEYS[3] = its AIMD rate factor hash, KEYS[4] = its queue horizon (the next turn to give).
-- ARGV[1] = emission interval T = 1/rate (0: no rate, only the pause is checked),
-- ARGV[2] = burst tolerance tau, ARGV[3] = the longest wait the caller will sleep,
-- ARGV[4] = the AIMD recovery per second (0: no AIMD; otherwise the interval is divided by
-- the factor), ARGV[5] = the caller's turn, 0 for none.
--
-- A request conforms at `now` when now >= TAT - tau. If the wait until then is at most
-- ARGV[3], the slot is reserved (TAT advances by T): the caller sleeps the wait, then
-- fetches without asking again. A longer wait reserves nothing.
--
-- Turns: a caller that gets no slot is given a turn, the horizon's time (at least the next
-- conforming time), and the horizon moves on by T, so callers put aside one after another
-- come back one interval apart, in order. While turns are outstanding (the horizon is ahead
-- of the next slot) a caller without a turn queues behind them rather than take a slot. A
-- caller with a turn not yet come is told to come back at it; one whose turn has passed and
-- finds no slot keeps it and comes back at the next conforming time. While the host is
-- paused, a host with a rate hands out turns from the pause's end. A turn is an estimate,
-- not a reservation.
--
-- Returns {'granted', 1, 'wait_ms', ms to sleep first (often 0), 'factor_ppm', the factor
-- in millionths} or {'granted', 0, 'wait_ms', ms until it may come back, 'factor_ppm', ...,
-- 'turn', the turn to carry as a string (0 for none)}.
local interval = tonumber(ARGV[1])
local factor = 1
local recovery = tonumber(ARGV[4] or '0') or 0
if interval > 0 and recovery > 0 then
  factor = factor_now(KEYS[3], recovery)
  interval = math.ceil(interval / factor)
end
local ppm = math.floor(factor * 1000000 + 0.5)
local turn = tonumber(ARGV[5] or '0') or 0

local horizon = tonumber(redis.call('GET', KEYS[4]) or '0') or 0

-- Not now: come back in `wait` (microseconds), carrying `turn`.
local function later(wait, turn)
  return {'granted', 0, 'wait_ms', math.ceil(wait / 1000), 'factor_ppm', ppm,
    'turn', string.format('%d', turn)}
end

-- The next turn from the horizon, at `from` at the earliest; the horizon moves on by T.
local function next_turn(from)
  local given = math.max(horizon, from)
  horizon = given + interval
  redis.call('SET', KEYS[4], string.format('%d', horizon))
  redis.call('PEXPIRE', KEYS[4], math.ceil((horizon - now) / 1000) + 1000)
  return later(given - now, given)
end

local paused = tonumber(redis.call('GET', KEYS[2]) or '0') or 0
if paused > now then
  -- A host with a rate hands out turns from the end of the pause, so its tasks do not all
  -- come back the moment it ends.
  if interval > 0 and turn < paused then return next_turn(paused) end
  return later(math.max(turn, paused) - now, turn)
end
if interval == 0 then return {'granted', 1, 'wait_ms', 0, 'factor_ppm', ppm} end

local tolerance = tonumber(ARGV[2])
local max_wait = tonumber(ARGV[3])
local stored = redis.call('GET', KEYS[1])
local tat = now
if stored then tat = math.max(tonumber(stored), now) end
local wait = math.max(tat - tolerance - now, 0)
local next_slot = now + wait

-- A turn not yet come, with no slot now: come back at the turn, keeping it.
if wait > max_wait and turn >= next_slot then
  return later(turn - now, turn)
end
-- A caller without a turn does not take a slot ahead of the tasks given turns.
local queued = turn == 0 and horizon > next_slot
if wait <= max_wait and not queued then
  local new_tat = tat + interval
  redis.call('SET', KEYS[1], string.format('%d', new_tat))
  redis.call('PEXPIRE', KEYS[1], math.ceil((new_tat - now) / 1000) + 1000)
  return {'granted', 1, 'wait_ms', math.ceil(wait / 1000), 'factor_ppm', ppm}
end
-- A turn that has passed, with no slot: come back when the host next conforms, keeping
-- it (the turn still puts the caller ahead of those without one).
if turn > 0 then
  return later(wait, turn)
end
-- No slot: the next turn from the horizon.
return next_turn(next_slot)
