-- claim: move up to N ready envelopes, highest priority first, into a consumer's in-flight list,
-- after acknowledging the tasks the consumer just finished, when there are some.
--
-- First promotes delayed envelopes that are due (into the tail of their priority's list), then
-- takes from the head of lists 9..0 with LMOVE, so a claimed envelope is always in exactly one
-- of `ready` or `proc`: there is no instant at which a crash loses it. Every read and every
-- other write of a claim happens before its LMOVE, so an error (a key of the wrong type)
-- aborts the script before anything moved. Refreshes the consumer's lease and publishes
-- task-received and task-started for each claimed task.
--
-- When the proc list holds more than the caller knows of (ARGV[9]), an earlier reply was lost
-- (the connection dropped after Redis ran the claim): those envelopes are returned again
-- instead of claiming new ones, so none is stranded.
--
-- The acks (ARGV[10] > 0) are the worker's hot path: finished tasks' acknowledgements and the
-- next claim in one call, so one round trip and one command to pack, where a MULTI of the
-- same steps cost the worker about half its time per task in packing and reading replies.
-- Each ack drops the envelope from proc and its delivery count, stores the result record and
-- publishes the final event, as commands.ack and commands.store_result do in a MULTI.
--
-- KEYS[1] delayed ZSET      KEYS[2] proc LIST (this consumer)   KEYS[3] consumers ZSET
-- KEYS[4] deliveries HASH   KEYS[5] wake LIST                   KEYS[6] events STREAM
-- KEYS[7..16] ready LISTs for priorities 0..9   KEYS[17] revoked ZSET   KEYS[18] paused flag
-- KEYS[17 + 2i], KEYS[18 + 2i]: result LIST and state STRING of the i-th task acked
-- ARGV[1] max envelopes to claim   ARGV[2] consumer id   ARGV[3] lease ms
-- ARGV[4] events maxlen (0: publish none)   ARGV[5] queue name   ARGV[6] default priority
-- ARGV[7] max delayed envelopes to promote   ARGV[8] max wake tokens
-- ARGV[9] envelopes the caller holds in proc already
-- ARGV[10] how many tasks to ack first (absent or 0: none); then for each: its envelope, task
-- id, result record ('': none kept), the record's ttl ms, m, and m words of its final event
-- (kind, then field, value pairs; m = 0: no event)
-- Returns {server now ms, next due ms or -1, env 1, deliveries 1, revoked 1, env 2, ...};
-- revoked is 1 for a task revoked before it ran (the worker records REVOKED, never runs it);
-- "next due" is only computed when nothing was claimed (the caller then sleeps until it).
-- A paused queue (KEYS[18] exists) hands out nothing new and promotes nothing.
-- A claim of 0 envelopes refreshes the lease and nothing else.
-- With acks it returns {held, errors, claim}: held lists, per ack, 1 when the consumer still
-- held the task (0: its lease lapsed and it went elsewhere); errors are those of the steps
-- after the LREMs (logged by the client: the acks applied all the same); claim is the reply
-- above, or nil when the claim failed (its error is then the last of errors).

local function claim()
  local n = tonumber(ARGV[1])
  local consumer, queue = ARGV[2], ARGV[5]
  local maxlen = tonumber(ARGV[4])
  local held = tonumber(ARGV[9])
  local now = ot_now()
  redis.call('ZADD', KEYS[3], now + tonumber(ARGV[3]), consumer)

  local function deliveries_of(id)
    if not id then return 0 end
    return tonumber(redis.call('HGET', KEYS[4], id) or '0')
  end

  local function revoked(id)
    if not id then return 0 end
    local until_ms = redis.call('ZSCORE', KEYS[17], id)
    if until_ms and tonumber(until_ms) > now then return 1 end
    return 0
  end

  local out = {now, -1}
  if n == 0 then return out end
  local orphans = redis.call('LRANGE', KEYS[2], held, held + n - 1)
  if #orphans > 0 then
    for _, env in ipairs(orphans) do
      local _, id = ot_header(env)
      out[#out + 1] = env
      out[#out + 1] = deliveries_of(id)
      out[#out + 1] = revoked(id)
    end
    return out
  end

  -- Paused: its tasks stay where they are. Next due stays -1, or idle workers would spin on
  -- delayed tasks that are due but may not move; a resume wakes them (control.py).
  if redis.call('EXISTS', KEYS[18]) == 1 then
    return out
  end

  local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[7]))
  if #due > 0 then
    for _, env in ipairs(due) do
      -- A malformed member still moves on, so a worker sees it and dead-letters it with a reason.
      local p = ot_header(env) or tonumber(ARGV[6])
      redis.call('RPUSH', KEYS[7 + p], env)
    end
    redis.call('ZREM', KEYS[1], unpack(due))
  end

  local claimed, p = 0, 9
  while claimed < n and p >= 0 do
    local env = redis.call('LINDEX', KEYS[7 + p], 0)
    if env then
      local _, id, name = ot_header(env)
      local deliveries = deliveries_of(id)
      local is_revoked = revoked(id)
      if maxlen > 0 then
        local fields = {'i', id or '', 'n', name or '', 'q', queue, 'w', consumer}
        redis.call('XADD', KEYS[6], 'MAXLEN', '~', maxlen, '*', 'e', 'task-received', unpack(fields))
        redis.call('XADD', KEYS[6], 'MAXLEN', '~', maxlen, '*', 'e', 'task-started', unpack(fields))
      end
      redis.call('LMOVE', KEYS[7 + p], KEYS[2], 'LEFT', 'RIGHT')
      claimed = claimed + 1
      out[#out + 1] = env
      out[#out + 1] = deliveries
      out[#out + 1] = is_revoked
    else
      p = p - 1
    end
  end

  if claimed > 0 then
    -- Promoted more than we took: wake idle peers for the rest.
    ot_wake(KEYS[5], #due - claimed, tonumber(ARGV[8]))
  else
    local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
    if first[2] then out[2] = tonumber(first[2]) end
  end
  return out
end

local acks = tonumber(ARGV[10] or '0')
if acks == 0 then
  return claim()
end

-- An LREM raises (a key of the wrong type) before anything was written, and the proc list is
-- the same for every ack; after them the tasks are acknowledged, so a failing step must not
-- turn that into an error.
local held, errors = {}, {}
local function try(...)
  local reply = redis.pcall(...)
  if type(reply) == 'table' and reply.err then errors[#errors + 1] = reply.err end
end
local at = 11
for i = 1, acks do
  held[i] = redis.call('LREM', KEYS[2], 1, ARGV[at])
  at = at + 5 + tonumber(ARGV[at + 4])
end
at = 11
for i = 1, acks do
  local result, state = KEYS[17 + 2 * i], KEYS[18 + 2 * i]
  try('HDEL', KEYS[4], ARGV[at + 1])
  if ARGV[at + 2] == '' then
    try('DEL', state)
  else
    -- A task delivered twice replaces the earlier record rather than appending to it.
    try('DEL', state, result)
    try('RPUSH', result, ARGV[at + 2])
    try('PEXPIRE', result, ARGV[at + 3])
  end
  local m = tonumber(ARGV[at + 4])
  if m > 0 and tonumber(ARGV[4]) > 0 then
    try('XADD', KEYS[6], 'MAXLEN', '~', ARGV[4], '*', 'e', unpack(ARGV, at + 5, at + 4 + m))
  end
  at = at + 5 + m
end
local ok, reply = pcall(claim)
if not ok then
  errors[#errors + 1] = type(reply) == 'table' and reply.err or tostring(reply)
  reply = false
end
return {held, errors, reply}
