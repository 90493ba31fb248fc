-- device_touch.lua: refresh a connected device's presence, if this connection still owns it.
--
-- KEYS[1] presence  HASH {node, conn, since, last_seen}
-- ARGV[1] connection id
-- ARGV[2] now (ms)
-- ARGV[3] time to live (ms)
-- Returns: 1 when refreshed, 0 when another connection has taken over, -1 when there is no
--          entry at all (it expired, or Redis lost it): the caller joins again.
local owner = redis.call('HGET', KEYS[1], 'conn')
if not owner then
  return -1
end
if owner ~= ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[1], 'last_seen', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
