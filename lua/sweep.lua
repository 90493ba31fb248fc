-- sweep.lua: forget delivered and dead notifications older than their retention period.
--
-- KEYS[1] done   ZSET   id -> delivered at (ms)
-- KEYS[2] dead   ZSET   id -> died at (ms)
-- KEYS[3] spec   HASH   id -> spec JSON
-- KEYS[4] meta   HASH   id -> state JSON
-- KEYS[5] log    HASH   id -> attempt records
-- ARGV[1] delivered entries finished at or before this time (ms) are removed
-- ARGV[2] dead entries that died at or before this time (ms) are removed
-- ARGV[3] the most entries to remove from each set in this call
-- Returns: the number of notifications removed
local removed = 0
local sets = {{KEYS[1], ARGV[1]}, {KEYS[2], ARGV[2]}}
for _, set in ipairs(sets) do
  local ids = redis.call('ZRANGEBYSCORE', set[1], '-inf', set[2], 'LIMIT', 0, tonumber(ARGV[3]))
  for _, id in ipairs(ids) do
    redis.call('ZREM', set[1], id)
    redis.call('HDEL', KEYS[3], id)
    redis.call('HDEL', KEYS[4], id)
    redis.call('HDEL', KEYS[5], id)
    removed = removed + 1
  end
end
return removed
