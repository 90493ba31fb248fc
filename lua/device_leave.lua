-- device_leave.lua: forget a device's presence, if this connection still owns it.
--
-- KEYS[1] presence  HASH {node, conn, since, last_seen}
-- ARGV[1] connection id
-- Returns: 1 when removed, 0 when another connection owns it (or it was gone)
if redis.call('HGET', KEYS[1], 'conn') ~= ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[1])
return 1
