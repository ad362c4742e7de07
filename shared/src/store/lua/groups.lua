-- Group and latency writes shared by apply.lua and apply_fresh.lua (concatenated in front
-- of them, after state.lua). KEYS[3] = the job's groups hash, KEYS[4] = its latency histogram.

-- Adds each group of `acc` ({records, count, sum, min, max}, in `order`) to the groups
-- hash: one HGET and one HSET per group. A group's value is "records count sum min max"
-- (%.17g, so doubles round-trip).
local function write_groups(acc, order)
  for _, group in ipairs(order) do
    local a = acc[group]
    local old = redis.call('HGET', KEYS[3], group)
    if old then
      local r, c, s, lo, hi = string.match(old, '^(%S+) (%S+) (%S+) (%S+) (%S+)$')
      a[1] = a[1] + tonumber(r)
      a[2] = a[2] + tonumber(c)
      a[3] = a[3] + tonumber(s)
      if tonumber(lo) < a[4] then a[4] = tonumber(lo) end
      if tonumber(hi) > a[5] then a[5] = tonumber(hi) end
    end
    redis.call('HSET', KEYS[3], group, string.format('%d %d %.17g %.17g %.17g', a[1], a[2], a[3], a[4], a[5]))
  end
end

-- Adds bucket -> count to the latency histogram.
local function write_latency(latency)
  for bucket, count in pairs(latency) do
    redis.call('HINCRBY', KEYS[4], bucket, count)
  end
end
