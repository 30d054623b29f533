-- _lib.lua: helpers prepended to every script by scripts.py (not a script of its own).
--
-- An envelope is a msgpack fixarray [version, priority, id, name, ...] (omnitask/messages.py).
-- Scripts read only this header, so they never pay for decoding the payload.

local OT_VERSION = 1

-- Reads a msgpack string (fixstr, str8 or str16) at byte `pos`; returns it and the next position.
local function ot_str(s, pos)
  local b = string.byte(s, pos)
  local len, start
  if not b then
    return nil, pos
  elseif b >= 0xa0 and b <= 0xbf then
    len, start = b - 0xa0, pos + 1
  elseif b == 0xd9 then
    len, start = string.byte(s, pos + 1), pos + 2
  elseif b == 0xda then
    local hi, lo = string.byte(s, pos + 1, pos + 2)
    if hi and lo then len, start = hi * 256 + lo, pos + 3 end
  end
  if not len or start + len - 1 > #s then
    return nil, pos
  end
  return string.sub(s, start, start + len - 1), start + len
end

-- Returns priority, id, name of an envelope, or nil when the bytes are not one.
local function ot_header(env)
  local b1, b2, b3 = string.byte(env, 1, 3)
  if not b3 or b1 < 0x97 or b1 > 0x9f or b2 ~= OT_VERSION or b3 > 9 then
    return nil
  end
  local id, pos = ot_str(env, 4)
  if not id then return nil end
  local name = ot_str(env, pos)
  if not name then return nil end
  return b3, id, name
end

-- Server time in ms: every lease deadline is on the Redis clock, so hosts may disagree.
local function ot_now()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function ot_wake(key, count, max)
  if count > 0 then
    local tokens = {}
    for i = 1, math.min(count, max) do tokens[i] = '1' end
    redis.call('LPUSH', key, unpack(tokens))
    redis.call('LTRIM', key, 0, max - 1)
  end
end
