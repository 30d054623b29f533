-- claim: move up to N ready envelopes, highest priority first, into a consumer's in-flight list.
--
-- First promotes delayed envelopes that are due (into the tail of their priority's list), then
-- pops from the head of lists 9..0 with LMOVE, so a claimed envelope is always in exactly one
-- of `ready` or `proc`: there is no instant at which a crash loses it. Refreshes the consumer's
-- lease and publishes task-received and task-started for each claimed task.
--
-- KEYS[1] delayed ZSET      KEYS[2] proc LIST (this consumer)   KEYS[3] consumers ZSET
-- KEYS[4] deliveries HASH   KEYS[5] wake LIST                   KEYS[6] events STREAM
-- KEYS[7..16] ready LISTs for priorities 0..9
-- ARGV[1] max envelopes to claim   ARGV[2] consumer id   ARGV[3] lease ms
-- ARGV[4] events maxlen (0: publish none)   ARGV[5] queue name   ARGV[6] default priority
-- ARGV[7] max delayed envelopes to promote   ARGV[8] max wake tokens
-- Returns {server now ms, next due ms or -1, env 1, deliveries 1, env 2, deliveries 2, ...};
-- "next due" is only computed when nothing was claimed (the caller then sleeps until it).

local n = tonumber(ARGV[1])
local consumer, queue = ARGV[2], ARGV[5]
local maxlen = tonumber(ARGV[4])
local now = ot_now()

local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[7]))
if #due > 0 then
  for _, env in ipairs(due) do
    -- A malformed member still moves on, so a worker sees it and dead-letters it with a reason.
    local p = ot_header(env) or tonumber(ARGV[6])
    redis.call('RPUSH', KEYS[7 + p], env)
  end
  redis.call('ZREM', KEYS[1], unpack(due))
end

local out = {now, -1}
local claimed, p = 0, 9
while claimed < n and p >= 0 do
  local env = redis.call('LMOVE', KEYS[7 + p], KEYS[2], 'LEFT', 'RIGHT')
  if env then
    claimed = claimed + 1
    local _, id, name = ot_header(env)
    local deliveries = 0
    if id then deliveries = tonumber(redis.call('HGET', KEYS[4], id) or '0') end
    out[#out + 1] = env
    out[#out + 1] = deliveries
    if maxlen > 0 then
      local fields = {'i', id or '', 'n', name or '', 'q', queue, 'w', consumer}
      redis.call('XADD', KEYS[6], 'MAXLEN', '~', maxlen, '*', 'e', 'task-received', unpack(fields))
      redis.call('XADD', KEYS[6], 'MAXLEN', '~', maxlen, '*', 'e', 'task-started', unpack(fields))
    end
  else
    p = p - 1
  end
end

if claimed > 0 then
  redis.call('ZADD', KEYS[3], now + tonumber(ARGV[3]), consumer)
  -- Promoted more than we took: wake idle peers for the rest.
  ot_wake(KEYS[5], #due - claimed, tonumber(ARGV[8]))
else
  local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  if first[2] then out[2] = tonumber(first[2]) end
end
return out
