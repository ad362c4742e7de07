-- Registers the tasks of one published message of a producer input, idempotently, and
-- moves the input's checkpoint (see store/inputs.rs).
-- KEYS[1] = the job's inputs hash, KEYS[2] = the job's status hash, KEYS[3] = the input's
-- bitmap of registered line positions, KEYS[4] = the job's set of explicit task ids.
-- ARGV[1] = input id, ARGV[2] = confirmed (every line before it is on the broker),
-- ARGV[3] = '1' to seal the input (all of it is confirmed), ARGV[4] = TTL in seconds,
-- ARGV[5] = n, ARGV[6 .. 5+n] = line positions, the rest = explicit task ids.
-- Only new positions and ids raise the total (the bits' old values and SADD say whether they
-- were new), so a republished message never changes it. Returns how many were new.
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur then return redis.error_reply('input ' .. ARGV[1] .. ' is not registered') end
local confirmed, sealed, fp = string.match(cur, '^(%d+) ([01]) (%S+)$')
if not fp then return redis.error_reply('malformed checkpoint of input ' .. ARGV[1]) end
local new = 0
local n = tonumber(ARGV[5])
-- Positions come in runs of consecutive lines: each run of up to 32 is set with one BITFIELD
-- SET, which returns the run's old bits; the clear ones were new.
local function ones(x)
  local c = 0
  while x > 0 do c = c + x % 2; x = math.floor(x / 2) end
  return c
end
local i = 6
while i <= 5 + n do
  local first = tonumber(ARGV[i])
  local len = 1
  while len < 32 and i + len <= 5 + n and tonumber(ARGV[i + len]) == first + len do len = len + 1 end
  local old = redis.call('BITFIELD', KEYS[3], 'SET', 'u' .. len, first, 2 ^ len - 1)[1]
  new = new + len - ones(old)
  i = i + len
end
for i = 6 + n, #ARGV do
  new = new + redis.call('SADD', KEYS[4], ARGV[i])
end
if new > 0 then redis.call('HINCRBY', KEYS[2], 'total', new) end
confirmed = math.max(tonumber(confirmed), tonumber(ARGV[2]))
if ARGV[3] == '1' and sealed == '0' then
  sealed = '1'
  redis.call('HINCRBY', KEYS[2], 'enqueuing', -1)
end
redis.call('HSET', KEYS[1], ARGV[1], string.format('%d %s %s', confirmed, sealed, fp))
for i = 1, 4 do redis.call('EXPIRE', KEYS[i], tonumber(ARGV[4])) end
return new
