-- revoke: make sure a task that has not finished never runs (or, with terminate, stops).
--
-- Records the id in the revoked set until the revocation lapses (claim checks it when it moves
-- the task, so a pending or delayed task is never run), writes the REVOKED result at once so
-- that waiters wake, and publishes task-revoked. A task that already finished keeps its result.
-- Lapsed revocations are pruned here, which keeps both sets bounded.
--
-- KEYS[1] revoked ZSET   KEYS[2] terminate ZSET   KEYS[3] result LIST   KEYS[4] state STRING
-- KEYS[5] events STREAM
-- ARGV[1] task id   ARGV[2] how long the revocation lasts, ms   ARGV[3] "1": terminate a run
-- ARGV[4] REVOKED result record, or "" when results live elsewhere   ARGV[5] result ttl ms
-- ARGV[6] events maxlen (0: none)   ARGV[7..] fields of the task-revoked event
-- Returns 1 when revoked, 0 when the task had already finished.

local now = ot_now()
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
if redis.call('EXISTS', KEYS[3]) == 1 then
  return 0
end
local until_ms = now + tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], until_ms, ARGV[1])
if ARGV[3] == '1' then
  redis.call('ZADD', KEYS[2], until_ms, ARGV[1])
end
if ARGV[4] ~= '' then
  redis.call('DEL', KEYS[4])
  redis.call('RPUSH', KEYS[3], ARGV[4])
  redis.call('PEXPIRE', KEYS[3], tonumber(ARGV[5]))
end
local maxlen = tonumber(ARGV[6])
if maxlen > 0 then
  redis.call('XADD', KEYS[5], 'MAXLEN', '~', maxlen, '*', 'e', 'task-revoked', unpack(ARGV, 7))
end
return 1
