-- Binds a job to the HTTP request that creates it (idempotent `POST /v1/jobs`).
-- KEYS[1] = the job's inputs hash. ARGV[1] = the request's digest, ARGV[2] = TTL in seconds.
-- The first request's digest is kept; returns the digest the job is bound to (the
-- caller's own when it is the first).
redis.call('HSETNX', KEYS[1], 'request', ARGV[1])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
return redis.call('HGET', KEYS[1], 'request')
