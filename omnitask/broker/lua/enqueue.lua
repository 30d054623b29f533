-- enqueue: queue one task and wake an idle worker, in one step.
--
-- The write-only transitions are MULTI blocks elsewhere (commands.py), because a script costs
-- Redis about 30 us more. For one .delay() the client is the bottleneck, not Redis: a MULTI
-- of five commands costs it six replies to read and six commands to pack, a script call one
-- of each (measured: about half the client's time per send went there). Bulk sends
-- (delay_many) keep the MULTI, whose cost is shared by the batch.
--
-- KEYS[1] ready LIST of its priority   KEYS[2] delayed ZSET   KEYS[3] wake LIST
-- KEYS[4] events STREAM (the queue's)
-- ARGV[1] envelope   ARGV[2] due ms ('' = now)   ARGV[3] task id   ARGV[4] task name
-- ARGV[5] queue name   ARGV[6] events maxlen (0: none)   ARGV[7] max wake tokens
-- Returns {} when everything applied, else the errors of the steps after the RPUSH / ZADD
-- (a key of the wrong type): the task is queued all the same, and the client logs them. An
-- error of the RPUSH / ZADD itself raises before anything was written.

local fields = {'i', ARGV[3], 'n', ARGV[4], 'q', ARGV[5]}
if ARGV[2] == '' then
  redis.call('RPUSH', KEYS[1], ARGV[1])
else
  redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
  fields[#fields + 1] = 'eta'
  fields[#fields + 1] = ARGV[2]
end
-- From here on the task is queued: a failing step must not turn that into an error.
local errors = {}
local function try(...)
  local reply = redis.pcall(...)
  if type(reply) == 'table' and reply.err then errors[#errors + 1] = reply.err end
end
try('LPUSH', KEYS[3], '1')
try('LTRIM', KEYS[3], 0, tonumber(ARGV[7]) - 1)
if tonumber(ARGV[6]) > 0 then
  try('XADD', KEYS[4], 'MAXLEN', '~', ARGV[6], '*', 'e', 'task-sent', unpack(fields))
end
return errors
