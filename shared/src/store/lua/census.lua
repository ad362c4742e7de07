-- Counts a job's per-task states in one atomic pass (read-only), for `producer status
-- --verify`. KEYS[1] = the job's status hash, KEYS[2] = the job's task-state hash (one
-- slot: the keys share the job's hash tag). ARGV[1] = how many task ids to list per stage
-- level, ARGV[2] = the most task states to count (larger jobs are refused).
-- Returns { known, scanned, {state, count, ...}, {level, task, ...}, {status field, value, ...} }:
-- `known` is HLEN, `scanned` the entries HSCAN returned (equal unless the hash changed
-- size, which cannot happen inside a script), states as stored (level + 10 * flag), and
-- up to ARGV[1] ids per level 0..2 of tasks that are neither final nor waiting.
local limit = tonumber(ARGV[1])
local known = redis.call('HLEN', KEYS[2])
if known > tonumber(ARGV[2]) then
  return redis.error_reply('census of ' .. known .. ' task states refused (more than ' .. ARGV[2] .. ')')
end
local counts, order, listed, taken = {}, {}, {}, { [0] = 0, 0, 0 }
local scanned = 0
local cursor = '0'
repeat
  local page = redis.call('HSCAN', KEYS[2], cursor, 'COUNT', 1000)
  cursor = page[1]
  local fields = page[2]
  for i = 1, #fields, 2 do
    local task, state = fields[i], fields[i + 1]
    scanned = scanned + 1
    if not counts[state] then counts[state] = 0; order[#order + 1] = state end
    counts[state] = counts[state] + 1
    local n = tonumber(state)
    if n and n >= 0 and n < 3 and n == math.floor(n) and taken[n] < limit then
      taken[n] = taken[n] + 1
      listed[#listed + 1] = tostring(n)
      listed[#listed + 1] = task
    end
  end
until cursor == '0'
local states = {}
for _, state in ipairs(order) do
  states[#states + 1] = state
  states[#states + 1] = tostring(counts[state])
end
return { known, scanned, states, listed, redis.call('HGETALL', KEYS[1]) }
