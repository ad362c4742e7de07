-- Registers a job in the namespace's jobs index (a sorted set, one key, one slot).
-- KEYS[1] = the index. ARGV[1] = job id, ARGV[2] = creation time (ms), ARGV[3] = job TTL (ms).
-- A job already there keeps its creation time; entries older than the TTL are dropped and
-- the index lives as long as its newest job. Returns 1 when the job is new.
local added = redis.call('ZADD', KEYS[1], 'NX', tonumber(ARGV[2]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. (tonumber(ARGV[2]) - tonumber(ARGV[3])))
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
return added
