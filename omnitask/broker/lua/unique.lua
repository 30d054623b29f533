-- unique: queue a task unless one with the same unique key is already there (one step).
--
-- throttle (ARGV[6] = 0): the first call within the window wins; later calls get its id back
-- and queue nothing. The key lasts the window from the first call.
-- debounce (ARGV[6] = 1): the task waits in `delayed` until the window has passed since the
-- LAST call, with the last call's arguments, under the id of the first call of the cycle:
-- a call that finds a pending one replaces it (same id), so every caller's result is the one
-- run. A cycle ends when the task is promoted to run; the next call starts a new one.
-- Debounce needs the new envelope built with the pending id: when the caller's id differs,
-- nothing changes and {0, pending id} is returned, and the caller rebuilds and calls again.
--
-- KEYS[1] unique key (STRING id, or HASH id/body for debounce)   KEYS[2] ready LIST (its priority)
-- KEYS[3] delayed ZSET   KEYS[4] wake LIST   KEYS[5] events STREAM (the queue's)
-- ARGV[1] envelope   ARGV[2] task id   ARGV[3] task name   ARGV[4] window ms
-- ARGV[5] due ms ('' = now; debounce always delays by the window)   ARGV[6] debounce 0/1
-- ARGV[7] events maxlen (0: none)   ARGV[8] queue name
-- Returns {1, id} queued, {0, id} not queued: that task (throttle) or rebuild with it (debounce).

local body, id, window = ARGV[1], ARGV[2], tonumber(ARGV[4])
local now = ot_now()

-- After the task is queued: a failing step (a key of the wrong type) must not report the send
-- as failed, so these run under pcall.
local function sent(due)
  redis.pcall('LPUSH', KEYS[4], '1')
  redis.pcall('LTRIM', KEYS[4], 0, 63)
  if tonumber(ARGV[7]) > 0 then
    local fields = {'i', id, 'n', ARGV[3], 'q', ARGV[8]}
    if due then
      fields[#fields + 1] = 'eta'
      fields[#fields + 1] = tostring(due)
    end
    redis.pcall('XADD', KEYS[5], 'MAXLEN', '~', ARGV[7], '*', 'e', 'task-sent', unpack(fields))
  end
end

if ARGV[6] == '0' then
  local first = redis.call('GET', KEYS[1])
  if first then return {0, first} end
  redis.call('SET', KEYS[1], id, 'PX', window)
  if ARGV[5] ~= '' then
    redis.call('ZADD', KEYS[3], tonumber(ARGV[5]), body)
    sent(tonumber(ARGV[5]))
  else
    redis.call('RPUSH', KEYS[2], body)
    sent(nil)
  end
  return {1, id}
end

local pending = redis.call('HMGET', KEYS[1], 'id', 'body')
if pending[1] and redis.call('ZSCORE', KEYS[3], pending[2]) then
  if pending[1] ~= id then return {0, pending[1]} end
  redis.call('ZREM', KEYS[3], pending[2])
elseif pending[1] == id then
  -- The caller rebuilt with the pending task's id, which was promoted to run meanwhile: a new
  -- cycle must not reuse it (two tasks under one id). {0, ''}: rebuild with a fresh id.
  return {0, ''}
end
local due = now + window
redis.call('ZADD', KEYS[3], due, body)
redis.call('HSET', KEYS[1], 'id', id, 'body', body)
-- Kept a little past the due time, then the cycle's key goes by itself.
redis.call('PEXPIRE', KEYS[1], window * 2 + 60000)
sent(due)
return {1, id}
