-- bury: move a message that must not run to the queue's dead letters, with its reason.
--
-- A claimed message is buried only if the consumer still holds it (not after its lease
-- expired and another worker took it). The dead letter and the FAILURE result are written
-- before the message leaves proc, so an error aborts with the message still held: it is
-- never dropped.
--
-- KEYS[1] proc LIST   KEYS[2] dead STREAM   KEYS[3] deliveries HASH   KEYS[4] events STREAM
-- KEYS[5] result LIST   KEYS[6] state STRING
-- ARGV[1] message bytes   ARGV[2] "1": it is in proc   ARGV[3] dead-letter maxlen
-- ARGV[4] task id or ""   ARGV[5] FAILURE result record or ""   ARGV[6] result ttl ms
-- ARGV[7] events maxlen (0: none)   ARGV[8] dead letters' max age ms
-- ARGV[9] number D of dead-letter field values
-- ARGV[10 .. 9+D] dead-letter fields   ARGV[10+D ..] task-rejected event fields
-- Returns 1 when buried, 0 when the consumer no longer held the message.

local held = ARGV[2] == '1'
if held and not redis.call('LPOS', KEYS[1], ARGV[1]) then
  return 0
end
local d = tonumber(ARGV[9])
local fields = {}
for i = 10, 9 + d do fields[#fields + 1] = ARGV[i] end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', tonumber(ARGV[3]), '*', 'msg', ARGV[1], unpack(fields))
-- Bounded by age too: entries older than the max age go (the stream id is their time).
-- Exact, not '~': approximate trimming only drops whole stream nodes, which could keep old
-- entries indefinitely on a queue with few dead letters. Dead letters are rare: it is cheap.
redis.call('XTRIM', KEYS[2], 'MINID', ot_now() - tonumber(ARGV[8]))
if ARGV[5] ~= '' then
  redis.call('DEL', KEYS[6], KEYS[5])
  redis.call('RPUSH', KEYS[5], ARGV[5])
  redis.call('PEXPIRE', KEYS[5], tonumber(ARGV[6]))
end
local maxlen = tonumber(ARGV[7])
if maxlen > 0 then
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', maxlen, '*', 'e', 'task-rejected', unpack(ARGV, 10 + d))
end
if ARGV[4] ~= '' then
  redis.call('HDEL', KEYS[3], ARGV[4])
end
if held then
  redis.call('LREM', KEYS[1], 1, ARGV[1])
end
return 1
