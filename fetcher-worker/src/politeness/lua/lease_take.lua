-- Fleet-wide per-host concurrency (the fetcher's --host-concurrency): a counting semaphore
-- whose permits are leases, so a fetcher that dies holding one frees it when the lease
-- runs out. Times are Redis server time, microseconds.
-- KEYS[1] = the host's leases: a sorted set of lease id -> when the lease runs out.
-- ARGV[1] = the cap, ARGV[2] = the lease length, ARGV[3] = the lease id.
-- Forgets leases that have run out, then takes one if fewer than the cap are held.
-- Returns {'taken', 1} or {'taken', 0} (the host is at its cap).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%d', now))
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return {'taken', 0} end
local lease = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], string.format('%d', now + lease), ARGV[3])
-- The set lives as long as its longest lease (fetchers may have different timeouts).
local last = tonumber(redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')[2])
redis.call('PEXPIRE', KEYS[1], math.ceil((last - now) / 1000) + 1000)
return {'taken', 1}
