-- renew.lua: extend the leases a worker still holds (attempts that outlive a third of a lease).
--
-- Needs meta.lua (prepended by src/redis/scripts.rs): the meta and member formats.
--
-- KEYS[1] due    ZSET   member (meta.lua) -> lease expiry (ms)
-- KEYS[2] meta   HASH   id -> meta JSON (meta.lua)
-- ARGV[1] new lease expiry (ms)
-- then 2 per entry: id, token
-- Returns: per entry 1 (renewed) or 0 (the lease was lost: token no longer matches)
local out = {}
for i = 2, #ARGV, 2 do
  local id = ARGV[i]
  local raw = redis.call('HGET', KEYS[2], id)
  local renewed = 0
  if raw then
    local m = meta_decode(raw)
    if meta_leased_by(m, ARGV[i + 1]) then
      m.l = ARGV[1]
      redis.call('ZADD', KEYS[1], 'XX', ARGV[1], m.m)
      redis.call('HSET', KEYS[2], id, meta_encode(m))
      renewed = 1
    end
  end
  out[#out + 1] = renewed
end
return out
