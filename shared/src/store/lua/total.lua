-- Adds tasks to a job's total (creating the job) and keeps the status hash for the TTL.
-- KEYS[1] = the job's status hash. ARGV[1] = tasks to add, ARGV[2] = TTL in seconds.
-- Returns the total now.
local total = redis.call('HINCRBY', KEYS[1], 'total', tonumber(ARGV[1]))
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
return total
