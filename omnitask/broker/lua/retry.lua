-- retry: put a failed task back for another run, now or when due, and record its RETRY state.
--
-- Only if the consumer still holds it: after a lease expired (or when a lost reply makes the
-- caller run this twice) the task is not re-inserted a second time. The new envelope is
-- written before the old one is removed, so an error aborts with the task still held.
--
-- KEYS[1] proc LIST   KEYS[2] deliveries HASH   KEYS[3] ready LIST of the task's priority
-- KEYS[4] delayed ZSET   KEYS[5] wake LIST   KEYS[6] events STREAM   KEYS[7] state STRING
-- ARGV[1] envelope as claimed   ARGV[2] new envelope   ARGV[3] due ms, or "" to run now
-- ARGV[4] task id   ARGV[5] RETRY state record, or "" when the state lives elsewhere
-- ARGV[6] state ttl ms   ARGV[7] events maxlen (0: none)   ARGV[8] max wake tokens
-- ARGV[9..] fields of the task-retried event
-- Returns 1 when the task was put back, 0 when the consumer no longer held it.

if not redis.call('LPOS', KEYS[1], ARGV[1]) then
  return 0
end
if ARGV[3] == '' then
  redis.call('RPUSH', KEYS[3], ARGV[2])
else
  redis.call('ZADD', KEYS[4], tonumber(ARGV[3]), ARGV[2])
end
if ARGV[5] ~= '' then
  redis.call('SET', KEYS[7], ARGV[5], 'PX', tonumber(ARGV[6]))
end
local maxlen = tonumber(ARGV[7])
if maxlen > 0 then
  redis.call('XADD', KEYS[6], 'MAXLEN', '~', maxlen, '*', 'e', 'task-retried', unpack(ARGV, 9))
end
ot_wake(KEYS[5], 1, tonumber(ARGV[8]))
redis.call('HDEL', KEYS[2], ARGV[4])
redis.call('LREM', KEYS[1], 1, ARGV[1])
return 1
