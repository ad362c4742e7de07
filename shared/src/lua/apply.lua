-- Applies result records exactly once per task id.
-- KEYS[3] = the job's groups hash, KEYS[4] = the job's latency histogram.
-- ARGV[1] = TTL in seconds, ARGV[2] = now (ms), then per task:
--   task_id, enqueued_ms ('' if unknown), n, then n times: group records count sum min max
-- A group's value is "records count sum min max" (%.17g, so doubles round-trip).
-- Returns how many tasks were applied now (0 for a redelivered batch).
local now = tonumber(ARGV[2])
local applied = 0
local i = 3
while i <= #ARGV do
  local task = ARGV[i]
  local enqueued = tonumber(ARGV[i + 1])
  local n = tonumber(ARGV[i + 2])
  i = i + 3
  local fresh = advance(task, 3)
  if fresh then
    applied = applied + 1
    for g = 0, n - 1 do
      local base = i + g * 6
      local group = ARGV[base]
      local records = tonumber(ARGV[base + 1])
      local count = tonumber(ARGV[base + 2])
      local sum = tonumber(ARGV[base + 3])
      local min = tonumber(ARGV[base + 4])
      local max = tonumber(ARGV[base + 5])
      local old = redis.call('HGET', KEYS[3], group)
      if old then
        local r, c, s, lo, hi = string.match(old, '^(%S+) (%S+) (%S+) (%S+) (%S+)$')
        records = records + tonumber(r)
        count = count + tonumber(c)
        sum = sum + tonumber(s)
        if tonumber(lo) < min then min = tonumber(lo) end
        if tonumber(hi) > max then max = tonumber(hi) end
      end
      redis.call('HSET', KEYS[3], group, string.format('%d %d %.17g %.17g %.17g',
        records, count, sum, min, max))
    end
    if enqueued then
      local ms = now - enqueued
      if ms < 0 then ms = 0 end
      local bucket = math.floor(math.log(ms + 1) / math.log(2) * 4)
      redis.call('HINCRBY', KEYS[4], bucket, 1)
    end
  end
  i = i + n * 6
end
touch(tonumber(ARGV[1]), 1, 4)
return applied
