-- KEYS[1] = the job's status hash, KEYS[2] = the job's task-state hash.
-- ARGV[1] = operation (f fetched, p processed, r retrying, w deferred, d dead,
-- q replayed), ARGV[2] = TTL in seconds, ARGV[3..] = task ids. Returns how many changed.
local refused = refuse_non_hashes(1, 2)
if refused then return refused end
local op = ARGV[1]
local changed = 0
for i = 3, #ARGV do
  local task = ARGV[i]
  local did
  if op == 'f' then
    -- A task with no state yet is queued: HSETNX takes it to fetched in one call.
    if redis.call('HSETNX', KEYS[2], task, 1) == 1 then
      bump(LEVEL_FIELD[1], 1)
      did = true
    else
      did = advance(task, 1)
    end
  elseif op == 'p' then did = advance(task, 2)
  elseif op == 'r' then did = mark_waiting(task, RETRYING)
  elseif op == 'w' then did = mark_waiting(task, DEFERRED)
  elseif op == 'd' then did = mark_dead(task)
  elseif op == 'q' then did = mark_replayed(task)
  else return redis.error_reply('unknown mark operation ' .. tostring(op)) end
  if did then changed = changed + 1 end
end
flush_bumps()
touch(tonumber(ARGV[2]), 1, 2)
return changed
