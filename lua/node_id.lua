-- node_id.lua: hold (or let go of) a node id, so two live nodes never share one.
--
-- Two nodes with one id would both follow its node channel and answer each other's device
-- calls. A node holds its id for a short TTL and refreshes it while it runs.
--
-- KEYS[1] alive   STRING  the instance (a random id per process) holding the node id
-- ARGV[1] instance
-- ARGV[2] time to live (ms); 0 lets go of the id (only if this instance holds it)
-- Returns: 1 when this instance holds the id (or let go of it), 0 when another instance holds it
local owner = redis.call('GET', KEYS[1])
if owner and owner ~= ARGV[1] then
  return 0
end
if tonumber(ARGV[2]) == 0 then
  if owner then redis.call('DEL', KEYS[1]) end
  return 1
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
