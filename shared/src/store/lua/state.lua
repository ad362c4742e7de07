-- Per-task state shared by mark.lua and apply.lua (concatenated in front of them).
-- KEYS[1] = the job's status hash (counters), KEYS[2] = the job's task-state hash.
-- A task's state is level + 10 * flag: level 0 queued, 1 fetched, 2 processed,
-- 3 aggregated; flag 0 none, 1 retrying (failed, waiting in a delay queue for another
-- attempt), 2 dead, 3 deferred (put aside by its host's rate limit, pause or concurrency
-- cap: not a failure). Every transition is idempotent, so a redelivered message never
-- changes a counter twice.
local LEVEL_FIELD = { 'fetched', 'processed', 'aggregated' }
local RETRYING, DEAD, DEFERRED = 1, 2, 3
-- The counter of each waiting flag.
local WAITING_FIELD = { [RETRYING] = 'retrying', [DEFERRED] = 'deferred' }

local function get_state(task)
  local v = tonumber(redis.call('HGET', KEYS[2], task) or '0') or 0
  return v % 10, math.floor(v / 10)
end

local function put_state(task, level, flag)
  redis.call('HSET', KEYS[2], task, level + 10 * flag)
end

-- Counter changes are summed here and written once per field at the end of a script
-- (flush_bumps), not once per task.
local BUMPS = {}

local function bump(field, by)
  BUMPS[field] = (BUMPS[field] or 0) + by
end

local function flush_bumps()
  for field, by in pairs(BUMPS) do
    if by ~= 0 then redis.call('HINCRBY', KEYS[1], field, by) end
  end
end

-- Leaves a waiting flag (retrying or deferred): its counter goes down.
local function unwait(flag)
  if WAITING_FIELD[flag] then bump(WAITING_FIELD[flag], -1) end
end

-- The task, in state (`level`, `flag`), reached stage level `target`; true if that is news.
local function advance_from(task, level, flag, target)
  if level >= target then return false end
  for l = level + 1, target do bump(LEVEL_FIELD[l], 1) end
  if WAITING_FIELD[flag] then unwait(flag); flag = 0 end
  if flag == DEAD and target == 3 then bump('dead', -1); flag = 0 end
  put_state(task, target, flag)
  return true
end

-- The task reached stage level `target`; true if that is news.
local function advance(task, target)
  local level, flag = get_state(task)
  return advance_from(task, level, flag, target)
end

-- The task now waits with flag `waiting` (RETRYING or DEFERRED), if it is neither
-- aggregated, dead nor waiting so already.
local function mark_waiting(task, waiting)
  local level, flag = get_state(task)
  if level == 3 or flag == DEAD or flag == waiting then return false end
  unwait(flag)
  bump(WAITING_FIELD[waiting], 1)
  put_state(task, level, waiting)
  return true
end

local function mark_dead(task)
  local level, flag = get_state(task)
  if level == 3 or flag == DEAD then return false end
  unwait(flag)
  bump('dead', 1)
  put_state(task, level, DEAD)
  return true
end

-- A dead task is being replayed: it counts as in flight again.
local function mark_replayed(task)
  local level, flag = get_state(task)
  if flag ~= DEAD then return false end
  bump('dead', -1)
  put_state(task, level, 0)
  return true
end

-- Refuses, before any write, a call whose keys KEYS[first..last] hold something other
-- than a hash (e.g. written by another program): a script error, the same on every attempt,
-- with nothing written (Redis does not undo what a script wrote before it failed).
local function refuse_non_hashes(first, last)
  for i = first, last do
    local kind = redis.call('TYPE', KEYS[i])['ok']
    if kind ~= 'hash' and kind ~= 'none' then
      return redis.error_reply('WRONGTYPE the script refuses ' .. KEYS[i] .. ': a ' .. kind .. ', not a hash')
    end
  end
  return nil
end

local function touch(ttl, first, last)
  for i = first, last do redis.call('EXPIRE', KEYS[i], ttl) end
end
