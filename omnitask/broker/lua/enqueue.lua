-- enqueue: queue tasks and wake idle workers, in one step (one .delay(), or a bulk send).
--
-- A script rather than a MULTI because the client is the bottleneck here, not Redis: a MULTI
-- of n commands costs the client n + 2 replies to read and as many commands to pack, a script
-- call one of each (measured: about half the client's time per .delay(), and a third of a
-- bulk send's of 1000 tasks, went to packing and reading a MULTI).
--
-- KEYS[1] delayed ZSET   KEYS[2] wake LIST   KEYS[3] events STREAM (the queue's)
-- KEYS[4..] the ready LISTs of the priorities used
-- ARGV[1] queue name   ARGV[2] events maxlen (0: none)   ARGV[3] max wake tokens
-- then runs of tasks, in the order sent, each run of tasks that share where they go and their
-- name: index in KEYS of their ready LIST ('' when delayed), due ms ('' when ready now), task
-- name, count k, then k pairs of envelope and task id. (A bulk send is one run: two arguments
-- per task to pack and read instead of five.)
-- Returns {} when everything applied, else the errors of the steps after the RPUSHes and the
-- ZADD (a key of the wrong type): the tasks are queued all the same, and the client logs
-- them. An error of an RPUSH or the ZADD raises: before anything was written when it is the
-- first, else after the lists before it were pushed (a batch over several priorities, or with
-- delayed tasks, is then partly queued although the call failed; as with a MULTI).

local CHUNK = 1000 -- unpack() of more than about 8000 values overflows Lua's stack
local ready, delayed, groups = {}, {}, {}
local n, at = 0, 4
while at <= #ARGV do
  local slot, due, name, k = ARGV[at], ARGV[at + 1], ARGV[at + 2], tonumber(ARGV[at + 3])
  local first, last = at + 4, at + 3 + 2 * k
  if slot == '' then
    for i = first, last, 2 do
      delayed[#delayed + 1] = due
      delayed[#delayed + 1] = ARGV[i]
    end
  else
    local list = ready[slot]
    if not list then list = {}; ready[slot] = list end
    for i = first, last, 2 do list[#list + 1] = ARGV[i] end
  end
  -- Consecutive tasks of one name and due time share their task-sent entries (below),
  -- whatever their priorities.
  local group = groups[#groups]
  if not group or group.name ~= name or group.due ~= due then
    group = {name = name, due = due, ids = {}}
    groups[#groups + 1] = group
  end
  local ids = group.ids
  for i = first + 1, last, 2 do ids[#ids + 1] = ARGV[i] end
  n = n + k
  at = last + 1
end
for key, list in pairs(ready) do
  for i = 1, #list, CHUNK do
    redis.call('RPUSH', KEYS[tonumber(key)], unpack(list, i, math.min(i + CHUNK - 1, #list)))
  end
end
for i = 1, #delayed, 2 * CHUNK do
  redis.call('ZADD', KEYS[1], unpack(delayed, i, math.min(i + 2 * CHUNK - 1, #delayed)))
end

-- From here on the tasks are queued: a failing step must not turn that into an error.
local errors = {}
local function try(...)
  local reply = redis.pcall(...)
  if type(reply) == 'table' and reply.err then errors[#errors + 1] = reply.err end
end
local max = tonumber(ARGV[3])
local tokens = {}
for i = 1, math.min(n, max) do tokens[i] = '1' end
try('LPUSH', KEYS[2], unpack(tokens))
try('LTRIM', KEYS[2], 0, max - 1)

-- task-sent events: one entry per task of a lone send; a group's tasks share entries of up to
-- EVENT_CHUNK ids, field 'is' (a JSON array; readers expand it to one event per task). An
-- XADD per task was three quarters of Redis's time in a bulk send. The chunk bounds the
-- stream's memory (events_maxlen entries of up to 20 ids, about 5 MB at the default cap);
-- chunks of 100 were only 4% faster.
local EVENT_CHUNK = 20
local maxlen = tonumber(ARGV[2])
if maxlen > 0 then
  for _, group in ipairs(groups) do
    local ids = group.ids
    for first = 1, #ids, EVENT_CHUNK do
      local last = math.min(first + EVENT_CHUNK - 1, #ids)
      local fields = {'e', 'task-sent', 'i', ids[first]}
      if last > first then
        fields[3], fields[4] = 'is', cjson.encode({unpack(ids, first, last)})
      end
      fields[#fields + 1], fields[#fields + 2] = 'n', group.name
      fields[#fields + 1], fields[#fields + 2] = 'q', ARGV[1]
      if group.due ~= '' then
        fields[#fields + 1], fields[#fields + 2] = 'eta', group.due
      end
      try('XADD', KEYS[3], 'MAXLEN', '~', maxlen, '*', unpack(fields))
    end
  end
end
return errors
