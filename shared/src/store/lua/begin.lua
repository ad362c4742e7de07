-- Starts or resumes registering one producer input of a job (see store/inputs.rs).
-- KEYS[1] = the job's inputs hash, KEYS[2] = the job's status hash.
-- ARGV[1] = input id, ARGV[2] = the input's fingerprint, ARGV[3] = TTL in seconds.
-- A new input gets the checkpoint "0 0 <fingerprint>" (nothing confirmed, not sealed) and
-- counts in the status field `enqueuing` until sealed; a known input is left as it is (the
-- caller compares the fingerprints). Returns the input's checkpoint.
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur then
  cur = '0 0 ' .. ARGV[2]
  redis.call('HSET', KEYS[1], ARGV[1], cur)
  redis.call('HINCRBY', KEYS[2], 'enqueuing', 1)
end
redis.call('HINCRBY', KEYS[2], 'total', 0)
for i = 1, 2 do redis.call('EXPIRE', KEYS[i], tonumber(ARGV[3])) end
return cur
