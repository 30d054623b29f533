-- fire: send one run of a periodic task, exactly once per (schedule, slot).
--
-- The slot (the run's due time, unix ms) is the dedup key: the fired HASH keeps, per schedule,
-- the latest slot handled, and a slot at or before it is refused. Recording it and queueing
-- the envelope happen here together, so a beat that dies in between leaves neither. Only the
-- lease holder may fire, and only with the entry it read: two beats that both believe they
-- lead (a lease that expired during a pause) cannot both send, and a run of a schedule that
-- was changed or removed meanwhile is not sent from the stale copy.
-- An empty envelope records the slot without sending (a missed run under the skip policy).
--
-- KEYS[1] leader STRING   KEYS[2] schedules HASH   KEYS[3] fired HASH   KEYS[4] events STREAM
-- KEYS[5] queues SET   KEYS[6] the queue's wake LIST   KEYS[7..16] its ready LISTs 0..9
-- ARGV[1] beat id   ARGV[2] schedule name   ARGV[3] the entry as the beat read it
-- ARGV[4] slot (ms)   ARGV[5] envelope or ''   ARGV[6] priority   ARGV[7] task id
-- ARGV[8] task name   ARGV[9] queue name   ARGV[10] events maxlen (0: none)
-- ARGV[11] max wake tokens
-- Returns 1 sent, 2 recorded as skipped, 0 slot already handled, -1 this beat is not the
-- leader, -2 the entry changed or was removed.

if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
if redis.call('HGET', KEYS[2], ARGV[2]) ~= ARGV[3] then return -2 end
local slot = tonumber(ARGV[4])
local last = tonumber(redis.call('HGET', KEYS[3], ARGV[2]))
if last and slot <= last then return 0 end
if ARGV[5] == '' then
  redis.call('HSET', KEYS[3], ARGV[2], ARGV[4])
  return 2
end
-- The task first: if its push fails, the slot is not recorded and the next try sends it.
redis.call('RPUSH', KEYS[7 + tonumber(ARGV[6])], ARGV[5])
redis.call('HSET', KEYS[3], ARGV[2], ARGV[4])
ot_wake(KEYS[6], 1, tonumber(ARGV[11]))
redis.call('SADD', KEYS[5], ARGV[9])
local maxlen = tonumber(ARGV[10])
if maxlen > 0 then
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', maxlen, '*', 'e', 'task-sent',
    'i', ARGV[7], 'n', ARGV[8], 'q', ARGV[9])
end
return 1
