-- settle: store a final result record unless the task already has one.
--
-- Used on a separate result backend by revoke, where the broker's script cannot see the
-- result keys: the check and the write must be one step, or a result landing in between
-- would be overwritten.
--
-- KEYS[1] result LIST   KEYS[2] state STRING
-- ARGV[1] record   ARGV[2] ttl ms
-- Returns 1 when stored, 0 when the task already had a final record.

if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
redis.call('DEL', KEYS[2])
redis.call('RPUSH', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
return 1
