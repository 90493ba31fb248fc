-- device_join.lua: record that a device is connected to this node, replacing any older connection.
--
-- KEYS[1] presence  HASH {node, conn, since, last_seen}, expires unless refreshed
-- ARGV[1] node id
-- ARGV[2] connection id (unique per connection)
-- ARGV[3] now (ms)
-- ARGV[4] time to live (ms)
-- Returns: {previous node, previous connection id} or {} when the device was not connected
local prev = redis.call('HMGET', KEYS[1], 'node', 'conn')
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'node', ARGV[1], 'conn', ARGV[2], 'since', ARGV[3], 'last_seen', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
if prev[1] and prev[2] then
  return {prev[1], prev[2]}
end
return {}
