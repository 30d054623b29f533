-- revive: put dead letters back on their queue, to run again with a fresh delivery budget.
--
-- Each message goes to the tail of its priority's ready list, as a new send would, and its
-- delivery count is dropped so that max_deliveries counts anew. It is written to the ready
-- list before its dead letter is deleted, so an error aborts with the message still a dead
-- letter: at worst it is in both places, never in neither. A message whose envelope header
-- cannot be read is left where it is: a worker would only bury it again. Result records are
-- left alone (they may live in another Redis); the next run replaces them.
--
-- KEYS[1] dead STREAM   KEYS[2] deliveries HASH   KEYS[3] wake LIST
-- KEYS[4..13] ready LISTs for priorities 0..9
-- ARGV[1] max wake tokens   ARGV[2..] stream ids of the dead letters
-- Returns one code per id: 1 requeued, 0 no such dead letter, -1 not an envelope (left in place).

local out, moved = {}, 0
for i = 2, #ARGV do
  local code = 0
  local entry = redis.call('XRANGE', KEYS[1], ARGV[i], ARGV[i])[1]
  if entry then
    local fields, msg = entry[2], nil
    for f = 1, #fields, 2 do
      if fields[f] == 'msg' then msg = fields[f + 1] end
    end
    local p, id
    if msg then p, id = ot_header(msg) end
    if p then
      redis.call('RPUSH', KEYS[4 + p], msg)
      redis.call('HDEL', KEYS[2], id)
      redis.call('XDEL', KEYS[1], ARGV[i])
      moved = moved + 1
      code = 1
    else
      code = -1
    end
  end
  out[#out + 1] = code
end
ot_wake(KEYS[3], moved, tonumber(ARGV[1]))
return out
