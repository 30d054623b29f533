-- admit: may a claimed task run now under its rate limit and concurrency cap? If not, it goes
-- back to wait in Redis, in the same step: out of the consumer's in-flight list and into
-- `delayed`, due when it may run (rate limit) or shortly (cap full). It never waits in a
-- worker slot.
--
-- Rate limits are GCRA (generic cell rate algorithm): one key per limit holds the
-- "theoretical arrival time"; a task is admitted when that time minus the burst tolerance has
-- come, which spreads `count` runs evenly over `period` across every worker. A task that must
-- wait reserves the next free slot (the arrival time moves on by one interval) and is due at
-- it: waiting tasks keep their order and each is claimed once more, at its own time, not all
-- of them at every free slot.
-- A concurrency cap is a ZSET of the task ids running under it, score = when the entry lapses
-- (a crashed worker's entries go by themselves); the ack removes the task's entry.
--
-- KEYS[1] proc LIST (this consumer)   KEYS[2] delayed ZSET   KEYS[3] rate key (STRING)
-- KEYS[4] cap key (ZSET)   KEYS[5] the rate limit's reservations (ZSET: task id -> slot)
-- ARGV[1] envelope   ARGV[2] task id   ARGV[3] emission interval ms (0: no rate limit)
-- ARGV[4] burst tolerance ms   ARGV[5] cap (0: none)   ARGV[6] cap entry lifetime ms
-- ARGV[7] retry delay ms when the cap is full
-- Returns 0 admitted, else the due time (server ms) it was deferred to; -1 when the consumer
-- no longer holds it (its lease lapsed): the caller drops it.

local now = ot_now()
local interval, tolerance = tonumber(ARGV[3]), tonumber(ARGV[4])
local cap = tonumber(ARGV[5])

local function defer(due)
  -- Into delayed first: if that write fails, the envelope is still in flight, never nowhere.
  redis.call('ZADD', KEYS[2], due, ARGV[1])
  redis.call('LREM', KEYS[1], -1, ARGV[1])
  return due
end

if redis.call('LPOS', KEYS[1], ARGV[1]) == false then return -1 end

if cap > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
  if redis.call('ZSCORE', KEYS[4], ARGV[2]) == false
      and redis.call('ZCARD', KEYS[4]) >= cap then
    return defer(now + tonumber(ARGV[7]))
  end
end

if interval > 0 then
  -- Reservations of tasks that never came back (revoked, expired, purged) go after an hour.
  redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now - 3600000)
  if redis.call('ZREM', KEYS[5], ARGV[2]) == 0 then  -- else: its reserved slot has come
    local tat = tonumber(redis.call('GET', KEYS[3]) or '0')
    if tat < now then tat = now end
    redis.call('SET', KEYS[3], tat + interval, 'PX', tat + interval - now + 1000)
    if tat - tolerance > now then
      local due = defer(tat - tolerance)
      if due > 0 then
        redis.call('ZADD', KEYS[5], due, ARGV[2])
        redis.call('PEXPIRE', KEYS[5], due - now + 3600000)
      end
      return due
    end
  end
end

if cap > 0 then
  redis.call('ZADD', KEYS[4], now + tonumber(ARGV[6]), ARGV[2])
  redis.call('PEXPIRE', KEYS[4], tonumber(ARGV[6]) + 1000)
end
return 0
