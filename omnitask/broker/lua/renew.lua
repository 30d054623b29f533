-- renew: extend the leases of a worker's live consumers on one queue, and list expired ones.
--
-- Deadlines are on the Redis clock (hence a script, not a plain ZADD from the client).
--
-- KEYS[1] consumers ZSET
-- ARGV[1] lease ms   ARGV[2] max expired consumers to return   ARGV[3..] consumer ids to renew
-- Returns the ids of up to ARGV[2] consumers whose lease has expired (their workers died).

local now = ot_now()
local deadline = now + tonumber(ARGV[1])
for i = 3, #ARGV do
  redis.call('ZADD', KEYS[1], deadline, ARGV[i])
end
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
