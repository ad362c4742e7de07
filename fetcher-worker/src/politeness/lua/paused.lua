-- The hosts paused now (after a 429/503 with Retry-After), for the fetchers' local view
-- of pauses (`hostlimit::HostLimiter::paused_hosts`). KEYS[1] = the namespace's sorted
-- set of paused hosts, scored by "paused until" (Redis time, microseconds). Forgets the
-- pauses that have ended, then returns the hosts of the others.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%d', now))
return redis.call('ZRANGE', KEYS[1], 0, -1)
