-- sweep.lua: forget one bounded batch of delivered and dead notifications older than their
-- retention period. The caller loops while a call removes a full batch (see worker retention).
--
-- KEYS[1] done   ZSET   id -> delivered at (ms)
-- KEYS[2] dead   ZSET   id -> died at (ms)
-- KEYS[3] spec   HASH   id -> spec JSON
-- KEYS[4] meta   HASH   id -> state JSON
-- KEYS[5] log    HASH   id -> attempt records
-- ARGV[1] delivered entries finished at or before this time (ms) are removed
-- ARGV[2] dead entries that died at or before this time (ms) are removed
-- ARGV[3] the most entries to remove from each set in this call (1..5000: one ZREM and three
--         HDELs of that many arguments per set, so one call stays well under a millisecond
--         per thousand entries)
-- Returns: {removed from done, removed from dead}
local limit = tonumber(ARGV[3])
if not limit or limit < 1 or limit > 5000 then
  return redis.error_reply('ERR sweep: batch size must be from 1 to 5000, got ' .. tostring(ARGV[3]))
end
local out = {0, 0}
local sets = {{KEYS[1], ARGV[1]}, {KEYS[2], ARGV[2]}}
for i, set in ipairs(sets) do
  local ids = redis.call('ZRANGEBYSCORE', set[1], '-inf', set[2], 'LIMIT', 0, limit)
  if #ids > 0 then
    redis.call('ZREM', set[1], unpack(ids))
    redis.call('HDEL', KEYS[3], unpack(ids))
    redis.call('HDEL', KEYS[4], unpack(ids))
    redis.call('HDEL', KEYS[5], unpack(ids))
    out[i] = #ids
  end
end
return out
