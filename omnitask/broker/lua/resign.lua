-- resign: give up the beat leader lease, if this beat still holds it (a stopping beat), so
-- that a standby beat takes over at its next check instead of when the lease would expire.
--
-- KEYS[1] leader STRING
-- ARGV[1] this beat's id
-- Returns 1 released, 0 not held by this beat (left alone).

if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
