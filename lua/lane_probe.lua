-- lane_probe.lua: take the one half-open probe of a destination's breaker, cluster-wide.
--
-- KEYS[1] lane  HASH  (lane_sync.lua) probe = "<node>:<expiry ms>" while a probe is out
-- ARGV[1] node id
-- ARGV[2] now (ms)
-- ARGV[3] how long the probe may take (ms) before another node may probe
-- Returns: 1 if this node may send the probe, else 0
if redis.call('HGET', KEYS[1], 'state') ~= 'half' then return 0 end
local held = redis.call('HGET', KEYS[1], 'probe')
if held then
  local expiry = tonumber(string.match(held, ':(%d+)$') or '0')
  if expiry > tonumber(ARGV[2]) then return 0 end
end
redis.call('HSET', KEYS[1], 'probe', ARGV[1] .. ':' .. (tonumber(ARGV[2]) + tonumber(ARGV[3])))
return 1
