-- lead: take the beat leader lease if it is free, or renew it if this beat holds it.
--
-- Several beats may run; only the holder of this lease sends periodic runs (fire.lua checks
-- it too, so a beat that still believes it leads after its lease expired sends nothing).
--
-- KEYS[1] leader STRING
-- ARGV[1] this beat's id   ARGV[2] lease (ms)
-- Returns {code, server time (ms), ms left on the lease}: code 2 taken (it was free), 1
-- renewed, 0 held by another beat (then the ms left are that beat's).

local now = ot_now()
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then
  return {0, now, redis.call('PTTL', KEYS[1])}
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return {holder and 1 or 2, now, tonumber(ARGV[2])}
