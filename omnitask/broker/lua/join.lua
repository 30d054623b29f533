-- join: record one chord header task's result; the one that completes the chord queues its
-- callback. Runs inside the MULTI that acknowledges the header task, so the result, the count
-- and the callback move together with the ack, and a header task delivered twice (its worker
-- died before the ack) counts once: its index is set only if absent.
--
-- KEYS[1] chord HASH: n (header size), cb (the callback's envelope), q (its queue),
--         c (results so far), r:<index> (result records), failed (set when a header task
--         failed for good: the callback must never run)
-- KEYS[2..11] the callback queue's ready LISTs for priorities 0..9   KEYS[12] its wake LIST
-- ARGV[1] this header task's index   ARGV[2] its SUCCESS result record
-- ARGV[3] the result TTL in ms: each counted result renews the hash's, so a header that runs
--         long (a backlog, retries) keeps its chord as long as its tasks keep finishing
-- Returns 1 counted, 2 counted and callback queued, 0 already counted, -1 chord failed,
-- -2 chord unknown (expired: older than the result TTL).

local n = tonumber(redis.call('HGET', KEYS[1], 'n'))
if not n then return -2 end
if redis.call('HEXISTS', KEYS[1], 'failed') == 1 then return -1 end
if redis.call('HSETNX', KEYS[1], 'r:' .. ARGV[1], ARGV[2]) == 0 then return 0 end
local count = redis.call('HINCRBY', KEYS[1], 'c', 1)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
if count < n then return 1 end
local cb = redis.call('HGET', KEYS[1], 'cb')
local p = ot_header(cb) or 5
redis.call('RPUSH', KEYS[2 + p], cb)
redis.call('LPUSH', KEYS[12], '1')
redis.call('LTRIM', KEYS[12], 0, 63)
return 2
