-- The fast path of an apply: a batch whose tasks are all new, its records merged per group
-- and its latencies bucketed by the caller, so Redis parses a few numbers per group, not
-- five per task. KEYS as apply.lua. ARGV[1] = TTL in seconds, ARGV[2] = n, ARGV[3..n+2] =
-- the task ids (distinct), then g and g times: group records count sum min max, then b and
-- b times: bucket count.
-- Returns n; or -1, with nothing written, if any task was applied before (or an id repeats):
-- the caller then sends the per-task form (apply.lua), which applies only the new ones.
local refused = refuse_non_hashes(1, 4)
if refused then return refused end
local n = tonumber(ARGV[2])
local levels, flags, seen = {}, {}, {}
for t = 1, n do
  local task = ARGV[2 + t]
  if seen[task] then return -1 end
  seen[task] = true
  levels[t], flags[t] = get_state(task)
  if levels[t] >= 3 then return -1 end
end
for t = 1, n do advance_from(ARGV[2 + t], levels[t], flags[t], 3) end
local i = n + 3
local g = tonumber(ARGV[i])
i = i + 1
local acc, order = {}, {}
for k = 0, g - 1 do
  local base = i + k * 6
  local group = ARGV[base]
  acc[group] = { tonumber(ARGV[base + 1]), tonumber(ARGV[base + 2]), tonumber(ARGV[base + 3]),
    tonumber(ARGV[base + 4]), tonumber(ARGV[base + 5]) }
  order[#order + 1] = group
end
i = i + g * 6
local b = tonumber(ARGV[i])
i = i + 1
local latency = {}
for k = 0, b - 1 do latency[ARGV[i + 2 * k]] = tonumber(ARGV[i + 2 * k + 1]) end
write_groups(acc, order)
write_latency(latency)
flush_bumps()
touch(tonumber(ARGV[1]), 1, 4)
return n
