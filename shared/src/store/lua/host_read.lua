-- Reads one host's politeness state for the dashboard (read-only; every key has the
-- host's hash tag, so one slot). Times are Redis server time, microseconds.
-- KEYS = the host's tat, pause, rate, leases and queue keys.
-- Returns {now, tat, paused until, AIMD factor, leases in flight, queue horizon} as
-- strings ('' when a key is absent).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local f = redis.call('HGET', KEYS[3], 'f')
local leases = redis.call('ZCOUNT', KEYS[4], '(' .. string.format('%d', now), '+inf')
return {
  string.format('%d', now),
  redis.call('GET', KEYS[1]) or '',
  redis.call('GET', KEYS[2]) or '',
  f or '',
  tostring(leases),
  redis.call('GET', KEYS[5]) or '',
}
