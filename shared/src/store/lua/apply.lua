-- Applies result records exactly once per task id (the per-task form; apply_fresh.lua is
-- the fast path of a batch whose tasks are all new).
-- KEYS[3] = the job's groups hash, KEYS[4] = the job's latency histogram.
-- ARGV[1] = TTL in seconds, ARGV[2] = now (ms), then per task:
--   task_id, enqueued_ms ('' if unknown), n, then n times: group records count sum min max
-- A group's value is "records count sum min max" (%.17g, so doubles round-trip).
-- The records of the batch's fresh tasks are merged per group in Lua first, so each group
-- is read and written once per call. Returns how many tasks were applied now (0 for a
-- redelivered batch). Keys holding something other than a hash are refused before any write.
local refused = refuse_non_hashes(1, 4)
if refused then return refused end
local now = tonumber(ARGV[2])
local applied = 0
local acc = {}
local order = {}
local latency = {}
local i = 3
while i <= #ARGV do
  local task = ARGV[i]
  local enqueued = tonumber(ARGV[i + 1])
  local n = tonumber(ARGV[i + 2])
  i = i + 3
  if advance(task, 3) then
    applied = applied + 1
    for g = 0, n - 1 do
      local base = i + g * 6
      local group = ARGV[base]
      local a = acc[group]
      if not a then
        a = { 0, 0, 0, math.huge, -math.huge }
        acc[group] = a
        order[#order + 1] = group
      end
      a[1] = a[1] + tonumber(ARGV[base + 1])
      a[2] = a[2] + tonumber(ARGV[base + 2])
      a[3] = a[3] + tonumber(ARGV[base + 3])
      local lo = tonumber(ARGV[base + 4])
      local hi = tonumber(ARGV[base + 5])
      if lo < a[4] then a[4] = lo end
      if hi > a[5] then a[5] = hi end
    end
    if enqueued then
      local ms = now - enqueued
      if ms < 0 then ms = 0 end
      local bucket = math.floor(math.log(ms + 1) / math.log(2) * 4)
      latency[bucket] = (latency[bucket] or 0) + 1
    end
  end
  i = i + n * 6
end
write_groups(acc, order)
write_latency(latency)
flush_bumps()
touch(tonumber(ARGV[1]), 1, 4)
return applied
