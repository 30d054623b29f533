-- requeue: hand a consumer's in-flight envelopes back to the head of their ready lists.
--
-- Used when a worker child exits (the supervisor calls it at once) and when a consumer's lease
-- expired because its whole worker died (any supervisor calls it, with the expiry re-checked
-- here, atomically, so a lease renewed meanwhile is left alone). When the consumer died while
-- holding them, each task's delivery count goes up; workers dead-letter a task whose count
-- reaches max_deliveries instead of running it again. Each envelope is counted first and then
-- moved with one LMOVE, so an error aborts with the envelope still in proc, never in neither.
--
-- KEYS[1] proc LIST   KEYS[2] consumers ZSET   KEYS[3] deliveries HASH   KEYS[4] wake LIST
-- KEYS[5..14] ready LISTs for priorities 0..9
-- ARGV[1] consumer id   ARGV[2] "1": count a delivery   ARGV[3] "1": only if the lease expired
-- ARGV[4] default priority   ARGV[5] max wake tokens
-- Returns the number of envelopes handed back, or -1 when the lease had not expired.

if ARGV[3] == '1' then
  local deadline = redis.call('ZSCORE', KEYS[2], ARGV[1])
  if deadline and tonumber(deadline) > ot_now() then
    return -1
  end
end
local moved = 0
while true do
  -- From the tail, pushed to the head: the original order is kept.
  local env = redis.call('LINDEX', KEYS[1], -1)
  if not env then break end
  local p, id = ot_header(env)
  if id and ARGV[2] == '1' then
    redis.call('HINCRBY', KEYS[3], id, 1)
  end
  redis.call('LMOVE', KEYS[1], KEYS[5 + (p or tonumber(ARGV[4]))], 'RIGHT', 'LEFT')
  moved = moved + 1
end
redis.call('ZREM', KEYS[2], ARGV[1])
ot_wake(KEYS[4], moved, tonumber(ARGV[5]))
return moved
